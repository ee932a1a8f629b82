"""Attention seams of the joint text+image families (FLUX, HunyuanVideo) and of factorised video attention
(Open-Sora's STDiT3). Like ``models.attention.LocalAttention`` these are swappable ``attn_op`` submodules without
weights: ``magcache_dist.parallel.apply_sequence_parallel`` replaces them with their sequence-parallel versions.

Shape legend: B batch, L image tokens (F*H*W patches), T text tokens, N heads, Dh head dim.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import sdpa


def valid_keys(lens: torch.Tensor | None, length: int, batch: int, device) -> torch.Tensor:
    """Bool [B, length]: True for the first ``lens[b]`` positions (all True when lens is None)."""
    if lens is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    return torch.arange(length, device=device)[None, :] < lens.to(device)[:, None]


def joint_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, img_lens=None, txt_lens=None):
    """Joint attention over [text; image] tokens: the one computation behind LocalJointAttention and, whenever
    the image sequence is whole on the rank (Ulysses without ring), behind its SP version.

    Image tokens past max(img_lens) are padding: cut before the kernel and returned as zero rows, so a padded
    sequence makes exactly the single process's kernel call (bit-identical in any dtype; models/attention.py).
    Returns (image out [B, L, N, Dh], text out [B, T, N, Dh]) in the input dtype.
    """
    b, t, l = q_img.shape[0], q_txt.shape[1], q_img.shape[1]
    img = [l] if img_lens is None else img_lens.tolist()  # one device -> host read per given lens
    txt = [t] if txt_lens is None else txt_lens.tolist()
    n = min(max(img), l)
    q_img, k_img, v_img = (x[:, :n] for x in (q_img, k_img, v_img))
    mask = None
    if min(img) < n or min(txt) < t:  # a ragged rest (padding past n is cut, not masked)
        keep = torch.cat([valid_keys(txt_lens, t, b, q_img.device), valid_keys(img_lens, n, b, q_img.device)], 1)
        mask = keep[:, None, None, :]
    out = sdpa(torch.cat([q_txt, q_img], 1), torch.cat([k_txt, k_img], 1), torch.cat([v_txt, v_img], 1), mask)
    o_img = out[:, t:] if n == l else F.pad(out[:, t:], (0, 0, 0, 0, 0, l - n))
    return o_img, out[:, :t]


class LocalJointAttention(nn.Module):
    """Joint attention over [text; image] tokens on one device.

    Takes image q/k/v [B, L, N, Dh] and text q/k/v [B, T, N, Dh]; ``img_lens`` [B] counts the real image
    tokens (padding sits at the end of the image sequence), ``txt_lens`` [B] the real text tokens (None: all).
    Returns (image out [B, L, N, Dh], text out [B, T, N, Dh]).
    """

    def forward(self, q_img, k_img, v_img, q_txt, k_txt, v_txt, img_lens=None, txt_lens=None):
        return joint_attention(q_img, k_img, v_img, q_txt, k_txt, v_txt, img_lens, txt_lens)


def factorized_attention(q, k, v, axis: str, grid: tuple[int, int]):
    """Attention within each frame (axis 'spatial') or within each spatial position across frames ('temporal').

    q/k/v [B, F*S, N, Dh] in frame-major order, grid (F, S); returns [B, F*S, N, Dh].
    """
    b, l, n, d = q.shape
    f, s = grid
    if axis == "spatial":
        fold = lambda x: x.reshape(b * f, s, n, d)  # noqa: E731
        out = sdpa(fold(q), fold(k), fold(v), None)
        return out.reshape(b, l, n, d)
    fold = lambda x: x.reshape(b, f, s, n, d).transpose(1, 2).reshape(b * s, f, n, d)  # noqa: E731
    out = sdpa(fold(q), fold(k), fold(v), None)
    return out.reshape(b, s, f, n, d).transpose(1, 2).reshape(b, l, n, d)


class LocalFactorizedAttention(nn.Module):
    """Spatial or temporal attention of a factorised video transformer, on one device."""

    def __init__(self, axis: str):
        super().__init__()
        if axis not in ("spatial", "temporal"):
            raise ValueError(f"axis={axis!r} must be 'spatial' or 'temporal'")
        self.axis = axis

    def extra_repr(self):
        return f"axis={self.axis}"

    def forward(self, q, k, v, grid):
        return factorized_attention(q, k, v, self.axis, grid)
