"""One generation job on one rank: build -> parallelize -> sample -> finalize.

``run_job`` is what the launcher calls under torchrun (with a validated ``Job``) and what tests call with simulated
ranks (a ``JobConfig`` is validated first). Rank 0 writes the outputs and returns the report. A prompt list
(``prompts_file``) builds and parallelizes the model once and then makes its videos one after the other
(magcache_dist/batch.py), each sampled and finalized exactly like a single video.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch

from magcache_dist.auto import calibration_meta, ratios_used, resolve_ratios, store_calibration
from magcache_dist.cache import plan
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.factory import build_cache
from magcache_dist.cache.magcache import MagCachePolicy
from magcache_dist.cache.ratios import RatioTable
from magcache_dist.checkpoint import Checkpointer, config_hash, fingerprint
from magcache_dist.compile import compile_blocks, compile_report
from magcache_dist.config import JobConfig, to_dict
from magcache_dist.io.atomic import atomic_torch_save, atomic_write_text
from magcache_dist.io.video import contact_sheet, to_frames, write_mp4, write_png
from magcache_dist.job import Job, validate_job
from magcache_dist.parallel.apply import apply_sequence_parallel
from magcache_dist.parallel.dims import ParallelContext
from magcache_dist.parallel.fsdp import apply_fsdp, local_param_bytes
from magcache_dist.sampling.loop import sample
from magcache_dist.sampling.schedulers import FlowScheduler


def summarize(decisions_by_rank: list[list[dict]], dims, branches) -> dict:
    """Per-branch skipped steps (from the first rank of each branch's SP group) and the agreement check."""
    per_branch, agree = {}, True
    for rank, decs in enumerate(decisions_by_rank):
        cfg_idx = rank // dims.sp_degree
        mine = [branches[cfg_idx]] if dims.cfg_degree == 2 else branches
        for b in mine:
            seq = [(d["step"], d["compute"]) for d in decs if d["branch"] == b]
            if b not in per_branch:
                per_branch[b] = seq
            elif per_branch[b] != seq:
                agree = False
    skipped = {b: [s for s, c in seq if not c] for b, seq in per_branch.items()}
    total = sum(len(seq) for seq in per_branch.values())
    # did every branch of every rank take the same decision at each step (what branch_sync=joint guarantees)?
    by_step = {}
    for decs in decisions_by_rank:
        for d in decs:
            by_step.setdefault(d["step"], set()).add(d["compute"])
    return dict(skipped_steps=skipped, computed_calls=total - sum(len(v) for v in skipped.values()),
                total_calls=total, decisions_identical_across_ranks=agree,
                steps_identical_across_branches=all(len(v) == 1 for v in by_step.values()))


@dataclass
class Built:
    model: torch.nn.Module
    conds: dict  # branch -> conditioning on the job device
    noise: torch.Tensor


def branches_of(job: Job, par: ParallelContext) -> list[str]:
    """The CFG branches this rank runs (one half each under cfg_degree 2)."""
    branches = job.scfg.branches
    return [branches[par.cfg_rank]] if job.dims.cfg_degree == 2 else branches


def build(job: Job, par: ParallelContext, device, phases: dict) -> Built:
    """Model, conditioning and noise. Rank 0's seed and prompts are the job's (identical configs are expected,
    but a shell can differ per node)."""
    cfg, family = job.cfg, job.family
    seed, prompt, negative = par.world.broadcast_object((cfg.seed, cfg.prompt, cfg.negative_prompt))
    model, encoder = family.build(device, weights=not cfg.parallel.fsdp)  # fsdp: weights after sharding
    t = time.perf_counter()
    conds = family.encode(encoder, prompt, negative, job.scfg.branches)
    conds = {b: (v.to(device) if torch.is_tensor(v) else v) for b, v in conds.items()}
    built = Built(model, conds, family.make_noise(seed).to(device))
    phases["encode"] = time.perf_counter() - t
    return built


def parallelize(job: Job, model: torch.nn.Module, par: ParallelContext, device) -> None:
    """In place: sequence-parallel attention ops, then (parallel.fsdp) sharded block weights, read into the shards
    when the family left them to after the sharding, then (model.compile) the compiled blocks."""
    apply_sequence_parallel(model, par)
    if job.cfg.parallel.fsdp:
        apply_fsdp(model, par, device)
        job.family.load_weights(model, device)
    if job.cfg.model.compile:  # last: the compiled blocks are the ones that run
        compile_blocks(model)


def run_sampling(job: Job, built: Built, policy, par: ParallelContext, ckpt: Checkpointer):
    scfg = job.scfg
    progress = None
    if job.cfg.progress and par.rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=scfg.num_steps, desc="sampling", unit="step")
    resume = ckpt.restore(policy, branches_of(job, par), lambda: FlowScheduler(scfg.solver, scfg.num_steps, scfg.shift))
    if progress is not None and resume:
        progress.update(resume["start_step"])
    result = sample(built.model, resume.pop("noise", built.noise), built.conds, scfg, policy, par,
                    guard=job.cfg.cache.consensus_guard, progress=progress, on_step=ckpt.on_step, **resume)
    if progress is not None:
        progress.close()
    return result


