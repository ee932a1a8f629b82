"""The dry-run planner's time estimate (cpu profile) against measured CPU sampling runs of the tiny model.

    python -m magcache_dist.planner.measure --name cpu --tokens 256 && python -m benchmarks.planner_check  # ~2 min

(The real-size check, 1.3B at three geometries, fp32 / bf16, one and two ranks: benchmarks/planner_check_real.py.)

One intra-op thread, single process, the embedded tiny-video model (seeded weights), cache off and MagCache
(wan2.1-t2v-1.3b preset, 0.12/2/0.2), three sizes. Measured = the sampler's own wall time (best of --repeats);
estimate = planner per_rank.time_s.sampling. Prints a table and writes benchmarks/results/planner_check.json,
plus the planner's projection for Wan2.1-14B 720P 81 frames on 8xH100 with MagCache E0.24/K6.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from magcache_dist.config import load_config
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.job import validate_job
from magcache_dist.planner import format_plan, plan_job
from magcache_dist.sampling.loop import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = [("16x64x64", 16, 64, 64), ("16x128x128", 16, 128, 128), ("32x128x128", 32, 128, 128)]
WAN14B_720P = ["model.name=wan2.1-t2v-14b", "model.dtype=bfloat16", "video.frames=81", "video.height=720",
               "video.width=1280", "sampler.num_steps=50", "sampler.guidance=5.0", "sampler.shift=5.0",
               "cache.magcache.preset=wan2.1-t2v-14b", "cache.magcache.thresh=0.24", "cache.magcache.K=6", "cache.magcache.retention=0.2",
               "parallel.ulysses_degree=8", "planner.device=h100"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, f, h, w in SIZES:
        for mode in ("off", "magcache"):
            ov = ["model.name=tiny-video", f"video.frames={f}", f"video.height={h}", f"video.width={w}",
                  f"sampler.num_steps={args.steps}", f"cache.mode='{mode}'", "cache.magcache.preset=wan2.1-t2v-1.3b",
                  "planner.device=cpu", "progress=false"]
            cfg = load_config(None, ov)
            job = validate_job(cfg, 1)
            scfg = job.scfg
            model, text = job.family.build("cpu")
            texts = job.family.encode(text, cfg.prompt, cfg.negative_prompt, scfg.branches)
            noise = job.family.make_noise(0)
            best = float("inf")
            for _ in range(args.repeats):
                res = sample(model, noise, texts, scfg, job.policy)
                best = min(best, res.timings.total)
            planned = plan_job(cfg)["per_rank"]
            est = planned["time_s"]["sampling"]
            rows.append(dict(size=label, cache=mode, tokens=planned["tokens"],
                             computed=sum(1 for d in res.decisions if d["compute"]), calls=len(res.decisions),
                             measured_s=best, estimated_s=est, error=(est - best) / best))
    print(f"{'video':<12}{'cache':<10}{'tokens':>7}{'computed':>10}{'measured s':>12}{'estimate s':>12}{'error':>8}")
    for r in rows:
        print(f"{r['size']:<12}{r['cache']:<10}{r['tokens']:>7}{r['computed']:>6}/{r['calls']:<3}"
              f"{r['measured_s']:>12.3f}{r['estimated_s']:>12.3f}{r['error'] * 100:>7.1f}%")
    mean_abs = sum(abs(r["error"]) for r in rows) / len(rows)
    print(f"mean |error| {mean_abs * 100:.1f}%")
    proj = plan_job(load_config(None, WAN14B_720P + ["output_dir=/tmp/unused"]))
    print("\nprojection:\n" + format_plan(proj))
    os.makedirs(os.path.join(ROOT, "benchmarks/results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks/results/planner_check.json")
    atomic_write_text(path, json.dumps(dict(rows=rows, mean_abs_error=mean_abs, threads=1, steps=args.steps,
                                            wan14b_720p_8xh100=dict(per_rank=proj["per_rank"],
                                                                    skip_plan=proj["skip_plan"])),
                                       indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
