"""The two sides of an evaluation: folders of videos, with the identity of each video and the calls and wall times
of the runs that made them where a report says so, and the matching of a candidate's videos to the reference's by
identity, never by position.

A folder is read as the first of these layouts that fits:
- a prompt-list job: ``summary.json`` (format ``magcache-prompt-job/1``) lists the videos, each with name, dir,
  status, computed_calls, total_calls, sample_s and total_s (and ``video_id`` from jobs that write it); the video
  is ``<dir>/video.mp4``, beside its ``report.json`` (which fills in any figure the summary lacks). Videos whose
  status is not "done" are skipped.
- a single-video job: ``video.mp4`` and ``report.json``; one video named after the folder.
- any folder of ``*.mp4`` files, searched recursively (hidden files and folders are passed over): a video is
  named by its file stem, except ``video.mp4``, which takes its folder's name (the layout of job folders) and its
  figures from a ``report.json`` beside it. Names must be unique.

An image model's job (FLUX.1) writes ``image.png`` where a video job writes ``video.mp4``: it is read as a
one-frame video in each layout (a folder of loose files: ``*.png`` count only where no mp4 is found).

Identity (``match``): a video is the same video in two folders when, first that applies to every video of both,
(1) their ``video_id`` (summary.json entry or report.json) is equal; (2) their (prompt, negative_prompt, seed,
image) read from report.json's ``config`` is equal (runs that predate video_id); (3) their names are equal (mp4
folders without reports). Two single-video job folders pair up whatever their names, unless both know their
identity and it differs. Every JSON file is checked field by field when read: a field of the wrong type is an
``InputError`` naming the file and the field, before anything is scored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from magcache_dist.errors import InputError
from magcache_dist.prompts import SUMMARY_FORMAT

OUTPUTS = ("video.mp4", "image.png")  # what a job writes: a video, or an image model's one image
IDENTITY_FIELDS = ("prompt", "negative_prompt", "seed", "image")  # a report's config: what makes a video the same
MATCH_KINDS = ("video_id", "config", "name")  # what videos are matched by, first that every video has


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
    video_id: str | None = None  # the job's identity of the video (summary.json / report.json 'video_id')
    config_id: tuple | None = None  # (prompt, negative_prompt, seed, image) from report.json's config
    prompt: str | None = None

    def key(self, kind: str):
        return dict(video_id=self.video_id, config=self.config_id, name=self.name)[kind]


@dataclass
class Folder:
    path: str
    layout: str  # "prompt-job", "job" or "mp4"
    videos: dict[str, Video] = field(default_factory=dict)  # by name, in the folder's order
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not compared


@dataclass
class Match:
    pairs: list[tuple[str, Video, Video]]  # (name, reference video, candidate video), in the reference's order
    only_reference: list[str]  # names of the reference's videos the candidate lacks
    only_candidate: list[str]
    by: str  # what the videos were matched by: "video_id", "config", "name" or "job folders"


# --- JSON files, checked field by field ------------------------------------------------------------------------

def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _bad(arg: str, path: str, where: str, value, expected: str) -> InputError:
    return InputError(f"{arg}: {path}: field '{where}' is {value!r} (a JSON {_kind(value)}), expected {expected}; "
                      f"regenerate the file with the job that wrote it, or fix that field")


def _check(arg: str, path: str, obj: dict, where: str, key: str, expected: str, nullable: bool = True):
    """obj[key] (None when absent) after checking its type: "int" (not bool), "number", "str" or "object"."""
    if key not in obj or (obj[key] is None and nullable):
        return None
    v = obj[key]
    ok = dict(int=isinstance(v, int) and not isinstance(v, bool),
              number=isinstance(v, (int, float)) and not isinstance(v, bool),
              str=isinstance(v, str), object=isinstance(v, dict))[expected]
    if not ok:
        words = dict(int="an integer", number="a number", str="a string", object="a JSON object")[expected]
        raise _bad(arg, path, f"{where}{key}", v, words + (" or null" if nullable else ""))
    return v


def _read_json(path: str, arg: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{arg}: {path} cannot be read as JSON ({e}); rewrite it or remove it") from e
    if not isinstance(data, dict):
        raise InputError(f"{arg}: {path} holds a JSON {_kind(data)}, not an object; point {arg} at a job's "
                         f"output folder, or remove the file")
    return data


def _report_figures(report_path: str, arg: str) -> dict:
    """computed_calls, total_calls, sample_s, total_s, cache, status and identity from a job's report.json ({}
    without one); every field used is type-checked."""
    if not os.path.isfile(report_path):
        return {}
    r = _read_json(report_path, arg)
    out = dict(computed_calls=_check(arg, report_path, r, "", "computed_calls", "int"),
               total_calls=_check(arg, report_path, r, "", "total_calls", "int"),
               cache=_check(arg, report_path, r, "", "cache", "object"),
               status=_check(arg, report_path, r, "", "status", "str") or "done",
               video_id=_check(arg, report_path, r, "", "video_id", "str"))
    phases = _check(arg, report_path, r, "", "phases_s", "object") or {}
    out.update(sample_s=_check(arg, report_path, phases, "phases_s.", "sample", "number"),
               total_s=_check(arg, report_path, phases, "phases_s.", "total", "number"))
    config = _check(arg, report_path, r, "", "config", "object")
    if config is not None:
        prompt = _check(arg, report_path, config, "config.", "prompt", "str")
        neg = _check(arg, report_path, config, "config.", "negative_prompt", "str")
        seed = _check(arg, report_path, config, "config.", "seed", "int")
        image = _check(arg, report_path, config, "config.", "image", "str")
        if prompt is not None and seed is not None:
            out["config_id"] = (prompt, neg or "", seed, image)
        out["prompt"] = prompt
    return out


def _video(name: str, path: str, figures: dict) -> Video:
    return Video(name, path, **{k: figures.get(k) for k in ("computed_calls", "total_calls", "sample_s", "total_s",
                                                             "cache", "video_id", "config_id", "prompt")})


def _prompt_job(root: str, arg: str) -> Folder:
    path = os.path.join(root, "summary.json")
    summary = _read_json(path, arg)
    fmt = summary.get("format", SUMMARY_FORMAT)
    if fmt != SUMMARY_FORMAT or not isinstance(summary.get("videos"), list):
        raise InputError(f"{arg}: {path} is not a prompt-list job summary (format {fmt!r}, expected "
                         f"{SUMMARY_FORMAT!r} with a 'videos' list); point {arg} at the job's output_dir")
    folder = Folder(root, "prompt-job")
    for i, entry in enumerate(summary["videos"]):
        at = f"videos[{i}]."
        if not isinstance(entry, dict):
            raise _bad(arg, path, f"videos[{i}]", entry, "a JSON object per video")
        name = _check(arg, path, entry, at, "name", "str")
        sub = _check(arg, path, entry, at, "dir", "str")
        name = name or sub
        if not name:
            raise InputError(f"{arg}: {path}: field '{at}name' is missing (and so is 'dir'); every video needs a "
                             f"name; regenerate the summary with the job that wrote it")
        if name in folder.videos or name in folder.skipped:
            raise InputError(f"{arg}: {path} lists the name {name!r} twice; video names must be unique")
        status = _check(arg, path, entry, at, "status", "str")
        video_id = _check(arg, path, entry, at, "video_id", "str")
        figures = {k: _check(arg, path, entry, at, k, kind) for k, kind in
                   (("computed_calls", "int"), ("total_calls", "int"), ("sample_s", "number"), ("total_s", "number"))}
        prompt = _check(arg, path, entry, at, "prompt", "str")
        _check(arg, path, entry, at, "seed", "int")
        sub = os.path.join(root, sub or name)
        if os.path.commonpath([root, os.path.normpath(sub)]) != root:  # '../x' or an absolute path
            raise _bad(arg, path, f"{at}dir", entry.get("dir"), "a folder inside the job's output_dir")
        if status != "done":
            folder.skipped[name] = f"status {status!r}"
            continue
        output = _output(sub)
        if output is None:
            folder.skipped[name] = "no video.mp4 / image.png (written with save_video=false?)"
            continue
        report = _report_figures(os.path.join(sub, "report.json"), arg)
        report.update({k: v for k, v in figures.items() if v is not None})
        report["prompt"] = report.get("prompt") or prompt
        if video_id is not None:
            if report.get("video_id") not in (None, video_id):
                raise InputError(f"{arg}: {path}: field '{at}video_id' is {video_id!r} but {sub}/report.json says "
                                 f"{report['video_id']!r}; the folder holds another video than the summary lists: "
                                 f"rerun the job to rewrite its summary")
            report["video_id"] = video_id
        folder.videos[name] = _video(name, output, report)
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
    not a folder, holds no video, two videos share a name, or a JSON file in it has an unexpected shape."""
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
                         f"(summary.json), a job folder (video.mp4 or image.png + report.json) or a folder of mp4 "
                         f"files")
    return folder


