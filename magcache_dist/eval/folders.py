"""The two sides of an evaluation: folders of named videos, with the calls and wall times of the runs that made
them where a report says so, and the matching of a candidate's videos to the reference's by name.

A folder is read as the first of these layouts that fits:
- a prompt-list job: ``summary.json`` (format ``magcache-prompt-job/1``) lists the videos, each with name, dir,
  status, computed_calls, total_calls, sample_s and total_s; the video is ``<dir>/video.mp4``, beside its
  ``report.json`` (which fills in any figure the summary lacks). Videos whose status is not "done" are skipped.
- a single-video job: ``video.mp4`` and ``report.json``; one video named after the folder. Two such folders are
  compared with each other whatever their names.
- any folder of ``*.mp4`` files, searched recursively (hidden files and folders are passed over): a video is
  named by its file stem, except ``video.mp4``, which takes its folder's name (the layout of job folders) and its
  figures from a ``report.json`` beside it. Names must be unique.

An image model's job (FLUX.1) writes ``image.png`` where a video job writes ``video.mp4``: it is read as a
one-frame video in each layout (a folder of loose files: ``*.png`` count only where no mp4 is found).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from magcache_dist.errors import InputError
from magcache_dist.prompts import SUMMARY_FORMAT

OUTPUTS = ("video.mp4", "image.png")  # what a job writes: a video, or an image model's one image


def _output(folder: str) -> str | None:
    """The job output in ``folder`` (video.mp4 or image.png), if any."""
    for name in OUTPUTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


@dataclass
class Video:
    name: str
    path: str  # the mp4 file
    computed_calls: int | None = None  # block-stack calls computed / in all (skipped ones included)
    total_calls: int | None = None
    sample_s: float | None = None  # wall time of the denoising loop / of the whole job
    total_s: float | None = None
    cache: dict | None = None  # the report's description of the cache (mode or policy, settings)


@dataclass
class Folder:
    path: str
    layout: str  # "prompt-job", "job" or "mp4"
    videos: dict[str, Video] = field(default_factory=dict)  # by name, in the folder's order
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not compared


def _read_json(path: str, arg: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{arg}: {path} cannot be read as JSON ({e}); rewrite it or remove it") from e
    if not isinstance(data, dict):
        raise InputError(f"{arg}: {path} holds a JSON {type(data).__name__}, not an object")
    return data


def _report_figures(report_path: str, arg: str) -> dict:
    """computed_calls, total_calls, sample_s, total_s and cache from a job's report.json ({} without one)."""
    if not os.path.isfile(report_path):
        return {}
    report = _read_json(report_path, arg)
    phases = report.get("phases_s") or {}
    return dict(computed_calls=report.get("computed_calls"), total_calls=report.get("total_calls"),
                sample_s=phases.get("sample"), total_s=phases.get("total"), cache=report.get("cache"),
                status=report.get("status", "done"))


def _video(name: str, path: str, figures: dict) -> Video:
    return Video(name, path, **{k: figures.get(k) for k in ("computed_calls", "total_calls", "sample_s", "total_s",
                                                             "cache")})


def _prompt_job(root: str, arg: str) -> Folder:
    summary_path = os.path.join(root, "summary.json")
    summary = _read_json(summary_path, arg)
    fmt = summary.get("format", SUMMARY_FORMAT)
    if fmt != SUMMARY_FORMAT or not isinstance(summary.get("videos"), list):
        raise InputError(f"{arg}: {summary_path} is not a prompt-list job summary (format {fmt!r}, expected "
                         f"{SUMMARY_FORMAT!r} with a 'videos' list); point {arg} at the job's output_dir")
    folder = Folder(root, "prompt-job")
    for entry in summary["videos"]:
        name = str(entry.get("name", entry.get("dir", "")))
        if not name:
            raise InputError(f"{arg}: {summary_path} lists a video without a name: {entry}")
        if name in folder.videos or name in folder.skipped:
            raise InputError(f"{arg}: {summary_path} lists the name {name!r} twice; video names must be unique")
        status = entry.get("status")
        if status != "done":
            folder.skipped[name] = f"status {status!r}"
            continue
        sub = os.path.join(root, str(entry.get("dir", name)))
        path = _output(sub)
        if path is None:
            folder.skipped[name] = "no video.mp4 / image.png (written with save_video=false?)"
            continue
        figures = _report_figures(os.path.join(sub, "report.json"), arg)
        figures.update({k: entry[k] for k in ("computed_calls", "total_calls", "sample_s", "total_s")
                        if entry.get(k) is not None})
        folder.videos[name] = _video(name, path, figures)
    return folder


