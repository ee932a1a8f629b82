"""Resumable sampling: the state of a generation written every ``checkpoint.every_n_steps`` steps.

Each rank writes its own file (the cached residuals are sharded like the tokens), then all ranks meet in one
barrier and rank 0 points ``latest.json`` at the new step. A job killed at any moment leaves the pointer on a
step every rank finished writing; ``resume=true`` continues from it and, on CPU, produces the same final latents
(and video) bit for bit as an uninterrupted run.

Layout of ``checkpoint.dir`` (default ``<output_dir>/checkpoint``; every rank must see the same directory, e.g.
shared storage across nodes):

    latest.json                     {"format", "next_step", "world_size", "config_hash", "config"}  (rank 0)
    step000004.rank0000.pt          this rank's state after 4 finished steps

A rank file holds only tensors, lists, dicts and numbers (``torch.save``) and is read with
``torch.load(weights_only=True)``: nothing is unpickled beyond plain data. It holds: the latents, the scheduler's
multistep history, the cache state of each branch this rank runs (accumulators, the sharded cached residual,
policy extras, the decision log), the torch RNG state, and the config fingerprint.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import torch

from magcache_dist.cache.base import copy_to
from magcache_dist.config import JobConfig, resolve_path, to_dict
from magcache_dist.errors import InputError
from magcache_dist.io.atomic import atomic_path, atomic_write_text
from magcache_dist.io.fingerprint import content_fingerprint
from magcache_dist.io.probe import ensure_writable_dir
from magcache_dist.preempt import Preempted, signal_number, stop_agreed

FORMAT = "magcache-dist-checkpoint/1"
POINTER = "latest.json"
# Keys that cannot change the sampled latents: a resume may change them (a prefix ending in "." covers a section).
# consensus_guard only verifies decisions; fps, vae.* and calibration_out act after sampling; model.layout names
# how the same weights are stored, parallel.shared_load how they are read (bit-identical either way); a prompt list's
# video is fingerprinted by its own prompt and seed, not by the list's file or how many data-parallel groups share
# the list.
FREE_KEYS = ("progress", "save_video", "resume", "dry_run", "output_dir", "checkpoint.", "planner.",
             "parallel.timeout_s", "parallel.shared_load", "cache.consensus_guard", "cache.calibration.out",
             "video.fps", "vae.", "model.layout", "prompts_file", "prompts_shard", "parallel.dp_degree")


def _free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE_KEYS)


# Keys naming files whose content, not their path, determines the result: the fingerprint holds the content's
# fingerprint (magcache_dist/io/fingerprint.py), so the same weights staged elsewhere are the same job and other
# weights written over the same path are not.
CONTENT_KEYS = ("model.ckpt", "ckpt_dir", "image", "cache.magcache.ratios_file")


def fingerprint(cfg: JobConfig) -> dict:
    """The flattened config keys that determine the result (``{"sampler.num_steps": 8, ...}``); a file or folder
    (CONTENT_KEYS) by its content."""
    flat = {}

    def walk(prefix, obj):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            elif not _free(key):
                flat[key] = v

    walk("", to_dict(cfg))
    for key in CONTENT_KEYS:
        if flat.get(key) is not None:
            flat[key] = content_fingerprint(resolve_path(flat[key]))
    return flat


def config_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(cfg: JobConfig) -> str:
    return resolve_path(cfg.checkpoint.dir) if cfg.checkpoint.dir else os.path.join(cfg.output_dir, "checkpoint")


def read_pointer(cfg: JobConfig) -> dict:
    path = os.path.join(checkpoint_dir(cfg), POINTER)
    if not os.path.isfile(path):
        raise InputError(f"resume=true but checkpoint.dir={checkpoint_dir(cfg)!r} holds no checkpoint ({POINTER}); "
                         f"set resume=false to start from scratch, or point checkpoint.dir at the interrupted job's "
                         f"checkpoint directory")
    try:
        with open(path) as f:
            ptr = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"resume=true: {path} is unreadable ({e}); set resume=false to start from scratch") from None
    if not isinstance(ptr, dict) or ptr.get("format") != FORMAT:
        raise InputError(f"resume=true: {path} is not a {FORMAT!r} pointer; set resume=false to start from scratch")
    check_fields(ptr, POINTER_FIELDS, path)
    return ptr


# the fields of latest.json and of a rank file, and what each must be (a null or missing one is an error)
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")
_STR = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_DICT = (lambda v: isinstance(v, dict), "an object")
POINTER_FIELDS = dict(format=_STR, next_step=_INT, world_size=_INT, config_hash=_STR, config=_DICT)
RANK_FIELDS = dict(format=_STR, next_step=_INT, rank=_INT, world_size=_INT, config_hash=_STR,
                   x=(torch.is_tensor, "a tensor"), scheduler=_DICT, cache=_DICT,
                   rng=(lambda v: isinstance(v, dict) and torch.is_tensor(v.get("torch")),
                        "an object with the 'torch' RNG state"))


def check_fields(obj: dict, fields: dict, path: str) -> None:
    """Every field of a checkpoint file present with its kind, or an InputError naming the file and the fields."""
    bad = [f"{k}={obj.get(k, '<missing>')!r} (must be {what})" for k, (ok, what) in fields.items()
           if k not in obj or not ok(obj[k])]
    if bad:
        shown = [b if len(b) < 120 else b[:100] + "...)" for b in bad]
        raise InputError(f"resume=true: {path} has {'; '.join(shown)}: it is damaged or from another version; "
                         f"set resume=false to start from scratch")


def read_rank_file(path: str, mmap: bool = False) -> dict:
    """A rank file as plain data (``weights_only``), schema-checked; ``mmap``: tensors stay in the file (the check
    before any collective reads no tensor data)."""
    if not os.path.isfile(path):
        raise InputError(f"resume=true: {path} is missing (checkpoint.dir must be shared by all ranks); set "
                         f"resume=false to start from scratch")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated file, or anything that is not plain data
        raise InputError(f"resume=true: {path} could not be read as plain data (weights_only=True): "
                         f"{type(e).__name__}: {str(e).splitlines()[0]}; set resume=false") from None
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        raise InputError(f"resume=true: {path} is not a {FORMAT!r} file; set resume=false")
    check_fields(sd, RANK_FIELDS, path)
    return sd


def config_diff(saved: dict, now: dict) -> list[str]:
    keys = sorted(k for k in set(saved) | set(now) if not _free(k))  # a checkpoint may predate a key's freedom
    return [f"{k}={saved.get(k, '<unset>')!r} in the checkpoint but {now.get(k, '<unset>')!r} now"
            for k in keys if saved.get(k, "<unset>") != now.get(k, "<unset>")]


def validate_checkpointing(cfg: JobConfig, world_size: int) -> None:
    """Before any collective: checkpoint settings, and for resume=true a checkpoint of this very job. ``cfg``: the
    job's resolved config (its family's defaults filled in, dtypes of this machine: what the fingerprint holds)."""
    signal_number(cfg.checkpoint.signal)
    n = cfg.checkpoint.every_n_steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"checkpoint.every_n_steps={n!r} must be an integer >= 0 (0 disables checkpoints)")
    if n == 0 and not cfg.resume:
        return
    if n >= cfg.sampler.num_steps:
        raise InputError(f"checkpoint.every_n_steps={n} >= sampler.num_steps={cfg.sampler.num_steps}: no checkpoint "
                         f"would ever be written; use a smaller value (0 disables checkpoints)")
    d = checkpoint_dir(cfg)
    ensure_writable_dir(d, "checkpoint.dir")  # found unwritable now, not at the first checkpoint mid-run
    if not cfg.resume:
        return
    ptr = read_pointer(cfg)
    diff = config_diff(ptr.get("config", {}), fingerprint(cfg))
    if diff:
        raise InputError(f"resume=true: the checkpoint in checkpoint.dir={d!r} was written by a different job: "
                         f"{'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}. Resume with the original values, "
                         f"or set resume=false to start again")
    if ptr.get("world_size") != world_size:
        raise InputError(f"resume=true: the checkpoint was written by {ptr.get('world_size')} ranks, this job has "
                         f"WORLD_SIZE={world_size}; relaunch with the original number of processes")
    if not 0 < ptr["next_step"] < cfg.sampler.num_steps:
        raise InputError(f"resume=true: the checkpoint's next step {ptr['next_step']} is outside 1.."
                         f"{cfg.sampler.num_steps - 1} (sampler.num_steps); set resume=false")
    for rank in range(world_size):  # every rank's file, found and schema-checked before any collective
        path = os.path.join(d, f"step{ptr['next_step']:06d}.rank{rank:04d}.pt")
        sd = read_rank_file(path, mmap=True)
        if (sd["config_hash"], sd["next_step"], sd["rank"], sd["world_size"]) != \
                (ptr["config_hash"], ptr["next_step"], rank, world_size):
            raise InputError(f"resume=true: {path} belongs to another job, step or rank than {POINTER} says; set "
                             f"resume=false to start from scratch")


class Checkpointer:
    """Per-rank writer (``on_step`` passed to ``sample``) and reader (``restore``) of the sampling state."""

    def __init__(self, cfg: JobConfig, par, num_steps: int, device="cpu"):
        self.cfg, self.par, self.num_steps, self.device = cfg, par, num_steps, device
        self.every = cfg.checkpoint.every_n_steps
        self.dir = checkpoint_dir(cfg)
        self.fp = fingerprint(cfg)
        self.hash = config_hash(self.fp)
        self.written: list[int] = []
        self.resumed_from: int | None = None
        if self.every and not cfg.resume:
            self._clear_stale()

    def rank_file(self, next_step: int, rank: int | None = None) -> str:
        return os.path.join(self.dir, f"step{next_step:06d}.rank{self.par.rank if rank is None else rank:04d}.pt")

    def _own_files(self) -> list[tuple[int, str]]:
        out = []
        for p in glob.glob(os.path.join(self.dir, f"step*.rank{self.par.rank:04d}.pt")):
            try:
                out.append((int(os.path.basename(p)[4:10]), p))
            except ValueError:
                pass
        return sorted(out)

    def _clear_stale(self) -> None:
        """A fresh job (resume=false) never mixes with an older job's files: drop ours and, on rank 0, the pointer."""
        for _, p in self._own_files():
            os.remove(p)
        if self.par.rank == 0 and os.path.exists(os.path.join(self.dir, POINTER)):
            os.remove(os.path.join(self.dir, POINTER))

    # ---- write ----------------------------------------------------------------------------------------
    def on_step(self, step: int, x: torch.Tensor, state, scheduler) -> None:
        """After each step: the periodic checkpoint (every N steps), and the stop request (magcache_dist/preempt.py):
        the group agrees on it once per step; then every rank's state after this step is written and Preempted
        raised on every rank. After the last step there is nothing to save: the video is finished first."""
        done = step + 1
        periodic = bool(self.every) and done % self.every == 0 and done < self.num_steps
        stop = stop_agreed(self.par, x.device) and done < self.num_steps
        if not (periodic or stop):
            return
        self.write(done, x, state, scheduler, preempted=stop)
        if stop:
            raise Preempted(done, f"{self.cfg.output_dir} stopped after step {done} of {self.num_steps} "
                                  f"({self.dir} holds its checkpoint)")

    def write(self, done: int, x: torch.Tensor, state, scheduler, preempted: bool = False) -> None:
        payload = dict(format=FORMAT, next_step=done, rank=self.par.rank, world_size=self.par.group.size,
                       config_hash=self.hash, x=copy_to(x, "cpu"), scheduler=copy_to(scheduler.state_dict(), "cpu"),
                       cache=state.state_dict(), rng=dict(torch=torch.get_rng_state()))
        if torch.cuda.is_available():
            payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        with atomic_path(self.rank_file(done)) as tmp:
            torch.save(payload, tmp)
        # every rank's file is complete before the pointer moves (one tiny all-reduce as a barrier)
        self.par.group.all_reduce(torch.zeros(1, device=x.device))
        if self.par.rank == 0:
            atomic_write_text(os.path.join(self.dir, POINTER), json.dumps(dict(
                format=FORMAT, next_step=done, world_size=self.par.group.size, config_hash=self.hash,
                config=self.fp, preempted=preempted), indent=1, default=str))
        # after this barrier rank 0 has moved the pointer at least to our previous checkpoint: older files can go
        previous = self.written[-1] if self.written else None
        self.written.append(done)
        for s, p in self._own_files():
            if previous is not None and s < previous:
                os.remove(p)

    def finished(self) -> None:
        """Rank 0, once the video's report is written: its step checkpoints go (checkpoint.keep=true keeps them),
        and with them the pointer, so a rerun never continues a finished video."""
        if self.cfg.checkpoint.keep or self.par.rank != 0 or not os.path.isdir(self.dir):
            return
        if os.path.isfile(os.path.join(self.dir, POINTER)):
            os.remove(os.path.join(self.dir, POINTER))  # first: a rerun never sees a pointer without its files
        for p in glob.glob(os.path.join(self.dir, "step*.rank*.pt")):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:  # not empty (someone else's files) or shared: leave it
            pass

    # ---- read -----------------------------------------------------------------------------------------
    def restore(self, policy, branches, scheduler_factory) -> dict:
        """{} for a fresh run; for resume=true: dict(noise=x, state, start_step, scheduler) for ``sample``."""
        if not self.cfg.resume:
            return {}
        ptr = read_pointer(self.cfg) if self.par.rank == 0 else None
        next_step = self.par.group.broadcast_object(ptr["next_step"] if ptr else None)
        path = self.rank_file(next_step)
        sd = read_rank_file(path)
        if (sd["config_hash"], sd["next_step"], sd["rank"], sd["world_size"]) != \
                (self.hash, next_step, self.par.rank, self.par.group.size):
            raise InputError(f"resume=true: {path} belongs to another job or rank (config hash {sd['config_hash']} "
                             f"vs {self.hash}); set resume=false")
        scheduler = scheduler_factory()
        scheduler.load_state_dict(copy_to(sd["scheduler"], self.device))
        torch.set_rng_state(sd["rng"]["torch"])
        if "cuda" in sd["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["rng"]["cuda"])
        self.resumed_from = next_step
        self.written.append(next_step)
        return dict(noise=copy_to(sd["x"], self.device), state=self._cache_state(policy, branches, sd["cache"]),
                    start_step=next_step, scheduler=scheduler)

    def _cache_state(self, policy, branches, sd: dict):
        from magcache_dist.sampling.loop import new_cache_state

        state = new_cache_state(policy, branches, self.par)
        state.load_state_dict(sd, self.device)
        return state

    def describe(self) -> dict:
        return dict(dir=self.dir, every_n_steps=self.every, written_steps=list(self.written),
                    resumed_from_step=self.resumed_from, config_hash=self.hash)