def describe_key(kind: str, key) -> str:
    if kind == "config":
        prompt, neg, seed, image = key
        return f"prompt {prompt!r}, seed {seed}" + (f", negative prompt {neg!r}" if neg else "") + \
            (f", image {image!r}" if image else "")
    return repr(key)


def _by_key(folder: Folder, kind: str, arg: str) -> dict:
    out = {}
    for name, v in folder.videos.items():
        k = v.key(kind)
        if k in out:
            raise InputError(f"{arg} {folder.path}: the videos {out[k].name!r} and {name!r} are the same video "
                             f"({kind}: {describe_key(kind, k)}); a folder may hold each video once: remove one")
        out[k] = v
    return out


def match(reference: Folder, candidate: Folder, arg: str = "--candidate") -> Match:
    """The candidate's videos paired with the reference's by identity (the module's note), and the names each side
    has that the other lacks. InputError when one folder holds one video twice."""
    if reference.layout == candidate.layout == "job":
        (name, ref), (cand,) = next(iter(reference.videos.items())), candidate.videos.values()
        for kind in MATCH_KINDS[:2]:
            if ref.key(kind) is not None and cand.key(kind) is not None and ref.key(kind) != cand.key(kind):
                raise InputError(f"{arg} {candidate.path}: holds another video than --reference {reference.path} "
                                 f"({kind}: {describe_key(kind, cand.key(kind))} against "
                                 f"{describe_key(kind, ref.key(kind))}); compare runs of the same prompt and seed")
        return Match([(name, ref, cand)], [], [], "job folders")
    videos = list(reference.videos.values()) + list(candidate.videos.values())
    kind = next(k for k in MATCH_KINDS if all(v.key(k) is not None for v in videos))
    refs, cands = _by_key(reference, kind, "--reference"), _by_key(candidate, kind, arg)
    pairs = [(v.name, v, cands[k]) for k, v in refs.items() if k in cands]
    only_ref = [v.name for k, v in refs.items() if k not in cands]
    only_cand = [v.name for k, v in cands.items() if k not in refs]
    return Match(pairs, only_ref, only_cand, kind)
