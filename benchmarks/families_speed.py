"""MagCache on the tiny FLUX.1 / HunyuanVideo / Open-Sora 1.2 configs: computed calls, sampling time and the
difference to the uncached output, single process. Prints a table and writes JSON.

    .venv/bin/python -m benchmarks.families_speed [--out outputs/bench/families_speed.json] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


import torch

from magcache_dist.config import load_config
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job

CONFIGS = ["flux-dev-tiny", "flux-schnell-tiny", "hunyuanvideo-tiny", "opensora-tiny"]


def one(config: str, mode: str, out: str) -> tuple[dict, torch.Tensor]:
    cfg = load_config(f"configs/{config}.yaml", [f"cache.mode='{mode}'", f"output_dir={out}", "progress=false",
                                                 "save_video=false"])
    report = run_job(cfg, solo_context())
    return report, torch.load(os.path.join(out, "latents.pt"), weights_only=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/bench/families_speed.json")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    cols = ["config", "rule", "calls", "sample_off_s", "sample_magcache_s", "speedup", "mean_abs_diff", "max_abs_diff"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), rows=rows),
                                           indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
