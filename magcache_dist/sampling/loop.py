"""The denoising loop. Every model call goes through ``model_call``: embed -> shard -> cache decision
(agreed by all ranks) -> block stack or cached residual -> head -> gather. The cache sits at the block-stack
boundary; the model never sees it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from magcache_dist.cache.base import CachePolicy
from magcache_dist.config import GUIDANCE, SHIFT, SOLVER, SamplerSection
from magcache_dist.errors import InputError, InternalError
from magcache_dist.parallel.consensus import JointConsensus, SkipConsensus
from magcache_dist.parallel.dims import ParallelContext, solo_context
from magcache_dist.parallel.shard import Sharder
from magcache_dist.sampling.schedulers import SOLVERS, FlowScheduler


@dataclass(frozen=True)
class SamplerConfig:
    """What the sampler runs (the job's sampler section resolved by its family, plus the family's CFG mode and grid);
    checked when made."""
    num_steps: int = SamplerSection.num_steps
    shift: float = SHIFT
    guidance: float = GUIDANCE
    solver: str = SOLVER
    # "separate": one call per CFG branch (Wan); "batched": one call on [cond; uncond] rows (Open-Sora);
    # "distilled": one conditional call, the guidance is an input of the model (FLUX.1-dev, HunyuanVideo)
    cfg_mode: str = "separate"
    sigmas: tuple | None = None  # the family's own sigma grid (num_steps values, Euler); None: Wan's shifted grid
    # two-expert models (Wan2.2 A14B): from step ``switch_step`` on, the low-noise expert runs with ``guidance_2``
    guidance_2: float | None = None
    switch_step: int | None = None

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise InputError(f"sampler.num_steps={self.num_steps!r} must be an integer >= 1")
        if not self.guidance >= 1.0:
            raise InputError(f"sampler.guidance={self.guidance} must be >= 1 (1 disables classifier-free guidance)")
        if self.solver not in SOLVERS:
            raise InputError(f"sampler.solver={self.solver!r} is unknown; choose one of {SOLVERS}")
        if not self.shift > 0:
            raise InputError(f"sampler.shift={self.shift} must be > 0 (Wan: 5.0, 3.0 for I2V 480P)")
        if self.sigmas is not None and (self.solver != "euler" or len(self.sigmas) != self.num_steps):
            raise InputError(f"sampler.solver={self.solver!r}: this model's own sigma grid of {len(self.sigmas)} "
                             f"values needs sampler.solver=euler and sampler.num_steps={len(self.sigmas)}")
        if self.guidance_2 is not None and not self.guidance_2 >= 1.0:
            raise InputError(f"sampler.guidance_2={self.guidance_2} must be >= 1 (the low-noise expert's guidance)")
        if self.cfg_mode not in ("separate", "batched", "distilled"):
            raise InternalError(f"cfg_mode={self.cfg_mode!r} must be separate, batched or distilled")

    @property
    def branches(self) -> list[str]:
        if self.cfg_mode != "separate":
            return ["cond"]  # one call per step
        guided = self.guidance != 1.0 or (self.guidance_2 is not None and self.guidance_2 != 1.0)
        return ["cond", "uncond"] if guided else ["cond"]

    def guidance_at(self, step: int) -> float:
        """The guidance scale of step ``step`` (the low-noise expert's from the switch on)."""
        if self.switch_step is not None and self.guidance_2 is not None and step >= self.switch_step:
            return self.guidance_2
        return self.guidance


class NonFiniteError(RuntimeError):
    """The model produced NaN or inf: the job stops at that step instead of writing a black video."""


def check_finite(t: torch.Tensor, what: str, step: int) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{what} at step {step} holds {bad} non-finite values (NaN/inf) of {t.numel()}: "
                             f"check the weights (model.ckpt / ckpt_dir), model.dtype and sampler.guidance")


@dataclass
class Timings:
    prepare: float = 0.0  # the generation's constant work (prepare_conditions), once
    blocks: float = 0.0
    embed_head: float = 0.0
    cache: float = 0.0
    consensus: float = 0.0
    comm_gather: float = 0.0
    scheduler: float = 0.0
    total: float = 0.0

    def as_dict(self):
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class SampleResult:
    latents: torch.Tensor
    decisions: list[dict]
    timings: Timings
    state: object = None
    extra: dict = field(default_factory=dict)


