"""Shared test utilities: tiny models with non-trivial random weights, saved as real checkpoints."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from magcache_dist.config import load_config
from models.tiny_text import TinyTextEncoder
from models.wan import WanModel, get_config
from models.wan_i2v import build_wan_model

# 5 frames x 20 x 28 pixels with 1x4x4 patches -> 5*5*7 = 175 tokens: divisible by neither 2 nor 4
ODD_VIDEO = ["video.frames=5", "video.height=20", "video.width=28"]


def randomize(module: torch.nn.Module, seed: int, std: float = 0.15) -> torch.nn.Module:
    """Replace every parameter with seeded normal noise (Wan's init zeroes the head, which hides everything)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.ndim == 1 and p.shape[0] > 0 and torch.all(p == 1):  # norm weights: keep near 1
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def tiny_model(seed: int = 0, name: str = "tiny") -> WanModel:
    return randomize(build_wan_model(get_config(name)), seed).eval()


def save_tiny_checkpoint(path: str, seed: int = 0, name: str = "tiny") -> str:
    model = tiny_model(seed, name)
    text = randomize(TinyTextEncoder.for_model(name), seed + 1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.update({f"text_encoder.{k}": v.contiguous() for k, v in text.state_dict().items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return path


def job_overrides(ckpt: str, out: str, *extra: str) -> list[str]:
    return ["model.name=tiny", f"model.ckpt={ckpt}", f"output_dir={out}", "progress=false", "save_video=false",
            "sampler.num_steps=8", "cache.magcache.preset=wan2.1-t2v-1.3b", "cache.magcache.thresh=0.12", "cache.magcache.K=2",
            "cache.magcache.retention=0.2", *ODD_VIDEO, *extra]


def job_config(ckpt: str, out: str, *extra: str):
    return load_config(None, job_overrides(ckpt, out, *extra))


def odd_inputs():
    """Noise for 5 x 20 x 28 pixels (175 tokens with the tiny model's 1x4x4 patches: divisible by neither 2, 3
    nor 4) and cond / empty uncond text features."""
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 3, 5, 20, 28, generator=g)
    texts = {"cond": torch.randn(1, 6, 32, generator=g), "uncond": torch.zeros(1, 0, 32)}
    return noise, texts


def run_sampling(dims, cfg, policy_for, guard: bool = True) -> list:
    """Sample the tiny model on ``odd_inputs`` with one simulated rank per thread (``dims``; None = single
    process); ``policy_for(par)`` builds each rank's cache policy. Returns [(latents, decisions)] in rank order."""
    from magcache_dist.parallel import apply_sequence_parallel, build_thread_contexts, solo_context
    from magcache_dist.parallel.threads import run_threads
    from magcache_dist.sampling import sample

    noise, texts = odd_inputs()

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        res = sample(model, noise, texts, cfg, policy_for(par), par, guard=guard)
        return res.latents, res.decisions

    if dims is None:
        return [one(solo_context())]
    return run_threads(one, build_thread_contexts(dims, timeout=60))


def plan_command(*args: str) -> tuple[int, str, str]:
    """``python -m magcache_dist.plan ARGS`` run in this process: (exit code, stdout, stderr). The command itself
    runs in a process of its own once, in tests/dist/test_cli.py."""
    import contextlib
    import io

    from magcache_dist.plan import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def plan_json(*args: str) -> dict:
    """The plan command's JSON answer for ARGS (it must succeed)."""
    import json

    code, out, err = plan_command(*args)
    assert code == 0, err
    return json.loads(out)
