"""A job on one rank, along one road: load -> encode -> parallelize -> for each video: sample -> finalize.

The encoders run before the DiT's weights are read (``build(weights=False)`` leaves it on the meta device, then
``load_weights``), so no text or image encoder shares the device with the DiT.

``run_job`` is what the launcher calls under torchrun (with a validated ``Job``) and what tests call with simulated
ranks (a ``JobConfig`` is validated first). A single video is a list of one: the model is built, its prompts
encoded and the model parallelized once per job, then each video of this rank's data-parallel group is sampled and
finalized (decoded and written by rank 0) in turn. Which videos a run makes and the summary of a prompt list are
kept in magcache_dist/videos.py.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass

import torch

from magcache_dist.auto import calibration_meta, ratios_used, resolve_ratios, store_calibration
from magcache_dist.cache import skip_schedule
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.factory import build_cache
from magcache_dist.cache.magcache import MagCachePolicy
from magcache_dist.cache.ratios import RatioTable
from magcache_dist.checkpoint import Checkpointer, config_hash, fingerprint
from magcache_dist.claims import Claims
from magcache_dist.compile import compile_blocks, compile_report
from magcache_dist.config import JobConfig, to_dict
from magcache_dist.decode import decode_video
from magcache_dist.errors import reading
from magcache_dist.families.base import make_family
from magcache_dist.io.atomic import atomic_torch_save, atomic_write_text
from magcache_dist.io.video import contact_sheet, to_frames, write_mp4, write_png
from magcache_dist.job import Job, validate_job
from magcache_dist.parallel.apply import apply_sequence_parallel
from magcache_dist.parallel.dims import ParallelContext
from magcache_dist.parallel.fsdp import apply_fsdp, local_param_bytes
from magcache_dist.phases import PhaseMeter, environment
from magcache_dist.preempt import Preempted, stop_agreed
from magcache_dist.prompts import SUMMARY_FORMAT as FORMAT
from magcache_dist.prompts import VideoSpec, video_config
from magcache_dist.sampling.loop import sample
from magcache_dist.sampling.schedulers import FlowScheduler
from magcache_dist.videos import (
    entry,
    job_videos,
    merge_summary,
    output_files,
    shard,
    share,
    video_job,
    video_state,
    write_part,
)


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
    meter: PhaseMeter | None = None  # this rank's phases of this video (load / encode: the first video's)


def branches_of(job: Job, par: ParallelContext) -> list[str]:
    """The CFG branches this rank runs (one half each under cfg_degree 2)."""
    branches = job.scfg.branches
    return [branches[par.cfg_rank]] if job.dims.cfg_degree == 2 else branches


def run_job(job: Job | JobConfig, par: ParallelContext, device="cpu") -> dict | None:
    """The job on this rank, along the one road: load -> encode -> parallelize -> for each video of this rank's
    data-parallel group: sample -> finalize (decode, write). A single video is a list of one. Rank 0 of a group
    writes the outputs; it returns the video's report (a single video) or the summary of the whole list (merged
    from every video's report when the group finishes); other ranks return None."""
    t0 = time.perf_counter()
    if isinstance(job, JobConfig):
        job = validate_job(job, par.world.size)
    listed = job.videos is not None
    run_id = par.world.broadcast_object(uuid.uuid4().hex) if listed else None  # the one job-wide collective
    mine = share(shard(job_videos(job), job.cfg.prompts_shard), job.dims.dp_degree, par.dp_index)
    entries, states = {}, None  # the summary's lines: rank 0 of the group keeps them
    if par.rank == 0:
        checked = {v.name: video_state(job, v, par.group.size) for v in mine}
        states = {name: state for name, (state, _) in checked.items()}
        entries = {v.name: entry(v, checked[v.name][1], reused=True) for v in mine}
    # rank 0's videos are the job's (identical configs are expected, but a shell can differ per node)
    mine, states = par.group.broadcast_object((mine, states))
    todo = [v for v in mine if states[v.name] != "done"]
    part = dict(format=FORMAT, run_id=run_id, shard=job.cfg.prompts_shard, group=par.dp_index,
                dp_degree=job.dims.dp_degree, group_size=par.group.size, started=time.time(), claimed_elsewhere=[])
    claims = Claims(job.cfg.output_dir, run_id) if listed and par.rank == 0 else None
    report = None
    try:
        if todo:
            meter = PhaseMeter(device)
            with meter.phase("load"), reading():  # the DiT on the meta device: the encoders run before its weights
                model, encoder = job.family.build(device, weights=False)
            t = time.perf_counter()
            with meter.phase("encode"):
                conds = encode_videos(job, encoder, todo, stage=len(todo) > 1)
                del encoder
            phases = {"encode": time.perf_counter() - t}
            with meter.phase("load"), reading():
                if not job.cfg.parallel.fsdp:  # fsdp: each rank reads its shards after the sharding (parallelize)
                    load_dit(job, model, par, device, meter)
                parallelize(job, model, par, device, meter)
            phases["build"] = time.perf_counter() - t0 - phases["encode"]
            part.update(encode_s=phases["encode"], build_s=phases["build"])
            start = t0  # the first video's time counts the load and the encoding; the later ones reuse them
            made, made_t0 = [], time.perf_counter()  # seconds per video this group made (its ETA)
            if par.rank == 0 and listed and len(todo) < len(mine):
                print(f"[group {par.dp_index}] {len(mine) - len(todo)} of {len(mine)} videos already done "
                      f"(reused)", flush=True)
            first = True  # the first video this run makes carries the load and encode phases
            for i, (v, cond) in enumerate(zip(todo, conds)):
                if stop_agreed(par, device):  # asked to stop between two videos: nothing to save
                    raise Preempted(None, f"stopped before {v.name or job.cfg.output_dir}")
                state = claim(job, v, par, claims, states, entries, part) if listed else states[v.name]
                if state not in ("new", "resume"):  # done meanwhile by another job, or another worker's now
                    continue
                vjob = video_job(job, v, resume=state == "resume")
                built = Built(model, {b: (c.to(device) if torch.is_tensor(c) else c) for b, c in cond.items()},
                              vjob.family.make_noise(v.seed).to(device), meter if first else meter.carry())
                first = False
                report = make_video(vjob, built, par, device, phases, start)
                if i + 1 < len(todo):
                    _back_on(model, device)  # a decode may have offloaded the DiT (vae.offload_dit)
                phases, start = {"encode": 0.0, "build": 0.0}, time.perf_counter()
                if par.rank == 0 and listed:
                    entries[v.name] = entry(v, report, reused=False)
                    write_part(job, part, entries, mine)
                    claims.release()
                    made.append(time.perf_counter() - made_t0)
                    print(progress_line(par, v, report, made, todo[i + 1:]), flush=True)
                made_t0 = time.perf_counter()
    finally:
        if claims is not None:
            claims.close()  # an error or a preemption leaves no claim behind: a rerun takes the video at once
    if par.rank != 0 or not listed:
        return report
    part["wall_s"] = time.perf_counter() - t0
    write_part(job, part, entries, mine)
    return merge_summary(job)


