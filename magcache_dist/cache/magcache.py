"""MagCache: skip the block stack while the accumulated magnitude error stays small.

Per branch: ratio *= gamma[step]; steps += 1; error += |1 - ratio|; skip (reuse the cached residual) while the
error is under the threshold and at most K calls in a row were skipped; otherwise compute and reset. The first
``retention`` fraction of calls is always computed. Family differences (see presets.FamilyRule) reproduce the
official releases exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from magcache_dist.cache.base import CachePolicy, CacheState, Decision, check_branch_sync, joint_decisions, joint_key
from magcache_dist.cache.presets import FamilyRule, get_preset, get_rule
from magcache_dist.cache.ratios import RatioTable
from magcache_dist.config import MagCacheSection
from magcache_dist.errors import InputError


@dataclass(frozen=True)
class MagCacheConfig:
    """The decision's settings (the job's cache.magcache section, whose defaults these are); checked when made."""
    thresh: float = MagCacheSection.thresh
    K: int = MagCacheSection.K
    retention: float = MagCacheSection.retention

    def __post_init__(self):
        if not isinstance(self.thresh, (int, float)) or not math.isfinite(self.thresh) or self.thresh < 0:
            raise InputError(f"cache.magcache.thresh={self.thresh!r} must be a number >= 0 (published: 0.12 or 0.24)")
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise InputError(f"cache.magcache.K={self.K!r} must be an integer >= 1 "
                             f"(max consecutive skips; published 2-6)")
        if not isinstance(self.retention, (int, float)) or not 0 <= self.retention < 1:
            raise InputError(f"cache.magcache.retention={self.retention!r} must be in [0, 1) "
                             f"(fraction always computed; 0.2)")


def check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise InputError(f"sampler.num_steps={num_steps!r} must be an integer >= 1")
    return num_steps


def check_switch_step(rule: FamilyRule, switch_step, num_steps: int) -> int | None:
    """The expert-switch step a switch-window rule needs (the first step of the low-noise expert, 0..N), or None."""
    if not rule.needs_switch:
        return None
    if isinstance(switch_step, bool) or not isinstance(switch_step, int) or not 0 <= switch_step <= num_steps:
        raise InputError(f"cache.magcache.rule={rule.name!r} places its retention around the expert switch, which "
                         f"needs a two-expert model (Wan2.2 A14B) with a boundary; got switch step {switch_step!r} "
                         f"for {num_steps} steps. Use a wan2.2-*-a14b model.name, or another rule")
    return switch_step


class AccumulatedErrorPolicy(CachePolicy):
    """What calibrated and online MagCache share: call counting, retention, the family's forced step, and the
    accumulated-error decision. Subclasses say where the ratio of a step comes from.

    ``branch_sync="official"``: retention as the family released it (Wan: ``int(2*N*R)`` calls, cond and uncond
    interleaved, so a retention that is not a whole number of steps keeps the conditional call of one more step).
    ``"joint"``: retention in steps, ``ceil(official retained calls / calls per step)``: every step in which the
    official rule retains any call is retained for all branches (Wan 30 steps, R=0.25: 15 calls -> 8 steps)."""

    def __init__(self, rule: FamilyRule, cfg: MagCacheConfig, num_steps: int, branches: list[str],
                 branch_sync: str = "official", switch_step: int | None = None):
        self.rule, self.cfg = rule, cfg
        self.num_steps = check_num_steps(num_steps)
        self.branch_sync = check_branch_sync(branch_sync)
        self.branches = list(branches)  # every branch of the job (Wan's call counting), even under CFG parallel
        # Wan counts cond and uncond calls together; the call index of (step, branch) is step*C + branch index.
        self.calls_per_step = len(self.branches) if rule.calls_per_step > 1 else 1
        self.switch_step = check_switch_step(rule, switch_step, self.num_steps)
        if rule.needs_switch:  # Wan2.2 A14B: retention around the expert switch (both experts share the state)
            calls = self.num_steps * self.calls_per_step
            kept = [c for c in range(calls) if self._retained_call(c)]
            self.retention_calls = len(kept)
            # joint: every step in which the official rule retains any call
            self._retained_steps = frozenset(c // self.calls_per_step for c in kept)
            self.retention_steps = len(self._retained_steps)
        else:
            self.retention_calls = rule.retention_calls(self.num_steps, cfg.retention)
            self.retention_steps = -(-self.retention_calls // self.calls_per_step)  # joint: ceil, in steps

    def _retained_call(self, call: int) -> bool:
        calls_total = self.num_steps * self.calls_per_step
        return self.rule.retained_call(call, calls_total, self.switch_step * self.calls_per_step, self.cfg.retention)

    def call_index(self, step: int, branch: str) -> int:
        return step * self.calls_per_step + (self.branches.index(branch) if self.calls_per_step > 1 else 0)

    def forced(self, step: int) -> bool:
        if self.rule.forced_grid is None or self.num_steps == 1:
            return False
        length, index = self.rule.forced_grid
        return int(round(step * (length - 1) / (self.num_steps - 1))) == index  # numpy-style half-even

    def check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise InputError(f"step {step} outside 0..{self.num_steps - 1}")

    def retained(self, step: int, branch: str) -> bool:
        if self.rule.needs_switch:
            if self.branch_sync == "joint":
                return step in self._retained_steps
            return self._retained_call(self.call_index(step, branch))
        if self.branch_sync == "joint":
            return step < self.retention_steps
        return self.call_index(step, branch) < self.retention_calls

    def switch_info(self) -> dict:
        return {"switch_step": self.switch_step} if self.rule.needs_switch else {}

    def under(self, err: float) -> bool:
        return err < self.cfg.thresh if self.rule.strict else err <= self.cfg.thresh

    def passes(self, key: float) -> bool:
        return self.under(key)

    def fingerprint_items(self) -> tuple:
        items = (self.name, self.branch_sync, self.rule, self.cfg.thresh, self.cfg.K, self.cfg.retention,
                 self.num_steps, tuple(self.branches))
        return items + ((self.switch_step,) if self.rule.needs_switch else ())

    def decide(self, bs, step: int, err: float, ratio: float) -> Decision:
        """The accumulated-error rule, given this call's accumulated error and ratio."""
        steps = bs.acc_steps + 1
        reset = dict(acc_ratio=1.0, acc_err=0.0, acc_steps=0)
        if not self.under(err):
            return Decision(True, err, ratio, "threshold", reset)
        if steps > self.cfg.K:
            return Decision(True, err, ratio, "max-skips", reset)
        if self.forced(step):
            return Decision(True, err, ratio, "forced", reset)
        if not bs.has_residual:
            return Decision(True, err, ratio, "no-residual", reset)
        return Decision(False, err, ratio, "skip", dict(acc_ratio=ratio, acc_err=err, acc_steps=steps))


