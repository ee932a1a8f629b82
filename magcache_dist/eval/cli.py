"""Quality of cached videos against the original model's: PSNR, SSIM and LPIPS per video and their mean, with the
computed calls and wall time of each candidate against the reference's.

    python -m magcache_dist.eval --reference outputs/full --candidate outputs/magcache
    python -m magcache_dist.eval --reference outputs/full --candidate outputs/slow --candidate outputs/fast \\
        --label magcache-slow --label magcache-fast --out outputs/eval/eval.json --workers 4
    torchrun --nproc_per_node 8 -m magcache_dist.eval --device cuda --reference ... --candidate ... --out ...

Folders are prompt-list job outputs (summary.json), single-video job folders or any folders of mp4 files; videos
are matched by identity (video_id, else prompt / negative prompt / seed / image, else name: folders.py) and must
match one to one unless --allow-partial. Metrics follow the MagCache release (docs/evaluation.md): per-frame PSNR
and SSIM and LPIPS (AlexNet, v0.1), each averaged over the frames of a video; the mean row averages the videos,
and its call and time ratios divide the summed calls and times. By default every metric that can be computed is
(and the output says which could not); a metric named in --metrics that cannot be computed is an error.

Scoring runs on --device in batches of frames, over --workers processes or torchrun's ranks, and skips pairs
scored before (a score cache beside --out, keyed by the two files' contents: scoring.py).

Writes ``--out`` (default ``<candidate>/eval.json``; required with several candidates; never inside the
reference) and the same tables as Markdown beside it (``eval.md``); with several candidates also
``quality_vs_speedup.png``. Every input is checked before anything is scored.
Exit codes: 0 done; 1 done, but some matched videos could not be compared (listed); 2 bad input (one line naming
the argument or file and the fix).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from magcache_dist.errors import InputError
from magcache_dist.eval.folders import Folder, Video, load_folder, match
from magcache_dist.eval.metrics import PSNR_CAP
from magcache_dist.eval.perceptual import INSTALL_HINT, Lpips, download_backbone, lpips_installed, resolve_backbone
from magcache_dist.eval.scoring import (
    CACHE_DIR,
    METRIC_NAMES,
    Pair,
    Settings,
    Task,
    file_sha256,
    score,
    score_distributed,
)
from magcache_dist.io.atomic import atomic_path, atomic_write_text

FORMAT = "magcache-eval/1"
BATCH_FRAMES = 16  # frames moved to the device and scored at a time (bounds memory for 81-frame 720p videos)
PLOT_FILE = "quality_vs_speedup.png"
METRICS = dict(
    psnr="per frame: 10 log10(1 / MSE) over the frame's pixels in [0, 1], capped at 100 dB; mean over frames",
    ssim="per frame and channel: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid windows; mean over channels, "
         "then frames",
    lpips="per frame: lpips.LPIPS(net='alex', version='0.1', spatial=True) on frames in [-1, 1], spatial mean; "
          "mean over frames",
    source="Zehong-Ma/MagCache eval/magcache/common_metrics/{calculate_psnr,calculate_ssim,calculate_lpips}.py",
    mean="mean over compared videos; calls and time ratios divide the summed calls and times",
)


def _ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def _sum(videos: list[Video], key: str):
    vals = [getattr(v, key) for v in videos]
    return None if not vals or any(x is None for x in vals) else sum(vals)


def _figures(refs: list[Video], cands: list[Video]) -> dict:
    """Calls and wall times of the candidate against the reference (sums over the given videos)."""
    rc, cc = _sum(refs, "computed_calls"), _sum(cands, "computed_calls")
    return dict(ref_computed_calls=rc, computed_calls=cc, total_calls=_sum(cands, "total_calls"),
                calls_ratio=_ratio(cc, rc), ref_sample_s=_sum(refs, "sample_s"), sample_s=_sum(cands, "sample_s"),
                speedup_sample=_ratio(_sum(refs, "sample_s"), _sum(cands, "sample_s")),
                speedup_total=_ratio(_sum(refs, "total_s"), _sum(cands, "total_s")))


def assemble(candidates: list[dict], rows: list[tuple[int, str, dict]], metrics: tuple[str, ...]) -> None:
    """Fills each candidate's ``rows`` (one per matched video, reference order) and ``mean`` in place."""
    by = {(ci, name): r for ci, name, r in rows}
    for ci, c in enumerate(candidates):
        c["rows"] = []
        for name, ref, cand in c["pairs"]:
            row = dict(name=name, reference=ref.path, candidate=cand.path, **_figures([ref], [cand]))
            row.update(by[(ci, name)])
            c["rows"].append(row)
        ok = [r for r in c["rows"] if r["error"] is None]
        pairs = {n: (ref, cand) for n, ref, cand in c["pairs"]}
        mean = dict(videos=len(ok), cached=sum(1 for r in ok if r.get("cached")))
        for k in METRIC_NAMES:
            vals = [r[k] for r in ok if r.get(k) is not None]
            mean[k] = float(np.mean(vals)) if k in metrics and vals and len(vals) == len(ok) else None
        mean.update(_figures([pairs[r["name"]][0] for r in ok], [pairs[r["name"]][1] for r in ok]))
        c["mean"] = mean


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else fmt.format(x)