def progress_line(par: ParallelContext, v: VideoSpec, report: dict, made: list[float], left: list) -> str:
    """One line per finished video of a list (rank 0 of its group): whose group, which video, its computed / total
    calls, its seconds and the group's ETA (the mean time of the videos it made so far, times those left; videos
    another worker takes meanwhile make it pessimistic)."""
    eta = sum(made) / len(made) * len(left)
    return (f"[group {par.dp_index}] video {v.index} {v.name}: {report['computed_calls']}/{report['total_calls']} "
            f"calls, {made[-1]:.1f} s; {len(left)} left in this group, ETA {eta:.0f} s")


def claim(job: Job, v: VideoSpec, par: ParallelContext, claims: Claims | None, states: dict, entries: dict,
          part: dict) -> str:
    """A video of a list, just before it is made: rank 0 claims it (claims.py) and looks at it again (another job
    may have finished it, or left a checkpoint of it, meanwhile); the group follows rank 0. Returns ``new``,
    ``resume``, ``done`` or ``elsewhere`` (a live worker of another job holds it)."""
    state = None
    if par.rank == 0:
        holder = claims.take(v.name)
        if holder is not None:
            state = "elsewhere"
            part["claimed_elsewhere"].append(f"{v.name}: {holder}")
        else:
            state, report = video_state(job, v, par.group.size)
            if state == "done":
                claims.release()
                entries[v.name] = entry(v, report, reused=True)
    return par.group.broadcast_object(state)


