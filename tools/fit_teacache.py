"""Fit TeaCache's rescaling polynomial for the shipped tiny-video model.

    python -m tools.fit_teacache                 # writes magcache_dist/cache/data/tiny-video-teacache.json

Full runs (every call computed) on prompts and seeds that are *not* in the quality benchmark record, per branch
and step s >= 1, x = rel-L1 change of the first block's modulated input and y = rel-L1 change of the block-stack
output (what a skipped call replaces) between consecutive steps; ``numpy.polyfit(x, y, degree)`` is the rescaling
that TeaCache accumulates. The fit data, the coefficients and a plot (docs/teacache_fit.png) are written; the
job is built and sampled as the benchmarks do (benchmarks/_common.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from benchmarks._common import ROOT, build_job
from magcache_dist.cache.base import CachePolicy, Decision
from magcache_dist.cache.presets import DATA_DIR
from magcache_dist.cache.teacache import TEACACHE_FORMAT, modulated_input, polyval
from magcache_dist.io.atomic import atomic_write_text
from tools.tinydata import ProceduralVideos


def rel_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    return float((cur - prev).abs().double().sum() / prev.abs().double().sum())


class RecordingPolicy(CachePolicy):
    """Computes every call and records (input change, output change) pairs in the per-generation state."""
    name = "teacache-fit"

    @property
    def needs_probe(self) -> bool:
        return True

    def propose(self, state, step, branch, probe=None) -> Decision:
        mod = modulated_input(*probe[:3])
        return Decision(True, reason="fit", updates=dict(extra={**state[branch].extra, "cur_mod": mod}))

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        ex = state[branch].extra
        if "prev_mod" in ex:
            ex.setdefault("pairs", []).append((step, rel_l1(ex["cur_mod"], ex["prev_mod"]),
                                               rel_l1(block_out, ex["prev_out"])))
        ex["prev_mod"], ex["prev_out"] = ex["cur_mod"], block_out
        super().store(state, step, branch, block_in, block_out, valid)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6, help="fit runs (procedural captions, data seed 1234)")
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(DATA_DIR, "tiny-video-teacache.json"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "teacache_fit.png"))
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.ckpt=...")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    job = build_job(args.overrides)
    data = ProceduralVideos(seed=1234)  # captions disjoint in seed from training's index stream and the benchmark
    xs, ys, steps, runs = [], [], [], []
    for i in range(args.samples):
        prompt, seed = data.spec(i).caption(), 5000 + i
        policy = RecordingPolicy()
        _, result, wall = job.run(policy, prompt, seed)
        for b, bs in result.state.branches.items():
            for s, x, y in bs.extra.get("pairs", []):
                xs.append(x), ys.append(y), steps.append(s)
        runs.append(dict(prompt=prompt, seed=seed, wall_s=round(wall, 3)))
        print(f"fit run {i}: {prompt!r} seed {seed} ({wall:.1f}s)", flush=True)
    x, y = np.asarray(xs), np.asarray(ys)
    coef = np.polyfit(x, y, args.degree)
    pred = np.polyval(coef, x)
    r2 = 1.0 - float(((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert abs(polyval(coef.tolist(), float(x[0])) - pred[0]) < 1e-9  # same convention as the policy
    out = dict(format=TEACACHE_FORMAT, model=job.cfg.model.name, ckpt=job.cfg.model.ckpt,
               coefficients=[float(c) for c in coef], degree=args.degree, r2=round(r2, 5),
               x="rel-L1 change of blocks[0] modulated input", y="rel-L1 change of the block-stack output",
               sampler=dict(num_steps=job.scfg.num_steps, shift=job.scfg.shift, guidance=job.scfg.guidance,
                            solver=job.scfg.solver),
               runs=runs, points=[[int(s), round(float(a), 6), round(float(b), 6)] for s, a, b in zip(steps, x, y)])
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"coefficients {out['coefficients']} (R^2 {r2:.4f}, {len(x)} points) -> {args.out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        sc = ax.scatter(x, y, c=steps, s=10, cmap="viridis")
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, np.polyval(coef, grid), "r-", label=f"degree-{args.degree} fit (R^2 {r2:.3f})")
        ax.set_xlabel("rel-L1 change of modulated input (blocks[0])")
        ax.set_ylabel("rel-L1 change of block-stack output")
        ax.set_title("TeaCache rescaling fit, tiny-video")
        fig.colorbar(sc, label="step")
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(args.plot), exist_ok=True)
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
