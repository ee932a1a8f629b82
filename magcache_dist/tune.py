"""Ask for a quality, get the MagCache setting with the fewest computed calls that reaches it: ``magcache-tune``.

    magcache-tune --config configs/default.yaml --prompts prompts.txt --target-psnr 25 --out tune/
    python -m magcache_dist.tune --config CFG --prompts FILE --target-ssim 0.9 --out DIR [key=value ...]
    torchrun --nproc_per_node 4 -m magcache_dist.tune --config CFG --prompts FILE --target-psnr 25 --out DIR \\
        parallel.dp_degree=4

What it does (docs/magcache.md, "Tuning MagCache for a quality target"):

1. The prompts are split into a tuning part and a held-out part (``--held-out``, ``--split-seed``). The full-sampling
   references of all of them are made once, as one prompt-list job in ``DIR/reference`` (a rerun reuses them).
2. Every setting of the grid (``--thresh``, ``--K``, ``--retention``, ``--branch-sync``) is planned without running:
   in the calibrated modes (``cache.mode=magcache`` with a preset or ratio file, ``auto`` with a stored table) the
   skip schedule, hence the computed calls, depends on the setting alone, not on the prompt. Settings with the same
   schedule make the same videos bit for bit and are one candidate.
3. The search samples candidates (``DIR/candidates/<id>``, one prompt-list job per chunk of prompts) and scores
   them against the references with the eval CLI's definitions (magcache_dist/eval: per-frame PSNR / SSIM of the
   decoded frames, LPIPS). It never samples a candidate that computes as many calls as the best passing one found
   so far, and by default (``--search probe``) it assumes quality does not rise when a setting only skips more:
   a higher threshold, a larger K or a smaller retention (same branch_sync), or a schedule computing a subset of
   another's calls. A candidate that fails then fails every candidate it dominates that way, and the next probe is
   the median (by calls) of the candidates still open, so the answer is found with few sampled videos. A candidate
   is sampled a chunk of prompts at a time, hardest prompts first, and abandoned as soon as its mean cannot reach the
   target even if every prompt left scored its best possible value (the metric's cap, or what a candidate it
   cannot beat measured there). ``--search exact`` drops the assumption: candidates in order of calls, the first
   to pass is the answer.
4. The chosen candidate (fewest calls whose mean over the tuning prompts meets every target) is sampled on the
   held-out prompts. ``DIR/tuned.yaml`` (a job config for ``launch/generate.py --config``), ``DIR/tune.json``,
   ``DIR/tune.md`` and ``DIR/quality_vs_calls.png`` are written.

Exit codes: 0 done; 1 done, but no candidate of the grid reaches the target (tuned.yaml then says cache.mode=off);
2 bad input (an InputError naming the flag or key, before any video is made where it can be known then).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import yaml

from magcache_dist.errors import InputError

FORMAT = "magcache-tune/1"
PLOT_FILE = "quality_vs_calls.png"
# metric -> (higher is better, its best possible value: what an unmeasured prompt can at most contribute)
METRICS = {"psnr": (True, 100.0), "ssim": (True, 1.0), "lpips": (False, 0.0)}
DEFAULT_GRID = dict(thresh=[0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32], K=[1, 2, 3, 4, 6],
                    retention=[0.1, 0.2, 0.3])
TUNED_KEYS = ("model.name", "model.ckpt", "model.init_seed", "video.frames", "video.height", "video.width",
              "sampler.num_steps", "sampler.shift", "sampler.guidance", "sampler.solver")


@dataclass(frozen=True, order=True)
class Setting:
    branch_sync: str
    thresh: float
    K: int
    retention: float

    def overrides(self) -> list[str]:
        return [f"cache.magcache.thresh={self.thresh!r}", f"cache.magcache.K={self.K}",
                f"cache.magcache.retention={self.retention!r}", f"cache.branch_sync={self.branch_sync}"]

    def name(self) -> str:
        return f"t{self.thresh:g}-K{self.K}-r{self.retention:g}-{self.branch_sync}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dominates(self, other: "Setting") -> bool:
        """Whether self only skips more than ``other`` by the monotone directions (so it cannot be better)."""
        return (self.branch_sync == other.branch_sync and self.thresh >= other.thresh and self.K >= other.K
                and self.retention <= other.retention)


@dataclass
class Candidate:
    """Settings with one skip schedule (they make the same videos) and what the search learnt about them."""
    id: str
    settings: list[Setting]
    calls: int
    total_calls: int
    skipped: dict  # branch -> skipped steps
    computed: frozenset  # (step, branch) of every computed call
    status: str = "open"  # open | pass | fail | implied-fail | pruned
    reason: str = ""
    metrics: dict = field(default_factory=dict)  # video name -> {psnr, ssim, lpips}
    order: int | None = None  # when it was sampled (0 = first)

    def no_better_than(self, other: "Candidate") -> bool:
        """Under the monotone assumption: self skips a superset of other's calls, or one of its settings lies in a
        monotone direction (more skipping) from one of other's."""
        return self.computed <= other.computed or any(a.dominates(b) for a in self.settings for b in other.settings)

    def mean(self, names: list[str]) -> dict:
        return mean_metrics([self.metrics[n] for n in names if n in self.metrics])


def mean_metrics(rows: list[dict]) -> dict:
    out = {}
    for k in METRICS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals and len(vals) == len(rows) else None
    return out


def meets(mean: dict, targets: dict) -> bool:
    return all(mean.get(k) is not None and (mean[k] >= t if METRICS[k][0] else mean[k] <= t)
               for k, t in targets.items())