def encode_videos(job: Job, encoder, videos: list[VideoSpec], stage: bool) -> list[dict]:
    """Every video's conditioning, encoded per image: the videos that share an image (all of them, for a
    text-to-video list) go through one ``encode_many`` of a family object of theirs. ``stage``: kept on the CPU
    until its video's turn (many videos), else left where the encoder put it."""
    by_image: dict[str | None, list[VideoSpec]] = {}
    for v in videos:
        by_image.setdefault(v.image, []).append(v)
    conds = {}
    for image, group in by_image.items():
        family = job.family if image == job.cfg.image else make_family(video_config(job.cfg, group[0]))
        texts = [(v.prompt, v.negative_prompt) for v in group]
        conds.update(zip([v.name for v in group], family.encode_many(encoder, texts, job.scfg.branches)))
    return [{b: (c.cpu() if stage and torch.is_tensor(c) else c) for b, c in conds[v.name].items()} for v in videos]


def _back_on(model: torch.nn.Module, device) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device != torch.device(device) and not hasattr(p, "to_local"):
        model.to(device)


def load_dit(job: Job, model: torch.nn.Module, par: ParallelContext, device, meter: PhaseMeter | None) -> None:
    """The family's ``load_weights``: with ``parallel.shared_load`` the group's ranks each read a row block of every
    tensor and all-gather (magcache_dist/parallel/load_share.py). What this rank read of the DiT's checkpoint
    becomes the load phase's ``read_bytes`` (report.json, per rank)."""
    from magcache_dist.parallel.load_share import row_share

    read = job.family.load_weights(model, device, share=row_share(par.group, device, job.cfg.parallel.shared_load))
    if meter is not None and read is not None:
        meter.note("load", read_bytes=read)


def parallelize(job: Job, model: torch.nn.Module, par: ParallelContext, device, meter: PhaseMeter | None = None) \
        -> None:
    """In place: sequence-parallel attention ops, then (parallel.fsdp) sharded block weights, read into the shards
    when the family left them to after the sharding (the parameters FSDP leaves whole: a row block per rank and an
    all-gather, as without FSDP), then (model.compile) the compiled blocks."""
    apply_sequence_parallel(model, par)
    if job.cfg.parallel.fsdp:
        apply_fsdp(model, par, device)
        with reading():
            load_dit(job, model, par, device, meter)
    if job.cfg.model.compile:  # last: the compiled blocks are the ones that run
        compile_blocks(model)


def run_sampling(job: Job, built: Built, policy, par: ParallelContext, ckpt: Checkpointer):
    scfg = job.scfg
    progress = None
    if job.cfg.progress and par.rank == 0 and job.dims.dp_degree == 1:  # groups sharing a terminal: lines only
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
        parts = [RatioTable.from_json(t) for t in par.cfg_group.gather_objects(table.to_json())]
        table = RatioTable(num_steps=table.num_steps, meta=table.meta,
                           **{f: {b: v for t in parts for b, v in getattr(t, f).items()}
                              for f in ("ratios", "std", "cos_dist")})
    return table


