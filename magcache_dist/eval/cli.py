"""Quality of cached videos against the original model's: PSNR, SSIM and LPIPS per video and their mean, with the
computed calls and wall time of each candidate against the reference's.

    python -m magcache_dist.eval --reference outputs/full --candidate outputs/magcache
    python -m magcache_dist.eval --reference outputs/full --candidate outputs/slow --candidate outputs/fast \\
        --label magcache-slow --label magcache-fast --lpips-backbone ~/alexnet-owt-7be5be79.pth

Folders are prompt-list job outputs (summary.json), single-video job folders or any folders of mp4 files; videos
are matched by name (magcache_dist/eval/folders.py). Metrics follow the MagCache release (docs/evaluation.md):
per-frame PSNR and SSIM and LPIPS (AlexNet, v0.1), each averaged over the frames of a video; the mean row averages
the videos, and its call and time ratios divide the summed calls and times.

Writes ``--out`` (default ``<candidate>/eval.json``, or ``<reference>/eval.json`` for several candidates) and the
same tables as Markdown beside it (``eval.md``); with several candidates also ``quality_vs_speedup.png``.
Exit codes: 0 done; 1 done, but some matched videos could not be compared (listed); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from magcache_dist.eval.folders import Folder, Video, load_folder, match
from magcache_dist.eval.metrics import PSNR_CAP, frame_psnr, frame_ssim
from magcache_dist.eval.perceptual import INSTALL_HINT, Lpips, lpips_installed, resolve_backbone
from magcache_dist.io.atomic import atomic_path, atomic_write_text
from magcache_dist.io.video import read_frames
from magcache_dist.errors import InputError

FORMAT = "magcache-eval/1"
FRAME_CHUNK = 8  # frames converted and scored at a time (bounds memory for 81-frame 720p videos)
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


def _unit(frames_FHWC: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, H, W] in [0, 1] (the release divides by 255 too)."""
    frames = np.require(frames_FHWC, requirements="W")  # decoded frames may be read-only: a copy then
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def compare(ref_FHWC: np.ndarray, cand_FHWC: np.ndarray, lpips: Lpips | None) -> dict:
    """Per-frame PSNR, SSIM (and LPIPS) of two videos of one shape, and their means over the frames."""
    if ref_FHWC.shape != cand_FHWC.shape:
        (f, h, w), (g, i, j) = ref_FHWC.shape[:3], cand_FHWC.shape[:3]
        raise InputError(f"the videos differ in shape: reference {f} frames of {h}x{w}, candidate {g} frames of "
                         f"{i}x{j}")
    per = dict(psnr=[], ssim=[], lpips=[] if lpips else None)
    for s in range(0, ref_FHWC.shape[0], FRAME_CHUNK):
        x, y = _unit(ref_FHWC[s:s + FRAME_CHUNK]), _unit(cand_FHWC[s:s + FRAME_CHUNK])  # [n, 3, H, W]
        per["psnr"] += frame_psnr(x, y)
        per["ssim"] += frame_ssim(x, y)
        if lpips:
            per["lpips"] += lpips.frames(x, y)
    f, h, w = ref_FHWC.shape[:3]
    means = {k: None if v is None else float(np.mean(v)) for k, v in per.items()}
    return dict(frames=f, height=h, width=w, **means, psnr_min=min(per["psnr"]), per_frame=per)


def _read(path: str, side: str) -> tuple[np.ndarray | None, str | None]:
    """(frames, None) or (None, why): a file ffmpeg cannot read is that video's error, not the evaluation's."""
    try:
        return read_frames(path), None
    except Exception as e:  # imageio / ffmpeg raise OSError, RuntimeError, IndexError, ... for a broken file
        return None, f"{side} {path} cannot be read: {type(e).__name__}: {e}"


