"""Prompt lists: one job, many videos, the model loaded once.

``run_prompt_list`` (called by ``run.run_job`` when the job has ``prompts_file``) runs on every rank:

1. The videos are dealt round-robin to the ``parallel.dp_degree`` data-parallel groups (video i to group
   i % dp): every video has the same geometry and step count, so the shares cost the same up to cache skips, and
   no group ever waits for another (no collective spans two groups while they work).
2. Rank 0 of each group sorts its share: a video whose ``report.json`` says it is done, for this very config
   (its config hash), with every output file it lists at the listed size, is reused; one with a step checkpoint
   of this config continues from it (``checkpoint.every_n_steps``); any other starts from noise. The group agrees
   on that answer (one broadcast).
3. The group builds the model and encodes its videos' prompts once, parallelizes the model once, and makes each
   video in turn exactly like a single-video job (``run.make_video``: same sampler, cache policy, checkpoints and
   outputs, in the video's own folder ``output_dir/<index>-<slug>``).
4. After each video rank 0 of the group rewrites its part (``output_dir/.summary/group<d>-of<dp>.json``); the
   group that finishes last (the one that finds every part of this run present) writes ``summary.json`` and
   ``summary.md``. A video is listed as done only once its report is written (atomically, last).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import torch

from magcache_dist.checkpoint import POINTER, checkpoint_dir, config_hash, fingerprint, validate_checkpointing
from magcache_dist.families.base import make_family
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.job import Job
from magcache_dist.parallel.dims import ParallelContext
from magcache_dist.prompts import SUMMARY_FORMAT as FORMAT, VideoSpec, video_config
from magcache_dist.run import Built, make_video, output_files, parallelize

PARTS = ".summary"


def video_state(job: Job, video: VideoSpec, group_size: int) -> tuple[str, dict | None]:
    """(``done``, its report) when its report verifies; (``resume``, None) with a step checkpoint of this config;
    else (``new``, None)."""
    cfg = video_config(job.cfg, video)
    report = read_report(cfg.output_dir)
    if report is not None and report.get("status") == "done" \
            and report.get("config_hash") == config_hash(fingerprint(cfg)) \
            and report.get("files") and output_files(cfg.output_dir) == report["files"]:
        return "done", report
    if cfg.checkpoint.every_n_steps and os.path.isfile(os.path.join(checkpoint_dir(cfg), POINTER)):
        cfg.resume = True
        try:
            validate_checkpointing(cfg, group_size)
            return "resume", None
        except ValueError:  # a checkpoint of another config or layout: this video starts again
            pass
    return "new", None


def read_report(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "report.json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def video_job(job: Job, video: VideoSpec, resume: bool) -> Job:
    cfg = video_config(job.cfg, video)
    cfg.resume = resume
    return dataclasses.replace(job, cfg=cfg, family=make_family(cfg), videos=None)


def entry(video: VideoSpec, report: dict | None, reused: bool) -> dict:
    """One video's line in the summary."""
    out = dict(index=video.index, name=video.name, dir=video.name, prompt=video.prompt, seed=video.seed,
               status="pending")
    if report is not None:
        phases = report.get("phases_s", {})
        out.update(status="done", reused=reused, computed_calls=report.get("computed_calls"),
                   total_calls=report.get("total_calls"), sample_s=phases.get("sample"), total_s=phases.get("total"),
                   resumed_from_step=(report.get("checkpoint") or {}).get("resumed_from_step"))
    return out


def encode_videos(job: Job, encoder, videos: list[VideoSpec]) -> list[dict]:
    """Every video's conditioning (kept on the CPU until its turn), encoded per image: the videos that share an
    image (all of them, for a text-to-video list) go through one ``encode_many`` of a family object of theirs."""
    by_image: dict[str | None, list[VideoSpec]] = {}
    for v in videos:
        by_image.setdefault(v.image, []).append(v)
    conds = {}
    for image, group in by_image.items():
        family = job.family if image == job.cfg.image else make_family(video_config(job.cfg, group[0]))
        texts = [(v.prompt, v.negative_prompt) for v in group]
        conds.update(zip([v.name for v in group], family.encode_many(encoder, texts, job.scfg.branches)))
    return [{b: (c.cpu() if torch.is_tensor(c) else c) for b, c in conds[v.name].items()} for v in videos]


