"""The videos of a job: which ones this run must make, their lines in the summary, and the job summary.

A job makes a list of videos (a single ``prompt`` is a list of one; ``prompts_file`` a list of many) along one road
(magcache_dist/run.py). This module keeps the bookkeeping around that road and imports nothing of it:

1. ``share``: the videos are dealt round-robin to the ``parallel.dp_degree`` data-parallel groups (video i to
   group i % dp): every video has the same geometry and step count, so the shares cost the same up to cache skips,
   and no group ever waits for another (no collective spans two groups while they work).
2. ``video_state``: rank 0 of each group sorts its share. A video of a prompts file whose ``report.json`` says it is
   done, for this very config (its config hash), with every output file it lists at the listed size, is reused; one
   with a step checkpoint of this config continues from it (``checkpoint.every_n_steps``); any other starts from
   noise. A single video (``prompt``) is made again on every run, continuing only when ``resume=true`` says so.
3. After each video rank 0 of the group rewrites its part (``output_dir/.summary/group<d>-of<dp>.json``); the group
   that finishes last (the one that finds every part of this run present) writes ``summary.json`` and
   ``summary.md``. A video is listed as done only once its report is written (atomically, last).
"""
from __future__ import annotations

import dataclasses
import json
import os

from magcache_dist.checkpoint import POINTER, checkpoint_dir, config_hash, fingerprint, validate_checkpointing
from magcache_dist.families.base import make_family
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.job import Job
from magcache_dist.prompts import SUMMARY_FORMAT as FORMAT, VideoSpec, video_config, video_identity

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


def share(videos: list[VideoSpec], dp_degree: int, dp_index: int) -> list[VideoSpec]:
    """The videos data-parallel group ``dp_index`` makes (round-robin)."""
    return [v for v in videos if v.index % dp_degree == dp_index]


def video_job(job: Job, video: VideoSpec, resume: bool) -> Job:
    """The job of one video: the job itself for a single video, else the video's own config (its prompt, seed,
    folder) and family object."""
    if job.videos is None:
        return dataclasses.replace(job, video=video)
    cfg = video_config(job.cfg, video)
    cfg.resume = resume
    return dataclasses.replace(job, cfg=cfg, family=make_family(cfg), videos=None, video=video)


def video_state(job: Job, video: VideoSpec, group_size: int) -> tuple[str, dict | None]:
    """(``done``, its report) when its report verifies; (``resume``, None) with a step checkpoint of this config;
    else (``new``, None)."""
    if job.videos is None:  # a single video: made on every run (resume=true: from its checkpoint, checked already)
        return ("resume" if job.cfg.resume else "new"), None
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
    return os.path.join(job.cfg.output_dir, PARTS, f"group{group}-of{job.dims.dp_degree}.json")


def write_part(job: Job, part: dict, entries: dict, mine: list[VideoSpec]) -> None:
    """Rank 0 of a group: its part of the summary (its videos' lines so far)."""
    os.makedirs(os.path.join(job.cfg.output_dir, PARTS), exist_ok=True)
    atomic_write_text(part_path(job, part["group"]),
                      json.dumps(dict(part, videos=[entries[v.name] for v in mine]), indent=1))


def merge_parts(job: Job, run_id: str) -> dict | None:
    """If every group of this run has written its final part: the job summary (written), else None."""
    parts = []
    for g in range(job.dims.dp_degree):
        try:
            with open(part_path(job, g)) as f:
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
