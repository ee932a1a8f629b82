"""Attention ops: the one seam through which parallelism reaches the model.

An op takes q [B, Lq, N, Dh], k/v [B, Lk, N, Dh] and ``k_lens`` ([B] number of valid keys from the start of
the sequence, or None) and returns [B, Lq, N, Dh]. Keys at positions >= k_lens are padding and get no weight.
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
    """[B, L, N, Dh] layout around torch's scaled_dot_product_attention (math in q's dtype)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class LocalAttention(nn.Module):
    """Single-device attention with key-padding mask."""

    def forward(self, q, k, v, k_lens=None):
        return sdpa(q, k, v, key_padding_mask(k_lens, k.shape[1]))
