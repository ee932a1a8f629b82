"""The videos of a job: which ones this run must make, their lines in the summary, and the job summary.

A job makes a list of videos (a single ``prompt`` is a list of one; ``prompts_file`` a list of many) along one road
(magcache_dist/run.py). This module keeps the bookkeeping around that road and imports nothing of it:

1. ``shard`` and ``share``: ``prompts_shard=I/N`` keeps video k of the list when k % N == I (N jobs, e.g. a SLURM
   array, share one output_dir); that share is dealt round-robin to the ``parallel.dp_degree`` data-parallel groups:
   every video has the same geometry and step count, so the shares cost the same up to cache skips, and no group
   ever waits for another (no collective spans two groups while they work).
2. ``video_state``: rank 0 of each group sorts its share. A video of a prompts file whose ``report.json`` says it is
   done, for this very config (its config hash), with every output file it lists at the listed size, is reused; one
   with a step checkpoint of this config continues from it (written every ``checkpoint.every_n_steps``, or by a
   preempted run); any other starts from noise. Just before making a video rank 0 claims it
   (magcache_dist/claims.py): a video claimed by a live worker of another job is left to it. A single video
   (``prompt``) is made again on every run, continuing with ``resume=true`` or from a preempted run's checkpoint.
3. After each video rank 0 of the group rewrites its part (``output_dir/.summary/[shard<i>-of<n>-]group<d>-of<dp>
   .json``); every group, when it finishes, merges the summary (``summary.json``, ``summary.md``) from the videos'
   own reports, one group at a time, so the last to finish lists them all. A video is listed as done only once its
   report is written (atomically, last).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re

from magcache_dist.checkpoint import POINTER, checkpoint_dir, config_hash, fingerprint, validate_checkpointing
from magcache_dist.config import evolve
from magcache_dist.errors import InputError
from magcache_dist.families.base import make_family
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.job import Job
from magcache_dist.prompts import SUMMARY_FORMAT as FORMAT
from magcache_dist.prompts import VideoSpec, parse_shard, video_config, video_identity

PARTS = ".summary"
OUTPUT_FILES = ("video.mp4", "image.png", "frames.png", "latents.pt", "ratios.json")


def output_files(folder: str) -> dict[str, int]:
    """The outputs in ``folder`` with their sizes in bytes."""
    paths = {f: os.path.join(folder, f) for f in OUTPUT_FILES}
    return {f: os.path.getsize(p) for f, p in paths.items() if os.path.isfile(p)}


def job_videos(job: Job) -> list[VideoSpec]:
    """Every video of the job: the prompts file's, or the single video the config describes."""
    if job.videos is not None:
        return job.videos
    cfg = job.cfg
    return [VideoSpec(index=0, name="", prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, seed=cfg.seed,
                      image=cfg.image, line=0,
                      video_id=video_identity(cfg.prompt, cfg.negative_prompt, cfg.seed, cfg.image))]


def shard(videos: list[VideoSpec], text: str | None) -> list[VideoSpec]:
    """The videos of share I of N of the list (video k when k % N == I)."""
    i, n = parse_shard(text)
    return [v for v in videos if v.index % n == i]


def share(videos: list[VideoSpec], dp_degree: int, dp_index: int) -> list[VideoSpec]:
    """The videos data-parallel group ``dp_index`` makes: dealt round-robin by their position in ``videos`` (a
    shard's videos or the whole list)."""
    return [v for k, v in enumerate(videos) if k % dp_degree == dp_index]


def video_job(job: Job, video: VideoSpec, resume: bool) -> Job:
    """The job of one video: the job itself for a single video, else the video's own config (its prompt, seed,
    folder) and family object."""
    if job.videos is None:
        if resume and not job.cfg.resume:  # a preempted run's checkpoint: continued by the same command
            return dataclasses.replace(job, cfg=evolve(job.cfg, resume=True), video=video)
        return dataclasses.replace(job, video=video)
    family = make_family(evolve(video_config(job.cfg, video), resume=resume))
    return dataclasses.replace(job, cfg=family.cfg, family=family, videos=None, video=video)


def video_state(job: Job, video: VideoSpec, group_size: int) -> tuple[str, dict | None]:
    """(``done``, its report) when its report verifies; (``resume``, None) with a step checkpoint of this config
    (written every checkpoint.every_n_steps, or when the job was preempted); else (``new``, None). A single video
    (``prompt``) is made on every run: it continues from a checkpoint with resume=true (checked already), or by
    itself from the checkpoint a preempted run of the same config wrote."""
    if job.videos is None:
        if job.cfg.resume:
            return "resume", None
        return ("resume" if preempted_checkpoint(job.cfg, group_size) else "new"), None
    cfg = video_config(job.cfg, video)
    report = verified_report(cfg)
    if report is not None:
        return "done", report
    if os.path.isfile(os.path.join(checkpoint_dir(cfg), POINTER)):  # periodic, or a preempted run's
        try:
            validate_checkpointing(evolve(cfg, resume=True), group_size)
            return "resume", None
        except InputError:  # a checkpoint of another config or layout: this video starts again
            pass
    return "new", None


