"""Online MagCache (no ratio file) against calibrated MagCache and TeaCache on the shipped tiny-video model.

    python -m benchmarks.online                       # 8 held-out pairs, joint; ~6 min on one core
    python -m benchmarks.online --branch-sync official --out benchmarks/results/online_official.json
    python -m benchmarks.online --table-only          # reprint from the JSON

The same metrics as benchmarks/quality.py (PSNR and SSIM of the video against the full run of the pair), on
held-out (prompt, seed) pairs by default: none of them was used to tune the online predictor or any setting
(``--pair-set quality`` uses quality.py's pairs instead). Every cache runs with ``--branch-sync`` (default joint:
one decision per step for both CFG branches). Curves: calibrated MagCache (the shipped preset, or --ratios) over a
grid that reaches from 1.6x to 4x fewer calls, online MagCache over a (thresh, K) grid, online with the ``hold``
predictor (ablation), and TeaCache. The comparison that matters is at equal computed calls: each online point's
PSNR against the calibrated-MagCache and TeaCache Pareto fronts at the same call reduction (linear in call
reduction between front points; none outside their range).

Writes benchmarks/results/online.json and benchmarks/results/online.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from benchmarks._common import ROOT, build_job, load_or_run
from benchmarks.branch_sync import at, desync
from benchmarks.quality import MAGCACHE, PAIRS, TEACACHE, timed
from magcache_dist.auto import sigma_grid
from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache, preset_names
from magcache_dist.cache.online import OnlineConfig, build_online
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.eval.metrics import PSNR_CAP, psnr, ssim

ONLINE = MAGCACHE + [(0.03, 2), (0.5, 4), (1.0, 8)]  # (thresh, K); retention 0.2 like MagCache
HOLD = [(0.06, 2), (0.12, 2), (0.24, 4), (0.5, 8)]
CALIBRATED = [(0.01, 1), (0.03, 1)] + MAGCACHE + [(0.5, 4), (1.0, 8)]
HELDOUT_PAIRS = [  # never used to tune anything: other captions and seeds than quality.py and the exploration runs
    ("a big cyan triangle moves left", 301),
    ("a small magenta circle moves up", 302),
    ("a green square bounces", 303),
    ("a big red square shrinks", 304),
    ("a small orange circle moves down", 305),
    ("a white triangle grows", 306),
    ("a blue square moves right", 307),
    ("a small yellow triangle bounces", 308),
]
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def run_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    job = build_job(args.overrides)
    n, branches = job.scfg.num_steps, job.scfg.branches
    sig = sigma_grid(n, job.scfg.shift, job.scfg.solver)
    preset = None if args.ratios else args.preset
    sync = args.branch_sync
    methods = [("full", dict(method="full"), lambda: NoCache())]
    for t, k in CALIBRATED:
        methods.append((f"magcache t={t} K={k}", dict(method="magcache", thresh=t, K=k),
                        lambda t=t, k=k: build_magcache(preset, args.ratios, MagCacheConfig(t, k, 0.2), n, branches,
                                                        branch_sync=sync)))
    for name, grid, predictor in (("online", ONLINE, "powerlaw"), ("online-hold", HOLD, "hold")):
        for t, k in grid:
            methods.append((f"{name} t={t} K={k}", dict(method=name, thresh=t, K=k),
                            lambda t=t, k=k, p=predictor: build_online(MagCacheConfig(t, k, 0.2), n, branches, sig,
                                                                       online=OnlineConfig(p), branch_sync=sync)))
    coefficients = None
    if args.teacache_file:
        with open(args.teacache_file) as f:
            coefficients = json.load(f)["coefficients"]
    for t in TEACACHE:
        methods.append((f"teacache t={t}", dict(method="teacache", thresh=t),
                        lambda t=t: build_teacache(job.cfg.model.name, t, n, coefficients,
                                                   branch_sync=sync)))
    pairs = (HELDOUT_PAIRS if args.pair_set == "heldout" else PAIRS)[: args.pairs]
    job.run(NoCache(), pairs[0][0], pairs[0][1])  # warm-up
    runs, t_start = [], time.perf_counter()
    for prompt, seed in pairs:
        ref, _, total, wall_ref, _, _ = timed(job, methods[0][2], prompt, seed, args.repeats)
        runs.append(dict(method="full", label="full", prompt=prompt, seed=seed, computed_calls=total,
                         total_calls=total, wall_s=wall_ref, psnr=PSNR_CAP, ssim=1.0))
        for label, params, fn in methods[1:]:
            video, computed, total, wall, _, decisions = timed(job, fn, prompt, seed, args.repeats)
            runs.append(dict(params, label=label, prompt=prompt, seed=seed, computed_calls=computed,
                             total_calls=total, wall_s=wall, psnr=psnr(video, ref), ssim=ssim(video, ref),
                             desync=desync(decisions)))
        print(f"{prompt!r} seed {seed}: done ({time.perf_counter() - t_start:.0f}s)", flush=True)
    summary = []
    wall_full = sum(r["wall_s"] for r in runs if r["method"] == "full")
    for label, params, _ in methods:
        rs = [r for r in runs if r["label"] == label]
        comp, tot = sum(r["computed_calls"] for r in rs), sum(r["total_calls"] for r in rs)
        summary.append(dict(params, label=label, computed_calls=comp, total_calls=tot, call_reduction=tot / comp,
                            wall_speedup=wall_full / sum(r["wall_s"] for r in rs),
                            psnr=float(np.mean([r["psnr"] for r in rs])),
                            psnr_min=float(min(r["psnr"] for r in rs)),
                            ssim=float(np.mean([r["ssim"] for r in rs])),
                            desync_share=float(np.mean([r.get("desync", False) for r in rs]))))
    return dict(model=job.cfg.model.name, ckpt=job.cfg.model.ckpt, magcache_ratios=args.ratios or args.preset,
                branch_sync=sync, pair_set=args.pair_set,
                video=dict(frames=job.cfg.video.frames, height=job.cfg.video.height, width=job.cfg.video.width),
                sampler=dict(num_steps=n, shift=job.scfg.shift, guidance=job.scfg.guidance, solver=job.scfg.solver),
                threads=args.threads, repeats=args.repeats, machine=platform.processor() or platform.machine(),
                pairs=[dict(prompt=p, seed=s) for p, s in pairs], summary=summary, runs=runs,
                comparison=compare(summary), benchmark_wall_s=round(time.perf_counter() - t_start, 1))


def compare(summary: list[dict]) -> list[dict]:
    """Each online point against the other curves at its call reduction."""
    curve = {m: [(s["call_reduction"], s["psnr"]) for s in summary if s["method"] == m]
             for m in ("magcache", "teacache", "online-hold")}
    out = []
    for s in summary:
        if s["method"] != "online":
            continue
        row = dict(label=s["label"], call_reduction=round(s["call_reduction"], 3), online_psnr=round(s["psnr"], 2))
        for m, pts in curve.items():
            y = at(pts, s["call_reduction"])
            row[f"{m}_psnr"] = None if y is None else round(y, 2)
            row[f"vs_{m}_db"] = None if y is None else round(s["psnr"] - y, 2)
        out.append(row)
    return out


def table(res: dict) -> str:
    s = res["sampler"]
    lines = [f"Model `{res['model']}` ({res['ckpt']}), {res['video']['frames']}x{res['video']['height']}x"
             f"{res['video']['width']}, {s['num_steps']} steps {s['solver']}, shift {s['shift']}, CFG {s['guidance']}; "
             f"{len(res['pairs'])} (prompt, seed) pairs ({res.get('pair_set', 'quality')}); calibrated MagCache ratios "
             f"`{res['magcache_ratios']}`; branch_sync {res.get('branch_sync', 'official')}; retention 0.2; "
             f"{res['threads']} thread(s), best of {res['repeats']}.", "",
             "| method | computed / total calls | call reduction | wall speedup | PSNR (dB) | min PSNR | SSIM | "
             "branches desync |", "|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        lines.append(f"| {r['label']} | {r['computed_calls']} / {r['total_calls']} | {r['call_reduction']:.2f}x | "
                     f"{r['wall_speedup']:.2f}x | {r['psnr']:.2f} | {r['psnr_min']:.2f} | {r['ssim']:.4f} | "
                     f"{100 * r.get('desync_share', 0):.0f}% |")
    lines += ["", "At equal computed calls (the other methods' Pareto fronts at the online point's call reduction):",
              "",
              "| online point | call reduction | online PSNR | calibrated MagCache | online - MagCache | TeaCache | "
              "online - TeaCache | online-hold |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for c in res["comparison"]:
        lines.append(f"| {c['label']} | {c['call_reduction']:.2f}x | {c['online_psnr']:.2f} | "
                     f"{fmt(c['magcache_psnr'])} | "
                     f"{fmt(c['vs_magcache_db'])} | {fmt(c['teacache_psnr'])} | {fmt(c['vs_teacache_db'])} | "
                     f"{fmt(c['online-hold_psnr'])} |")
    lines += ["", f"Benchmark wall time: {res['benchmark_wall_s']:.0f} s."]
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    styles = dict(magcache=("tab:blue", "o-"), online=("tab:green", "s-"), teacache=("tab:orange", "^-"))
    styles["online-hold"] = ("tab:olive", "x--")
    for m, (colour, style) in styles.items():
        pts = sorted((s for s in res["summary"] if s["method"] == m), key=lambda s: s["call_reduction"])
        if not pts:
            continue
        for ax, key in ((axes[0], "psnr"), (axes[1], "ssim")):
            ax.plot([s["call_reduction"] for s in pts], [s[key] for s in pts], style, color=colour, ms=4,
                    label=m if m != "magcache" else "magcache (calibrated)")
    axes[0].set(xlabel="total / computed block-stack calls", ylabel="PSNR vs full (dB)", title="PSNR at equal calls")
    axes[1].set(xlabel="total / computed block-stack calls", ylabel="SSIM vs full", title="SSIM at equal calls")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{res['model']}: {len(res['pairs'])} pairs, {res['sampler']['num_steps']} steps; online needs no "
                 f"ratio file")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=len(HELDOUT_PAIRS))
    ap.add_argument("--pair-set", choices=("heldout", "quality"), default="heldout")
    ap.add_argument("--branch-sync", choices=("joint", "official"), default="joint")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per run (the best counts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="tiny-video", help="calibrated MagCache preset")
    ap.add_argument("--ratios", help="a calibrated ratio file instead of --preset")
    ap.add_argument("--teacache-file", help="a tools/fit_teacache.py output instead of the shipped coefficients")
    ap.add_argument("--out", default=os.path.join(RESULTS, "online.json"))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.ckpt=...")
    args = ap.parse_args(argv)
    if not args.table_only and not args.ratios and args.preset not in preset_names():
        ap.error(f"--preset {args.preset!r} is not available; pass --ratios FILE (a cache.mode=calibrate output)")
    res = load_or_run(args, run_benchmark)
    plot(res, os.path.splitext(args.out)[0] + ".png")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
