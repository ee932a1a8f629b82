"""Tiny jobs and checkpoints of the FLUX.1, HunyuanVideo and Open-Sora 1.2 families (test utilities).

Image token counts are odd on purpose (117, 351, 105), so sequence parallelism over 2 ranks pads and masks."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.random_weights import randomize

STEPS = 8
# model name -> overrides of a short job whose published preset (interpolated to 8 steps) skips some calls
FAMILY_JOBS = {
    "flux.1-dev-tiny": ["video.frames=1", "video.height=18", "video.width=26", "sampler.guidance=3.5",
                        "cache.magcache.preset=flux.1-dev", "cache.magcache.thresh=0.24", "cache.magcache.K=5",
                        "cache.magcache.retention=0.1"],
    "flux.1-schnell-tiny": ["video.frames=1", "video.height=18", "video.width=26", "sampler.guidance=1",
                            "sampler.num_steps=4", "cache.magcache.preset=flux.1-schnell-tiny",
                            "cache.magcache.thresh=0.12",
                            "cache.magcache.K=1", "cache.magcache.retention=0.25"],
    "hunyuanvideo-tiny": ["video.frames=3", "video.height=18", "video.width=26", "sampler.guidance=6",
                          "sampler.shift=7", "cache.magcache.preset=hunyuanvideo-t2v-544p",
                          "cache.magcache.thresh=0.24", "cache.magcache.K=6",
                          "cache.magcache.retention=0.2"],
    "opensora-1.2-tiny": ["video.frames=3", "video.height=20", "video.width=28", "sampler.guidance=7",
                          "sampler.shift=3", "cache.magcache.preset=opensora-1.2", "cache.magcache.thresh=0.24",
                          "cache.magcache.K=5",
                          "cache.magcache.retention=0.2"],
}


def family_overrides(name: str, out: str, *extra: str, ckpt: str | None = None) -> list[str]:
    return [f"model.name={name}", f"output_dir={out}", "progress=false", "save_video=false", "sampler.solver=euler",
            f"sampler.num_steps={STEPS}", *(["model.ckpt=" + ckpt] if ckpt else []), *FAMILY_JOBS[name], *extra]


def family_config(name: str, out: str, *extra: str, ckpt: str | None = None):
    return load_config(None, family_overrides(name, out, *extra, ckpt=ckpt))


def random_family_model(name: str, seed: int = 0):
    """(model, text encoder) of ``name`` with seeded random weights everywhere (heads included)."""
    cfg = family_config(name, "/tmp/unused")
    model, text = make_family(cfg).build("cpu")
    return randomize(model, seed).eval(), randomize(text, seed + 1).eval()


def save_family_checkpoint(path: str, name: str, seed: int = 0, layout: str = "diffusers"):
    """A .safetensors of a random model in the diffusers layout or the official one (+ text_encoder.*)."""
    from models.flux import FLUX_OFFICIAL
    from models.hunyuan_video import HUNYUAN_OFFICIAL
    from models.layouts import diffusers_to_official

    model, text = random_family_model(name, seed)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "official" and not name.startswith("opensora"):
        sd = diffusers_to_official(sd, FLUX_OFFICIAL if name.startswith("flux") else HUNYUAN_OFFICIAL)
    sd = {k: v.contiguous() for k, v in sd.items()}
    sd.update({f"text_encoder.{k}": v.contiguous() for k, v in text.state_dict().items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return model, text


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
