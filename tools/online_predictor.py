"""Why online MagCache predicts in sigma: the plot and the numbers behind its predictor.

    python -m tools.online_predictor [extra ratio files ...] [--out numbers.json]   # writes docs/online_predictor.png

For each calibration (the published Wan2.1 tables, plus any ratio files given, e.g. the shipped tiny-video
preset): the per-step ratio gamma_s against the step (the magnitude law: flat, then a sharp drop), and the slope
k_s = log(gamma_s) / (sigma_s - sigma_{s-1}) against sigma (smooth: the drop is mostly the shifted grid's large
last intervals). Then an online replay: at every step after the first 20%, each predictor sees only the ratios
measured before that step and predicts the product of the next h ratios (h = 1, 2, 4: MagCache's K), and its
error |log predicted - log true| is averaged. Predictors: ``gamma-hold`` (the last per-step ratio, in steps),
``hold`` and ``powerlaw`` (the online policy's, magcache_dist/cache/online.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from magcache_dist.auto import sigma_grid
from magcache_dist.cache import RatioTable, get_preset
from magcache_dist.cache.online import OnlineConfig, predict_slope
from magcache_dist.io.atomic import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED = [("wan2.1-t2v-1.3b", 5.0), ("wan2.1-t2v-14b", 5.0), ("wan2.1-i2v-14b-480p", 3.0),
             ("wan2.1-i2v-14b-720p", 5.0)]  # Wan's default shift for each
PREDICTORS = ("gamma-hold", "hold", "powerlaw")
HORIZONS = (1, 2, 4)


def slopes(ratios, sig):
    return [math.log(ratios[s]) / (sig[s] - sig[s - 1]) for s in range(1, len(ratios))]


def replay(ratios, sig, predictor: str, h: int, start: int, window: int = OnlineConfig.window):
    """Errors |log(prod predicted) - log(prod true)| for steps start..n-h, every earlier step measured."""
    n = len(ratios)
    errs = []
    for i in range(max(start, 2), n - h + 1):
        hist = [(0.5 * (sig[s] + sig[s - 1]), math.log(ratios[s]) / (sig[s] - sig[s - 1])) for s in range(1, i)]
        if predictor == "gamma-hold":
            pred = h * math.log(ratios[i - 1])
        else:
            pred = sum(predict_slope(hist, 0.5 * (sig[j] + sig[j - 1]), predictor, window) * (sig[j] - sig[j - 1])
                       for j in range(i, i + h))
        errs.append(abs(pred - sum(math.log(ratios[j]) for j in range(i, i + h))))
    return errs


def analyse(name, table: RatioTable, shift: float, solver: str = "unipc") -> dict:
    n = table.num_steps
    sig = sigma_grid(n, shift, solver)
    out = dict(name=name, num_steps=n, shift=shift, sigmas=sig, branches={})
    start = int(0.2 * n)
    for b, r in table.ratios.items():
        row = dict(ratios=list(r), k=slopes(r, sig), errors={})
        for p in PREDICTORS:
            for h in HORIZONS:
                e = replay(r, sig, p, h, start)
                tail = e[-max(2, n // 10):]
                row["errors"][f"{p}/h{h}"] = dict(mean=float(np.mean(e)), tail=float(np.mean(tail)))
        out["branches"][b] = row
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for res in results:
        row = res["branches"]["cond"]
        sig = res["sigmas"]
        steps = np.arange(1, res["num_steps"]) / (res["num_steps"] - 1)
        axes[0].plot(steps, row["ratios"][1:], "-", lw=1.2, label=res["name"])
        mids = [0.5 * (sig[s] + sig[s - 1]) for s in range(1, res["num_steps"])]
        axes[1].plot(mids, row["k"], ".-", lw=1, ms=3, label=res["name"])
    axes[0].set(title="per-step magnitude ratio (cond): flat, then a sharp drop", xlabel="step / (N - 1)",
                ylabel="gamma_s = mean ||r_s|| / ||r_s-1||", ylim=(0.75, 1.03))
    axes[1].set(title="slope k = log(gamma_s) / d sigma: smooth in sigma", xlabel="sigma (interval middle)",
                ylabel="k", ylim=(-0.5, 4))
    axes[1].invert_xaxis()
    # replay errors, averaged over the calibrations, per predictor and horizon
    width = 0.25
    for i, p in enumerate(PREDICTORS):
        vals = [np.mean([r["branches"][b]["errors"][f"{p}/h{h}"]["mean"] for r in results for b in r["branches"]])
                for h in HORIZONS]
        tails = [np.mean([r["branches"][b]["errors"][f"{p}/h{h}"]["tail"] for r in results for b in r["branches"]])
                 for h in HORIZONS]
        x = np.arange(len(HORIZONS)) + (i - 1) * width
        axes[2].bar(x, vals, width, label=f"{p} (all steps)")
        axes[2].scatter(x, tails, marker="v", color="k", s=18, zorder=3, label="last 10% of steps" if i == 0 else None)
    axes[2].set_xticks(range(len(HORIZONS)), [f"h={h}" for h in HORIZONS])
    axes[2].set_yscale("log")
    axes[2].set(title="online replay: |log pred - log true| of the next h ratios", ylabel="mean abs log error")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ratio_files", nargs="*", help="extra calibration files (their meta gives shift and solver)")
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "online_predictor.png"))
    ap.add_argument("--out", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    results = [analyse(name, get_preset(name).table, shift) for name, shift in PUBLISHED]
    for path in args.ratio_files:
        t = RatioTable.load(path)
        results.append(analyse(t.meta.get("model", os.path.basename(path)), t, float(t.meta.get("shift", 5.0)),
                               t.meta.get("solver", "unipc")))
    plot(results, args.png)
    if args.out:
        atomic_write_text(args.out, json.dumps(dict(results=results, predictors=PREDICTORS, horizons=HORIZONS),
                                               indent=1))
    head = "| calibration | branch | " + " | ".join(f"{p} h={h}" for p in PREDICTORS for h in HORIZONS) + " |"
    print(head)
    print("|" + "---|" * (2 + len(PREDICTORS) * len(HORIZONS)))
    for r in results:
        for b, row in r["branches"].items():
            print(f"| {r['name']} | {b} | " + " | ".join(
                f"{row['errors'][f'{p}/h{h}']['mean']:.4f}" for p in PREDICTORS for h in HORIZONS) + " |")
    print("mean abs log error of the predicted product of the next h ratios, steps after the first 20%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
