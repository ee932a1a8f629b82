"""Does the embedded model draw what the prompt asks? Colour, shape, size and motion read back from its videos.

    python -m benchmarks.adherence                       # 42 prompts x 2 seeds, full sampling and MagCache
    python -m benchmarks.adherence --ckpt /tmp/tt/tiny-video-004000.safetensors --no-cache sampler.guidance=3
    python -m benchmarks.adherence --sheet docs/demo_prompts.png      # also a contact sheet, a row per motion

Every prompt of a fixed grid (each motion x each shape, colours and sizes in rotation) is sampled with the demo's
settings (config overrides allowed), once with every call computed and once with the default config's MagCache
setting, and ``tools.tinydata.judge`` reads the video back: the share of prompts whose colour / shape / size /
motion match, and of prompts that match entirely. The same judge reads the data set itself back without a single
error (tests/unit/test_tiny_model.py), so every miss here is the model's. Writes benchmarks/results/adherence.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

import numpy as np
import torch

from benchmarks._common import ROOT, build_job
from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.io.video import contact_sheet, to_frames, write_png
from tools.tinydata.judge import ATTRIBUTES, judge
from tools.tinydata.procedural import COLOURS, MOTIONS, SHAPES, SIZES, VideoSpec

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SHEET = [3 * m + m % 3 for m in range(7)]  # grid indices shown by --sheet: one prompt per motion, shapes rotating


def prompt_grid() -> list[str]:
    """Each motion x each shape (21 prompts) twice, colours and sizes rotating: 42 distinct captions."""
    colours, sizes, out = list(COLOURS), list(SIZES), []
    for rep in range(2):
        for i, (motion, shape) in enumerate((m, s) for m in MOTIONS for s in SHAPES):
            colour, size = colours[(3 * i + 5 * rep) % len(colours)], sizes[(i + rep) % len(sizes)]
            out.append(VideoSpec(colour, shape, motion, size, 0.0, 0.0, 0.0).caption())
    return out


def score(verdicts: list[dict]) -> dict:
    """Share of prompts right per attribute (over prompts that name it) and entirely."""
    right, named = Counter(), Counter()
    for v in verdicts:
        for k, ok in v["verdict"].items():
            named[k] += 1
            right[k] += bool(ok)
    out = {k: right[k] / named[k] for k in ATTRIBUTES if named[k]}
    out["all"] = sum(v["all"] for v in verdicts) / len(verdicts)
    return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"model.ckpt={args.ckpt}"] if args.ckpt else [])
    job = build_job(overrides)
    n, branches = job.scfg.num_steps, job.scfg.branches
    c = job.cfg.cache.magcache
    methods = {"full": lambda: NoCache()}
    if not args.no_cache:
        methods[f"magcache t={c.thresh} K={c.K}"] = lambda: build_magcache(
            c.preset, None, MagCacheConfig(c.thresh, c.K, c.retention), n, branches,
            branch_sync=job.cfg.cache.branch_sync)
    prompts = prompt_grid()[: args.prompts]
    rows, t0, sheet = [], time.perf_counter(), []
    for i, prompt in enumerate(prompts):
        for seed in range(args.seeds):
            for label, policy in methods.items():
                video, result, _ = job.run(policy(), prompt, seed)
                if args.sheet and i in SHEET and seed == 0 and label == "full":
                    sheet.append(to_frames(video)[::2])  # 8 of its 16 frames
                j = judge(video, prompt)
                rows.append(dict(method=label, prompt=prompt, seed=seed, **j,
                                 computed_calls=sum(d["compute"] for d in result.decisions)))
    summary = {label: score([r for r in rows if r["method"] == label]) for label in methods}
    if args.sheet:
        write_png(args.sheet, contact_sheet(np.concatenate(sheet), cols=len(sheet[0])))
    per_motion = {label: {m: score([r for r in rows if r["method"] == label and r["want"]["motion"] == m])
                          for m in MOTIONS if any(r["want"]["motion"] == m for r in rows)} for label in methods}
    return dict(ckpt=job.cfg.model.ckpt, overrides=overrides, prompts=len(prompts), seeds=args.seeds,
                sampler=dict(num_steps=n, shift=job.scfg.shift, guidance=job.scfg.guidance, solver=job.scfg.solver),
                summary=summary, per_motion=per_motion, runs=rows, wall_s=round(time.perf_counter() - t0, 1))


def table(res: dict) -> str:
    lines = ["| method | colour | shape | size | motion | all four |", "|---|---|---|---|---|---|"]
    for label, s in res["summary"].items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * s[k]:.0f}%" for k in (*ATTRIBUTES, "all")) + " |")
    lines += ["", "| motion (full sampling) | colour | shape | size | motion | all |", "|---|---|---|---|---|---|"]
    for m, s in res["per_motion"]["full"].items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * s[k]:.0f}%" if k in s else "-"
                                               for k in (*ATTRIBUTES, "all")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="weights to judge instead of the config's")
    ap.add_argument("--prompts", type=int, default=42)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cache", action="store_true", help="full sampling only")
    ap.add_argument("--out", default=os.path.join(RESULTS, "adherence.json"))
    ap.add_argument("--sheet", help="also write a contact sheet PNG: one prompt per motion (seed 0, full "
                                    "sampling), a row each, every other frame")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. sampler.guidance=3")
    args = ap.parse_args(argv)
    res = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(f"{res['prompts']} prompts x {res['seeds']} seeds, {res['sampler']}, {res['wall_s']} s")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