class _Clock:
    def __init__(self, timings: Timings, key: str):
        self.t, self.key = timings, key

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        setattr(self.t, self.key, getattr(self.t, self.key) + time.perf_counter() - self.start)


@dataclass
class _Call:
    """One branch's call of one step, embedded and sharded, with its cache proposal."""
    branch: str
    tokens: torch.Tensor
    ctx: object
    valid: torch.Tensor | None
    num_tokens: int
    proposal: object


def prepare_call(model, x, t, text, step: int, branch: str, policy: CachePolicy, state, sharder: Sharder,
                 timings: Timings) -> _Call:
    """Embed and shard one branch's input and ask the cache for its proposal (state is not changed)."""
    with _Clock(timings, "embed_head"):
        tokens, ctx = model.embed(x, t, text)  # [B, L, D]
        num_tokens = tokens.shape[1]
        tokens, ctx, valid = sharder.shard(tokens, ctx)  # [B, L/P, D]
    with _Clock(timings, "cache"):
        probe = (model, tokens, ctx, valid) if policy.needs_probe else None  # valid: this rank's real tokens
        proposal = policy.propose(state, step, branch, probe=probe)
    return _Call(branch, tokens, ctx, valid, num_tokens, proposal)


def finish_call(model, call: _Call, step: int, decision, policy: CachePolicy, state, sharder: Sharder,
                timings: Timings) -> torch.Tensor:
    """Commit the agreed decision, then the block stack or the cached residual, the head and the gather."""
    branch = call.branch
    policy.commit(state, step, branch, decision)
    if decision.compute:
        if hasattr(model, "before_blocks"):  # a model that places weights (families/wan22.py PlacedExperts)
            model.before_blocks(step, branch)
        with _Clock(timings, "blocks"):
            out = model.forward_blocks(call.tokens, call.ctx)
        with _Clock(timings, "cache"):
            policy.store(state, step, branch, call.tokens, out, call.valid)
    else:
        with _Clock(timings, "cache"):
            out = call.tokens + policy.reuse(state, branch, decision)
    with _Clock(timings, "embed_head"):
        y = model.forward_head(out, call.ctx)  # [B, L/P, C*p]
    with _Clock(timings, "comm_gather"):
        y = sharder.gather(y, call.num_tokens)
    return model.unpatchify(y, call.ctx.grid)


def model_call(model, x, t, text, step: int, branch: str, policy: CachePolicy, state, consensus: SkipConsensus,
               sharder: Sharder, timings: Timings) -> torch.Tensor:
    """One denoiser evaluation of one CFG branch, consulting the cache with explicit (step, branch): the
    official per-branch decision, agreed over the SP group."""
    call = prepare_call(model, x, t, text, step, branch, policy, state, sharder, timings)
    with _Clock(timings, "consensus"):
        decision = consensus.agree(call.proposal, step, branch)
    return finish_call(model, call, step, decision, policy, state, sharder, timings)


def joint_step_calls(model, x, t, texts, step: int, branches: list[str], policy: CachePolicy, state,
                     consensus: JointConsensus, sharder: Sharder, timings: Timings) -> dict[str, torch.Tensor]:
    """Every local branch of one step under ``branch_sync=joint``: all proposals first, one decision for the
    step agreed over the whole job (both CFG halves), then each branch's block stack or cached residual."""
    calls = [prepare_call(model, x, t, texts[b], step, b, policy, state, sharder, timings) for b in branches]
    with _Clock(timings, "consensus"):
        decisions, key = consensus.agree(policy, {c.branch: c.proposal for c in calls}, step)
    out = {}
    for c in calls:
        out[c.branch] = finish_call(model, c, step, decisions[c.branch], policy, state, sharder, timings)
        state.decisions[-1]["joint_key"] = key if math.isfinite(key) else None
    return out