def _mp4_folder(root: str, arg: str, ext: str = ".mp4") -> Folder:
    folder = Folder(root, "mp4")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith(".") or not fname.lower().endswith(ext):
                continue
            path = os.path.join(dirpath, fname)
            figures = {}
            if fname in OUTPUTS:
                name = os.path.basename(os.path.abspath(dirpath))
                figures = _report_figures(os.path.join(dirpath, "report.json"), arg)
            else:
                name = os.path.splitext(fname)[0]
            if name in folder.videos:
                raise InputError(f"{arg}: two videos are named {name!r}: {folder.videos[name].path} and {path}; "
                                 f"videos are matched by name, so rename one or point {arg} at a folder holding "
                                 f"only one of them")
            if figures.get("status", "done") != "done":
                folder.skipped[name] = f"status {figures['status']!r}"
                continue
            folder.videos[name] = _video(name, path, figures)
    return folder


def load_folder(path: str, arg: str) -> Folder:
    """The videos under ``path`` (``arg`` is the flag that named it, for messages). InputError when ``path`` is
    not a folder, holds no video, or two videos share a name."""
    if not os.path.isdir(path):
        raise InputError(f"{arg} {path}: no such folder; give a prompt-list job's output_dir or a folder of "
                         f"mp4 files")
    root = os.path.abspath(path)
    if os.path.isfile(os.path.join(root, "summary.json")):
        folder = _prompt_job(root, arg)
    elif (output := _output(root)) and os.path.isfile(os.path.join(root, "report.json")):
        name = os.path.basename(root)
        figures = _report_figures(os.path.join(root, "report.json"), arg)
        folder = Folder(root, "job")
        if figures.get("status", "done") != "done":
            folder.skipped[name] = f"status {figures['status']!r}"
        else:
            folder.videos[name] = _video(name, output, figures)
    else:
        folder = _mp4_folder(root, arg)
        if not folder.videos and not folder.skipped:
            folder = _mp4_folder(root, arg, ext=".png")
    if not folder.videos:
        why = f" ({len(folder.skipped)} skipped: " + ", ".join(f"{k}: {v}" for k, v in folder.skipped.items()) + ")" \
            if folder.skipped else ""
        raise InputError(f"{arg} {path}: no videos to compare{why}; give a prompt-list job's output_dir "
                         f"(summary.json), a job folder (video.mp4 or image.png + report.json) or a folder of mp4 files")
    return folder


def match(reference: Folder, candidate: Folder) -> tuple[list[tuple[str, Video, Video]], list[str], list[str]]:
    """([(name, reference video, candidate video)] in the reference's order, names only in the reference,
    names only in the candidate). Two single-video job folders pair up whatever their names."""
    if reference.layout == candidate.layout == "job":
        (name, ref), (cand,) = next(iter(reference.videos.items())), candidate.videos.values()
        return [(name, ref, cand)], [], []
    pairs = [(n, v, candidate.videos[n]) for n, v in reference.videos.items() if n in candidate.videos]
    only_ref = [n for n in reference.videos if n not in candidate.videos]
    only_cand = [n for n in candidate.videos if n not in reference.videos]
    return pairs, only_ref, only_cand
