"""Scoring pairs of videos at scale: on a device, in batches of frames, over several processes, incrementally.

A task is one reference video with the candidate videos matched to it (the reference is decoded once for all).
``Scorer`` scores tasks in one process: frames go to its device (``--device``, CUDA when given) ``batch_frames``
at a time as uint8 and are scored there (metrics.py, perceptual.py). ``score`` spreads the tasks:
- one process: the tasks in order;
- ``workers`` > 1: a pool of that many spawned processes, fed shards of tasks (each builds its LPIPS once per
  shard; CPU threads are divided between them; with CUDA, worker shard i uses GPU i mod the GPU count);
- under torchrun (WORLD_SIZE > 1): rank r takes every WORLD_SIZE-th task from r and the rows are gathered to
  rank 0 over gloo.

Incremental: each pair's per-frame values go to a score cache (``ScoreCache``, one JSON file per pair under
``<folder of --out>/.eval-cache/``), keyed by the SHA-256 of both video files, so a video that changes (either
side) is scored again and one that did not is not; each metric is stored with its definition's version (and,
for LPIPS, the identity of the package version and backbone file), so a metric asked for later, or a changed
definition, is computed alone. Errors (a file that cannot be read, shapes that differ) are not cached.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from magcache_dist.errors import InputError
from magcache_dist.eval.metrics import frame_psnr, frame_ssim
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.io.video import read_frames

CACHE_FORMAT = "magcache-eval-score/1"
CACHE_DIR = ".eval-cache"
DEFINITIONS = dict(psnr="release-frame-psnr/1", ssim="release-frame-ssim/1", lpips="lpips-0.1-alex-spatial/1")
METRIC_NAMES = tuple(DEFINITIONS)


@dataclass(frozen=True)
class Settings:
    metrics: tuple[str, ...]  # what to compute, in METRIC_NAMES' order
    device: str  # "cpu", "cuda", "cuda:1", ...
    batch_frames: int  # frames moved to the device and scored at a time
    lpips_backbone: str | None = None  # the AlexNet file, when "lpips" is in metrics
    lpips_identity: str | None = None  # package version + backbone file hash: part of a cached LPIPS value's key
    cache_dir: str | None = None  # None: no score cache
    threads: int | None = None  # torch CPU threads of a worker process


@dataclass(frozen=True)
class Pair:
    candidate: int  # index of the candidate folder
    name: str
    path: str  # the candidate video


@dataclass(frozen=True)
class Task:
    reference: str  # the reference video
    pairs: tuple[Pair, ...]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ScoreCache:
    """Per-pair per-frame scores under ``root``: ``<root>/<key[:2]>/<key>.json``, written atomically; an entry
    that cannot be read or is not of this format is treated as absent (scored again, then rewritten)."""

    def __init__(self, root: str):
        self.root = root

    @staticmethod
    def key(ref_sha: str, cand_sha: str) -> str:
        return hashlib.sha256(f"{CACHE_FORMAT}\n{ref_sha}\n{cand_sha}".encode()).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict | None:
        try:
            with open(self._path(key)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT and isinstance(entry.get("metrics"), dict)
        return entry if ok else None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self._path(key), json.dumps(entry) + "\n")


def _valid(entry: dict | None, metric: str, settings: Settings) -> bool:
    """Whether the cached entry holds ``metric`` under the current definition (and LPIPS settings)."""
    m = (entry or {}).get("metrics", {}).get(metric)
    return isinstance(m, dict) and m.get("definition") == DEFINITIONS[metric] and isinstance(m.get("per_frame"), list) \
        and (metric != "lpips" or m.get("settings") == settings.lpips_identity)


def _tensor(frames_FHWC: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> uint8 [F, 3, H, W] (contiguous, so that planes slice cheaply)."""
    return torch.from_numpy(np.require(frames_FHWC, requirements=("C", "W"))).permute(0, 3, 1, 2).contiguous()


def _read(path: str, side: str) -> tuple[torch.Tensor | None, str | None]:
    """(frames, None) or (None, why): a file ffmpeg cannot read is that video's error, not the evaluation's."""
    try:
        return _tensor(read_frames(path)), None
    except Exception as e:  # imageio / ffmpeg raise OSError, RuntimeError, IndexError, ... for a broken file
        return None, f"{side} {path} cannot be read: {type(e).__name__}: {e}"


def means(per_frame: dict, frames: int, height: int, width: int) -> dict:
    """A row's figures from per-frame values: the mean of each metric (None where not computed), min PSNR."""
    out = dict(frames=frames, height=height, width=width, per_frame=per_frame)
    for k in METRIC_NAMES:
        out[k] = float(np.mean(per_frame[k])) if per_frame.get(k) else None
    out["psnr_min"] = min(per_frame["psnr"]) if per_frame.get("psnr") else None
    return out


