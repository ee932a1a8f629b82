"""Skip consensus: the one place where a caching decision is made identical on every rank of a group.

Each rank proposes (compute?, error). One all-reduce of [c, -c, e, -e] with MAX yields max and min of both.
If they differ, every rank sees the same reduced values and raises the same SkipDisagreement: a clear error on
all ranks instead of one rank entering the block stack's collectives alone and hanging the job.
"""
from __future__ import annotations

import math

import torch

from magcache_dist.cache.base import Decision
from magcache_dist.parallel.comm import Comm


class SkipDisagreement(RuntimeError):
    pass


class SkipConsensus:
    def __init__(self, comm: Comm, guard: bool = True, rel_tol: float = 1e-6):
        self.comm, self.guard, self.rel_tol = comm, guard, rel_tol
        self.reductions = 0

    def agree(self, d: Decision, step: int, branch: str) -> Decision:
        if self.comm.size == 1 or not self.guard:
            return d
        c = 1.0 if d.compute else 0.0
        e = d.error if math.isfinite(d.error) else float("inf")
        r = self.comm.all_reduce(torch.tensor([c, -c, e, -e], dtype=torch.float64), op="max").tolist()
        self.reductions += 1
        c_max, c_min, e_max, e_min = r[0], -r[1], r[2], -r[3]
        spread = (e_max - e_min if math.isfinite(e_max) and math.isfinite(e_min)
                  else (0.0 if e_max == e_min else math.inf))
        if c_max != c_min or spread > self.rel_tol * max(1.0, abs(e_max)):
            raise SkipDisagreement(
                f"ranks disagree on the cache decision at step {step} branch {branch!r}: compute in "
                f"[{c_min:.0f}, {c_max:.0f}], error in [{e_min:.6g}, {e_max:.6g}] (this rank: compute="
                f"{d.compute}, error={d.error:.6g}). Every rank must run the same cache config and ratios.")
        return d


class JointConsensus:
    """One skip decision per step for every CFG branch on every rank of ``comm`` (the whole job: SP ranks and
    both CFG-parallel halves).

    Each rank contributes its largest skip key (``cache.base.joint_key``); one all-reduce (MAX) of
    ``[key, fingerprint, -fingerprint]`` gives every rank the same maximum, and every rank derives its decisions
    from that same number, so they agree by construction. The policy's settings fingerprint rides along in the
    same message: ranks started with different cache settings raise the same SkipDisagreement on every rank
    instead of deciding differently. Identical settings and one identical key leave no room for disagreement, so
    no second verifying message is needed (official mode's SkipConsensus verifies each call instead).
    """

    def __init__(self, comm: Comm):
        self.comm = comm
        self.reductions = 0

    def agree(self, policy, proposals: dict, step: int) -> tuple[dict, float]:
        """(decisions per local branch, the group-wide key) for ``step``."""
        from magcache_dist.cache.base import joint_decisions, joint_key

        key = joint_key(policy, proposals)
        if self.comm.size > 1:
            fp = policy.settings_fingerprint()
            r = self.comm.all_reduce(torch.tensor([key, fp, -fp], dtype=torch.float64), op="max").tolist()
            self.reductions += 1
            if r[1] != -r[2]:
                raise SkipDisagreement(
                    f"ranks run different cache settings (fingerprints {-r[2]:.0f}..{r[1]:.0f}, this rank {fp:.0f}) "
                    f"at step {step}: every rank must run the same cache config, ratios and branch_sync")
            key = r[0]
        return joint_decisions(policy, proposals, key), key
