"""magcache-tune on the embedded model (issue 30): for targets of 22, 25 and 28 dB PSNR, the tuned setting's quality on
prompts it never saw, and its computed calls against the shipped demo setting and a plain grid search.

Geometry of the demo (configs/default.yaml: tiny-video, 16 x 64 x 64, 20 steps, seed 0). Prompts: the first
``--prompts`` lines of benchmarks/prompts/tiny_suite.txt, ``--held-out`` of them held out (the tuner's seeded
split). The grid (a plain one, as a user would write it): thresh 0.03, 0.06, 0.12, 0.24 x K 1, 2, 4 x retention 0.1,
0.2, 0.3, branch_sync joint.

1. Every candidate of the grid (distinct schedule) is sampled on every prompt once (``--work``; a rerun reuses the
   videos): the plain grid search, and the oracle answer on the held-out prompts.
2. ``magcache_dist.tune`` runs for each target (``--search probe``, then ``--search exact``) in the same folder: it
   reuses those videos, and reports how many videos its search asked for.

Columns: the tuned setting's calls and mean PSNR on the tuning / held-out prompts; the fewest calls of a grid setting
reaching the target on the tuning prompts (plain grid search: every candidate x every tuning prompt sampled) and on
the held-out prompts (the issue's bar: the tuned setting must compute no more); the demo setting's calls and
held-out PSNR; the videos each search sampled. Also: how often quality rose although a candidate only skipped
more (the assumption of ``--search probe``), over every pair of the exhaustive data.

    .venv/bin/python -m benchmarks.tune [--prompts 8] [--held-out 4] [--work /tmp/magcache-tune-bench] [--table-only]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from benchmarks._common import DEFAULT_CONFIG, ROOT, load_or_run, publish

SUITE = os.path.join(ROOT, "benchmarks", "prompts", "tiny_suite.txt")
OUT = os.path.join(ROOT, "benchmarks", "results", "tune.json")
TARGETS = (22.0, 25.0, 28.0)
GRID = ["--thresh", "0.03,0.06,0.12,0.24", "--K", "1,2,4", "--retention", "0.1,0.2,0.3", "--branch-sync", "joint"]
DEMO = dict(branch_sync="joint", thresh=0.12, K=2, retention=0.2)  # configs/default.yaml


def _args(prompts: str, work: str, target: float, held_out: int, search: str):
    from magcache_dist.tune import parser

    return parser().parse_args(["--config", DEFAULT_CONFIG, "--prompts", prompts, "--out", work, "--target-psnr",
                                str(target), "--held-out", str(held_out), "--search", search, *GRID,
                                "progress=false"])


def _fewest(cands, names, target):
    ok = [c for c in cands if c.mean(names)["psnr"] >= target]
    return min(ok, key=lambda c: (c.calls, c.id)) if ok else None


def violations(cands, names) -> dict:
    """Pairs (a, b) where a only skips more than b (subset of b's computed calls; or a setting in a monotone
    direction from one of b's) and yet a's mean PSNR is higher."""
    out = dict(subset_pairs=0, subset_violations=0, param_pairs=0, param_violations=0, examples=[])
    for a in cands:
        for b in cands:
            if a is b:
                continue
            higher = a.mean(names)["psnr"] > b.mean(names)["psnr"]
            if a.computed <= b.computed:
                out["subset_pairs"] += 1
                out["subset_violations"] += higher
            if any(x.dominates(y) for x in a.settings for y in b.settings):
                out["param_pairs"] += 1
                out["param_violations"] += higher
            if higher and (a.computed <= b.computed) and len(out["examples"]) < 5:
                out["examples"].append(f"{a.id} ({a.calls} calls) {a.mean(names)['psnr']:.2f} dB > {b.id} "
                                       f"({b.calls}) {b.mean(names)['psnr']:.2f}")
    return out


def run(args) -> dict:
    from magcache_dist.parallel.dims import solo_context
    from magcache_dist.tune import Runner, prepare, tune

    torch.set_num_threads(1)
    os.makedirs(args.work, exist_ok=True)
    with open(SUITE) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")][:args.prompts]
    prompts = os.path.join(args.work, "bench_prompts.txt")
    with open(prompts, "w") as f:
        f.write("\n".join(lines) + "\n")
    t = time.perf_counter()
    grid = prepare(_args(prompts, args.work, TARGETS[0], args.held_out, "probe"))
    runner = Runner(grid, solo_context(), "cpu")
    runner.references()
    everyone = grid.tune + grid.held_out
    for i, c in enumerate(grid.candidates):
        runner.sample(c, everyone, "search")
        print(f"[{i + 1}/{len(grid.candidates)}] {c.id}: {c.calls} calls, tune {c.mean(grid.tune)['psnr']:.2f} dB, "
              f"held-out {c.mean(grid.held_out)['psnr']:.2f} dB", file=sys.stderr, flush=True)
    grid_s = time.perf_counter() - t
    demo = next(c for c in grid.candidates if any(s.as_dict() == DEMO for s in c.settings))
    res = dict(prompts=lines, tune=grid.tune, held_out=grid.held_out, grid=grid.grid, settings=grid.settings_total,
               candidates=len(grid.candidates), total_calls=grid.candidates[0].total_calls, host=platform.node(),
               cpus=os.cpu_count(), exhaustive_videos_made=runner.made, exhaustive_s=round(grid_s, 1),
               demo=dict(id=demo.id, calls=demo.calls, tune_psnr=demo.mean(grid.tune)["psnr"],
                         held_out_psnr=demo.mean(grid.held_out)["psnr"]),
               assumption=violations(grid.candidates, grid.tune),
               assumption_held_out=violations(grid.candidates, grid.held_out),
               exhaustive=[dict(id=c.id, calls=c.calls, tune_psnr=c.mean(grid.tune)["psnr"],
                                held_out_psnr=c.mean(grid.held_out)["psnr"]) for c in grid.candidates],
               rows=[])
    for target in TARGETS:
        plain = _fewest(grid.candidates, grid.tune, target)
        oracle = _fewest(grid.candidates, grid.held_out, target)
        row = dict(target=target,
                   plain_grid=None if plain is None else dict(
                       id=plain.id, calls=plain.calls, held_out_psnr=plain.mean(grid.held_out)["psnr"],
                       videos=len(grid.candidates) * len(grid.tune)),
                   held_out_best=None if oracle is None else dict(id=oracle.id, calls=oracle.calls))
        for search in ("probe", "exact"):
            setup = prepare(_args(prompts, args.work, target, args.held_out, search))
            out = tune(setup, solo_context(), "cpu")
            ch = out["chosen"]
            row[search] = dict(
                id=ch and ch["id"], calls=ch and ch["calls"], tune_psnr=ch and ch["tune_mean"]["psnr"],
                held_out_psnr=ch and ch["held_out"]["mean"]["psnr"],
                candidates_sampled=out["counts"]["candidates_sampled"],
                videos=out["counts"]["videos_requested"]["search"],
                videos_made=out["counts"]["videos_sampled_this_run"])
        res["rows"].append(row)
    return res


def table(res: dict) -> str:
    def f(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    lines = [f"`magcache-tune --target-psnr T` on the shipped tiny-video model (configs/default.yaml: 20 steps, "
             f"16 x 64 x 64), {len(res['tune'])} tuning prompts and {len(res['held_out'])} held-out prompts (the "
             f"first {len(res['prompts'])} of benchmarks/prompts/tiny_suite.txt); grid: thresh "
             f"{res['grid']['thresh']} x K {res['grid']['K']} x retention {res['grid']['retention']}, joint = "
             f"{res['settings']} settings, {res['candidates']} distinct schedules. Calls of {res['total_calls']}; "
             f"PSNR: the eval CLI's per-frame mean against full sampling, averaged over the prompts.", "",
             "| target dB | tuned (probe) | calls | tune dB | held-out dB | videos sampled (probe / exact / plain "
             "grid) | plain grid: calls | held-out grid best: calls | demo: calls, held-out dB |",
             "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    d = res["demo"]
    for r in res["rows"]:
        p, e, g, o = r["probe"], r["exact"], r["plain_grid"], r["held_out_best"]
        lines.append(f"| {r['target']:g} | {p['id'] or 'none (cache off)'} | {f(p['calls'], 'd')} | "
                     f"{f(p['tune_psnr'])} | {f(p['held_out_psnr'])} | {p['videos']} / {e['videos']} / "
                     f"{g['videos'] if g else 'n/a'} | {g['calls'] if g else 'n/a'} | {o['calls'] if o else 'n/a'} | "
                     f"{d['calls']}, {d['held_out_psnr']:.2f} |")
    a = res["assumption"]
    lines += ["", f"Probe and exact search chose the same calls for every target: "
                  f"{all(r['probe']['calls'] == r['exact']['calls'] for r in res['rows'])}. The probe search's "
                  f"assumption (skipping more never raises quality) over every pair of the exhaustive data, tuning "
                  f"prompts: {a['subset_violations']} of {a['subset_pairs']} subset-of-calls pairs and "
                  f"{a['param_violations']} of {a['param_pairs']} monotone-direction pairs violate it. "
                  + (f"Exhaustive grid: {res['exhaustive_videos_made']} videos made in {res['exhaustive_s']:.0f} s "
                     f"({res['cpus']} CPU cores, shared)." if res["exhaustive_videos_made"] else
                     f"Exhaustive grid: every video reused from an earlier run in --work (scoring only: "
                     f"{res['exhaustive_s']:.0f} s).")]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--work", default="/tmp/magcache-tune-bench", help="videos (reused by a rerun)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from --out's JSON")
    args = ap.parse_args(argv)
    res = load_or_run(args, run, write=False)
    publish(res, table(res), args.out, OUT, "tune",
            "## Tuning MagCache for a quality target (`python -m benchmarks.tune`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
