"""How well does ``auto`` transfer a calibration to another step count?

    python -m benchmarks.interpolation model.ckpt=...      # a few calibration runs; prints a table, writes JSON

Calibrates the model (one prompt, seed) at several step counts, then predicts each table from each other one with
(a) the store's sigma-grid interpolation of the log magnitude and (b) the published nearest-neighbour resampling by
step index, and reports the mean |log predicted - log measured| per step (both branches, steps >= 1).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

import numpy as np

from benchmarks._common import ROOT, build_job

from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.auto import sigma_grid
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.ratios import nearest_interp
from magcache_dist.cache.store import interpolate_by_sigma


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10,20,30")
    ap.add_argument("--prompt", default="a red circle moves right")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "interpolation.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    tables = {}
    for n in steps:
        job = build_job(list(args.overrides) + [f"sampler.num_steps={n}"])
        pol = CalibrationPolicy(n)
        _, res, _ = job.run(pol, args.prompt, args.seed)
        tables[n] = (pol.table(res.state), sigma_grid(n, job.scfg.shift, job.scfg.solver))
    rows = []
    for src, dst in itertools.permutations(steps, 2):
        (ts, ss), (td, sd) = tables[src], tables[dst]
        err = {"sigma": [], "nearest": []}
        for b in td.ratios:
            truth = np.log(td.ratios[b][1:])
            for name, pred in (("sigma", interpolate_by_sigma(ts.ratios[b], ss, sd)),
                               ("nearest", nearest_interp(ts.ratios[b], dst))):
                err[name] += list(np.abs(np.log(pred[1:]) - truth))
        rows.append(dict(src=src, dst=dst, sigma=float(np.mean(err["sigma"])), nearest=float(np.mean(err["nearest"]))))
    print("| from steps | to steps | sigma interpolation | nearest by step |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['src']} | {r['dst']} | {r['sigma']:.4f} | {r['nearest']:.4f} |")
    print("mean |log predicted ratio - log measured ratio| per step, both branches")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_text(args.out, json.dumps(dict(prompt=args.prompt, seed=args.seed, overrides=args.overrides, rows=rows,
                                                tables={n: t.to_json() for n, (t, _) in tables.items()}), indent=1))
    return 0 if all(math.isfinite(r["sigma"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
