"""One generation job on one rank: config -> model -> sample -> (rank 0) video + report.

``run_job`` is what launch/generate.py calls under torchrun and what tests call with simulated ranks.
"""
from __future__ import annotations

import json
import os
import time

import torch

from magcache_dist.auto import calibration_meta, ratios_used, resolve_ratios, store_calibration
from magcache_dist.cache import plan
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.magcache import MagCachePolicy
from magcache_dist.checkpoint import Checkpointer
from magcache_dist.config import JobConfig, to_dict
from magcache_dist.io.atomic import atomic_torch_save, atomic_write_text
from magcache_dist.io.video import contact_sheet, to_frames, write_mp4, write_png
from magcache_dist.parallel.apply import apply_sequence_parallel
from magcache_dist.parallel.fsdp import apply_fsdp, local_param_bytes
from magcache_dist.parallel.dims import ParallelContext
from magcache_dist.pipeline import build_policy, get_family, validate_job
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


def run_job(cfg: JobConfig, par: ParallelContext, device="cpu") -> dict | None:
    """Run the job on this rank; rank 0 writes outputs and returns the report (others return None)."""
    phases = {}
    t0 = time.perf_counter()
    mcfg, dims, scfg = validate_job(cfg, par.world.size)
    # rank 0's seed and prompts are the job's (identical configs are expected, but a shell can differ per node)
    seed, prompt, negative = par.world.broadcast_object((cfg.seed, cfg.prompt, cfg.negative_prompt))
    family = get_family(cfg.model.name)
    model, encoder = family.build(cfg, device)
    apply_sequence_parallel(model, par)
    if cfg.parallel.fsdp:
        apply_fsdp(model, par)
    phases["build"] = time.perf_counter() - t0

    t = time.perf_counter()
    branches = scfg.branches
    conds = family.encode(encoder, cfg, prompt, negative, branches)
    conds = {b: (v.to(device) if torch.is_tensor(v) else v) for b, v in conds.items()}
    noise = family.make_noise(cfg, seed).to(device)
    phases["encode"] = time.perf_counter() - t

    mine = [branches[par.cfg_rank]] if dims.cfg_degree == 2 else branches
    resolved = resolve_ratios(cfg, scfg, par)  # cache.mode=auto: rank 0 reads the ratio store, every rank gets it
    policy = build_policy(cfg, scfg, branches=mine,
                          reduce_sum=lambda x: par.sp.all_reduce(x, "sum"),
                          reduce_max=lambda x: par.sp.all_reduce(x, "max"), resolved=resolved)
    if isinstance(policy, MagCachePolicy) and dims.cfg_degree == 2:
        # keep Wan's interleaved call counting identical to the single-process run
        policy = build_policy(cfg, scfg, branches=branches, resolved=resolved)
    progress = None
    if cfg.progress and par.rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=scfg.num_steps, desc="sampling", unit="step")
    ckpt = Checkpointer(cfg, par, scfg.num_steps, device)
    resume = ckpt.restore(policy, mine, lambda: FlowScheduler(scfg.solver, scfg.num_steps, scfg.shift))
    if progress is not None and resume:
        progress.update(resume["start_step"])
    t = time.perf_counter()
    result = sample(model, resume.pop("noise", noise), conds, scfg, policy, par, guard=cfg.cache.consensus_guard,
                    progress=progress, on_step=ckpt.on_step, **resume)
    if progress is not None:
        progress.close()
    phases["sample"] = time.perf_counter() - t

    calibration = None
    if isinstance(policy, CalibrationPolicy):  # cache.mode=calibrate, or auto with nothing stored for this job
        table = policy.table(result.state, meta=calibration_meta(cfg, scfg, dims, family.cache_rule(cfg.model.name)))
        if dims.cfg_degree == 2:  # each half measured one branch: put the table back together
            from magcache_dist.cache.ratios import RatioTable

            parts = [RatioTable.from_json(t) for t in par.cfg.gather_objects(table.to_json())]
            table = RatioTable(num_steps=table.num_steps, meta=table.meta,
                               **{f: {b: v for t in parts for b, v in getattr(t, f).items()}
                                  for f in ("ratios", "std", "cos_dist")})
        calibration = table
    per_rank = par.world.gather_objects(dict(rank=par.rank, decisions=result.decisions,
                                             timings=result.timings.as_dict(),
                                             consensus_reductions=result.extra["consensus_reductions"],
                                             bytes_sent={k: c.bytes_sent for k, c in par.comms().items()},
                                             param_bytes=local_param_bytes(model)))
    if par.rank != 0:
        return None

    t = time.perf_counter()
    os.makedirs(cfg.output_dir, exist_ok=True)
    video_path = os.path.join(cfg.output_dir, "video.mp4")
    if cfg.save_video:
        frames = to_frames(family.decode(result.latents)[0])
        write_mp4(video_path, frames, cfg.video.fps)
        write_png(os.path.join(cfg.output_dir, "frames.png"), contact_sheet(frames))
    atomic_torch_save(result.latents.cpu(), os.path.join(cfg.output_dir, "latents.pt"))
    ratios_path = stored = None
    if calibration is not None:
        ratios_path = cfg.cache.calibration_out or os.path.join(cfg.output_dir, "ratios.json")
        calibration.save(ratios_path)
        if cfg.cache.store_dir:
            stored = store_calibration(cfg, scfg, calibration)
    phases["write"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0

    summary = summarize([r["decisions"] for r in per_rank], dims, branches)
    report = dict(
        config=to_dict(cfg), world_size=par.world.size,
        parallel=dict(ulysses_degree=dims.ulysses_degree, ring_degree=dims.ring_degree,
                      cfg_degree=dims.cfg_degree, backend=cfg.parallel.backend),
        cache=policy.describe() if hasattr(policy, "describe") else dict(policy=policy.name),
        branch_sync=policy.branch_sync,
        ratios_used=ratios_used(cfg, policy, resolved, ratios_path, stored),
        **summary,
        plan=plan(policy, scfg.num_steps, branches) if isinstance(policy, MagCachePolicy) else None,
        phases_s={k: round(v, 4) for k, v in phases.items()},
        checkpoint=ckpt.describe(),
        ranks=per_rank,
        outputs=dict(video=video_path if cfg.save_video else None,
                     ratios=(cfg.cache.calibration_out or os.path.join(cfg.output_dir, "ratios.json"))
                     if calibration is not None else None),
    )
    atomic_write_text(os.path.join(cfg.output_dir, "report.json"), json.dumps(report, indent=1, default=str))
    return report
