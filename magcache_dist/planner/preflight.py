"""Memory preflight: the planner's per-rank estimate against the memory this machine has free, before any weight is
loaded. A job that cannot fit exits 2 with the estimate and the knobs that would make it fit, instead of running
until the allocator fails (``planner.memory_check=false`` runs it anyway)."""
from __future__ import annotations

import os

from magcache_dist.errors import InputError

GB = 1e9


def available_memory(local_rank: int = 0) -> tuple[int, str, bool]:
    """(free bytes, what was measured, whether it is per device) on this machine: a GPU's free memory when CUDA is
    available, else the RAM the kernel reports as available (shared by every rank of the node)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(local_rank % torch.cuda.device_count())
        return free, f"free memory of cuda:{local_rank % torch.cuda.device_count()}", True
    return host_available(), "MemAvailable of this node (/proc/meminfo)", False


def host_available() -> int:
    """The host memory the kernel reports as available on this node (shared by all its ranks)."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
    return info.get("MemAvailable", info.get("MemFree", 0))


def host_preflight(plan: dict, ranks_here: int, free: int) -> dict | None:
    """Wan2.2 A14B with one expert per device (no FSDP): the other expert's blocks wait in pinned host memory, on
    every rank of the node. Raise if the node's ranks together need more than ``free`` host bytes; None when
    nothing is pinned."""
    switch = (plan.get("experts") or {}).get("switch") or {}
    if switch.get("mode") != "one resident":
        return None
    per_rank = switch["host_bytes"]
    need = per_rank * ranks_here
    if need > free:
        raise InputError(
            f"memory: each GPU holds one Wan2.2 expert and the other waits in pinned host memory: "
            f"{per_rank / GB:.2f} GB per rank x {ranks_here} ranks on this node = {need / GB:.2f} GB, but only "
            f"{free / GB:.2f} GB of host memory is available (MemAvailable). To fit: parallel.fsdp=true (both "
            f"experts sharded over the GPUs, nothing pinned), fewer ranks per node, model.dtype=bfloat16 (where "
            f"both experts then fit on the GPU); or planner.memory_check=false to run anyway")
    return dict(pinned_per_rank_bytes=per_rank, ranks_sharing=ranks_here, needed_bytes=need, available_bytes=free)


def memory_preflight(job, world_size: int) -> dict:
    """Raise ValueError if the job's estimated memory exceeds what is free here; returns what was compared.
    ``job``: a validated magcache_dist.job.Job."""
    cfg = job.cfg
    if not cfg.planner.memory_check:
        return dict(checked=False, reason="planner.memory_check=false")
    from magcache_dist.planner import plan_job

    plan = plan_job(cfg, job)
    per_rank = plan["per_rank"]["memory_bytes"]["total"]
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    free, what, per_device = available_memory(local_rank)
    node_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    ranks_here = 1 if per_device else node_ranks
    need = per_rank * ranks_here
    out = dict(checked=True, estimate_per_rank_bytes=per_rank, ranks_sharing=ranks_here, needed_bytes=need,
               available_bytes=free, measured=what)
    if need > free:
        share = f"{per_rank / GB:.2f} GB per rank x {ranks_here} ranks = {need / GB:.2f} GB" if ranks_here > 1 \
            else f"{need / GB:.2f} GB per rank"
        raise InputError(
            f"memory: the planner estimates {share} for sampling, but only {free / GB:.2f} GB is free ({what}). "
            f"To fit: more ranks (parallel.ulysses_degree / parallel.ring_degree), parallel.fsdp=true, "
            f"model.dtype=bfloat16, fewer video.frames or a smaller video.height / video.width (vae.tiling=true for "
            f"the decode); or planner.memory_check=false to run anyway")
    if per_device:  # a GPU job may also pin host memory (an offloaded expert); a CPU job offloads nothing
        out["host"] = host_preflight(plan, node_ranks, host_available())
    return out
