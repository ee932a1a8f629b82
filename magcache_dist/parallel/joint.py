"""Sequence-parallel versions of the joint text+image and factorised attention seams.

Joint attention (FLUX, HunyuanVideo): the image tokens are sharded like any sequence; the text tokens are kept
whole on every rank. Ulysses trades the image shard for a head slice (all-to-all) and takes the same head slice of
the text locally; queries [text; image chunk] attend to the text keys once and to the image chunks around the
ring (log-sum-exp merges, so ring and USP work too). Padded image keys (global position >= img_lens) and padded
text keys (>= txt_lens) get no weight. The text output of each head slice is all-gathered, so every rank ends
with the whole text stream. Without ring (ring_degree 1) the rank holds the whole image sequence on its head
slice and makes the single process's own call (``models.attention_joint.joint_attention``): bit-identical in any
dtype. With ring, the text block and the image blocks merge in fp32 and round once, each block computed as
RingAttention's are (CUDA: the fused kernel in the model dtype; elsewhere fp32; the precision policy of
models/attention.py): within a unit or two in the last place of the model dtype per call.

Factorised attention (Open-Sora's spatial / temporal blocks): Ulysses gives every rank the whole sequence on a
head slice, so each frame and each spatial position is complete there; padding is cut before and restored after.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from magcache_dist.errors import InternalError
from magcache_dist.parallel.attention import _heads_to_seq, _seq_to_heads, attention_with_lse, merge_partials
from magcache_dist.parallel.comm import Comm
from models.attention_joint import factorized_attention, joint_attention


class JointSPAttention(nn.Module):
    """Ulysses x ring joint attention; either degree may be 1. ``block_kernel``: as RingAttention's."""

    def __init__(self, ulysses: Comm, ring: Comm, block_kernel=None):
        super().__init__()
        self.ulysses, self.ring, self.block_kernel = ulysses, ring, block_kernel

    def extra_repr(self):
        return f"ulysses_degree={self.ulysses.size}, ring_degree={self.ring.size}"

    def forward(self, q_img, k_img, v_img, q_txt, k_txt, v_txt, img_lens=None, txt_lens=None):
        u = self.ulysses.size
        if u > 1:
            n = q_img.shape[2]
            if n % u:
                raise InternalError(f"ulysses_degree={u} does not divide num_heads={n}")
            q_img, k_img, v_img = (_seq_to_heads(x, self.ulysses) for x in (q_img, k_img, v_img))  # [B, Lc, N/U, Dh]
            heads = slice(self.ulysses.rank * (n // u), (self.ulysses.rank + 1) * (n // u))
            q_txt, k_txt, v_txt = (x[:, :, heads] for x in (q_txt, k_txt, v_txt))  # [B, T, N/U, Dh]
        if self.ring.size == 1:  # the whole image sequence is here: the single process's computation
            o_img, o_txt = joint_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, img_lens, txt_lens)
            return self._back(o_img, o_txt)
        t, lc = q_txt.shape[1], k_img.shape[1]
        q = torch.cat([q_txt, q_img], 1)  # [B, T + Lc, N/U, Dh]
        out, lse = attention_with_lse(q, k_txt, v_txt, txt_lens, 0, kernel=self.block_kernel)
        kv = torch.stack([k_img, v_img])
        p, r = self.ring.size, self.ring.rank
        for s in range(p):
            src = (r - s) % p  # ring chunk whose image K/V this rank holds now
            o, l = attention_with_lse(q, kv[0], kv[1], img_lens, src * lc, kernel=self.block_kernel)
            out, lse = merge_partials(out, lse, o, l)
            if s + 1 < p:
                kv = self.ring.ring_shift(kv)
        out = out.to(q_img.dtype)  # the one rounding to the model dtype
        return self._back(out[:, t:], out[:, :t])

    def _back(self, o_img, o_txt):
        """Image [B, Lc, N/U, Dh] -> this rank's sequence shard [B, Ls, N, Dh]; text heads gathered [B, T, N, Dh]."""
        if self.ulysses.size > 1:
            o_img = _heads_to_seq(o_img.contiguous(), self.ulysses)
            o_txt = torch.cat(self.ulysses.all_gather(o_txt.contiguous()), dim=2)
        return o_img, o_txt


class UlyssesFactorizedAttention(nn.Module):
    """Spatial / temporal attention under Ulysses: whole sequence per head slice, padding cut and restored."""

    def __init__(self, comm: Comm, axis: str):
        super().__init__()
        self.comm, self.axis = comm, axis

    def extra_repr(self):
        return f"axis={self.axis}, ulysses_degree={self.comm.size}"

    def forward(self, q, k, v, grid):
        if q.shape[2] % self.comm.size:
            raise InternalError(f"ulysses_degree={self.comm.size} does not divide num_heads={q.shape[2]}")
        q, k, v = (_seq_to_heads(x, self.comm) for x in (q, k, v))  # [B, Lpad, N/P, Dh]
        padded, real = q.shape[1], grid[0] * grid[1]
        out = factorized_attention(q[:, :real], k[:, :real], v[:, :real], self.axis, grid)
        out = F.pad(out, (0, 0, 0, 0, 0, padded - real))
        return _heads_to_seq(out.contiguous(), self.comm)