def verified_report(cfg) -> dict | None:
    """A video's report when it says done, for this very config (its config hash), with every output file it
    lists at the listed size; else None."""
    report = read_report(cfg.output_dir)
    if report is not None and report.get("status") == "done" \
            and report.get("config_hash") == config_hash(fingerprint(cfg)) \
            and report.get("files") and output_files(cfg.output_dir) == report["files"]:
        return report
    return None


def preempted_checkpoint(cfg, group_size: int) -> bool:
    """A single video: does checkpoint_dir hold a checkpoint a preempted run of this very config wrote?"""
    path = os.path.join(checkpoint_dir(cfg), POINTER)
    try:
        with open(path) as f:
            ptr = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(ptr, dict) or not ptr.get("preempted"):
        return False
    try:
        validate_checkpointing(evolve(cfg, resume=True), group_size)
        return True
    except InputError:  # a checkpoint of another config or layout: the video starts again
        return False


def read_report(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "report.json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def entry(video: VideoSpec, report: dict | None, reused: bool) -> dict:
    """One video's line in the summary."""
    out = dict(index=video.index, name=video.name, dir=video.name, video_id=video.video_id, prompt=video.prompt,
               seed=video.seed, status="pending")
    if report is not None:
        phases = report.get("phases_s", {})
        out.update(status="done", reused=reused, computed_calls=report.get("computed_calls"),
                   total_calls=report.get("total_calls"), sample_s=phases.get("sample"), total_s=phases.get("total"),
                   resumed_from_step=(report.get("checkpoint") or {}).get("resumed_from_step"))
    return out


def part_path(job: Job, group: int) -> str:
    i, n = parse_shard(job.cfg.prompts_shard)
    sharded = f"shard{i}-of{n}-" if n > 1 else ""
    return os.path.join(job.cfg.output_dir, PARTS, f"{sharded}group{group}-of{job.dims.dp_degree}.json")


def write_part(job: Job, part: dict, entries: dict, mine: list[VideoSpec]) -> None:
    """Rank 0 of a group: its part of the summary (its videos' lines so far)."""
    os.makedirs(os.path.join(job.cfg.output_dir, PARTS), exist_ok=True)
    atomic_write_text(part_path(job, part["group"]),
                      json.dumps(dict(part, videos=[entries[v.name] for v in mine]), indent=1))


def _parts(job: Job) -> list[dict]:
    """The parts of the latest runs of this list's shards and groups (the same shard count as this job)."""
    _, n = parse_shard(job.cfg.prompts_shard)
    pattern = re.compile(rf"^{'shard[0-9]+-of' + str(n) + '-' if n > 1 else ''}group[0-9]+-of[0-9]+\.json$")
    folder = os.path.join(job.cfg.output_dir, PARTS)
    parts = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if pattern.match(f):
            try:
                with open(os.path.join(folder, f)) as fh:
                    p = json.load(fh)
            except (OSError, ValueError):
                continue
            if isinstance(p, dict) and isinstance(p.get("videos"), list):
                parts.append(p)
    return parts


def merge_summary(job: Job) -> dict:
    """The job summary of the whole list, from every video's own report (a video is done when its report
    verifies), with what the latest runs' parts say (reused or made, their times); written as summary.json and
    summary.md. Every group calls it when it finishes, one at a time (an flock on ``.summary/merge.lock``): the
    last to finish, of every shard and group, writes the summary that lists every video done."""
    os.makedirs(os.path.join(job.cfg.output_dir, PARTS), exist_ok=True)
    with open(os.path.join(job.cfg.output_dir, PARTS, "merge.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        parts = _parts(job)
        listed = {v["name"]: v for p in parts for v in p["videos"] if v.get("status") == "done"}
        videos = []
        for v in job.videos:
            report = verified_report(video_config(job.cfg, v))
            e = entry(v, report, reused=listed.get(v.name, {}).get("reused", True))
            if report is not None and v.name in listed:  # this run's own numbers (e.g. its total with the load)
                e.update({k: listed[v.name][k] for k in ("sample_s", "total_s") if k in listed[v.name]})
            videos.append(e)
        done = [v for v in videos if v["status"] == "done"]
        i, n = parse_shard(job.cfg.prompts_shard)
        summary = dict(
            format=FORMAT, prompts_file=job.cfg.prompts_file, output_dir=job.cfg.output_dir,
            shards=n, dp_degree=job.dims.dp_degree, group_size=parts[0]["group_size"] if parts else None,
            videos_total=len(videos), videos_done=len(done), videos_reused=sum(1 for v in done if v.get("reused")),
            computed_calls=sum(v["computed_calls"] for v in done), total_calls=sum(v["total_calls"] for v in done),
            wall_s=max((p.get("wall_s") or 0.0 for p in parts), default=0.0),
            groups=[{k: p.get(k) for k in ("shard", "group", "wall_s", "build_s", "encode_s", "claimed_elsewhere")}
                    for p in parts], videos=videos)
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
