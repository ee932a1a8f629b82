"""Ulysses through DeepSpeed's DistributedAttention (works on gloo once deepspeed's own init has run)."""
from __future__ import annotations

import torch.nn as nn

from magcache_dist.errors import InputError, InternalError
from magcache_dist.parallel.comm import DistComm
from models.attention import unpadded_attention


def check_available() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise InputError("parallel.backend=deepspeed needs deepspeed: pip install '.[deepspeed]' "
                         f"(DS_BUILD_OPS=0 is enough on CPU) ({e})") from None


def init(backend: str) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)


class _Inner(nn.Module):
    def __init__(self, ring):
        super().__init__()
        self.ring = ring

    def forward(self, q, k, v, k_lens):
        if self.ring is not None:
            return self.ring(q, k, v, k_lens)
        return unpadded_attention(q, k, v, k_lens)  # the native Ulysses call: bit-identical to single process


class DeepSpeedUlyssesAttention(nn.Module):
    def __init__(self, comm, ring=None):
        super().__init__()
        if not isinstance(comm, DistComm):
            raise InputError("parallel.backend=deepspeed needs torch.distributed process groups (torchrun); "
                             "use parallel.backend=native for in-process simulated ranks")
        from deepspeed.sequence.layer import DistributedAttention

        self.comm = comm
        self.inner = _Inner(ring)
        # [B, S, N, Dh]: scatter heads (2), gather sequence (1)
        self.dist_attn = DistributedAttention(self.inner, comm.group, scatter_idx=2, gather_idx=1)

    def extra_repr(self):
        return f"deepspeed ulysses_degree={self.comm.size}"

    def forward(self, q, k, v, k_lens=None):
        if q.shape[2] % self.comm.size:
            raise InternalError(f"ulysses_degree={self.comm.size} does not divide num_heads={q.shape[2]}")
        # q, k, v forward and the output back, each sending (P-1)/P of its bytes
        self.comm._count(4 * q.numel() * q.element_size() * (self.comm.size - 1) // self.comm.size)
        return self.dist_attn(q.contiguous(), k.contiguous(), v.contiguous(), 0, None, k_lens)
