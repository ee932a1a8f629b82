"""MagCache on the tiny FLUX.1 / HunyuanVideo / Open-Sora 1.2 configs: computed calls, sampling time and the
difference to the uncached output, single process.

    .venv/bin/python -m benchmarks.families_speed [--repeats 1] [--table-only]

Each config (configs/*-tiny.yaml: the family's pipeline at toy size, seeded weights, the family's MagCache preset
and rule) runs once with the cache off and once with MagCache, through ``run_job`` as the command line runs it.
Prints a table and writes benchmarks/results/families_speed.json (and its block in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import torch

from benchmarks._common import ROOT, publish
from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job

OUT = os.path.join(ROOT, "benchmarks", "results", "families_speed.json")
COLS = ["config", "rule", "calls", "sample_off_s", "sample_magcache_s", "speedup", "mean_abs_diff", "max_abs_diff"]
CONFIGS = ["flux-dev-tiny", "flux-schnell-tiny", "hunyuanvideo-tiny", "opensora-tiny"]


def one(config: str, mode: str, out: str) -> tuple[dict, torch.Tensor]:
    cfg = load_config(f"configs/{config}.yaml", [f"cache.mode='{mode}'", f"output_dir={out}", "progress=false",
                                                 "save_video=false"])
    report = run_job(cfg, solo_context())
    return report, torch.load(os.path.join(out, "latents.pt"), weights_only=True)


def table(res: dict) -> str:
    lines = ["| " + " | ".join(COLS) + " |", "|" + " --- |" * len(COLS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLS) + " |" for r in res["rows"]]
    lines.append(f"\nsingle process, {res['threads']} thread(s), torch {res['torch']}, {res.get('host', '?')}; "
                 "sample_*_s: the report's sampling phase; diffs: final latents, MagCache against cache off")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from --out's JSON")
    args = ap.parse_args(argv)
    if args.table_only:
        with open(args.out) as f:
            res = json.load(f)
        publish(res, table(res), args.out, OUT, "families_speed", "## MagCache on the other families (tiny)")
        return 0
    os.chdir(ROOT)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in CONFIGS:
            best = {}
            for mode in ("off", "magcache"):
                times = []
                for r in range(args.repeats):
                    report, latents = one(config, mode, os.path.join(tmp, f"{config}-{mode}-{r}"))
                    times.append(report["phases_s"]["sample"])
                best[mode] = (min(times), report, latents)
            (t_off, _, ref), (t_mc, rep, lat) = best["off"], best["magcache"]
            rows.append(dict(config=config, preset=rep["cache"]["source"], rule=rep["cache"]["rule"],
                             calls=f"{rep['computed_calls']}/{rep['total_calls']}", sample_off_s=round(t_off, 3),
                             sample_magcache_s=round(t_mc, 3), speedup=round(t_off / t_mc, 2),
                             max_abs_diff=round((lat - ref).abs().max().item(), 4),
                             mean_abs_diff=round((lat - ref).abs().mean().item(), 4),
                             skipped=rep["skipped_steps"]["cond"]))
    res = dict(torch=torch.__version__, threads=torch.get_num_threads(), host=platform.node(), repeats=args.repeats,
               rows=rows)
    publish(res, table(res), args.out, OUT, "families_speed", "## MagCache on the other families (tiny)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
