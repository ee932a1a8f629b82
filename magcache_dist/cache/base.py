"""The small interface every caching policy implements, and the no-cache policy.

A policy is stateless configuration; the per-generation state is a fresh object from ``new_state()``.
At each model call the sampler asks ``propose(state, step, branch, probe)`` for a Decision (which does not
mutate state), makes every rank agree on it (magcache_dist.parallel.consensus), then ``commit``s it, and after
a computed call hands the residual to ``store``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Decision:
    compute: bool
    error: float = 0.0  # the scalar compared against the threshold (accumulated error)
    ratio: float = 1.0  # accumulated magnitude ratio since the cached residual
    reason: str = ""  # "retention", "forced", "no-residual", "threshold", "max-skips", "skip"
    updates: dict = field(default_factory=dict, compare=False)  # accumulator values to commit


class BranchState:
    """Per-branch accumulators and cached residual (sharded like the tokens under sequence parallelism)."""

    def __init__(self):
        self.acc_ratio = 1.0
        self.acc_err = 0.0
        self.acc_steps = 0
        self.residual: torch.Tensor | None = None
        self.has_residual = False  # tracked apart from the tensor so the planner can run without tensors
        self.extra: dict = {}  # policy-specific (e.g. TeaCache's previous modulated input, online history)

    def snapshot(self) -> dict:
        return dict(acc_ratio=self.acc_ratio, acc_err=self.acc_err, acc_steps=self.acc_steps)


class CacheState:
    def __init__(self, branches):
        self.branches = {b: BranchState() for b in branches}
        self.decisions: list[dict] = []  # log: one entry per call

    def __getitem__(self, branch) -> BranchState:
        return self.branches[branch]


class CachePolicy:
    name = "base"

    def new_state(self, branches) -> CacheState:
        return CacheState(branches)

    def propose(self, state: CacheState, step: int, branch: str, probe=None) -> Decision:
        raise NotImplementedError

    def commit(self, state: CacheState, step: int, branch: str, decision: Decision) -> None:
        bs = state[branch]
        for k, v in decision.updates.items():
            setattr(bs, k, v)
        state.decisions.append(dict(step=step, branch=branch, compute=decision.compute,
                                    error=decision.error, reason=decision.reason))

    def store(self, state: CacheState, step: int, branch: str, block_in, block_out, valid=None) -> None:
        """After a computed call: keep residual = block_out - block_in for this branch.

        ``valid`` is a bool [L_local] mask of this rank's real (unpadded) tokens, None when all are real.
        """
        bs = state[branch]
        bs.residual = block_out - block_in
        bs.has_residual = True

    @property
    def needs_probe(self) -> bool:
        return False


class NoCache(CachePolicy):
    name = "off"

    def propose(self, state, step, branch, probe=None) -> Decision:
        return Decision(compute=True, reason="cache-off")

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        pass  # nothing is ever reused: keep no tensor alive
