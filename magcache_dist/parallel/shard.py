"""Sequence sharding: pad the token sequence to a multiple of the SP degree, split it, gather it back.

Padding sits at the end of the global sequence; attention masks it out as keys (``BlockContext.k_lens`` keeps
the global count of real tokens), and ``gather`` drops it, so SP output equals single-process output.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from magcache_dist.parallel.comm import Comm


class Sharder:
    def __init__(self, comm: Comm):
        self.comm = comm

    def layout(self, num_tokens: int) -> tuple[int, int]:
        """(chunk length per rank, padded length)."""
        chunk = math.ceil(num_tokens / self.comm.size)
        return chunk, chunk * self.comm.size

    def shard(self, tokens: torch.Tensor, ctx):
        """tokens [B, L, D] (full sequence), ctx with per-token ``freqs`` [L, ...] -> this rank's slices.

        Returns (tokens [B, L/P, D], ctx, valid [L/P] bool or None when this rank has no padding).
        """
        n = tokens.shape[1]
        if self.comm.size == 1:
            return tokens, ctx, None
        chunk, padded = self.layout(n)
        lo, hi = self.comm.rank * chunk, (self.comm.rank + 1) * chunk
        tokens = F.pad(tokens, (0, 0, 0, padded - n))[:, lo:hi]
        freqs = torch.cat([ctx.freqs, ctx.freqs[:1].expand(padded - n, *ctx.freqs.shape[1:])])[lo:hi]
        valid = torch.arange(lo, hi, device=tokens.device) < n
        ctx = dataclasses.replace(ctx, freqs=freqs)
        if getattr(ctx, "e0", None) is not None and ctx.e0.dim() == 4:  # a timestep per token: shard it too
            def cut(v):
                return torch.cat([v, v[:, :1].expand(-1, padded - n, *v.shape[2:])], dim=1)[:, lo:hi]
            ctx = dataclasses.replace(ctx, e=cut(ctx.e), e0=cut(ctx.e0))
        return tokens, ctx, (None if bool(valid.all()) else valid)

    def gather(self, out: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """[B, L/P, C] on every rank -> [B, L, C] on every rank (padding dropped)."""
        if self.comm.size == 1:
            return out
        return torch.cat(self.comm.all_gather(out.contiguous()), dim=1)[:, :num_tokens]