def calibrated_table(job: Job, policy, result, par: ParallelContext) -> RatioTable | None:
    """The ratio table a calibrating run measured (every rank takes part; under cfg_degree 2 the halves' tables
    are put back together), else None."""
    if not isinstance(policy, CalibrationPolicy):
        return None
    meta = calibration_meta(job.cfg, job.scfg, job.dims, job.family.cache_rule())
    table = policy.table(result.state, meta=meta)
    if job.dims.cfg_degree == 2:
        parts = [RatioTable.from_json(t) for t in par.cfg.gather_objects(table.to_json())]
        table = RatioTable(num_steps=table.num_steps, meta=table.meta,
                           **{f: {b: v for t in parts for b, v in getattr(t, f).items()}
                              for f in ("ratios", "std", "cos_dist")})
    return table


def run_job(job: Job | JobConfig, par: ParallelContext, device="cpu") -> dict | None:
    """Run the job on this rank; rank 0 writes outputs and returns the report (others return None). A prompt
    list's report is the job summary (rank 0 of the data-parallel group that finishes last writes it)."""
    t0 = time.perf_counter()
    if isinstance(job, JobConfig):
        job = validate_job(job, par.job_comm.size)
    if job.videos is not None:
        from magcache_dist.batch import run_prompt_list

        return run_prompt_list(job, par, device)
    phases = {}
    built = build(job, par, device, phases)
    parallelize(job, built.model, par, device)
    phases["build"] = time.perf_counter() - t0 - phases["encode"]
    return make_video(job, built, par, device, phases, t0)


def make_video(job: Job, built: Built, par: ParallelContext, device, phases: dict, t0: float) -> dict | None:
    """Sample one video with the built (and parallelized) model and write its outputs (rank 0)."""
    resolved = resolve_ratios(job.cfg, job.scfg, par)  # cache.mode=auto: rank 0 reads the store, every rank gets it
    policy = job.policy if job.policy is not None else build_cache(job.cache, resolved=resolved)
    ckpt = Checkpointer(job.cfg, par, job.scfg.num_steps, device)
    t = time.perf_counter()
    result = run_sampling(job, built, policy, par, ckpt)
    phases["sample"] = time.perf_counter() - t
    calibration = calibrated_table(job, policy, result, par)
    per_rank = par.world.gather_objects(dict(rank=par.rank, decisions=result.decisions,
                                             timings=result.timings.as_dict(),
                                             consensus_reductions=result.extra["consensus_reductions"],
                                             bytes_sent={k: c.bytes_sent for k, c in par.comms().items()},
                                             param_bytes=local_param_bytes(built.model)))
    if par.rank != 0:
        return None
    return finalize(job, built, policy, result, calibration, resolved, per_rank, ckpt, phases, t0, par)


OUTPUT_FILES = ("video.mp4", "image.png", "frames.png", "latents.pt", "ratios.json")


def output_files(folder: str) -> dict[str, int]:
    """The outputs in ``folder`` with their sizes in bytes."""
    paths = {f: os.path.join(folder, f) for f in OUTPUT_FILES}
    return {f: os.path.getsize(p) for f, p in paths.items() if os.path.isfile(p)}


def finalize(job: Job, built: Built, policy, result, calibration, resolved, per_rank, ckpt, phases, t0,
             par) -> dict:
    """Rank 0: video, contact sheet, latents, the calibrated table (if any) and report.json, each written
    atomically."""
    cfg, scfg, dims = job.cfg, job.scfg, job.dims
    t = time.perf_counter()
    os.makedirs(cfg.output_dir, exist_ok=True)
    image = job.family.image_model
    video_path = os.path.join(cfg.output_dir, "image.png" if image else "video.mp4")
    if cfg.save_video:
        frames = to_frames(job.family.decode(result.latents, built.model)[0])
        if image:  # an image model: the one frame at full size
            write_png(video_path, frames[0])
        else:
            write_mp4(video_path, frames, cfg.video.fps)
            write_png(os.path.join(cfg.output_dir, "frames.png"), contact_sheet(frames))
    atomic_torch_save(result.latents.cpu(), os.path.join(cfg.output_dir, "latents.pt"))
    ratios_path = stored = None
    if calibration is not None:
        ratios_path = cfg.cache.calibration.out or os.path.join(cfg.output_dir, "ratios.json")
        calibration.save(ratios_path)
        if cfg.cache.calibration.store_dir:
            stored = store_calibration(cfg, scfg, calibration)
    phases["write"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0

    summary = summarize([r["decisions"] for r in per_rank], dims, scfg.branches)
    report = dict(
        status="done", config=to_dict(cfg), config_hash=config_hash(fingerprint(cfg)), world_size=par.world.size,
        parallel=dict(ulysses_degree=dims.ulysses_degree, ring_degree=dims.ring_degree,
                      cfg_degree=dims.cfg_degree, backend=cfg.parallel.backend),
        cache=policy.describe() if hasattr(policy, "describe") else dict(policy=policy.name),
        branch_sync=policy.branch_sync,
        ratios_used=ratios_used(cfg, policy, resolved, ratios_path, stored),
        **summary,
        plan=plan(policy, scfg.num_steps, scfg.branches) if isinstance(policy, MagCachePolicy) else None,
        phases_s={k: round(v, 4) for k, v in phases.items()},
        compile=compile_report(built.model),
        checkpoint=ckpt.describe(),
        ranks=per_rank,
        outputs=dict(video=video_path if cfg.save_video and not image else None,
                     image=video_path if cfg.save_video and image else None, ratios=ratios_path),
        files=output_files(cfg.output_dir),  # what a rerun of a prompt list checks before it reuses this video
    )
    atomic_write_text(os.path.join(cfg.output_dir, "report.json"), json.dumps(report, indent=1, default=str))
    return report
