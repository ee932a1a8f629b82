"""The small interface every caching policy implements, and the no-cache policy.

A policy is stateless configuration; the per-generation state is a fresh object from ``new_state()``.
At each model call the sampler asks ``propose(state, step, branch, probe)`` for a Decision (which does not
mutate state), makes every rank agree on it (magcache_dist.parallel.consensus), then ``commit``s it, and after
a computed call hands the residual to ``store``.

Branch synchronisation (``branch_sync``):

- ``official``: each CFG branch decides on its own (the family's released rule, bit for bit), so the
  conditional and the unconditional call of one step may differ: one fresh, one stale prediction, and guidance
  ``uncond + g * (cond - uncond)`` amplifies the mismatch.
- ``joint``: one decision per *step* for all branches. Each branch still proposes from its own accumulators;
  ``skip_key`` turns a proposal into one scalar (its accumulated error where only the threshold stands between it
  and a skip, +inf where it must compute for another reason), the maximum over every branch of every rank is
  taken (one all-reduce), and the step is skipped only if that maximum ``passes`` the threshold, i.e. when every
  branch may skip. ``joint_decisions`` then turns the proposals into the committed decisions.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

from magcache_dist.errors import InputError


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


def _identity(t):
    return t


def copy_to(obj, device):
    """Tensors in nested dicts / lists / tuples copied (detached) to ``device``; other values as they are."""
    if torch.is_tensor(obj):
        return obj.detach().to(device, copy=True)
    if isinstance(obj, dict):
        return {k: copy_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_to(v, device) for v in obj)
    return obj


class CacheState:
    """One generation's cache state on one rank: a slot per branch the rank runs, the decision log, and the
    all-reduces over the rank's sequence-parallel group that measurements on sharded tensors go through
    (identity in a single process)."""

    def __init__(self, branches, reduce_sum=None, reduce_max=None):
        self.branches = {b: BranchState() for b in branches}
        self.decisions: list[dict] = []  # log: one entry per call
        self.reduce_sum = reduce_sum or _identity
        self.reduce_max = reduce_max or _identity

    def __getitem__(self, branch) -> BranchState:
        return self.branches[branch]

    def state_dict(self) -> dict:
        """Everything needed to continue the generation (tensors on the CPU): what a step checkpoint stores."""
        return dict(decisions=[dict(d) for d in self.decisions],
                    branches={b: dict(acc_ratio=bs.acc_ratio, acc_err=bs.acc_err, acc_steps=bs.acc_steps,
                                      has_residual=bs.has_residual, residual=copy_to(bs.residual, "cpu"),
                                      extra=copy_to(bs.extra, "cpu"))
                              for b, bs in self.branches.items()})

    def load_state_dict(self, sd: dict, device="cpu") -> None:
        if sorted(sd["branches"]) != sorted(self.branches):
            raise InputError(f"resume: the checkpoint holds branches {sorted(sd['branches'])}, this rank runs "
                             f"{sorted(self.branches)}; relaunch with the original parallel layout")
        for b, bs in self.branches.items():
            d = sd["branches"][b]
            bs.acc_ratio, bs.acc_err, bs.acc_steps = d["acc_ratio"], d["acc_err"], d["acc_steps"]
            bs.has_residual, bs.residual = d["has_residual"], copy_to(d["residual"], device)
            bs.extra = copy_to(d["extra"], device)
        self.decisions = [dict(x) for x in sd["decisions"]]


BRANCH_SYNC = ("joint", "official")


def check_branch_sync(value) -> str:
    if value not in BRANCH_SYNC:
        raise InputError(f"cache.branch_sync={value!r} must be one of {BRANCH_SYNC} (joint: one skip decision per "
                         f"step for both CFG branches; official: the family's released per-branch rule)")
    return value


class CachePolicy:
    name = "base"
    branch_sync = None  # "joint" | "official" for policies that skip; None where every call is computed

    def new_state(self, branches, reduce_sum=None, reduce_max=None) -> CacheState:
        """A fresh per-generation state for ``branches`` (those this rank runs) with this rank's SP all-reduces."""
        return CacheState(branches, reduce_sum, reduce_max)

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

    def reuse(self, state: CacheState, branch: str, decision: Decision) -> torch.Tensor:
        """What a skipped call adds to its block-stack input: the branch's cached residual."""
        return state[branch].residual

    @property
    def needs_probe(self) -> bool:
        return False

    def planned_skips(self, num_steps: int, branches: list[str]) -> dict | None:
        """branch -> the steps this policy will skip, where its decisions are known before sampling (they depend on
        no activation); None where they are not. A hint (a model that places weights plans its trades with it,
        families/wan22.py), never a decision."""
        return None

    # -- joint branch synchronisation -------------------------------------------------------------------------
    def skip_key(self, d: Decision) -> float:
        """The scalar whose maximum over branches and ranks decides a joint step: the accumulated error when the
        threshold is what decides this proposal, +inf when the call must be computed anyway."""
        if not d.compute or d.reason == "threshold":
            return float(d.error)
        return math.inf

    def passes(self, key: float) -> bool:
        """Whether the joint maximum allows skipping (the policy's own threshold comparison)."""
        return False

    def as_compute(self, d: Decision, reason: str) -> Decision:
        """The computed-call decision for a branch whose own proposal ``d`` was a skip (joint mode)."""
        return Decision(True, d.error, d.ratio, reason, dict(acc_ratio=1.0, acc_err=0.0, acc_steps=0))

    def settings_fingerprint(self) -> float:
        """A number every rank must share (joint mode checks it in the deciding all-reduce): the settings that
        change decisions. Exact in float64 (< 2**32)."""
        return float(zlib.crc32(repr(self.fingerprint_items()).encode()))

    def fingerprint_items(self) -> tuple:
        return (self.name, self.branch_sync)


def joint_key(policy: CachePolicy, proposals: dict[str, Decision]) -> float:
    """This rank's contribution to the joint decision: the largest skip key of its branches."""
    return max(policy.skip_key(d) for d in proposals.values())


def joint_decisions(policy: CachePolicy, proposals: dict[str, Decision], key: float) -> dict[str, Decision]:
    """One decision for every branch of a step, from the group-wide maximum ``key`` of the skip keys.

    Skip only when ``key`` passes the threshold: then every proposal was a skip (a compute proposal contributes
    either an error that fails the threshold or +inf) and each branch commits its own accumulators. Otherwise
    every branch computes; a branch that could have skipped resets as a computed call does (reason "joint")."""
    if policy.passes(key):
        bad = [b for b, d in proposals.items() if d.compute]
        if bad:  # cannot happen with a consistent skip_key/passes pair; never skip one branch alone
            raise RuntimeError(f"joint cache decision: key {key} passes but branches {bad} must compute")
        return dict(proposals)
    return {b: (d if d.compute else policy.as_compute(d, "joint")) for b, d in proposals.items()}


class NoCache(CachePolicy):
    name = "off"

    def propose(self, state, step, branch, probe=None) -> Decision:
        return Decision(compute=True, reason="cache-off")

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        pass  # nothing is ever reused: keep no tensor alive
