"""apply_sequence_parallel: swap every self-attention ``attn_op`` of a model for the layout's SP op.

The state_dict is unchanged and the swap shows in ``repr(model)``. Cross-attention (text keys) stays local.
"""
from __future__ import annotations

import torch.nn as nn

from magcache_dist.errors import InputError, InternalError
from magcache_dist.parallel.attention import RingAttention, UlyssesAttention
from magcache_dist.parallel.dims import ParallelContext
from models.attention_joint import LocalFactorizedAttention, LocalJointAttention

BACKENDS = ("native", "deepspeed", "xfuser")


def check_backend(backend: str) -> None:
    """Fail before any collective if the backend cannot run here."""
    if backend not in BACKENDS:
        raise InputError(f"parallel.backend={backend!r} is unknown; choose one of {BACKENDS}")
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

        return XFuserUSPAttention(dims, par.rank, par.group.size)
    ring = RingAttention(par.ring) if dims.ring_degree > 1 else None
    if dims.ulysses_degree == 1:
        return ring
    if par.backend == "deepspeed":
        from magcache_dist.parallel.backends.deepspeed_ulysses import DeepSpeedUlyssesAttention

        return DeepSpeedUlyssesAttention(par.ulysses, ring)
    return UlyssesAttention(par.ulysses, ring)


def build_sp_seam(seam: nn.Module, par: ParallelContext) -> nn.Module:
    """The SP version of a joint or factorised attention seam (native backend only)."""
    from magcache_dist.parallel.joint import JointSPAttention, UlyssesFactorizedAttention

    if par.backend != "native":
        raise InputError(f"parallel.backend={par.backend!r} has no joint/factorised attention; "
                         f"use parallel.backend=native")
    if isinstance(seam, LocalJointAttention):
        return JointSPAttention(par.ulysses, par.ring)
    if par.dims.ring_degree > 1:
        raise InputError(f"parallel.ring_degree={par.dims.ring_degree}: factorised spatial/temporal attention needs "
                         f"whole frames per rank; use parallel.ulysses_degree instead")
    return UlyssesFactorizedAttention(par.ulysses, seam.axis)


def apply_sequence_parallel(model: nn.Module, par: ParallelContext) -> nn.Module:
    """In place: every ``self_attn.attn_op`` becomes the SP op (one shared instance, it holds no weights).

    Joint text+image seams (``LocalJointAttention``) and factorised video seams (``LocalFactorizedAttention``)
    become their SP versions (magcache_dist.parallel.joint) wherever they sit.
    """
    op = build_sp_attention(par)
    if op is None:
        return model
    swapped = 0
    for name, module in model.named_modules():
        seam = getattr(module, "attn_op", None)
        if isinstance(seam, (LocalJointAttention, LocalFactorizedAttention)):
            module.attn_op = build_sp_seam(seam, par)
            swapped += 1
        elif name.endswith("self_attn") and hasattr(module, "attn_op"):
            module.attn_op = op
            swapped += 1
    if swapped == 0:
        raise InternalError(f"{type(model).__name__} has no self_attn.attn_op seam to apply sequence parallelism to")
    return model