def evaluate(reference: Folder, candidates: list[dict], lpips: Lpips | None) -> None:
    """Fills each candidate's ``rows`` (one per matched video, reference order) in place; each reference video is
    read once for all candidates."""
    for c in candidates:
        c["rows"] = {}
    for name, ref in reference.videos.items():
        users = [(c, pair) for c in candidates for pair in c["pairs"] if pair[1] is ref]
        if not users:
            continue
        ref_frames, ref_error = _read(ref.path, "reference")
        for c, (pair_name, _, cand) in users:
            row = dict(name=pair_name, reference=ref.path, candidate=cand.path, **_figures([ref], [cand]))
            cand_frames, row["error"] = (None, ref_error) if ref_error else _read(cand.path, "candidate")
            if row["error"] is None:
                try:
                    row.update(compare(ref_frames, cand_frames, lpips))
                except InputError as e:  # shapes that differ, frames too small for SSIM or LPIPS
                    row["error"] = str(e)
            c["rows"][pair_name] = row
        print(f"{name}: compared with {len(users)} candidate(s)", file=sys.stderr, flush=True)
    for c in candidates:
        c["rows"] = [c["rows"][n] for n, _, _ in c["pairs"]]
        ok = [r for r in c["rows"] if r["error"] is None]
        pairs = {n: (ref, cand) for n, ref, cand in c["pairs"]}
        mean = dict(videos=len(ok))
        for k in ("psnr", "ssim", "lpips"):
            vals = [r[k] for r in ok if r.get(k) is not None]
            mean[k] = float(np.mean(vals)) if vals and len(vals) == len(ok) else None
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
    notes = [f"- error, {r['name']}: {r['error']}" for r in c["rows"] if r["error"]]
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
    ap.add_argument("--out", help="JSON file to write (default <candidate>/eval.json; several candidates: "
                                  "<reference>/eval.json); the .md and the plot go beside it")
    ap.add_argument("--lpips-backbone", help="torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth); default "
                                             "$MAGCACHE_LPIPS_BACKBONE, then torch hub's cache")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for LPIPS")
    return ap


def _candidates(args, reference: Folder) -> list[dict]:
    labels = args.label or []
    if labels and len(labels) != len(args.candidate):
        raise InputError(f"--label: {len(labels)} label(s) for {len(args.candidate)} --candidate folder(s); give "
                         f"one --label per --candidate, in order, or none")
    out = []
    for i, path in enumerate(args.candidate):
        folder = load_folder(path, "--candidate")
        label = labels[i] if labels else os.path.basename(folder.path)
        if any(c["label"] == label for c in out):
            raise InputError(f"--label: two candidates are labelled {label!r}; give one distinct --label per "
                             f"--candidate")
        pairs, only_ref, only_cand = match(reference, folder)
        if not pairs:
            raise InputError(
                f"--candidate {path}: no video names in common with --reference {args.reference} (reference: "
                f"{_names(reference.videos)}; candidate: {_names(folder.videos)}); videos are matched by their "
                f"summary.json name or mp4 file stem, so give folders of the same prompt list")
        out.append(dict(label=label, path=folder.path, layout=folder.layout, pairs=pairs, only_reference=only_ref,
                        only_candidate=only_cand, skipped=folder.skipped,
                        cache=next((v.cache for _, _, v in pairs if v.cache), None)))
    return out


def _names(videos: dict, n: int = 4) -> str:
    names = list(videos)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _lpips(args) -> tuple[Lpips | None, str]:
    if args.no_lpips:
        return None, "LPIPS: not computed (--no-lpips)."
    backbone, note = resolve_backbone(args.lpips_backbone)  # an explicit path that is not there: exit 2
    if not lpips_installed():
        return None, f"LPIPS: n/a (the lpips package is not installed: {INSTALL_HINT})"
    if backbone is None:
        return None, note
    try:
        return Lpips(backbone, args.device), f"LPIPS: AlexNet {note}."
    except ImportError as e:  # lpips is there but something it imports (scipy, tqdm) is not
        return None, f"LPIPS: n/a ({e}; {INSTALL_HINT})"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        reference = load_folder(args.reference, "--reference")
        candidates = _candidates(args, reference)
        out = args.out or os.path.join(candidates[0]["path"] if len(candidates) == 1 else reference.path,
                                       "eval.json")
        lpips, note = _lpips(args)
    except InputError as e:  # the arguments and the LPIPS backbone: each names the argument and the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    evaluate(reference, candidates, lpips)
    summary = [dict(label=c["label"], path=c["path"], **c["mean"]) for c in candidates]
    res = dict(format=FORMAT, reference=reference.path, metrics=METRICS,
               lpips=dict(available=lpips is not None, note=note, **(lpips.describe() if lpips else {})),
               skipped_reference=reference.skipped,
               candidates=[{k: v for k, v in c.items() if k != "pairs"} for c in candidates],
               summary=summary)
    text = render(res, reference, candidates)
    print(text)
    md = os.path.splitext(out)[0] + ".md"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    atomic_write_text(md, text)
    print(f"wrote {out} and {md}")
    if len(candidates) > 1:
        print(plot(summary, os.path.join(os.path.dirname(os.path.abspath(out)), PLOT_FILE)))
    errors = sum(1 for c in candidates for r in c["rows"] if r["error"])
    if errors:
        print(f"{errors} matched video(s) could not be compared (see the error lines)", file=sys.stderr)
    return 1 if errors else 0