class MagCachePolicy(AccumulatedErrorPolicy):
    name = "magcache"

    def __init__(self, table: RatioTable, rule: FamilyRule, cfg: MagCacheConfig, num_steps: int,
                 branches: list[str], source: str = "", branch_sync: str = "official",
                 switch_step: int | None = None):
        super().__init__(rule, cfg, num_steps, branches, branch_sync, switch_step)
        self.table, self.source = table, source
        missing = [b for b in self.branches if b not in table.ratios]
        if missing:
            raise InputError(f"ratios: the table has branches {table.branches} but sampling runs {self.branches}; "
                             f"calibrate with the same guidance setting or pick another preset")
        self.gammas = {b: [g ** rule.ratio_power for g in v] for b, v in table.for_steps(self.num_steps).items()}

    def gamma(self, state: CacheState, step: int, branch: str) -> float:
        return self.gammas[branch][step]

    def propose(self, state: CacheState, step: int, branch: str, probe=None) -> Decision:
        self.check_step(step)
        bs = state[branch]
        if self.retained(step, branch):
            return Decision(True, bs.acc_err, bs.acc_ratio, "retention")
        ratio = bs.acc_ratio * self.gamma(state, step, branch)
        err = bs.acc_err + (abs(1.0 - ratio) if self.rule.abs_error else 1.0 - ratio)
        return self.decide(bs, step, err, ratio)

    def planned_skips(self, num_steps: int, branches: list[str]) -> dict | None:
        """The schedule its precomputed ratios decide (``skip_schedule``: the same rule, no tensors)."""
        return skip_schedule(self, num_steps, branches)["skipped_steps"]

    def describe(self) -> dict:
        return dict(policy="magcache", source=self.source, rule=self.rule.name, branch_sync=self.branch_sync,
                    thresh=self.cfg.thresh, K=self.cfg.K, retention=self.cfg.retention,
                    retention_calls=self.retention_calls, retention_steps=self.retention_steps,
                    num_steps=self.num_steps, calibrated_steps=self.table.num_steps,
                    ratios_meta=self.table.meta, **self.switch_info())


def build_magcache(preset: str | None, ratios_file: str | None, cfg: MagCacheConfig, num_steps: int,
                   branches: list[str], rule: str | None = None, branch_sync: str = "official",
                   switch_step: int | None = None) -> MagCachePolicy:
    """A policy from a preset name or a ratio file (a file takes its rule from ``rule``, default wan).
    ``switch_step``: a two-expert model's first low-noise step (the Wan2.2 rules place retention around it)."""
    if preset and ratios_file:
        raise InputError("set either cache.magcache.preset or cache.magcache.ratios_file, not both")
    if ratios_file:
        table = RatioTable.load(ratios_file)
        fam = get_rule(rule or table.meta.get("rule", "wan"))
        return MagCachePolicy(table, fam, cfg, num_steps, branches, source=f"file:{ratios_file}",
                              branch_sync=branch_sync, switch_step=switch_step)
    if not preset:
        raise InputError("cache.magcache.preset or cache.magcache.ratios_file is required for cache.mode=magcache")
    p = get_preset(preset)
    fam = get_rule(rule) if rule else p.rule
    return MagCachePolicy(p.table, fam, cfg, num_steps, branches, source=f"preset:{preset}", branch_sync=branch_sync,
                          switch_step=switch_step)


def skip_schedule(policy: CachePolicy, num_steps: int, branches: list[str]) -> dict:
    """Run the decision rule alone (no tensors) and return the schedule (joint or official, as the policy's
    ``branch_sync`` says; joint takes the same maximum over branches as the sampler's all-reduce)."""
    state = policy.new_state(branches)
    skipped = {b: [] for b in branches}
    for step in range(num_steps):
        if policy.branch_sync == "joint":
            proposals = {b: policy.propose(state, step, b) for b in branches}
            decisions = joint_decisions(policy, proposals, joint_key(policy, proposals))
            for b, d in decisions.items():
                policy.commit(state, step, b, d)
        else:
            decisions = {}
            for b in branches:  # official: a branch's proposal sees the earlier branches' commits
                decisions[b] = policy.propose(state, step, b)
                policy.commit(state, step, b, decisions[b])
        for b, d in decisions.items():
            if d.compute:
                state[b].has_residual = True
            else:
                skipped[b].append(step)
    total = num_steps * len(branches)
    return dict(num_steps=num_steps, branch_sync=policy.branch_sync, skipped_steps=skipped,
                computed_calls=total - sum(len(v) for v in skipped.values()), total_calls=total)
