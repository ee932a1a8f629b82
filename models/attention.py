"""Attention ops: the one seam through which parallelism reaches the model.

An op takes q [B, Lq, N, Dh], k/v [B, Lk, N, Dh] and ``k_lens`` ([B] number of valid keys from the start of
the sequence, or None) and returns [B, Lq, N, Dh]. Keys at positions >= k_lens are padding and get no weight.

Precision policy, the same on every path (local, Ulysses, ring, USP, the joint and factorised seams): q/k/v enter
in the model dtype; scores, the softmax statistics (row max, sum, log-sum-exp) and the P.V accumulation are fp32;
the output is rounded to the model dtype once, at the end of the op. The local and Ulysses paths make the very
same fused-SDPA call on the very same tokens (sequence padding is cut, not masked: ``unpadded_attention``), so they
are bit-identical in any dtype; ring blocks run on the exactly upcast inputs in fp32 and merge in fp32, so ring
differs from the single kernel only in how the keys are split into blocks (a unit or two in the last place of the
output dtype). On CUDA ring blocks run the fused kernel in the model dtype (its output rounded once per block) and
merge in fp32: about as accurate as the single kernel. docs/operations.md#precision has the measurements.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def key_padding_mask(k_lens: torch.Tensor | None, lk: int, offset: int = 0) -> torch.Tensor | None:
    """Bool [B, 1, 1, Lk]: True where the key at global position offset+j is valid; None when all are."""
    if k_lens is None:
        return None
    pos = torch.arange(offset, offset + lk, device=k_lens.device)
    mask = pos[None, :] < k_lens[:, None]
    if bool(mask.all()):
        return None
    return mask[:, None, None, :]


def sdpa(q, k, v, mask):
    """[B, L, N, Dh] layout around torch's scaled_dot_product_attention (the fused kernel in q's dtype: fp32
    statistics and accumulation, output in q's dtype)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def unpadded_attention(q, k, v, k_lens):
    """Self-attention over a sequence that may carry padding at its end (q/k/v [B, L, N, Dh], same L).

    Tokens past max(k_lens) are cut before the kernel and come back as zero rows, so a sequence padded for
    sharding makes exactly the kernel call the unpadded single process makes (masking them instead changes the
    kernel's blocking and, in bf16, a few outputs by one unit in the last place). A ragged rest is masked.
    """
    if k_lens is None:
        return sdpa(q, k, v, None)
    lens = k_lens.tolist()  # the one device -> host read of the call
    n = min(max(lens), q.shape[1])
    mask = None
    if min(lens) < n:  # a ragged rest: masked
        mask = (torch.arange(n, device=k_lens.device)[None, :] < k_lens[:, None])[:, None, None, :]
    out = sdpa(q[:, :n], k[:, :n], v[:, :n], mask)  # [B, n, N, Dh]
    return out if n == q.shape[1] else F.pad(out, (0, 0, 0, 0, 0, q.shape[1] - n))


class LocalAttention(nn.Module):
    """Single-device attention with key-padding mask."""

    def forward(self, q, k, v, k_lens=None):
        return sdpa(q, k, v, key_padding_mask(k_lens, k.shape[1]))