def run_prompt_list(job: Job, par: ParallelContext, device) -> dict | None:
    """Make this rank's group's share of the list; rank 0 of a group returns the summary (the whole job's if this
    group finished last, else its own part)."""
    t0 = time.perf_counter()
    dp = job.dims.dp_degree
    run_id = par.job_comm.broadcast_object(uuid.uuid4().hex)  # the one collective over every group: at the start
    mine = [v for v in job.videos if v.index % dp == par.dp_index]
    entries, states = {}, None  # the summary's lines: rank 0 of the group keeps them
    if par.rank == 0:
        checked = {v.name: video_state(job, v, par.world.size) for v in mine}
        states = {name: state for name, (state, _) in checked.items()}
        entries = {v.name: entry(v, checked[v.name][1], reused=True) for v in mine}
    states = par.world.broadcast_object(states)
    todo = [v for v in mine if states[v.name] != "done"]
    part = dict(format=FORMAT, run_id=run_id, group=par.dp_index, dp_degree=dp, group_size=par.world.size,
                started=time.time())
    if todo:
        model, encoder = job.family.build(device, weights=not job.cfg.parallel.fsdp)
        t = time.perf_counter()
        conds = encode_videos(job, encoder, todo)
        del encoder
        part["encode_s"] = time.perf_counter() - t
        parallelize(job, model, par, device)
        part["build_s"] = time.perf_counter() - t0 - part["encode_s"]
        for v, cond in zip(todo, conds):
            vjob = video_job(job, v, resume=states[v.name] == "resume")
            t = time.perf_counter()
            built = Built(model, {b: (c.to(device) if torch.is_tensor(c) else c) for b, c in cond.items()},
                          vjob.family.make_noise(v.seed).to(device))
            report = make_video(vjob, built, par, device, {"build": 0.0, "encode": 0.0}, t)
            _back_on(model, device)  # a decode may have offloaded the DiT (vae.offload_dit)
            if par.rank == 0:
                entries[v.name] = entry(v, report, reused=False)
                _write_part(job, part, entries, mine)
    if par.rank != 0:
        return None
    part["wall_s"] = time.perf_counter() - t0
    _write_part(job, part, entries, mine)
    return merge_parts(job, run_id) or dict(part, videos=[entries[v.name] for v in mine], complete=False)


def _back_on(model: torch.nn.Module, device) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device != torch.device(device) and not hasattr(p, "to_local"):
        model.to(device)


def _part_path(job: Job, group: int) -> str:
    return os.path.join(job.cfg.output_dir, PARTS, f"group{group}-of{job.dims.dp_degree}.json")


def _write_part(job: Job, part: dict, entries: dict, mine: list[VideoSpec]) -> None:
    os.makedirs(os.path.join(job.cfg.output_dir, PARTS), exist_ok=True)
    atomic_write_text(_part_path(job, part["group"]),
                      json.dumps(dict(part, videos=[entries[v.name] for v in mine]), indent=1))


def merge_parts(job: Job, run_id: str) -> dict | None:
    """If every group of this run has written its final part: the job summary (written), else None."""
    parts = []
    for g in range(job.dims.dp_degree):
        try:
            with open(_part_path(job, g)) as f:
                p = json.load(f)
        except (OSError, ValueError):
            return None
        if p.get("run_id") != run_id or "wall_s" not in p:
            return None
        parts.append(p)
    videos = sorted((v for p in parts for v in p["videos"]), key=lambda v: v["index"])
    done = [v for v in videos if v["status"] == "done"]
    summary = dict(
        format=FORMAT, prompts_file=job.cfg.prompts_file, output_dir=job.cfg.output_dir, dp_degree=job.dims.dp_degree,
        group_size=parts[0]["group_size"], videos_total=len(videos), videos_done=len(done),
        videos_reused=sum(1 for v in done if v.get("reused")),
        computed_calls=sum(v["computed_calls"] for v in done), total_calls=sum(v["total_calls"] for v in done),
        wall_s=max(p["wall_s"] for p in parts),
        groups=[{k: p.get(k) for k in ("group", "wall_s", "build_s", "encode_s")} for p in parts], videos=videos)
    atomic_write_text(os.path.join(job.cfg.output_dir, "summary.json"), json.dumps(summary, indent=1))
    atomic_write_text(os.path.join(job.cfg.output_dir, "summary.md"), summary_markdown(summary))
    return summary


def summary_markdown(s: dict) -> str:
    lines = [f"# {s['videos_done']} of {s['videos_total']} videos done", "",
             f"prompts_file `{s['prompts_file']}`, {s['dp_degree']} group(s) of {s['group_size']} rank(s), "
             f"wall {s['wall_s']:.1f} s; computed calls {s['computed_calls']} of {s['total_calls']}; "
             f"{s['videos_reused']} video(s) reused from an earlier run.", "",
             "| # | video | status | computed / total calls | sample s | total s | prompt |",
             "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for v in s["videos"]:
        if v["status"] == "done":
            calls = f"{v['computed_calls']} / {v['total_calls']}"
            times = f"{v['sample_s']:.2f} | {v['total_s']:.2f}"
            status = "done (reused)" if v.get("reused") else "done"
        else:
            calls, times, status = "", " | ", v["status"]
        prompt = v["prompt"].replace("|", "\\|")
        lines.append(f"| {v['index']} | [{v['name']}]({v['dir']}/) | {status} | {calls} | {times} | {prompt} |")
    return "\n".join(lines) + "\n"
