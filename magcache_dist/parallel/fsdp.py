"""Optional FSDP sharding of the DiT's block weights across each sequence-parallel group (``parallel.fsdp``).

Each block of the model's block stacks becomes its own FSDP unit (torch's ``fully_shard``) over the SP group, with
its weights gathered just before the block runs and freed right after. The SP group is the right mesh: its ranks
take identical cache decisions (the consensus guarantees it), so they always enter or skip the block stack, and
hence its weight all-gathers, together. Under CFG parallel each branch's SP group shards separately; sharding across
the two halves would hang, since they skip at different calls. Embeddings and the head stay replicated (small).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from magcache_dist.errors import InputError, InternalError
from magcache_dist.parallel.comm import DistComm
from magcache_dist.parallel.dims import ParallelContext


def block_units(model: nn.Module) -> list[nn.Module]:
    """The children of the model's top-level ModuleLists (blocks, transformer_blocks, ...); a model of several
    experts (Wan2.2 A14B): every expert's."""
    if hasattr(model, "expert_models"):
        return [u for expert in model.expert_models() for u in block_units(expert)]
    return [m for child in model.children() if isinstance(child, nn.ModuleList) for m in child]


def check_fsdp(dims) -> None:
    if dims.sp_degree == 1:
        raise InputError("parallel.fsdp=true shards weights over the sequence-parallel group, which has one rank "
                         "here; set parallel.ulysses_degree or parallel.ring_degree > 1, or parallel.fsdp=false")


def apply_fsdp(model: nn.Module, par: ParallelContext, device=None) -> nn.Module:
    """In place: shard every block over ``par.sp``. Needs torch.distributed process groups (torchrun). The model
    may still be on the meta device (``device``: where it will live); its shards are then materialised later."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    if not isinstance(par.sp, DistComm):
        raise InputError("parallel.fsdp=true needs torch.distributed process groups (run under torchrun)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = DeviceMesh.from_group(par.sp.group, device.type)
    units = block_units(model)
    if not units:
        raise InternalError(f"{type(model).__name__} has no block list to shard")
    for unit in units:
        # inference: free the gathered weights after every block, also for these root-level units
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    return model


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds (its shards for FSDP units)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
