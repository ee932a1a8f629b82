"""Calibration: a full run that records, per branch and step, the magnitude ratio of consecutive residuals.

ratio_s = mean over valid tokens of ||r_s|| / ||r_{s-1}|| (L2 over channels), with its std and the mean cosine
distance 1 - cos(r_s, r_{s-1}). Under sequence parallelism each rank holds a shard of the tokens: the sums and the
valid-token count are all-reduced (``reduce_sum``) so every degree gives the same numbers on every rank.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from magcache_dist.cache.base import CachePolicy, Decision
from magcache_dist.cache.ratios import RatioTable
from magcache_dist.errors import InternalError


def residual_ratio_sums(cur: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """float64 [4]: sum of per-token norm ratios, sum of their squares, sum of cosine distances, token count."""
    cur, prev = cur.double(), prev.double()
    ratio = cur.norm(dim=-1) / prev.norm(dim=-1)  # [B, L]
    cos = 1.0 - F.cosine_similarity(cur, prev, dim=-1, eps=1e-8)  # [B, L]
    if valid is not None:
        ratio, cos = ratio[:, valid], cos[:, valid]
    return torch.stack([ratio.sum(), (ratio * ratio).sum(), cos.sum(),
                        torch.tensor(float(ratio.numel()), dtype=torch.float64)])


def stats_from_sums(s: torch.Tensor) -> tuple[float, float, float]:
    total, sq, cos, n = (float(v) for v in s)
    if n < 1:
        raise InternalError("calibration saw no valid tokens")
    mean = total / n
    var = max(sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0  # unbiased, like torch.std
    return mean, math.sqrt(var), cos / n


class CalibrationPolicy(CachePolicy):
    """Computes every call and measures the residual magnitudes (the cache mode ``calibrate``)."""
    name = "calibrate"

    def __init__(self, num_steps: int):
        self.num_steps = num_steps

    def new_state(self, branches, reduce_sum=None, reduce_max=None):
        state = super().new_state(branches, reduce_sum, reduce_max)
        for b in branches:  # step 0 has no predecessor: the 1.0 placeholder
            state[b].extra["rows"] = [(1.0, 0.0, 0.0)] + [None] * (self.num_steps - 1)
        return state

    def propose(self, state, step, branch, probe=None) -> Decision:
        return Decision(True, reason="calibrate")

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        bs = state[branch]
        residual = block_out - block_in
        if bs.residual is not None:
            sums = state.reduce_sum(residual_ratio_sums(residual, bs.residual, valid))
            bs.extra["rows"][step] = stats_from_sums(sums)
        bs.residual, bs.has_residual = residual, True

    def table(self, state, meta: dict | None = None) -> RatioTable:
        """The measured table of one finished generation (state from ``new_state``)."""
        rows_by_branch = {b: state[b].extra["rows"] for b in state.branches}
        missing = [(b, i) for b, rows in rows_by_branch.items() for i, r in enumerate(rows) if r is None]
        if missing:
            raise RuntimeError(f"calibration incomplete: no measurement for {missing[:4]}")
        return RatioTable(num_steps=self.num_steps,
                          ratios={b: [r[0] for r in rows] for b, rows in rows_by_branch.items()},
                          std={b: [r[1] for r in rows] for b, rows in rows_by_branch.items()},
                          cos_dist={b: [r[2] for r in rows] for b, rows in rows_by_branch.items()},
                          meta=dict(meta or {}))
