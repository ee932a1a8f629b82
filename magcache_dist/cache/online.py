"""Calibration-free MagCache: magnitude ratios measured during the generation itself and extrapolated.

At every computed call the new residual r_s is compared with the branch's previous computed residual r_p
(p < s; the steps between were skipped): R = mean over real tokens of ||r_s|| / ||r_p||. Under sequence
parallelism each rank holds a shard of the tokens: the per-token sums and the real-token count are all-reduced
over the SP group (padding excluded), so R is the same number on every rank and at every SP degree.

The predictor works in sigma, not in steps. Over one call the log magnitude changes by
log R = k * (sigma_s - sigma_p), and the slope k = d log||r|| / d sigma is smooth along the trajectory: on Wan's
published calibrations it stays near 0.7 for most of the run and rises to about 2.5 at the end, while the per-step
ratios drop from 0.995 to 0.82, because a shifted grid spends its last steps on large sigma intervals (see
docs/magcache.md "Online MagCache" and docs/online_predictor.png). Two predictors of k for the coming interval:

- ``powerlaw`` (default): ||r|| ~ (sigma + c)^a, i.e. 1/k = (sigma + c) / a is linear in sigma. A least-squares
  line through (sigma_mid, 1/k) of the last ``window`` measurements is evaluated at the new interval's middle.
  It falls back to ``hold`` when fewer than 3 positive slopes are known or the fit is not a falling magnitude law.
- ``hold``: the last measured slope.

The predicted per-step ratio is gamma_s = exp(k_hat * (sigma_s - sigma_{s-1})) and the decision is MagCache's:
ratio *= gamma, error += |1 - ratio|, skip while error < thresh and at most K calls in a row (the family rule
decides strictness, retention counting...). The (error, ratio) pair that decides is all-reduced (MAX) over the SP
group before the comparison (official branch sync; under joint the step's key is reduced over the whole job
instead), so every rank takes the identical decision by construction; SkipConsensus then still verifies it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from magcache_dist.cache.base import CacheState, Decision
from magcache_dist.cache.calibrate import residual_ratio_sums
from magcache_dist.cache.magcache import AccumulatedErrorPolicy, MagCacheConfig
from magcache_dist.cache.presets import FamilyRule, get_rule
from magcache_dist.errors import InputError

PREDICTORS = ("powerlaw", "hold")
MIN_FIT_POINTS = 3


@dataclass
class OnlineConfig:
    predictor: str = "powerlaw"
    window: int = 6
    margin: bool = True  # widen each skipped call's error by the predictor's recent miss (0 miss: MagCache's rule)
    miss_window: int = 1  # the miss is the mean over this many latest measurements (1: the latest)

    def __post_init__(self):
        if self.predictor not in PREDICTORS:
            raise InputError(f"cache.online.predictor={self.predictor!r} is unknown; choose one of {PREDICTORS}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < MIN_FIT_POINTS:
            raise InputError(f"cache.online.window={self.window!r} must be an integer >= {MIN_FIT_POINTS}")
        if not isinstance(self.margin, bool):
            raise InputError(f"cache.online.margin={self.margin!r} must be true or false")
        if isinstance(self.miss_window, bool) or not isinstance(self.miss_window, int) or self.miss_window < 1:
            raise InputError(f"online miss_window={self.miss_window!r} must be an integer >= 1")


def predict_slope(history: list[tuple[float, float]], sigma_mid: float, predictor: str, window: int) -> float:
    """k_hat at ``sigma_mid`` from measured (sigma_mid, k) pairs, oldest first (non-empty)."""
    k_last = history[-1][1]
    if predictor == "hold":
        return k_last
    pts = [(s, k) for s, k in history[-window:] if k > 0]
    if len(pts) < MIN_FIT_POINTS or k_last <= 0:
        return k_last
    x = np.array([p[0] for p in pts])
    y = np.array([1.0 / p[1] for p in pts])
    if float(np.ptp(x)) <= 1e-9:
        return k_last
    slope, intercept = np.polyfit(x, y, 1)  # 1/k = slope * sigma + intercept, slope = 1/a
    inv = slope * sigma_mid + intercept
    if slope <= 0 or inv <= 0:  # magnitude not following a falling power law here: keep the last slope
        return k_last
    return float(min(1.0 / inv, 4.0 * k_last))


class OnlineMagCachePolicy(AccumulatedErrorPolicy):
    name = "online"

    def __init__(self, rule: FamilyRule, cfg: MagCacheConfig, num_steps: int, branches: list[str], sigmas,
                 online: OnlineConfig | None = None, branch_sync: str = "official", switch_step: int | None = None):
        super().__init__(rule, cfg, num_steps, branches, branch_sync, switch_step)
        self.online = online or OnlineConfig()
        sig = [float(s) for s in sigmas]
        if len(sig) not in (num_steps, num_steps + 1):
            raise InputError(f"online cache: {len(sig)} sigmas for num_steps={num_steps}")
        self.sigmas = sig[:num_steps]

    def new_state(self, branches, reduce_sum=None, reduce_max=None) -> CacheState:
        state = super().new_state(branches, reduce_sum, reduce_max)
        for b in branches:
            state[b].extra.update(history=[], misses=[], last_step=None)
        return state

    def log_gamma(self, history: list[dict], step: int) -> float:
        """Predicted log ratio of step ``step`` over step-1 from measurements ``history`` (non-empty)."""
        lo, hi = self.sigmas[step - 1], self.sigmas[step]
        k = predict_slope([(h["sigma_mid"], h["k"]) for h in history], 0.5 * (lo + hi), self.online.predictor,
                          self.online.window)
        return k * (hi - lo)

    def gamma(self, state: CacheState, step: int, branch: str) -> float:
        """Predicted ratio of step ``step`` over step-1 (needs at least one measurement)."""
        return math.exp(self.log_gamma(state[branch].extra["history"], step)) ** self.rule.ratio_power

    def miss(self, state: CacheState, branch: str) -> float:
        """Recent prediction miss per step, |log measured - log predicted| / gap (mean of the latest few)."""
        misses = state[branch].extra["misses"][-self.online.miss_window:]
        return sum(misses) / len(misses) if (misses and self.online.margin) else 0.0

    def propose(self, state: CacheState, step: int, branch: str, probe=None) -> Decision:
        self.check_step(step)
        bs = state[branch]
        if self.retained(step, branch):
            return Decision(True, bs.acc_err, bs.acc_ratio, "retention")
        if not bs.extra["history"]:
            return Decision(True, bs.acc_err, bs.acc_ratio, "no-history", dict(acc_ratio=1.0, acc_err=0.0, acc_steps=0))
        ratio = bs.acc_ratio * self.gamma(state, step, branch)
        # worst deviation of the skipped residual's magnitude over the prediction's band ratio * exp(+-miss*steps)
        band = math.exp(self.miss(state, branch) * (bs.acc_steps + 1))
        if self.rule.abs_error:
            err = bs.acc_err + max(abs(1.0 - ratio * band), abs(1.0 - ratio / band))
        else:
            err = bs.acc_err + 1.0 - ratio / band
        # the scalars that decide are the group's (identical on every rank by construction); under joint branch
        # sync the step's key is reduced over the whole job anyway (JointConsensus), so no second message per call
        if self.branch_sync != "joint":
            err, ratio = (float(v) for v in state.reduce_max(torch.tensor([err, ratio], dtype=torch.float64)))
        return self.decide(bs, step, err, ratio)

    def commit(self, state, step, branch, decision) -> None:
        super().commit(state, step, branch, decision)
        state.decisions[-1]["ratio"] = decision.ratio

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        bs = state[branch]
        residual = block_out - block_in
        prev_step = bs.extra["last_step"]
        if bs.residual is not None and prev_step is not None and prev_step < step:
            total, _, _, n = (float(v) for v in state.reduce_sum(residual_ratio_sums(residual, bs.residual, valid)))
            if n < 1:
                raise RuntimeError("online cache: no real tokens in the group")
            r = total / n
            d_sigma = self.sigmas[step] - self.sigmas[prev_step]
            if r > 0 and d_sigma != 0:
                k = math.log(r) / d_sigma
                if bs.extra["history"]:  # how far off the predictor was over this gap
                    pred = sum(self.log_gamma(bs.extra["history"], j) for j in range(prev_step + 1, step + 1))
                    bs.extra["misses"].append(abs(math.log(r) - pred) / (step - prev_step))
                m = dict(step=step, from_step=prev_step, ratio=r, k=k,
                         sigma_mid=0.5 * (self.sigmas[step] + self.sigmas[prev_step]))
                bs.extra["history"].append(m)
                if state.decisions and state.decisions[-1]["step"] == step and state.decisions[-1]["branch"] == branch:
                    state.decisions[-1]["measured_ratio"] = r
        bs.residual, bs.has_residual = residual, True
        bs.extra["last_step"] = step

    def fingerprint_items(self) -> tuple:
        return super().fingerprint_items() + (self.online, tuple(self.sigmas))

    def describe(self) -> dict:
        return dict(policy="online", source="online (measured during this generation; no ratio file)",
                    predictor=self.online.predictor, window=self.online.window, margin=self.online.margin,
                    rule=self.rule.name, branch_sync=self.branch_sync, retention_steps=self.retention_steps,
                    thresh=self.cfg.thresh, K=self.cfg.K, retention=self.cfg.retention,
                    retention_calls=self.retention_calls, num_steps=self.num_steps, **self.switch_info())


def build_online(cfg: MagCacheConfig, num_steps: int, branches: list[str], sigmas, rule: str | None = None,
                 online: OnlineConfig | None = None, branch_sync: str = "official",
                 switch_step: int | None = None) -> OnlineMagCachePolicy:
    return OnlineMagCachePolicy(get_rule(rule or "wan"), cfg, num_steps, branches, sigmas, online,
                                branch_sync=branch_sync, switch_step=switch_step)