class Scorer:
    """Scores tasks in this process on ``settings.device``; builds LPIPS (if asked for) once."""

    def __init__(self, settings: Settings, lpips=None):
        self.settings, self.device = settings, torch.device(settings.device)
        self.cache = ScoreCache(settings.cache_dir) if settings.cache_dir else None
        if lpips is None and "lpips" in settings.metrics:
            from magcache_dist.eval.perceptual import Lpips

            lpips = Lpips(settings.lpips_backbone, self.device)
        self.lpips = lpips
        self._sha: dict[str, str] = {}

    def sha(self, path: str) -> str:
        if path not in self._sha:
            self._sha[path] = file_sha256(path)
        return self._sha[path]

    def compare(self, ref: torch.Tensor, cand: torch.Tensor, metrics: list[str]) -> dict:
        """Per-frame values of ``metrics`` for two uint8 videos [F, 3, H, W] of one shape."""
        if ref.shape != cand.shape:
            (f, _, h, w), (g, _, i, j) = ref.shape, cand.shape
            raise InputError(f"the videos differ in shape: reference {f} frames of {h}x{w}, candidate {g} frames of "
                             f"{i}x{j}")
        per = {k: [] for k in metrics}
        b = self.settings.batch_frames
        for s in range(0, ref.shape[0], b):
            x, y = ref[s:s + b].to(self.device), cand[s:s + b].to(self.device)  # uint8 [n, 3, H, W]
            if "psnr" in per:
                per["psnr"] += frame_psnr(x, y)
            if "ssim" in per:
                per["ssim"] += frame_ssim(x, y)
            if "lpips" in per:
                per["lpips"] += self.lpips.frames(x, y)
        return per

    def task(self, task: Task) -> list[tuple[int, str, dict]]:
        """[(candidate index, name, row figures)] for one reference video; row figures hold ``error`` (None or
        why) and ``cached`` (every metric came from the score cache)."""
        out, ref_frames, ref_error = [], None, None
        for pair in task.pairs:
            row, entry, key = dict(error=None, cached=False), None, None
            try:
                if self.cache:
                    key = ScoreCache.key(self.sha(task.reference), self.sha(pair.path))
                    entry = self.cache.get(key)
            except OSError as e:
                row["error"] = f"cannot be read: {e}"
                out.append((pair.candidate, pair.name, row))
                continue
            todo = [m for m in self.settings.metrics if not _valid(entry, m, self.settings)]
            if todo:
                if ref_frames is None and ref_error is None:
                    ref_frames, ref_error = _read(task.reference, "reference")
                cand_frames, row["error"] = (None, ref_error) if ref_error else _read(pair.path, "candidate")
                if row["error"] is None:
                    try:
                        per = self.compare(ref_frames, cand_frames, todo)
                    except InputError as e:  # shapes that differ, frames too small for SSIM or LPIPS
                        row["error"] = str(e)
                if row["error"] is not None:
                    out.append((pair.candidate, pair.name, row))
                    continue
                f, _, h, w = ref_frames.shape
                entry = entry if entry and (entry["frames"], entry["height"], entry["width"]) == (f, h, w) else \
                    dict(format=CACHE_FORMAT, frames=f, height=h, width=w, metrics={})
                sha = self.sha if self.cache else (lambda path: None)
                entry.update(reference=dict(path=task.reference, sha256=sha(task.reference)),
                             candidate=dict(path=pair.path, sha256=sha(pair.path)))
                for m in todo:
                    entry["metrics"][m] = dict(definition=DEFINITIONS[m], per_frame=per[m],
                                               **(dict(settings=self.settings.lpips_identity) if m == "lpips" else {}))
                if self.cache:
                    self.cache.put(key, entry)
            row["cached"] = not todo
            per_frame = {m: entry["metrics"][m]["per_frame"] for m in self.settings.metrics}
            row.update(means(per_frame, entry["frames"], entry["height"], entry["width"]))
            out.append((pair.candidate, pair.name, row))
        return out


def _score_shard(tasks: list[Task], settings: Settings) -> list[tuple[int, str, dict]]:
    """A worker process's share (module level, so that a spawned process can run it)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    scorer = Scorer(settings)
    return [r for t in tasks for r in scorer.task(t)]


def _progress(done: int, total: int, what: str) -> None:
    print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)


def score(tasks: list[Task], settings: Settings, workers: int = 1, lpips=None) -> list[tuple[int, str, dict]]:
    """Every task's rows, in one process or over ``workers`` spawned processes."""
    if workers <= 1 or len(tasks) <= 1:
        scorer, rows = Scorer(settings, lpips), []
        for i, t in enumerate(tasks, 1):
            rows += scorer.task(t)
            _progress(i, len(tasks), os.path.basename(os.path.dirname(t.reference)) or t.reference)
        return rows
    cuda = torch.device(settings.device).type == "cuda" and torch.device(settings.device).index is None
    threads = max(1, (os.cpu_count() or 1) // workers)
    size = max(1, -(-len(tasks) // (workers * 4)))  # about 4 shards per worker: balance without rebuilding LPIPS often
    shards = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    rows, done = [], 0
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = []
        for i, shard in enumerate(shards):
            device = f"cuda:{i % torch.cuda.device_count()}" if cuda else settings.device
            s = dataclasses.replace(settings, device=device, threads=None if cuda else threads)
            futures.append(pool.submit(_score_shard, shard, s))
        for fut in cf.as_completed(futures):
            part = fut.result()
            rows += part
            done += 1
            _progress(done, len(shards), f"shard of {size} reference video(s)")
    return rows


def score_distributed(tasks: list[Task], settings: Settings, rank: int, world: int, lpips=None):
    """Under torchrun: this rank's share of the tasks, gathered to rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    mine = score(tasks[rank::world], settings, 1, lpips)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    return [r for part in gathered for r in part] if rank == 0 else None