def make_video(job: Job, built: Built, par: ParallelContext, device, phases: dict, t0: float) -> dict | None:
    """Sample one video with the built (and parallelized) model and write its outputs (rank 0)."""
    resolved = resolve_ratios(job.cfg, job.scfg, par)  # cache.mode=auto: rank 0 reads the store, every rank gets it
    policy = job.policy if job.policy is not None else build_cache(job.cache, resolved=resolved)
    ckpt = Checkpointer(job.cfg, par, job.scfg.num_steps, device)
    meter = built.meter if built.meter is not None else PhaseMeter(device)
    t = time.perf_counter()
    with meter.phase("sample"):
        result = run_sampling(job, built, policy, par, ckpt)
    phases["sample"] = time.perf_counter() - t
    calibration = calibrated_table(job, policy, result, par)
    with meter.phase("decode"):  # every rank of the group takes part (magcache_dist/decode.py)
        decoded = decode_video(job, built.model, result.latents, par)
    phases["decode"] = meter.seconds("decode")
    per_rank = par.group.gather_objects(dict(rank=par.rank, decisions=result.decisions,
                                             timings=result.timings.as_dict(),
                                             consensus_reductions=result.extra["consensus_reductions"],
                                             bytes_sent={k: c.bytes_sent for k, c in par.comms().items()},
                                             param_bytes=local_param_bytes(built.model),
                                             phases=meter.describe()))
    if par.rank != 0:
        return None
    return finalize(job, built, policy, result, calibration, resolved, per_rank, ckpt, phases, t0, par, meter,
                    decoded)


def finalize(job: Job, built: Built, policy, result, calibration, resolved, per_rank, ckpt, phases, t0,
             par, meter: PhaseMeter, decoded: tuple) -> dict:
    """Rank 0: video, contact sheet, latents, the calibrated table (if any) and report.json, each written
    atomically. ``meter``: rank 0's phases (its write is added to ``per_rank[0]``); ``decoded``: (the decoded
    video, what the decode did) from ``decode_video``."""
    cfg, scfg, dims = job.cfg, job.scfg, job.dims
    with meter.phase("write"):
        video_path, ratios_path, stored = write_outputs(job, result, calibration, decoded[0])
    phases["write"] = meter.seconds("write")
    phases["total"] = time.perf_counter() - t0
    per_rank[0]["phases"] = meter.describe()
    image = job.family.image_model
    summary = summarize([r["decisions"] for r in per_rank], dims, scfg.branches)
    report = dict(
        status="done", video_id=job.video.video_id if job.video is not None else None, config=to_dict(cfg),
        config_hash=config_hash(fingerprint(cfg)), world_size=par.group.size,
        parallel=dict(ulysses_degree=dims.ulysses_degree, ring_degree=dims.ring_degree,
                      cfg_degree=dims.cfg_degree, backend=cfg.parallel.backend),
        cache=policy.describe() if hasattr(policy, "describe") else dict(policy=policy.name),
        branch_sync=policy.branch_sync,
        ratios_used=ratios_used(cfg, policy, resolved, ratios_path, stored),
        **summary,
        schedule=skip_schedule(policy, scfg.num_steps, scfg.branches) if isinstance(policy, MagCachePolicy) else None,
        phases_s={k: round(v, 4) for k, v in phases.items()},
        compile=compile_report(built.model),
        experts=built.model.placement_report() if hasattr(built.model, "placement_report") else None,
        decode=decoded[1],
        environment=environment(result.latents.device),
        checkpoint=ckpt.describe(),
        ranks=per_rank,
        outputs=dict(video=video_path if cfg.save_video and not image else None,
                     image=video_path if cfg.save_video and image else None, ratios=ratios_path),
        files=output_files(cfg.output_dir),  # what a rerun of a prompt list checks before it reuses this video
    )
    atomic_write_text(os.path.join(cfg.output_dir, "report.json"), json.dumps(report, indent=1, default=str))
    ckpt.finished()  # the video is done: its step checkpoints go (checkpoint.keep=true keeps them)
    return report


def write_outputs(job: Job, result, calibration, video) -> tuple[str, str | None, str | None]:
    """Rank 0: the video (or image) and contact sheet, the latents and the calibrated table, each atomically;
    (video path, ratios path, stored table)."""
    cfg = job.cfg
    os.makedirs(cfg.output_dir, exist_ok=True)
    image = job.family.image_model
    video_path = os.path.join(cfg.output_dir, "image.png" if image else "video.mp4")
    if cfg.save_video:
        frames = to_frames(video[0])
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
            stored = store_calibration(cfg, job.scfg, calibration)
    return video_path, ratios_path, stored