def prepare_conditions(model, texts: dict, branches) -> dict:
    """Each branch's conditioning worked out once per generation where the model offers it (``prepare_condition``:
    Wan's embedded text and every block's cross-attention keys / values), so no call, computed or skipped, redoes
    that constant work. Not for an FSDP-sharded model: its block weights exist whole only inside the block."""
    if not hasattr(model, "prepare_condition") or any(hasattr(p, "to_local") for p in model.parameters()):
        return texts
    with torch.no_grad():
        return {**texts, **{b: model.prepare_condition(texts[b]) for b in branches}}


def new_cache_state(policy, branches, par):
    """A fresh cache state for the branches this rank runs; measurements on sharded tensors are all-reduced over
    the rank's sequence-parallel group."""
    return policy.new_state(branches, reduce_sum=lambda t: par.sp.all_reduce(t, "sum"),
                            reduce_max=lambda t: par.sp.all_reduce(t, "max"))


def sample(model, noise: torch.Tensor, texts: dict[str, torch.Tensor], sampler: SamplerConfig, policy: CachePolicy,
           par: ParallelContext | None = None, guard: bool = True, progress=None, state=None,
           start_step: int = 0, scheduler: FlowScheduler | None = None, on_step=None) -> SampleResult:
    """Denoise ``noise`` [B, C, F, H, W] with texts {branch: [B, T, text_dim]}; returns the final latents.

    With cfg_degree 2, this rank computes only its branch and the predictions are exchanged for guidance.
    ``state``/``start_step``/``scheduler`` allow resuming; ``on_step(step, x, state, scheduler)`` runs after each.
    """
    par = par or solo_context()
    branches = sampler.branches
    mine = [branches[par.cfg_rank]] if par.dims.cfg_degree == 2 else branches
    joint = policy.branch_sync == "joint"
    # official: each call agreed over the SP group; joint: each step agreed over the whole job
    sharder = Sharder(par.sp)
    consensus = JointConsensus(par.group) if joint else SkipConsensus(par.sp, guard=guard)
    scheduler = scheduler or FlowScheduler(sampler.solver, sampler.num_steps, sampler.shift, sigmas=sampler.sigmas)
    state = state if state is not None else new_cache_state(policy, mine, par)
    timings = Timings()
    x = noise.float()
    t_start = time.perf_counter()
    if hasattr(model, "begin_generation"):  # the calls to come, for a model that places weights (PlacedExperts)
        model.begin_generation(scheduler.timesteps, start_step, mine,
                               policy.planned_skips(sampler.num_steps, branches))
    with _Clock(timings, "prepare"):
        texts = prepare_conditions(model, texts, mine)
    with torch.no_grad():
        for i in range(start_step, sampler.num_steps):
            x_in = torch.cat([x, x]) if sampler.cfg_mode == "batched" else x  # batched CFG: rows [cond; uncond]
            t = scheduler.timesteps[i].float().expand(x_in.shape[0])
            if joint:
                preds = joint_step_calls(model, x_in, t, texts, i, mine, policy, state, consensus, sharder, timings)
            else:
                preds = {b: model_call(model, x_in, t, texts[b], i, b, policy, state, consensus, sharder, timings)
                         for b in mine}
            if sampler.cfg_mode == "batched":
                preds = dict(zip(("cond", "uncond"), preds["cond"].chunk(2)))
            if par.dims.cfg_degree == 2:
                with _Clock(timings, "comm_gather"):
                    both = par.cfg_group.all_gather(preds[mine[0]])
                preds = dict(zip(branches, both))
            for b, p in preds.items():  # identical on every rank (gathered): all ranks stop at the same step
                check_finite(p, f"the {b!r} prediction", i)
            g = sampler.guidance_at(i)
            v = preds["cond"] if len(preds) == 1 else preds["uncond"] + g * (preds["cond"] - preds["uncond"])
            with _Clock(timings, "scheduler"):
                x = scheduler.step(v, i, x)
            check_finite(x, "the latents", i)
            if on_step is not None:
                on_step(i, x, state, scheduler)
            if progress is not None:
                progress.update(1)
    timings.total = time.perf_counter() - t_start
    return SampleResult(latents=x, decisions=state.decisions, timings=timings, state=state,
                        extra=dict(consensus_reductions=consensus.reductions))
