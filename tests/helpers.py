"""Shared test utilities: tiny models with non-trivial random weights, saved as real checkpoints."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from magcache_dist.config import load_config
from models.tiny_text import TinyTextEncoder
from models.wan import WanModel, get_config

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
    return randomize(WanModel(get_config(name)), seed).eval()


def save_tiny_checkpoint(path: str, seed: int = 0, name: str = "tiny") -> str:
    cfg = get_config(name)
    model = tiny_model(seed, name)
    text = randomize(TinyTextEncoder(text_dim=cfg.text_dim, max_len=cfg.text_len), seed + 1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.update({f"text_encoder.{k}": v.contiguous() for k, v in text.state_dict().items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return path


def job_overrides(ckpt: str, out: str, *extra: str) -> list[str]:
    return [f"model.name=tiny", f"model.ckpt={ckpt}", f"output_dir={out}", "progress=false", "save_video=false",
            "sampler.num_steps=8", "cache.preset=wan2.1-t2v-1.3b", "cache.thresh=0.12", "cache.K=2",
            "cache.retention=0.2", *ODD_VIDEO, *extra]


def job_config(ckpt: str, out: str, *extra: str):
    return load_config(None, job_overrides(ckpt, out, *extra))
