"""apply_sequence_parallel: swap every self-attention ``attn_op`` of a model for the layout's SP op.

The state_dict is unchanged and the swap shows in ``repr(model)``. Cross-attention (text keys) stays local.
"""
from __future__ import annotations

import torch.nn as nn

from magcache_dist.parallel.attention import RingAttention, UlyssesAttention
from magcache_dist.parallel.dims import ParallelContext

BACKENDS = ("native", "deepspeed", "xfuser")


def check_backend(backend: str) -> None:
    """Fail before any collective if the backend cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"parallel.backend={backend!r} is unknown; choose one of {BACKENDS}")
    if backend == "deepspeed":
        from magcache_dist.parallel.backends import deepspeed_ulysses

        deepspeed_ulysses.check_available()
    elif backend == "xfuser":
        from magcache_dist.parallel.backends import xfuser_usp

        xfuser_usp.check_available()


def build_sp_attention(par: ParallelContext) -> nn.Module | None:
    dims = par.dims
    if dims.sp_degree == 1:
        return None
    if par.backend == "xfuser":
        from magcache_dist.parallel.backends.xfuser_usp import XFuserUSPAttention

        return XFuserUSPAttention(dims, par.rank, par.world.size)
    ring = RingAttention(par.ring) if dims.ring_degree > 1 else None
    if dims.ulysses_degree == 1:
        return ring
    if par.backend == "deepspeed":
        from magcache_dist.parallel.backends.deepspeed_ulysses import DeepSpeedUlyssesAttention

        return DeepSpeedUlyssesAttention(par.ulysses, ring)
    return UlyssesAttention(par.ulysses, ring)


def apply_sequence_parallel(model: nn.Module, par: ParallelContext) -> nn.Module:
    """In place: every ``self_attn.attn_op`` becomes the SP op (one shared instance, it holds no weights)."""
    op = build_sp_attention(par)
    if op is None:
        return model
    swapped = 0
    for name, module in model.named_modules():
        if name.endswith("self_attn") and hasattr(module, "attn_op"):
            module.attn_op = op
            swapped += 1
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} has no self_attn.attn_op seam to apply sequence parallelism to")
    return model