# -- input --------------------------------------------------------------------------------------------------------
def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: give numbers separated by commas, e.g. {flag} 0.04,0.08,0.12") from None
    if not vals:
        raise InputError(f"{flag} {text!r} is empty; give numbers separated by commas")
    return sorted(set(vals))


def _ints(text: str, flag: str) -> list[int]:
    vals = _floats(text, flag)
    if any(v != int(v) for v in vals):
        raise InputError(f"{flag} {text!r}: K counts skipped calls; give whole numbers, e.g. {flag} 1,2,4")
    return sorted({int(v) for v in vals})


def parser() -> argparse.ArgumentParser:
    intro, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(prog="magcache-tune", description=intro,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    ap.add_argument("--config", help="the job config to tune (OmegaConf YAML, e.g. configs/default.yaml)")
    ap.add_argument("--prompts", required=True, help="tuning prompts: a text file (one per line) or .jsonl")
    ap.add_argument("--out", required=True, help="folder for references, candidates, tuned.yaml, tune.json, tune.md")
    ap.add_argument("--target-psnr", type=float, help="mean PSNR (dB) the tuned setting must reach")
    ap.add_argument("--target-ssim", type=float, help="mean SSIM the tuned setting must reach")
    ap.add_argument("--target-lpips", type=float, help="mean LPIPS the tuned setting must stay at or under")
    ap.add_argument("--held-out", default="0.25",
                    help="prompts kept out of the search and scored on the tuned setting only: a count (2) or a "
                         "fraction (0.25, rounded, at least 1 when there are 2+ prompts); 0 for none")
    ap.add_argument("--split-seed", type=int, default=0, help="which prompts are held out (a seeded shuffle)")
    ap.add_argument("--thresh", help="thresholds to search, comma separated (default "
                                     f"{','.join(map(str, DEFAULT_GRID['thresh']))})")
    ap.add_argument("--K", help=f"max consecutive skips to search (default {','.join(map(str, DEFAULT_GRID['K']))})")
    ap.add_argument("--retention", help="retention fractions to search (default "
                                        f"{','.join(map(str, DEFAULT_GRID['retention']))})")
    ap.add_argument("--branch-sync", help="joint, official or both (default: both where the job has two CFG "
                                          "branches, else the config's)")
    ap.add_argument("--search", choices=("probe", "exact"), default="probe",
                    help="probe (default): monotone pruning and median probing; exact: no assumption, candidates "
                         "in order of calls")
    ap.add_argument("--chunk", type=int, help="videos per sampling run (default: one per data-parallel group); the "
                                              "search may stop a candidate between chunks")
    ap.add_argument("--lpips-backbone", help="torchvision's AlexNet state dict for --target-lpips (see "
                                             "docs/evaluation.md)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. sampler.num_steps=30")
    return ap


@dataclass
class TuneSetup:
    """Everything decided before any video is made (every rank computes the same)."""
    args: argparse.Namespace
    out: str
    overrides: list[str]
    base: object  # JobConfig as given
    base_job: object  # its validated Job (candidate settings replace the MagCache keys)
    targets: dict
    videos: list  # VideoSpec, every prompt
    tune: list[str]  # names
    held_out: list[str]
    grid: dict
    candidates: list[Candidate]
    settings_total: int
    resolved: object  # cache.mode=auto: what the store holds
    chunk: int
    lpips_backbone: str | None = None  # --target-lpips: the AlexNet file


def targets_of(args) -> dict:
    targets = {k: getattr(args, f"target_{k}") for k in METRICS if getattr(args, f"target_{k}") is not None}
    if not targets:
        raise InputError("give a target: --target-psnr DB, --target-ssim S or --target-lpips L (several: all must "
                         "be met)")
    for k, t in targets.items():
        if not math.isfinite(t):
            raise InputError(f"--target-{k} {t} must be a finite number")
    if "psnr" in targets and not 0 < targets["psnr"] <= METRICS["psnr"][1]:
        raise InputError(f"--target-psnr {targets['psnr']} must be in (0, 100] dB (identical frames count as 100)")
    if "ssim" in targets and not 0 < targets["ssim"] <= 1:
        raise InputError(f"--target-ssim {targets['ssim']} must be in (0, 1]")
    if "lpips" in targets and targets["lpips"] < 0:
        raise InputError(f"--target-lpips {targets['lpips']} must be >= 0 (0: identical)")
    return targets


def split(names: list[str], held_out: str, seed: int) -> tuple[list[str], list[str]]:
    """(tuning names, held-out names), each in the prompt file's order."""
    n = len(names)
    try:
        h = float(held_out) if "." in held_out else int(held_out)
    except ValueError:
        raise InputError(f"--held-out {held_out!r}: give a count (2) or a fraction (0.25)") from None
    if isinstance(h, float):
        if not 0 <= h < 1:
            raise InputError(f"--held-out {held_out}: a fraction must be in [0, 1); or give a count")
        h = min(n - 1, max(1 if n >= 2 and h > 0 else 0, round(n * h)))
    if not 0 <= h < n:
        raise InputError(f"--held-out {held_out}: {n} prompt(s) leave none to tune on; give a count below {n} "
                         f"or add prompts")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = set(order[:h])
    return [x for i, x in enumerate(names) if i not in out], [x for i, x in enumerate(names) if i in out]


def prepare(args, world_size: int = 1) -> TuneSetup:
    """Validate everything and setup every setting; InputError naming the argument or key on bad input."""
    from magcache_dist.config import explicitly_set, load_config
    from magcache_dist.job import validate_job
    from magcache_dist.prompts import read_prompts

    targets = targets_of(args)
    if args.chunk is not None and args.chunk < 1:
        raise InputError(f"--chunk {args.chunk} must be >= 1")
    out = os.path.abspath(args.out)
    overrides = list(args.overrides)
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in ("prompts_file", "prompt", "output_dir", "resume", "dry_run"):
            raise InputError(f"override {o!r}: magcache-tune sets {key} itself (--prompts, --out, the grid flags); "
                             f"remove it")
    base = load_config(args.config, overrides)
    if base.cache.mode not in ("magcache", "auto"):
        raise InputError(f"cache.mode={base.cache.mode!r}: magcache-tune searches MagCache settings whose calls are "
                         f"known before running: use cache.mode=magcache (a preset or cache.magcache.ratios_file) "
                         f"or cache.mode=auto with a calibrated table in cache.calibration.store_dir")
    if "prompts_file" in explicitly_set(base):
        raise InputError(f"--config {args.config!r} sets prompts_file; the tuning prompts are --prompts: remove it "
                         f"(or pass the same file as --prompts)")
    videos = read_prompts(os.path.abspath(args.prompts), base.seed, base.negative_prompt, base.image)
    tune, held = split([v.name for v in videos], args.held_out, args.split_seed)
    base_job = validate_job(job_config(args, overrides, os.path.abspath(args.prompts), out, []), world_size)
    resolved = None
    if base.cache.mode == "auto":
        from magcache_dist.auto import lookup

        resolved = lookup(base_job.cfg, base_job.scfg)
        if resolved.table_json is None:
            raise InputError(f"cache.mode=auto: cache.calibration.store_dir={base.cache.calibration.store_dir!r} "
                             f"holds no table for this model, steps and geometry; run one job with cache.mode=auto "
                             f"(it calibrates and stores the table), then tune")
    grid, branch_syncs = grid_of(args, base, base_job)
    candidates, total = plan_candidates(base_job, resolved, grid, branch_syncs)
    chunk = args.chunk or base_job.dims.dp_degree
    return TuneSetup(args, out, overrides, base, base_job, targets, videos, tune, held,
                     dict(grid, branch_sync=branch_syncs),
                candidates, total, resolved, chunk, check_lpips(args, targets))


def job_config(args, overrides: list[str], prompts_file: str, output_dir: str, extra: list[str]):
    """The job of one sampling run: the user's config and overrides, then the tuner's keys (last, so they win)."""
    from magcache_dist.config import load_config

    keys = [*overrides, *extra, f"prompts_file={prompts_file}", f"output_dir={output_dir}",
            "save_video=true"]
    return load_config(args.config, keys)


def grid_of(args, base, base_job) -> tuple[dict, list[str]]:
    grid = dict(thresh=_floats(args.thresh, "--thresh") if args.thresh else DEFAULT_GRID["thresh"],
                K=_ints(args.K, "--K") if args.K else DEFAULT_GRID["K"],
                retention=_floats(args.retention, "--retention") if args.retention else DEFAULT_GRID["retention"])
    if args.branch_sync is None:
        syncs = ["joint", "official"] if len(base_job.scfg.branches) > 1 else [base.cache.branch_sync]
    elif args.branch_sync == "both":
        syncs = ["joint", "official"]
    elif args.branch_sync in ("joint", "official"):
        syncs = [args.branch_sync]
    else:
        raise InputError(f"--branch-sync {args.branch_sync!r} must be joint, official or both")
    return grid, syncs


def plan_candidates(base_job, resolved, grid: dict, branch_syncs: list[str]) -> tuple[list[Candidate], int]:
    """Every setting's schedule (the setup: no tensors), grouped into candidates by schedule, ordered by calls."""
    from magcache_dist.cache import MagCacheConfig, skip_schedule
    from magcache_dist.cache.factory import build_cache

    branches = list(base_job.scfg.branches)
    groups: dict[tuple, list] = {}
    n = 0
    for sync, t, k, r in itertools.product(branch_syncs, grid["thresh"], grid["K"], grid["retention"]):
        s = Setting(sync, float(t), int(k), float(r))
        try:
            spec = dataclasses.replace(base_job.cache, magcache=MagCacheConfig(s.thresh, s.K, s.retention),
                                       branch_sync=sync)
            policy = build_cache(spec, resolved=resolved)
        except InputError as e:  # a grid value the rule rejects: name the flag
            raise InputError(f"--thresh / --K / --retention grid, setting {s.name()}: {e}") from None
        p = skip_schedule(policy, base_job.scfg.num_steps, branches)
        key = tuple((b, tuple(p["skipped_steps"][b])) for b in branches)
        groups.setdefault(key, [p, []])[1].append(s)
        n += 1
    out = []
    for key, (p, settings) in groups.items():
        settings.sort()
        computed = frozenset((s, b) for b, skipped in key for s in range(base_job.scfg.num_steps) if s not in skipped)
        out.append(Candidate("", settings, p["computed_calls"], p["total_calls"], dict(key), computed))
    preferred = base_job.cfg.cache.branch_sync
    for c in out:  # the setting written for a candidate: the config's branch_sync first, then the smallest thresh
        c.settings.sort(key=lambda s: (s.branch_sync != preferred, s.thresh, s.K, -s.retention))
        c.id = c.settings[0].name()
    out.sort(key=lambda c: (c.calls, c.id))
    return out, n


# -- sampling and scoring ------------------------------------------------------------------------------------------
class Runner:
    """Makes videos through the job API (run_job on every rank) and scores them on rank 0, which broadcasts the
    numbers so every rank takes the same next step."""

    def __init__(self, setup: TuneSetup, par, device, lpips=None):
        self.setup, self.par, self.device, self.lpips = setup, par, device, lpips
        self._scorer = None
        self.requested = dict(reference=0, search=0, held_out=0)  # videos asked for
        self.made = 0  # videos actually sampled (the others were reused from an earlier run in DIR)
        self.by_name = {v.name: v for v in setup.videos}

    def _barrier(self, obj=None):
        return self.par.world.broadcast_object(obj)

    def _write_prompts(self, path: str, names: list[str]) -> None:
        if self._is_rank0():  # the others read it once the barrier below lets them
            from magcache_dist.io.atomic import atomic_write_text

            lines = []
            for n in names:
                v = self.by_name[n]
                e = dict(prompt=v.prompt, seed=v.seed, negative_prompt=v.negative_prompt, name=v.name)
                if v.image is not None:
                    e["image"] = v.image
                lines.append(json.dumps(e))
            atomic_write_text(path, "\n".join(lines) + "\n")
        self._barrier()

    def run(self, output_dir: str, names: list[str], extra: list[str], prompts_name: str) -> int:
        """Make the videos ``names`` with the job's config plus ``extra`` in ``output_dir``; returns how many were
        sampled (not reused)."""
        from magcache_dist.job import validate_job
        from magcache_dist.run import run_job

        path = os.path.join(self.setup.out, "prompts", prompts_name + ".jsonl")
        self._write_prompts(path, names)
        # memory: checked once, in prepare (the settings searched do not change it)
        cfg = job_config(self.setup.args, self.setup.overrides, path, output_dir,
                         [*extra, "progress=false", "planner.memory_check=false"])
        job = validate_job(cfg, self.par.world.size)
        run_job(job, self.par, self.device)
        self._barrier()  # every group is done (the last one wrote summary.json)
        made = None
        if self._is_rank0():
            with open(os.path.join(output_dir, "summary.json")) as f:
                summary = json.load(f)
            made = summary["videos_done"] - summary["videos_reused"]
        made = self._barrier(made)
        self.made += made
        return made

    def _is_rank0(self) -> bool:
        return self.par.rank == 0 and self.par.dp_index == 0

    def references(self) -> None:
        names = [v.name for v in self.setup.videos]
        self.requested["reference"] += len(names)
        self.run(self.ref_dir, names, ["cache.mode=off"], "reference")

    @property
    def ref_dir(self) -> str:
        return os.path.join(self.setup.out, "reference")

    def candidate_dir(self, c: Candidate) -> str:
        return os.path.join(self.setup.out, "candidates", c.id)

    def sample(self, c: Candidate, names: list[str], kind: str) -> dict:
        """Make and score candidate ``c`` on ``names``: {name: metrics}; fills c.metrics."""
        self.requested[kind] += len(names)
        extra = ["cache.mode=" + self.setup.base.cache.mode, *c.settings[0].overrides()]
        self.run(self.candidate_dir(c), names, extra, f"{c.id}-{kind}")
        scores = None
        if self._is_rank0():
            try:
                scores = {n: self.score(c, n) for n in names}
            except Exception as e:  # noqa: BLE001 - a video that cannot be read: every rank stops with the cause
                scores = f"{type(e).__name__}: {e}"
        scores = self._barrier(scores)
        if isinstance(scores, str):
            raise RuntimeError(f"scoring candidate {c.id}: {scores}")
        c.metrics.update(scores)
        return scores

    @property
    def scorer(self):
        """The eval's scorer (magcache_dist/eval/scoring.py), with its score cache in ``DIR/.eval-cache``."""
        if self._scorer is None:
            from magcache_dist.eval.scoring import Scorer, Settings

            metrics = ("psnr", "ssim", "lpips") if self.lpips is not None else ("psnr", "ssim")
            identity = None if self.lpips is None else _lpips_identity(self.lpips)
            device = "cuda" if str(self.device).startswith("cuda") else "cpu"
            settings = Settings(metrics=metrics, device=device, batch_frames=8,
                                lpips_backbone=getattr(self.lpips, "backbone", None), lpips_identity=identity,
                                cache_dir=os.path.join(self.setup.out, ".eval-cache"))
            self._scorer = Scorer(settings, lpips=self.lpips)
        return self._scorer

    def score(self, c: Candidate, name: str) -> dict:
        from magcache_dist.eval.scoring import Pair, Task

        folder = os.path.join(self.candidate_dir(c), name)
        with open(os.path.join(folder, "report.json")) as f:
            report = json.load(f)
        if report["computed_calls"] != c.calls:
            raise RuntimeError(f"{folder}: computed {report['computed_calls']} calls "
                               f"but the skip schedule said {c.calls}; "
                               f"the schedule depends on more than the settings (is cache.mode calibrated?)")
        (_, _, row), = self.scorer.task(Task(_output(os.path.join(self.ref_dir, name)),
                                             (Pair(0, name, _output(folder)),)))
        if row["error"] is not None:
            raise RuntimeError(f"{folder}: {row['error']}")
        return {k: row.get(k) for k in METRICS}


def _lpips_identity(lp) -> str:
    """What the eval's score cache keys an LPIPS value by: the package version and the backbone file's hash."""
    from importlib.metadata import PackageNotFoundError, version

    from magcache_dist.eval.scoring import file_sha256

    try:
        lib = version("lpips")
    except PackageNotFoundError:
        lib = "unknown"
    return f"lpips {lib}; backbone sha256 {file_sha256(lp.backbone)}"


def _output(folder: str) -> str:
    """The video (or an image model's image) a job wrote in ``folder``."""
    from magcache_dist.eval.folders import OUTPUTS

    for name in OUTPUTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: no {' or '.join(OUTPUTS)}")


# -- the search ----------------------------------------------------------------------------------------------------
class Search:
    def __init__(self, setup: TuneSetup, runner: Runner):
        self.setup, self.runner = setup, runner
        self.cands = setup.candidates
        self.best: Candidate | None = None
        self.sampled: list[Candidate] = []
        self.log: list[str] = []
        self.violations: list[str] = []  # sampled pairs that contradict the monotone assumption

    def _open(self) -> list[Candidate]:
        return [c for c in self.cands if c.status == "open"]

    def run(self) -> Candidate | None:
        while True:
            self._prune()
            open_ = self._open()
            if not open_:
                break
            probe = open_[0] if self.exact else open_[(len(open_) - 1) // 2]
            self._evaluate(probe)
            if probe.status == "pass":
                self.best = probe
                self.log.append(f"{probe.id} ({probe.calls} calls) passes: every candidate with {probe.calls} or "
                                f"more calls is pruned")
            elif not self.exact:
                implied = [c for c in self._open() if c.no_better_than(probe)]
                for c in implied:
                    c.status, c.reason = "implied-fail", f"skips no less than {probe.id}, which failed"
                self.log.append(f"{probe.id} ({probe.calls} calls) fails: {len(implied)} candidate(s) it dominates "
                                f"fail with it")
            else:
                self.log.append(f"{probe.id} ({probe.calls} calls) fails")
            if not self.exact:
                self._check_assumption()
        return self.best

    @property
    def exact(self) -> bool:
        return self.setup.args.search == "exact" or bool(self.violations)

    def _check_assumption(self) -> None:
        """Probe search: if two sampled candidates contradict the monotone assumption (one only skips more than the
        other and still scores better), the assumption does not hold for this model: every candidate it ruled out
        is open again and the search goes on as --search exact does."""
        full = [c for c in self.sampled if all(n in c.metrics for n in self.setup.tune)]
        for a in full:
            for b in full:
                if a is not b and a.no_better_than(b) and _better(a.mean(self.setup.tune), b.mean(self.setup.tune),
                                                                  self.setup.targets):
                    self.violations.append(f"{a.id} ({a.calls} calls) skips no less than {b.id} ({b.calls}) but "
                                           f"scores better")
        if self.violations:
            reopened = [c for c in self.cands if c.status == "implied-fail"]
            for c in reopened:
                c.status, c.reason = "open", ""
            self.log.append(f"the monotone assumption does not hold here ({self.violations[0]}): {len(reopened)} "
                            f"candidate(s) it ruled out are open again; the search continues in order of calls")

    def _prune(self) -> None:
        if self.best is None:
            return
        for c in self._open():
            if c.calls >= self.best.calls:
                c.status, c.reason = "pruned", f"{c.calls} calls: cannot beat {self.best.id} ({self.best.calls})"

    def _bound(self, c: Candidate, name: str, metric: str) -> float:
        """The best value ``c`` can reach on prompt ``name``: the metric's cap, or (probe search) the lowest value
        measured there by a candidate that c cannot beat."""
        higher, cap = METRICS[metric]
        vals = [cap]
        if not self.exact:
            vals += [o.metrics[name][metric] for o in self.sampled
                     if name in o.metrics and o.metrics[name].get(metric) is not None and c.no_better_than(o)]
        return min(vals) if higher else max(vals)

    def _order(self) -> list[str]:
        """Tuning prompts, hardest first: by how far below (above, for LPIPS) each candidate's mean they scored."""
        metric = next(iter(self.setup.targets))
        higher = METRICS[metric][0]
        score = {}
        for n in self.setup.tune:
            d = []
            for o in self.sampled:
                if n in o.metrics and all(m in o.metrics for m in self.setup.tune):
                    mean = o.mean(self.setup.tune)[metric]
                    d.append((o.metrics[n][metric] - mean) * (1 if higher else -1))
            score[n] = sum(d) / len(d) if d else 0.0
        return sorted(self.setup.tune, key=lambda n: (score[n], self.setup.tune.index(n)))

    def _evaluate(self, c: Candidate) -> None:
        c.order = len(self.sampled)
        self.sampled.append(c)
        todo = [n for n in self._order() if n not in c.metrics]
        while todo:
            chunk, todo = todo[:self.setup.chunk], todo[self.setup.chunk:]
            self.runner.sample(c, chunk, "search")
            for metric, target in self.setup.targets.items():
                higher = METRICS[metric][0]
                total = sum(c.metrics[n][metric] for n in self.setup.tune if n in c.metrics)
                total += sum(self._bound(c, n, metric) for n in todo)
                reach = total / len(self.setup.tune)
                if todo and ((reach < target) if higher else (reach > target)):
                    c.status = "fail"
                    c.reason = (f"stopped after {len(self.setup.tune) - len(todo)} of {len(self.setup.tune)} prompts: "
                                f"mean {metric} can reach at most {reach:.4g}, target {target:g}")
                    return
        mean = c.mean(self.setup.tune)
        if meets(mean, self.setup.targets):
            c.status, c.reason = "pass", "mean over the tuning prompts meets " + _targets_text(self.setup.targets)
        else:
            c.status = "fail"
            c.reason = "mean " + ", ".join(f"{k} {mean[k]:.4g}" for k in self.setup.targets) + " misses " + \
                _targets_text(self.setup.targets)


def _better(a: dict, b: dict, targets: dict) -> bool:
    """Whether mean ``a`` is better than mean ``b`` in some target metric."""
    return any((a[k] > b[k]) if METRICS[k][0] else (a[k] < b[k]) for k in targets
               if a.get(k) is not None and b.get(k) is not None)


def _targets_text(targets: dict) -> str:
    return ", ".join(f"{k} {'>=' if METRICS[k][0] else '<='} {t:g}" for k, t in targets.items())


# -- outputs -------------------------------------------------------------------------------------------------------
def _set(d: dict, dotted: str, value) -> None:
    *head, leaf = dotted.split(".")
    for h in head:
        d = d.setdefault(h, {})
    d[leaf] = value


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def tuned_config(setup: TuneSetup, chosen: Candidate | None) -> dict:
    """The job config to run with: the keys the user set, the keys the schedule depends on, and the tuned
    MagCache setting (cache.mode=off when nothing in the grid reaches the target)."""
    from magcache_dist.config import explicitly_set

    keys = [k for k in explicitly_set(setup.base) if k not in ("prompts_file", "save_video", "output_dir")
            and (not k.startswith("cache.") or k == "cache.consensus_guard")]
    out: dict = {}
    for k in [*keys, *[k for k in TUNED_KEYS if k not in keys]]:
        v = _get(setup.base, k)
        if v is not None:
            _set(out, k, v)
    if chosen is None:
        _set(out, "cache.mode", "off")
        return out
    s = chosen.settings[0]
    _set(out, "cache.mode", setup.base.cache.mode)
    _set(out, "cache.branch_sync", s.branch_sync)
    m = setup.base.cache.magcache
    if setup.base.cache.mode == "magcache":
        if m.ratios_file:
            _set(out, "cache.magcache.ratios_file", m.ratios_file)
        else:
            _set(out, "cache.magcache.preset", setup.base_job.cache.preset)
        if m.rule:
            _set(out, "cache.magcache.rule", m.rule)
    else:
        _set(out, "cache.calibration.store_dir", setup.base.cache.calibration.store_dir)
        if m.rule:
            _set(out, "cache.magcache.rule", m.rule)
    _set(out, "cache.magcache.thresh", s.thresh)
    _set(out, "cache.magcache.K", s.K)
    _set(out, "cache.magcache.retention", s.retention)
    return out


def base_setting(setup: TuneSetup) -> dict:
    """The config's own MagCache setting and its calls (the setup), for comparison."""
    m = setup.base.cache.magcache
    s = Setting(setup.base.cache.branch_sync, float(m.thresh), int(m.K), float(m.retention))
    c = next((c for c in setup.candidates if s in c.settings), None)
    if c is None:
        from magcache_dist.cache import skip_schedule
        from magcache_dist.cache.factory import build_cache

        p = skip_schedule(build_cache(setup.base_job.cache, resolved=setup.resolved), setup.base_job.scfg.num_steps,
                      list(setup.base_job.scfg.branches))
        calls = p["computed_calls"]
    else:
        calls = c.calls
    return dict(setting=s.as_dict(), calls=calls, candidate=c.id if c else None,
                tune_mean=c.mean(setup.tune) if c and all(n in c.metrics for n in setup.tune) else None)


def candidate_json(c: Candidate, setup: TuneSetup) -> dict:
    complete = all(n in c.metrics for n in setup.tune)
    return dict(id=c.id, status=c.status, reason=c.reason, calls=c.calls, total_calls=c.total_calls,
                sampled_order=c.order, settings=[s.as_dict() for s in c.settings], skipped_steps=c.skipped,
                per_prompt={n: c.metrics[n] for n in setup.tune if n in c.metrics},
                held_out={n: c.metrics[n] for n in setup.held_out if n in c.metrics},
                tune_mean=c.mean(setup.tune) if complete else None,
                partial_mean=c.mean(setup.tune) if c.metrics and not complete else None)


def write_outputs(setup: TuneSetup, search: Search, runner: Runner, chosen: Candidate | None, wall: float) -> dict:
    from magcache_dist.io.atomic import atomic_write_text

    tuned = tuned_config(setup, chosen)
    held = None
    if chosen is not None and setup.held_out:
        mean = chosen.mean(setup.held_out)
        held = dict(prompts=setup.held_out, per_prompt={n: chosen.metrics[n] for n in setup.held_out}, mean=mean,
                    meets_target=meets(mean, setup.targets),
                    minus_target={k: mean[k] - t for k, t in setup.targets.items() if mean.get(k) is not None})
    sampled = [c for c in setup.candidates if c.order is not None]
    res = dict(
        format=FORMAT, out=setup.out, config=setup.args.config, overrides=setup.overrides,
        prompts=os.path.abspath(setup.args.prompts),
        targets=setup.targets, search=setup.args.search,
        split=dict(tune=setup.tune, held_out=setup.held_out, held_out_arg=setup.args.held_out,
                   seed=setup.args.split_seed),
        grid=setup.grid, settings=setup.settings_total, candidates_total=len(setup.candidates),
        counts=dict(candidates_sampled=len(sampled),
                    candidates_by_status={s: sum(1 for c in setup.candidates if c.status == s)
                                          for s in ("pass", "fail", "implied-fail", "pruned", "open")},
                    videos_requested=dict(runner.requested, total=sum(runner.requested.values())),
                    videos_sampled_this_run=runner.made,
                    exhaustive_search_videos=len(setup.candidates) * len(setup.tune)),
        chosen=None if chosen is None else dict(
            id=chosen.id, setting=chosen.settings[0].as_dict(), same_schedule=[s.as_dict() for s in chosen.settings],
            calls=chosen.calls, total_calls=chosen.total_calls, calls_ratio=chosen.calls / chosen.total_calls,
            skipped_steps=chosen.skipped, tune_mean=chosen.mean(setup.tune), held_out=held),
        assumption=dict(used=setup.args.search == "probe", violations=search.violations,
                        fell_back_to_exact=setup.args.search == "probe" and bool(search.violations)),
        why=why(setup, chosen), base=base_setting(setup), tuned_config=tuned, log=search.log, wall_s=round(wall, 2),
        candidates=[candidate_json(c, setup) for c in setup.candidates])
    os.makedirs(setup.out, exist_ok=True)
    header = (f"# written by magcache-tune ({FORMAT}): {_targets_text(setup.targets)} over "
              f"{len(setup.tune)} tuning prompt(s); see tune.md\n")
    atomic_write_text(os.path.join(setup.out, "tuned.yaml"), header + yaml.safe_dump(tuned, sort_keys=False))
    res["plot"] = plot(setup, os.path.join(setup.out, PLOT_FILE), chosen)
    atomic_write_text(os.path.join(setup.out, "tune.json"), json.dumps(res, indent=1) + "\n")
    atomic_write_text(os.path.join(setup.out, "tune.md"), markdown(res))
    return res


def why(setup: TuneSetup, chosen: Candidate | None) -> str:
    if chosen is None:
        return (f"no candidate of the grid reaches {_targets_text(setup.targets)} on the tuning prompts; tuned.yaml "
                f"runs full sampling (cache.mode=off). Widen the grid toward more computed calls (smaller --thresh, "
                f"--K 1, larger --retention) or lower the target.")
    cheaper = [c for c in setup.candidates if c.calls < chosen.calls]
    tested = sum(1 for c in cheaper if c.status == "fail")
    implied = sum(1 for c in cheaper if c.status == "implied-fail")
    text = (f"{chosen.id} computes {chosen.calls} of {chosen.total_calls} calls and its mean over the "
            f"{len(setup.tune)} tuning prompts meets {_targets_text(setup.targets)}. Each of the {len(cheaper)} "
            f"candidates with fewer calls fails: {tested} sampled")
    if implied:
        text += (f", {implied} because they only skip more than a sampled one that failed (the monotone "
                 f"assumption of --search probe)")
    return text + "."


def _assumption_text(a: dict) -> str:
    if not a["used"]:
        return "Search exact: no assumption; candidates in order of calls, the first to pass is the answer."
    if a["fell_back_to_exact"]:
        return (f"The monotone assumption was contradicted by sampled candidates ({a['violations'][0]}), so the "
                f"search reopened what it had ruled out and finished in order of calls (as --search exact).")
    return ("Assumed (--search probe): a candidate that only skips more than one that failed fails too; no sampled "
            "pair contradicted it. Rerun with --search exact to drop the assumption.")


def _fmt(x, spec=".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _metric_text(m: dict, targets: dict) -> str:
    return ", ".join(f"{k} {_fmt(m.get(k), '.2f' if k == 'psnr' else '.4f')}" for k in targets)


def _metric_cells(m: dict | None, targets: dict) -> str:
    if not m:
        return " | ".join("" for _ in targets)
    return " | ".join(_fmt(m.get(k), ".2f" if k == "psnr" else ".4f") for k in targets)


def markdown(res: dict) -> str:
    t = res["targets"]
    cnt = res["counts"]
    ch = res["chosen"]
    lines = [f"# magcache-tune: {_targets_text(t)}", ""]
    if ch:
        s = ch["setting"]
        lines += [f"**Chosen: `{ch['id']}`** (thresh {s['thresh']:g}, K {s['K']}, retention {s['retention']:g}, "
                  f"branch_sync {s['branch_sync']}): {ch['calls']} of {ch['total_calls']} calls computed "
                  f"({ch['calls_ratio']:.2f}); tuning mean {_metric_text(ch['tune_mean'], t)}.", ""]
        h = ch["held_out"]
        if h:
            lines += [f"On the {len(h['prompts'])} held-out prompt(s): mean {_metric_text(h['mean'], t)} "
                      f"({'meets' if h['meets_target'] else 'misses'} the target; "
                      + ", ".join(f"{k} {v:+.3g} from it" for k, v in h["minus_target"].items()) + ").", ""]
        else:
            lines += ["No held-out prompts (--held-out 0): generalisation was not measured.", ""]
    lines += [f"Why: {res['why']}", "",
              f"Search `{res['search']}`: {res['settings']} settings of the grid, {res['candidates_total']} distinct "
              f"schedules (candidates); {cnt['candidates_sampled']} sampled, "
              f"{cnt['videos_requested']['search']} search videos (an exhaustive grid search needs "
              f"{cnt['exhaustive_search_videos']}), {cnt['videos_requested']['reference']} references, "
              f"{cnt['videos_requested']['held_out']} held-out videos; {cnt['videos_sampled_this_run']} were sampled "
              f"in this run, the others reused from `{res['out']}`.", "",
              f"Base setting of the config: {res['base']['setting']} computes {res['base']['calls']} calls.", "",
              _assumption_text(res["assumption"]), "",
              f"Plot: {res['plot']}", "", "## Search log", ""]
    lines += [f"{i + 1}. {x}" for i, x in enumerate(res["log"])] + [""]
    lines += ["## Every candidate", "",
              "| candidate | calls | status | " + " | ".join(f"mean {k}" for k in t) + " | prompts | reason |",
              "| --- | ---: | --- | " + " | ".join("---:" for _ in t) + " | ---: | --- |"]
    for c in res["candidates"]:
        m = c["tune_mean"] or c["partial_mean"]
        n = len(c["per_prompt"])
        lines.append(f"| {c['id']}{' (+' + str(len(c['settings']) - 1) + ')' if len(c['settings']) > 1 else ''} | "
                     f"{c['calls']} | {c['status']} | {_metric_cells(m, t)} | {n or ''} | {c['reason']} |")
    lines += ["", "(+n): n more settings of the grid with the same schedule (tune.json lists them). A partial mean "
                  "covers the prompts sampled before the candidate was stopped.", ""]
    sampled = [c for c in res["candidates"] if c["per_prompt"]]
    if sampled:
        names = res["split"]["tune"]
        k = next(iter(t))
        lines += [f"## {k} per tuning prompt", "", "| candidate | " + " | ".join(names) + " |",
                  "| --- | " + " | ".join("---:" for _ in names) + " |"]
        for c in sorted(sampled, key=lambda c: c["sampled_order"]):
            lines.append(f"| {c['id']} | " + " | ".join(_fmt(c["per_prompt"].get(n, {}).get(k), ".3f")
                                                          for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(setup: TuneSetup, path: str, chosen: Candidate | None) -> str:
    """Mean quality over the tuning prompts against computed calls, one point per fully sampled candidate."""
    from magcache_dist.io.atomic import atomic_path

    full = [c for c in setup.candidates if c.metrics and all(n in c.metrics for n in setup.tune)]
    if not full:
        return "no plot: no candidate was sampled on every tuning prompt"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib==3.11.2)"
    metrics = list(setup.targets)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, k in zip(axes[0], metrics):
        for c in full:
            colour = "tab:green" if c.status == "pass" else "tab:red"
            ax.plot(c.calls, c.mean(setup.tune)[k], "o", color=colour, ms=5)
        if chosen is not None:
            ax.plot(chosen.calls, chosen.mean(setup.tune)[k], "*", color="black", ms=14, label=f"chosen {chosen.id}")
            if setup.held_out:
                ax.plot(chosen.calls, chosen.mean(setup.held_out)[k], "x", color="tab:blue", ms=10,
                        label="chosen, held-out prompts")
        ax.axhline(setup.targets[k], color="grey", ls="--", lw=1, label=f"target {setup.targets[k]:g}")
        ax.set(xlabel=f"computed calls (of {setup.candidates[0].total_calls})", ylabel=f"mean {k}",
               title=f"{k} vs calls (green: meets, red: misses)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return f"{PLOT_FILE}"


# -- entry points --------------------------------------------------------------------------------------------------
def check_lpips(args, targets: dict) -> str | None:
    """--target-lpips: the AlexNet backbone file (InputError if the package or the file is missing), else None.
    Checked in prepare, on every rank, so that no rank starts sampling when rank 0 could not score."""
    if "lpips" not in targets:
        return None
    from magcache_dist.eval.perceptual import INSTALL_HINT, lpips_installed, resolve_backbone

    backbone, note = resolve_backbone(args.lpips_backbone)
    if not lpips_installed():
        raise InputError(f"--target-lpips needs the lpips package: {INSTALL_HINT}")
    if backbone is None:
        raise InputError(f"--target-lpips: {note} (python -m magcache_dist.eval fetches it once when online)")
    return backbone


def _lpips(setup: TuneSetup, device):
    if setup.lpips_backbone is None:
        return None
    from magcache_dist.eval.perceptual import Lpips

    return Lpips(setup.lpips_backbone, "cuda" if str(device).startswith("cuda") else "cpu")


def tune(setup: TuneSetup, par, device="cpu") -> dict | None:
    """The search on this rank (every rank calls it); rank 0 of the job writes and returns tune.json's content."""
    t0 = time.perf_counter()
    runner = Runner(setup, par, device, _lpips(setup, device) if par.rank == 0 and par.dp_index == 0 else None)
    runner.references()
    search = Search(setup, runner)
    chosen = search.run()
    if chosen is not None and setup.held_out:
        runner.sample(chosen, setup.held_out, "held_out")
    if not runner._is_rank0():
        return None
    return write_outputs(setup, search, runner, chosen, time.perf_counter() - t0)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    lock = None
    try:
        setup = prepare(args, world)
        if rank == 0:
            from magcache_dist.io.probe import OutputLock

            lock = OutputLock(setup.out, "--out")
    except InputError as e:
        for line in str(e).splitlines() or [""]:
            print(f"[rank {rank}] error: {line}", file=sys.stderr)
        return 2
    try:
        return _run(setup, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _run(setup: TuneSetup, rank: int, world: int) -> int:
    import torch.distributed as dist

    from magcache_dist.launcher.main import init_backend, job_device
    from magcache_dist.parallel.dims import build_dist_context, solo_context

    cfg = setup.base_job.cfg
    device = job_device(cfg, int(os.environ.get("LOCAL_RANK", 0)))
    try:
        if world > 1:
            init_backend(cfg, device)
            par = build_dist_context(setup.base_job.dims, cfg.parallel.backend)
        else:
            par = solo_context()
            par.backend = cfg.parallel.backend
        res = tune(setup, par, device)
    except InputError as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if res is None:
        return 0
    ch = res["chosen"]
    cnt = res["counts"]
    if ch:
        held = ch["held_out"]
        print(f"chosen {ch['id']}: {ch['calls']}/{ch['total_calls']} calls, tuning mean "
              + ", ".join(f"{k} {ch['tune_mean'][k]:.4g}" for k in res["targets"])
              + ("" if not held else "; held-out mean " + ", ".join(f"{k} {held['mean'][k]:.4g}"
                                                                   for k in res["targets"])))
    else:
        print("no candidate reaches the target: tuned.yaml runs full sampling (cache.mode=off)")
    print(f"{cnt['candidates_sampled']} of {res['candidates_total']} candidates sampled, "
          f"{cnt['videos_requested']['search']} search videos (exhaustive: {cnt['exhaustive_search_videos']}); "
          f"wrote {setup.out}/tuned.yaml, tune.json, tune.md")
    return 0 if ch else 1


if __name__ == "__main__":
    sys.exit(main())
