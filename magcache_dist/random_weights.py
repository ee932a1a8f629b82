"""Models with seeded random weights at toy sizes, for what needs a real model but no trained one: the tests, the
benchmarks (benchmarks/sp.py) and the device checks (scripts/gpu_check.py).

``randomize`` gives every parameter seeded noise (Wan's own init zeroes the head, which would hide everything);
``tiny_model`` is the ``tiny`` Wan DiT so randomised, ``save_tiny_checkpoint`` writes it with its text encoder as
a real checkpoint file, and ``odd_inputs`` is noise and text features whose token count (175) divides by neither
2, 3 nor 4, so every sequence-parallel layout pads."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from models.tiny_text import TinyTextEncoder
from models.wan import WanModel, get_config
from models.wan_i2v import build_wan_model


def randomize(module: torch.nn.Module, seed: int, std: float = 0.15) -> torch.nn.Module:
    """Replace every parameter with seeded normal noise (norm weights stay near 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.ndim == 1 and p.shape[0] > 0 and torch.all(p == 1):  # norm weights: keep near 1
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def tiny_model(seed: int = 0, name: str = "tiny") -> WanModel:
    """The Wan DiT of model config ``name`` with seeded random weights, in eval mode."""
    return randomize(build_wan_model(get_config(name)), seed).eval()


def save_tiny_checkpoint(path: str, seed: int = 0, name: str = "tiny") -> str:
    """``tiny_model(seed, name)`` and its tiny text encoder (seed + 1) as one safetensors file at ``path``."""
    model = tiny_model(seed, name)
    text = randomize(TinyTextEncoder.for_model(name), seed + 1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.update({f"text_encoder.{k}": v.contiguous() for k, v in text.state_dict().items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return path


def odd_inputs() -> tuple[torch.Tensor, dict]:
    """Noise for 5 x 20 x 28 pixels (175 tokens with the tiny model's 1x4x4 patches: divisible by neither 2, 3
    nor 4) and cond / empty uncond text features."""
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 3, 5, 20, 28, generator=g)
    texts = {"cond": torch.randn(1, 6, 32, generator=g), "uncond": torch.zeros(1, 0, 32)}
    return noise, texts
