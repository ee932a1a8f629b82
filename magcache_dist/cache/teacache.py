"""TeaCache (Liu et al., 2024) behind the same policy interface as MagCache: the baseline of the benchmark.

Per branch and step, the timestep-modulated input of the first block, m_s = norm1(x) * (1 + scale) + shift with
(shift, scale) from ``blocks[0].modulation + ctx.e0``, is compared with the previous step's:
rel_s = sum |m_s - m_{s-1}| / sum |m_{s-1}|. A polynomial fitted on calibration runs (tools/fit_teacache.py)
rescales it to an estimate of the output change, and the estimates accumulate; while the sum stays under the
threshold the cached residual is reused, otherwise the block stack runs and the sum resets. The first and the
last steps are always computed. Each CFG branch keeps its own accumulator and previous input, all of it in the
CacheState (``BranchState.acc_err`` / ``acc_steps`` / ``extra["prev_mod"]``); the policy object holds only config.

Under sequence parallelism each rank sees a shard of the tokens: the two L1 sums are reduced over the SP group
(``reduce_sum``) and padded tokens are excluded, so every rank computes the same scalar and the same decision.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from magcache_dist.cache.base import CachePolicy, CacheState, Decision, check_branch_sync
from magcache_dist.cache.magcache import check_num_steps
from magcache_dist.cache.presets import DATA_DIR
from magcache_dist.errors import InputError

TEACACHE_FORMAT = "teacache-coefficients/1"


@dataclass
class TeaCacheConfig:
    thresh: float = 0.1
    coefficients: list[float] = field(default_factory=lambda: [1.0, 0.0])  # numpy.polyval order: highest first
    warmup_steps: int = 1  # first steps always computed
    final_steps: int = 1  # last steps always computed

    def __post_init__(self):
        if not isinstance(self.thresh, (int, float)) or not math.isfinite(self.thresh) or self.thresh < 0:
            raise InputError(f"cache.teacache.thresh={self.thresh!r} must be a number >= 0")
        if not self.coefficients or not all(isinstance(c, (int, float)) and math.isfinite(c)
                                            for c in self.coefficients):
            raise InputError(f"teacache coefficients {self.coefficients!r} must be a non-empty list of finite numbers")
        for key, v in (("warmup_steps", self.warmup_steps), ("final_steps", self.final_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"cache.teacache_{key}={v!r} must be an integer >= 1 (first/last steps computed)")


def polyval(coefficients, x: float) -> float:
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


def modulated_input(model, tokens: torch.Tensor, ctx) -> torch.Tensor:
    """The first block's self-attention input norm1(x) * (1 + scale) + shift, fp32 [B, L, D]."""
    block = model.first_block(ctx)  # a two-expert model's: the expert of this call
    e = (block.modulation.float() + ctx.e0).chunk(6, dim=1)  # 6 x [B, 1, D]
    return block.norm1(tokens).float() * (1 + e[1]) + e[0]


def load_coefficients(model_name: str) -> tuple[list[float], dict]:
    """The fitted polynomial shipped for ``model_name`` (data/<name>-teacache.json)."""
    path = os.path.join(DATA_DIR, f"{model_name}-teacache.json")
    if not os.path.isfile(path):
        raise InputError(f"no TeaCache coefficients for model {model_name!r} ({path}); set "
                         f"cache.teacache.coefficients or fit them with python -m tools.fit_teacache")
    with open(path) as f:
        obj = json.load(f)
    if obj.get("format") != TEACACHE_FORMAT or not isinstance(obj.get("coefficients"), list):
        raise InputError(f"{path}: expected format {TEACACHE_FORMAT!r} with a 'coefficients' list")
    return [float(c) for c in obj["coefficients"]], obj


class TeaCachePolicy(CachePolicy):
    name = "teacache"

    def __init__(self, cfg: TeaCacheConfig, num_steps: int, source: str = "", branch_sync: str = "official"):
        self.cfg, self.source = cfg, source
        self.branch_sync = check_branch_sync(branch_sync)
        self.num_steps = check_num_steps(num_steps)

    @property
    def needs_probe(self) -> bool:
        return True

    @staticmethod
    def rel_l1(state: CacheState, cur: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor | None = None) -> float:
        diff, ref = (cur - prev).abs().double(), prev.abs().double()
        if valid is not None:
            diff, ref = diff[:, valid], ref[:, valid]
        sums = state.reduce_sum(torch.stack([diff.sum(), ref.sum()]))
        return float(sums[0] / sums[1].clamp_min(1e-12))

    def always_computed(self, step: int) -> bool:
        return step < self.cfg.warmup_steps or step >= self.num_steps - self.cfg.final_steps

    def propose(self, state: CacheState, step: int, branch: str, probe=None) -> Decision:
        if not 0 <= step < self.num_steps:
            raise InputError(f"step {step} outside 0..{self.num_steps - 1}")
        if probe is None:
            raise InputError("TeaCache decides from the model's modulated input: propose() needs probe=(model, "
                             "tokens, ctx) (it cannot be planned without tensors)")
        model, tokens, ctx = probe[:3]
        valid = probe[3] if len(probe) > 3 else None
        bs = state[branch]
        mod = modulated_input(model, tokens, ctx)
        prev = bs.extra.get("prev_mod")
        extra = {**bs.extra, "prev_mod": mod}
        reset = dict(acc_err=0.0, acc_steps=0, extra=extra)
        if self.always_computed(step) or prev is None:
            return Decision(True, 0.0, 1.0, "retention", reset)
        rel = self.rel_l1(state, mod, prev, valid)
        err = bs.acc_err + polyval(self.cfg.coefficients, rel)
        if not err < self.cfg.thresh:
            return Decision(True, err, 1.0, "threshold", reset)
        if not bs.has_residual:
            return Decision(True, err, 1.0, "no-residual", reset)
        return Decision(False, err, 1.0, "skip", dict(acc_err=err, acc_steps=bs.acc_steps + 1, extra=extra))

    def passes(self, key: float) -> bool:
        return key < self.cfg.thresh

    def as_compute(self, d: Decision, reason: str) -> Decision:
        # a computed call resets the accumulator but keeps this step's modulated input as the next reference
        return Decision(True, d.error, d.ratio, reason, dict(acc_err=0.0, acc_steps=0, extra=d.updates["extra"]))

    def fingerprint_items(self) -> tuple:
        return (self.name, self.branch_sync, self.cfg.thresh, tuple(self.cfg.coefficients), self.cfg.warmup_steps,
                self.cfg.final_steps, self.num_steps)

    def describe(self) -> dict:
        return dict(policy="teacache", source=self.source, branch_sync=self.branch_sync, thresh=self.cfg.thresh,
                    coefficients=list(self.cfg.coefficients), warmup_steps=self.cfg.warmup_steps,
                    final_steps=self.cfg.final_steps, num_steps=self.num_steps)


def build_teacache(model_name: str, thresh: float, num_steps: int, coefficients: list[float] | None = None,
                   branch_sync: str = "official") -> TeaCachePolicy:
    if coefficients is None:
        coefficients, _ = load_coefficients(model_name)
        source = f"fitted:{model_name}"
    else:
        source = "config"
    return TeaCachePolicy(TeaCacheConfig(thresh=thresh, coefficients=list(coefficients)), num_steps, source=source,
                          branch_sync=branch_sync)
