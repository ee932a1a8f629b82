"""Quality versus speed of MagCache and TeaCache against full sampling on the shipped tiny-video model.

    python -m benchmarks.quality                      # ~3 min (one thread, best of 3 timings)
    python -m benchmarks.quality --table-only         # regenerate benchmarks/README.md from the JSON

For each fixed (prompt, seed) pair: a full run (every call computed), MagCache at several (thresh, K) and
TeaCache at several thresholds, all in one process on the same model. Per run: computed / total block-stack
calls, sampling wall time (best of ``--repeats``) and the speedup against the full run of the same pair, PSNR
and SSIM of the video against the full run's. LPIPS is not computed: it needs a pretrained backbone (AlexNet/VGG)
that cannot be downloaded here and none is available locally.

Writes benchmarks/results/quality.json, benchmarks/results/quality.png and the table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

from benchmarks._common import ROOT, build_job, load_or_run, write_readme_block
from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.eval.metrics import PSNR_CAP, psnr, ssim
from tools.tinydata.judge import judge

PAIRS = [  # (prompt, seed): fixed; none of these seeds or the fit script's runs overlap
    ("a small red circle moves right", 11),
    ("a big blue square moves left", 12),
    ("a small green triangle moves up", 13),
    ("a big yellow circle moves down", 14),
    ("a small white square bounces", 15),
    ("a cyan circle grows", 16),
    ("a magenta triangle shrinks", 17),
    ("a big orange triangle moves right", 18),
]
MAGCACHE = [(0.06, 2), (0.12, 2), (0.24, 4), (0.24, 6), (0.5, 8)]  # (thresh, K), retention 0.2
TEACACHE = [0.05, 0.1, 0.2, 0.4, 0.8]
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def timed(job, policy_fn, prompt, seed, repeats):
    """(video, computed calls, total calls, best wall seconds, timings, decisions) over ``repeats`` identical runs."""
    best, video, result = math.inf, None, None
    for _ in range(repeats):
        video, result, wall = job.run(policy_fn(), prompt, seed)
        best = min(best, wall)
    computed = sum(1 for d in result.decisions if d["compute"])
    return video, computed, len(result.decisions), best, result.timings.as_dict(), result.decisions


def run_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    job = build_job(args.overrides)
    n, branches = job.scfg.num_steps, job.scfg.branches
    methods = [("full", None, lambda: NoCache())]
    for thresh, k in MAGCACHE:
        methods.append((f"magcache t={thresh} K={k}", dict(method="magcache", thresh=thresh, K=k, retention=0.2),
                        lambda t=thresh, kk=k: build_magcache(None if args.ratios else args.preset, args.ratios,
                                                              MagCacheConfig(t, kk, 0.2), n, branches)))
    coefficients = None
    if args.teacache_file:
        with open(args.teacache_file) as f:
            coefficients = json.load(f)["coefficients"]
    for thresh in TEACACHE:
        methods.append((f"teacache t={thresh}", dict(method="teacache", thresh=thresh),
                        lambda t=thresh: build_teacache(job.cfg.model.name, t, n, coefficients)))
    pairs = PAIRS[: args.pairs]
    job.run(NoCache(), pairs[0][0], pairs[0][1])  # warm-up (allocator, scheduler import)
    runs = []
    t_start = time.perf_counter()
    for prompt, seed in pairs:
        ref, _, total_ref, wall_ref, t_ref, _ = timed(job, methods[0][2], prompt, seed, args.repeats)
        runs.append(dict(method="full", label="full", prompt=prompt, seed=seed, computed_calls=total_ref,
                         total_calls=total_ref, wall_s=wall_ref, speedup=1.0, psnr=PSNR_CAP, ssim=1.0,
                         prompt_match=judge(ref, prompt)["verdict"],
                         cache_s=t_ref["cache"], blocks_s=t_ref["blocks"], timings=t_ref))
        for label, params, fn in methods[1:]:
            video, computed, total, wall, timings, _ = timed(job, fn, prompt, seed, args.repeats)
            runs.append(dict(**params, label=label, prompt=prompt, seed=seed, computed_calls=computed,
                             total_calls=total, wall_s=wall, speedup=wall_ref / wall, psnr=psnr(video, ref),
                             ssim=ssim(video, ref), prompt_match=judge(video, prompt)["verdict"],
                             cache_s=timings["cache"], blocks_s=timings["blocks"],
                             timings=timings))
        print(f"{prompt!r} seed {seed}: done ({time.perf_counter() - t_start:.0f}s)", flush=True)
    full_runs = [r for r in runs if r["method"] == "full"]
    blocks_fraction = sum(r["blocks_s"] for r in full_runs) / sum(r["timings"]["total"] for r in full_runs)
    summary = []
    for label, params, _ in methods:
        rs = [r for r in runs if r["label"] == label]
        comp, tot = sum(r["computed_calls"] for r in rs), sum(r["total_calls"] for r in rs)
        wall = sum(r["wall_s"] for r in rs)
        wall_full = sum(r["wall_s"] for r in runs if r["method"] == "full")
        summary.append(dict(label=label, **(params or dict(method="full")),
                            computed_calls=comp, total_calls=tot, call_reduction=tot / comp,
                            wall_speedup=wall_full / wall,
                            speedup_over_call_reduction=(wall_full / wall) / (tot / comp),
                            psnr=float(np.mean([r["psnr"] for r in rs])), psnr_min=float(min(r["psnr"] for r in rs)),
                            ssim=float(np.mean([r["ssim"] for r in rs])), num_pairs=len(rs),
                            prompt_match=float(np.mean([ok for r in rs for ok in r["prompt_match"].values()])),
                            cache_overhead_s_per_run=float(np.mean([r["cache_s"] for r in rs])),
                            amdahl_speedup=1.0 / ((1 - blocks_fraction) + blocks_fraction * comp / tot)))
    return dict(
        model=job.cfg.model.name, ckpt=job.cfg.model.ckpt, magcache_preset=args.ratios or args.preset,
        video=dict(frames=job.cfg.video.frames, height=job.cfg.video.height, width=job.cfg.video.width),
        sampler=dict(num_steps=n, shift=job.scfg.shift, guidance=job.scfg.guidance, solver=job.scfg.solver),
        threads=args.threads, repeats=args.repeats, machine=platform.processor() or platform.machine(),
        psnr_cap=PSNR_CAP, lpips="not computed: no pretrained backbone can be downloaded here",
        pairs=[dict(prompt=p, seed=s) for p, s in pairs], summary=summary, runs=runs,
        blocks_fraction_of_full_sampling=blocks_fraction, targets=targets(summary),
        benchmark_wall_s=round(time.perf_counter() - t_start, 1))


def _interp(xs, ys, x):
    """Linear interpolation of y at x along a curve sorted by x; None outside its range."""
    pts = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def targets(summary: list[dict]) -> dict:
    mag = [s for s in summary if s["method"] == "magcache"]
    tea = [s for s in summary if s["method"] == "teacache"]
    a = [dict(label=s["label"], call_reduction=round(s["call_reduction"], 3), wall_speedup=round(s["wall_speedup"], 3),
              ratio=round(s["speedup_over_call_reduction"], 3), met=s["speedup_over_call_reduction"] >= 0.95)
         for s in mag]
    b = []
    for s in mag:
        if s["call_reduction"] < 2.5:
            continue
        tp = _interp([t["call_reduction"] for t in tea], [t["psnr"] for t in tea], s["call_reduction"])
        b.append(dict(label=s["label"], call_reduction=round(s["call_reduction"], 3), magcache_psnr=round(s["psnr"], 2),
                      teacache_psnr_at_same_calls=None if tp is None else round(tp, 2),
                      margin_db=None if tp is None else round(s["psnr"] - tp, 2),
                      met=None if tp is None else s["psnr"] >= tp + 3.0))
    return dict(a_wall_speedup_ge_095_call_reduction=a, b_psnr_margin_ge_3db_at_ge_2_5x=b)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, colour in (("magcache", "tab:blue"), ("teacache", "tab:orange")):
        pts = sorted((s for s in res["summary"] if s["method"] == method), key=lambda s: s["call_reduction"])
        for ax, xkey, ykey in ((axes[0], "wall_speedup", "psnr"), (axes[1], "call_reduction", "psnr"),
                               (axes[2], "wall_speedup", "ssim")):
            ax.plot([s[xkey] for s in pts], [s[ykey] for s in pts], "o-", color=colour, label=method)
            for s in pts:
                tag = f"{s['thresh']}/{s['K']}" if method == "magcache" else f"{s['thresh']}"
                ax.annotate(tag, (s[xkey], s[ykey]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="wall-time speedup vs full", ylabel="PSNR vs full (dB)", title="PSNR vs wall speedup")
    axes[1].set(xlabel="total / computed block-stack calls", ylabel="PSNR vs full (dB)", title="PSNR vs call reduction")
    axes[2].set(xlabel="wall-time speedup vs full", ylabel="SSIM vs full", title="SSIM vs wall speedup")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{res['model']}: {len(res['pairs'])} (prompt, seed) pairs, {res['sampler']['num_steps']} steps, "
                 f"CFG {res['sampler']['guidance']} (labels: thresh/K, thresh)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(res: dict) -> str:
    s = res["sampler"]
    lines = [BEGIN, "",
             f"Model `{res['model']}` ({res['ckpt']}), {res['video']['frames']}x{res['video']['height']}x"
             f"{res['video']['width']}, {s['num_steps']} steps {s['solver']}, shift {s['shift']}, CFG {s['guidance']}; "
             f"{len(res['pairs'])} (prompt, seed) pairs; {res['threads']} thread(s), best of {res['repeats']}; "
             f"MagCache retention 0.2, preset `{res['magcache_preset']}`. PSNR/SSIM are means over pairs against the "
             f"full run (identical videos count as {res['psnr_cap']:.0f} dB). LPIPS: {res['lpips']}. Prompt "
             "match: share of the caption's attributes (colour, shape, size, motion) that "
             "`tools.tinydata.judge` reads back from the video.", "",
             "| method | computed / total calls | call reduction | wall speedup | speedup / call reduction | "
             "Amdahl bound | cache s/run | PSNR (dB) | min PSNR | SSIM | prompt match |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        lines.append(f"| {r['label']} | {r['computed_calls']} / {r['total_calls']} | {r['call_reduction']:.2f}x | "
                     f"{r['wall_speedup']:.2f}x | {r['speedup_over_call_reduction']:.3f} | "
                     f"{r['amdahl_speedup']:.2f}x | {r['cache_overhead_s_per_run']:.3f} | {r['psnr']:.2f} | "
                     f"{r['psnr_min']:.2f} | {r['ssim']:.4f} | {_pct(r.get('prompt_match'))} |")
    t = res["targets"]
    lines += ["", f"The block stack is {100 * res['blocks_fraction_of_full_sampling']:.1f}% of a full run's sampling "
              "time (embedding, head, unpatchify and the UniPC step run on every call, skipped or not); 'Amdahl "
              "bound' is the wall speedup that fraction allows at that call reduction with a free cache.",
              "", "Target (a), MagCache wall speedup >= 0.95 x call reduction: " +
              ", ".join(f"{x['label']}: {x['ratio']:.3f} ({'met' if x['met'] else 'not met'})"
                        for x in t["a_wall_speedup_ge_095_call_reduction"]) + ".", ""]
    if t["b_psnr_margin_ge_3db_at_ge_2_5x"]:
        lines.append(
            "Target (b), at >= 2.5x fewer calls MagCache PSNR >= TeaCache PSNR (interpolated at the same call "
            "reduction) + 3 dB: " + ", ".join(
                f"{x['label']} at {x['call_reduction']:.2f}x: {x['magcache_psnr']:.2f} vs "
                f"{x['teacache_psnr_at_same_calls']} dB (margin {x['margin_db']} dB, "
                f"{'met' if x['met'] else 'not met' if x['met'] is not None else 'TeaCache curve does not reach it'})"
                for x in t["b_psnr_margin_ge_3db_at_ge_2_5x"]) + ".")
    else:
        lines.append("Target (b): no MagCache setting reached 2.5x fewer calls.")
    lines += ["", f"Benchmark wall time: {res['benchmark_wall_s']:.0f} s.", "", END]
    return "\n".join(lines)


def write_readme(res: dict) -> None:
    write_readme_block(table(res), BEGIN, END, "## Quality vs speed (`quality.py`)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per run (the best counts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="tiny-video", help="MagCache preset for the model")
    ap.add_argument("--ratios", help="a MagCache ratio file instead of --preset")
    ap.add_argument("--teacache-file", help="a tools/fit_teacache.py output instead of the shipped coefficients")
    ap.add_argument("--out", default=os.path.join(RESULTS, "quality.json"))
    ap.add_argument("--table-only", action="store_true", help="only regenerate README table and plot from --out")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. sampler.num_steps=20")
    args = ap.parse_args(argv)
    res = load_or_run(args, run_benchmark)
    plot(res, os.path.splitext(args.out)[0] + ".png")
    if os.path.abspath(args.out) == os.path.join(RESULTS, "quality.json"):
        write_readme(res)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
