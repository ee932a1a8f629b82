"""The ranks of a group share the reading of a checkpoint they all load whole (no FSDP).

Without it, each of a node's 8 ranks copies the whole DiT out of the page cache (28.6 GB for Wan2.1-14B in bf16,
about 9.5 s at 3 GB/s) and puts all of it on its GPU over the host link. With it, every tensor of at least as
many rows as the group has ranks is cut into near-equal row blocks (dim 0): rank r reads only block r from the
file (``models/loading.py`` reads rows alone), converts it to the parameter's dtype, and the group all-gathers the
blocks into the whole tensor on every rank (NCCL over NVLink on a GPU node, gloo on CPU). Smaller tensors (biases
of fewer rows, scalars) are read whole by every rank. Each rank so reads about 1/N of the file and moves 1/N over
the host link; the result is bit-identical to reading the tensor whole (the same bytes, the same dtype
conversion, per row).

Every rank of the group must load the same model from the same file in the same order (the group's ranks run one
job: same config, same family, same state-dict order). A rank whose read fails stops with the error; the others
are then ended by the health monitor (magcache_dist/launcher/health.py), not left waiting in the all-gather.
"""
from __future__ import annotations

import torch

from magcache_dist.parallel.comm import Comm


class RowShare:
    """``models.loading.load_streaming``'s ``share``: which rows this rank reads, and the all-gather that fills the
    whole tensor. ``device``: where the gather runs (the job device: NCCL needs CUDA tensors); a parameter kept
    elsewhere (an expert waiting in host memory) is gathered there and copied over."""

    def __init__(self, comm: Comm, device="cpu"):
        self.comm, self.device = comm, torch.device(device)
        self.gathered_bytes = 0  # bytes of the tensors filled by the gather (every rank: the same)

    def _cuts(self, n: int) -> list[int]:
        size = self.comm.size
        return [n * i // size for i in range(size + 1)]

    def rows(self, n: int) -> tuple[int, int] | None:
        """This rank's rows ``(a, b)`` of a tensor of ``n`` rows, or None: read it whole (fewer rows than ranks)."""
        if n < self.comm.size:
            return None
        cuts = self._cuts(n)
        return cuts[self.comm.rank], cuts[self.comm.rank + 1]

    def fill(self, dst: torch.Tensor, part: torch.Tensor) -> None:
        """Every rank passes its rows of the tensor (``rows(dst.shape[0])``); ``dst`` becomes the whole tensor.
        Blocks differ by at most one row: each is padded to the largest for the all-gather, then trimmed."""
        n = dst.shape[0]
        cuts = self._cuts(n)
        chunk = max(b - a for a, b in zip(cuts, cuts[1:]))
        block = torch.zeros((chunk, *dst.shape[1:]), dtype=dst.dtype, device=self.device)
        block[:part.shape[0]].copy_(part)
        blocks = self.comm.all_gather(block)
        with torch.no_grad():
            for (a, b), got in zip(zip(cuts, cuts[1:]), blocks):
                dst[a:b].copy_(got[:b - a])
        self.gathered_bytes += dst.numel() * dst.element_size()


SHARED_LOAD = ("auto", "true", "false")


def check_shared_load(value) -> str:
    """``parallel.shared_load`` as one of SHARED_LOAD, or an InputError naming the key (before any collective)."""
    from magcache_dist.errors import InputError

    text = str(value).lower() if isinstance(value, (bool, str)) else None
    if text not in SHARED_LOAD:
        raise InputError(f"parallel.shared_load={value!r} must be one of {list(SHARED_LOAD)} (auto: the ranks of a "
                         f"group share the DiT's read on GPUs, not on CPU)")
    return text


def shares_load(value, device_type: str, group_size: int) -> bool:
    """Whether a group of ``group_size`` ranks on ``device_type`` shares the read (``parallel.shared_load``): auto
    shares on CUDA only. On this 2-core CPU the 1.3B DiT (fp32, 5.7 GB) loaded in 7.4 s by one process and in
    14.1 s by 2 gloo ranks sharing it (benchmarks/load_memory.py): loopback gloo gathers at about 1 GB/s, slower
    than a rank's own copy out of the page cache; NVLink gathers at hundreds of GB/s."""
    mode = check_shared_load(value)
    return group_size > 1 and (mode == "true" or (mode == "auto" and device_type == "cuda"))


def row_share(group: Comm, device, value="auto") -> RowShare | None:
    """The share of a group of ranks that load the same weights (``value``: ``parallel.shared_load``), None when
    they do not share (a group of one, or the rule says no)."""
    device = torch.device(device)
    return RowShare(group, device) if shares_load(value, device.type, group.size) else None