def _calls(r: dict) -> str:
    if r.get("computed_calls") is None:
        return "n/a"
    ref = _f(r.get("ref_computed_calls"), "{}")
    return f"{r['computed_calls']}/{_f(r.get('total_calls'), '{}')} (ref {ref})"


def _cells(r: dict) -> str:
    return (f"{_f(r.get('psnr'), '{:.2f}')} | {_f(r.get('ssim'), '{:.4f}')} | {_f(r.get('lpips'), '{:.4f}')} | "
            f"{_calls(r)} | {_f(r.get('calls_ratio'), '{:.3f}')} | {_f(r.get('speedup_sample'), '{:.2f}x')} | "
            f"{_f(r.get('speedup_total'), '{:.2f}x')} |")


def candidate_table(c: dict, reference: Folder) -> str:
    lines = [f"### {c['label']}", "", f"Candidate `{c['path']}` against reference `{reference.path}`.", "",
             "| video | frames | PSNR (dB) | SSIM | LPIPS | computed/total calls | calls ratio | speedup (sample) | "
             "speedup (total) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        if r["error"] is None:
            lines.append(f"| {r['name']} | {r['frames']} x {r['height']}x{r['width']} | " + _cells(r))
        else:
            lines.append(f"| {r['name']} | error | | | | | | | |")
    m = c["mean"]
    lines.append(f"| **mean** ({m['videos']} video{'' if m['videos'] == 1 else 's'}) | | " + _cells(m))
    notes = [f"- videos matched by {c['matched_by']}"]
    notes += [f"- error, {r['name']}: {r['error']}" for r in c["rows"] if r["error"]]
    if c["only_reference"]:
        notes.append(f"- only in the reference (not compared): {', '.join(c['only_reference'])}")
    if c["only_candidate"]:
        notes.append(f"- only in the candidate (not compared): {', '.join(c['only_candidate'])}")
    for side, skipped in (("reference", reference.skipped), ("candidate", c["skipped"])):
        if skipped:
            notes.append(f"- skipped in the {side}: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    return "\n".join(lines + ([""] + notes if notes else []))


def summary_table(candidates: list[dict]) -> str:
    lines = ["### Summary", "", "| method | videos | PSNR (dB) | SSIM | LPIPS | computed/total calls | calls ratio | "
             "speedup (sample) | speedup (total) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['mean']['videos']} | " + _cells(c["mean"]) for c in candidates]
    return "\n".join(lines)


def render(res: dict, reference: Folder, candidates: list[dict]) -> str:
    head = [f"## Evaluation against `{reference.path}`", "",
            f"PSNR, SSIM and LPIPS per frame, averaged over frames, as the MagCache release computes them "
            f"(identical frames count as {PSNR_CAP:.0f} dB); calls ratio = candidate's computed calls / the "
            f"reference's; speedup = the reference's wall time / the candidate's (sampling loop, whole job).", "",
            res["lpips"]["note"], ""]
    parts = [candidate_table(c, reference) for c in candidates]
    if len(candidates) > 1:
        parts.append(summary_table(candidates))
    return "\n".join(head + ["\n\n".join(parts)]) + "\n"


def plot(summary: list[dict], path: str) -> str:
    """Quality against speedup, one point per method; returns the line to print."""
    for key, xlabel in (("speedup_sample", "wall-time speedup of the sampling loop vs reference"),
                        ("calls_ratio", "computed calls / reference's")):
        if all(s.get(key) is not None for s in summary):
            break
    else:
        return "plot skipped: no calls or wall times for every candidate (mp4 folders carry no report.json)"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib==3.11.2)"
    panels = [(k, t) for k, t in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS (lower is better)"))
              if all(s.get(k) is not None for s in summary)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (k, title) in zip(axes[0], panels):
        xs, ys = [s[key] for s in summary], [s[k] for s in summary]
        ax.plot(xs, ys, "o", color="tab:blue")
        for s, x, y in zip(summary, xs, ys):
            ax.annotate(s["label"], (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set(xlabel=xlabel, ylabel=title, title=f"{title} vs {'speedup' if key == 'speedup_sample' else 'calls'}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return f"wrote {path}"


def _parser() -> argparse.ArgumentParser:
    intro, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(prog="python -m magcache_dist.eval", description=intro.replace("\n", " "),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    ap.add_argument("--reference", required=True, help="the original model's videos")
    ap.add_argument("--candidate", required=True, action="append", help="videos to score (repeat for several)")
    ap.add_argument("--label", action="append", help="a name per candidate, in order (default: its folder name)")
    ap.add_argument("--out", help="JSON file to write (default <candidate>/eval.json; required with several "
                                  "candidates; never inside the reference); the .md and the plot go beside it")
    ap.add_argument("--metrics", help="comma-separated subset of psnr,ssim,lpips; default: every one that can be "
                                      "computed. A metric named here that cannot be computed is an error (exit 2)")
    ap.add_argument("--allow-partial", action="store_true",
                    help="score the videos in common when reference and candidate do not match one to one")
    ap.add_argument("--lpips-backbone", help="torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth); default "
                                             "$MAGCACHE_LPIPS_BACKBONE, then torch hub's cache, then a download "
                                             "into it")
    ap.add_argument("--offline", action="store_true", help="never download the LPIPS backbone")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS (as --metrics psnr,ssim)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the metrics run: cpu, cuda, cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)")
    ap.add_argument("--workers", type=int, default=1, help="processes scoring videos in parallel (default 1)")
    ap.add_argument("--batch-frames", type=int, default=BATCH_FRAMES,
                    help=f"frames moved to the device and scored at a time (default {BATCH_FRAMES})")
    ap.add_argument("--no-cache", action="store_true",
                    help=f"score every pair again (the score cache is <folder of --out>/{CACHE_DIR}/)")
    return ap


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it, after resolving symlinks and relative parts."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([p, f]) == f


def _partial(c: dict, reference: Folder, n: int = 4) -> str | None:
    """What keeps a candidate from matching the reference one to one, or None."""
    parts = []
    for what, names in (("only in the reference", c["only_reference"]), ("only in the candidate", c["only_candidate"]),
                        ("skipped in the reference", [f"{k} ({v})" for k, v in reference.skipped.items()]),
                        ("skipped in the candidate", [f"{k} ({v})" for k, v in c["skipped"].items()])):
        if names:
            parts.append(f"{len(names)} {what}: {', '.join(names[:n])}" + (", ..." if len(names) > n else ""))
    return "; ".join(parts) or None


def _candidates(args, reference: Folder) -> list[dict]:
    labels = args.label or []
    if labels and len(labels) != len(args.candidate):
        raise InputError(f"--label: {len(labels)} label(s) for {len(args.candidate)} --candidate folder(s); give "
                         f"one --label per --candidate, in order, or none")
    out = []
    for i, path in enumerate(args.candidate):
        if os.path.isdir(path) and _same_folder(path, reference.path):
            raise InputError(f"--candidate {path}: is the --reference folder ({reference.path}); a folder scored "
                             f"against itself says nothing: give the cached run's output as --candidate")
        folder = load_folder(path, "--candidate")
        label = labels[i] if labels else os.path.basename(folder.path)
        if any(c["label"] == label for c in out):
            raise InputError(f"--label: two candidates are labelled {label!r}; give one distinct --label per "
                             f"--candidate")
        m = match(reference, folder)
        if not m.pairs:
            raise InputError(
                f"--candidate {path}: no video in common with --reference {args.reference} (matched by {m.by}; "
                f"reference: {_names(reference.videos)}; candidate: {_names(folder.videos)}); give folders of the "
                f"same prompt list")
        c = dict(label=label, path=folder.path, layout=folder.layout, pairs=m.pairs, matched_by=m.by,
                 only_reference=m.only_reference, only_candidate=m.only_candidate, skipped=folder.skipped,
                 cache=next((v.cache for _, _, v in m.pairs if v.cache), None))
        why = _partial(c, reference)
        if why and not args.allow_partial:
            raise InputError(f"--candidate {path}: does not match --reference {args.reference} one to one (matched "
                             f"by {m.by}; {len(m.pairs)} in common; {why}); generate the missing videos, or pass "
                             f"--allow-partial to score the {len(m.pairs)} in common")
        out.append(c)
    return out


def _names(videos: dict, n: int = 4) -> str:
    names = list(videos)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _out_path(args, reference: Folder, candidates: list[dict]) -> str:
    """--out (or its default), checked before any scoring: not a directory, not inside the reference, writable."""
    if args.out:
        out = args.out
    elif len(candidates) == 1:
        out = os.path.join(candidates[0]["path"], "eval.json")
    else:
        raise InputError(f"--out: {len(candidates)} candidates need one --out FILE for their common tables (the "
                         f"reference folder is never written), e.g. --out {os.path.dirname(reference.path)}/eval.json")
    what = "--out" if args.out else f"--out (default {out})"
    if os.path.isdir(out):
        raise InputError(f"{what} {out}: is a directory; give a file name, e.g. --out {os.path.join(out, 'eval.json')}")
    folder = os.path.dirname(os.path.abspath(out))
    if _inside(folder, reference.path):
        raise InputError(f"{what} {out}: is inside the --reference folder {reference.path}, which is never written; "
                         f"give --out FILE outside it")
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{what} {out}: {existing} is a file, so the folder {folder} cannot be made; give another "
                         f"--out")
    if not os.access(existing, os.W_OK | os.X_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise InputError(f"{what} {out}: {existing if not os.path.exists(out) else out} is not writable; give "
                         f"--out FILE in a folder you can write")
    files, cache = (os.path.splitext(out)[0] + ".md", os.path.join(folder, PLOT_FILE)), os.path.join(folder, CACHE_DIR)
    for beside in [f for f in files if os.path.isdir(f)] + ([cache] if os.path.exists(cache) and not
                                                              os.path.isdir(cache) else []):
        raise InputError(f"{what} {out}: {beside}, written beside it, is in the way; move it or give another "
                             f"--out")
    return out


def _metrics(args) -> tuple[tuple[str, ...], bool]:
    """(metrics asked for, whether they were named explicitly)."""
    if args.metrics is None:
        return tuple(m for m in METRIC_NAMES if not (m == "lpips" and args.no_lpips)), False
    names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in names if m not in METRIC_NAMES]
    if bad or not names:
        raise InputError(f"--metrics {args.metrics}: {'unknown metric ' + repr(bad[0]) if bad else 'empty'}; give a "
                         f"comma-separated subset of {','.join(METRIC_NAMES)}")
    if "lpips" in names and args.no_lpips:
        raise InputError("--no-lpips: contradicts --metrics, which names lpips; give one of them")
    return tuple(m for m in METRIC_NAMES if m in names), True


def _lpips(args, device: str) -> tuple[Lpips | None, str]:
    """(LPIPS, its note line) or (None, why it cannot be computed)."""
    backbone, note = resolve_backbone(args.lpips_backbone)  # an explicit path that is not there: exit 2
    if not lpips_installed():
        return None, f"LPIPS: n/a (the lpips package is not installed: {INSTALL_HINT})"
    if backbone is None and not args.offline:
        backbone, note = download_backbone()
    if backbone is None:
        return None, note + (" (--offline)" if args.offline else "")
    try:
        return Lpips(backbone, device), f"LPIPS: AlexNet {note}."
    except ImportError as e:  # lpips is there but something it imports (scipy, tqdm) is not
        return None, f"LPIPS: n/a ({e}; {INSTALL_HINT})"


def _lpips_identity(lp: Lpips) -> str:
    try:
        lib = version("lpips")
    except PackageNotFoundError:
        lib = "unknown"
    return f"lpips {lib}; backbone sha256 {file_sha256(lp.backbone)}"


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) without them."""
    vals = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key)
        try:
            vals[key] = default if raw is None else int(raw)
        except ValueError:
            raise InputError(f"${key}={raw!r} is not an integer; unset it or start the eval with torchrun") from None
    rank, world, local = vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"$RANK={rank}, $WORLD_SIZE={world}, $LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE; "
                         f"start the eval with torchrun or unset them")
    return rank, world, local


def _device(args, world: int, local: int) -> str:
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {args.device}: not a device; give cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: CUDA is not available here; give --device cpu")
        if dev.index is None and world > 1:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise InputError(f"--device {args.device}: give cpu, cuda or cuda:N")
    return str(dev)


def prepare(args) -> dict:
    """Every check before scoring: world, numbers, folders, matching, --out, device, metrics and LPIPS."""
    rank, world, local = _world()
    if args.workers < 1 or args.batch_frames < 1:
        bad = "--workers" if args.workers < 1 else "--batch-frames"
        raise InputError(f"{bad}: must be at least 1")
    if world > 1 and args.workers > 1:
        raise InputError(f"--workers {args.workers}: under torchrun (WORLD_SIZE={world}) every rank is one worker; "
                         f"drop --workers or run without torchrun")
    asked, explicit = _metrics(args)
    reference = load_folder(args.reference, "--reference")
    candidates = _candidates(args, reference)
    out = _out_path(args, reference, candidates)
    device = _device(args, world, local)
    metrics, missing, lp = list(asked), {}, None
    if "lpips" in asked:
        lp, note = _lpips(args, device)
        if lp is None:
            if explicit:
                raise InputError(f"--metrics {args.metrics}: LPIPS cannot be computed: {note}")
            metrics.remove("lpips")
            missing["lpips"] = note
    else:
        note = "LPIPS: not computed (--no-lpips)." if args.no_lpips else "LPIPS: not computed (not in --metrics)."
    return dict(rank=rank, world=world, reference=reference, candidates=candidates, out=out, device=device,
                metrics=tuple(metrics), missing=missing, lpips=lp, note=note)


def tasks_of(reference: Folder, candidates: list[dict]) -> list[Task]:
    """One task per reference video that some candidate matched, in the reference's order."""
    tasks = []
    for name, ref in reference.videos.items():
        pairs = tuple(Pair(ci, pn, cand.path) for ci, c in enumerate(candidates) for pn, r, cand in c["pairs"]
                      if r is ref)
        if pairs:
            tasks.append(Task(ref.path, pairs))
    return tasks


def _prepare_ranks(args, rank: int, world: int) -> dict:
    """Under torchrun: rank 0 checks everything first (and downloads the LPIPS backbone if it must), then the
    other ranks check the same inputs (finding the backbone in torch hub's cache); a rejection on rank 0 is every
    rank's (each raises InputError, rank 0 with the message, the others with an empty one)."""
    import torch.distributed as dist

    box = [None]
    if rank == 0:
        try:
            p = prepare(args)
        except InputError as e:
            box = [str(e)]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise InputError(box[0] if rank == 0 else "")
    return p if rank == 0 else prepare(args)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        rank, world, _ = _world()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        try:
            p = _prepare_ranks(args, rank, world) if world > 1 else prepare(args)
        except InputError as e:  # the arguments, the folders' files and the LPIPS backbone: each names the fix
            if str(e):
                print(f"error: {e}", file=sys.stderr)
            return 2
        reference, candidates, out, lp = p["reference"], p["candidates"], p["out"], p["lpips"]
        settings = Settings(metrics=p["metrics"], device=p["device"], batch_frames=args.batch_frames,
                            lpips_backbone=lp.backbone if lp else None,
                            lpips_identity=_lpips_identity(lp) if lp else None,
                            cache_dir=None if args.no_cache else os.path.join(os.path.dirname(os.path.abspath(out)),
                                                                              CACHE_DIR))
        tasks = tasks_of(reference, candidates)
        if world > 1:
            rows = score_distributed(tasks, settings, rank, world, lp)
            if rank != 0:
                return 0
        else:
            rows = score(tasks, settings, args.workers, lp)
    finally:
        if world > 1:
            dist.destroy_process_group()
    return finish(args, p, settings, rows)


def finish(args, p: dict, settings: Settings, rows: list) -> int:
    """Rank 0: the tables, eval.json / eval.md, the plot; the exit code."""
    reference, candidates, out, lp = p["reference"], p["candidates"], p["out"], p["lpips"]
    assemble(candidates, rows, p["metrics"])
    summary = [dict(label=c["label"], path=c["path"], **c["mean"]) for c in candidates]
    res = dict(format=FORMAT, reference=reference.path, metrics=METRICS, metrics_computed=list(p["metrics"]),
               metrics_not_computed=p["missing"], device=p["device"], workers=max(args.workers, p["world"]),
               lpips=dict(available=lp is not None, note=p["note"], **(lp.describe() if lp else {})),
               skipped_reference=reference.skipped,
               candidates=[{k: v for k, v in c.items() if k != "pairs"} for c in candidates],
               summary=summary)
    text = render(res, reference, candidates)
    print(text)
    md = os.path.splitext(out)[0] + ".md"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    atomic_write_text(md, text)
    print(f"wrote {out} and {md}")
    cached = sum(c["mean"]["cached"] for c in candidates)
    if settings.cache_dir:
        print(f"{cached} of {sum(len(c['rows']) for c in candidates)} pair(s) from the score cache "
              f"{settings.cache_dir}")
    print(f"metrics computed: {', '.join(p['metrics']) or 'none'}" +
          "".join(f"; not computed: {k} ({v})" for k, v in p["missing"].items()))
    if len(candidates) > 1:
        print(plot(summary, os.path.join(os.path.dirname(os.path.abspath(out)), PLOT_FILE)))
    errors = sum(1 for c in candidates for r in c["rows"] if r["error"])
    if errors:
        print(f"{errors} matched video(s) could not be compared (see the error lines)", file=sys.stderr)
    return 1 if errors else 0
