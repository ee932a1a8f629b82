"""Throughput of prompt lists on the embedded model (issue 17), each comparison measured in one run:

1. 16 prompts of benchmarks/prompts/tiny_suite.txt as one prompt-list job (one process: the model and the text
   encoder load once) against 16 single-prompt jobs (16 processes, as a shell loop over prompts would run them);
2. the same 16 prompts on 4 ranks (torchrun, gloo) as 2 data-parallel groups of 2 (Ulysses 2) against 1 group
   of 4 (Ulysses 2 x ring 2).

Wall time of each whole command, start to exit. Prints a table and writes benchmarks/results/prompt_list.json.

    .venv/bin/python -m benchmarks.prompt_list [--prompts 16] [--steps 20] [--table-only]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks._common import ROOT, load_or_run, publish

SUITE = os.path.join(ROOT, "benchmarks", "prompts", "tiny_suite.txt")
OUT = os.path.join(ROOT, "benchmarks", "results", "prompt_list.json")


def _prompts(n: int) -> list[str]:
    with open(SUITE) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")][:n]


def _timed(cmd: list[str], env=None) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def _calls(folder: str) -> tuple[int, int]:
    with open(os.path.join(folder, "summary.json")) as f:
        s = json.load(f)
    return s["computed_calls"], s["total_calls"]


def run(args) -> dict:
    prompts = _prompts(args.prompts)
    tmp = tempfile.mkdtemp(prefix="prompt_list_")
    listing = os.path.join(tmp, "prompts.txt")
    with open(listing, "w") as f:
        f.write("\n".join(prompts) + "\n")
    gen = [sys.executable, os.path.join(ROOT, "launch", "generate.py"), "--config", "configs/default.yaml",
           "progress=false", f"sampler.num_steps={args.steps}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = dict(prompts=len(prompts), steps=args.steps, host=platform.node(), cpus=os.cpu_count(), rows={})
    try:
        singles = sum(_timed([*gen, f"prompt={p}", f"output_dir={tmp}/single{i}"], env) for i, p in enumerate(prompts))
        res["rows"]["16 single-prompt jobs"] = dict(wall_s=singles, processes="1 each")
        res["rows"]["one prompt-list job"] = dict(wall_s=_timed([*gen, f"prompts_file={listing}",
                                                                 f"output_dir={tmp}/list"], env), processes=1)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                    *gen[1:], f"prompts_file={listing}"]
        for name, extra in (("4 ranks: 1 group (Ulysses 2 x ring 2)",
                             ["parallel.ulysses_degree=2", "parallel.ring_degree=2", "parallel.dp_degree=1"]),
                            ("4 ranks: 2 groups of 2 (Ulysses 2)", ["parallel.ulysses_degree=2",
                                                                   "parallel.dp_degree=2"])):
            out = os.path.join(tmp, name.split(":")[1].strip().split(" ")[0] + "g")
            wall = _timed([*torchrun, *extra, f"output_dir={out}"], env)
            res["rows"][name] = dict(wall_s=wall, processes=4, calls=_calls(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r = res["rows"]
    res["list_vs_singles_speedup"] = r["16 single-prompt jobs"]["wall_s"] / r["one prompt-list job"]["wall_s"]
    res["dp2_vs_one_group_speedup"] = (r["4 ranks: 1 group (Ulysses 2 x ring 2)"]["wall_s"]
                                       / r["4 ranks: 2 groups of 2 (Ulysses 2)"]["wall_s"])
    return res


def table(res: dict) -> str:
    lines = [f"{res['prompts']} prompts of benchmarks/prompts/tiny_suite.txt, {res['steps']} steps, the demo's "
             f"MagCache setting; {res['cpus']} CPU cores, gloo. Wall time of each whole command.", "",
             "| run | processes | wall s |", "| --- | ---: | ---: |"]
    for name, row in res["rows"].items():
        lines.append(f"| {name} | {row['processes']} | {row['wall_s']:.1f} |")
    lines += ["", f"One prompt-list job is **{res['list_vs_singles_speedup']:.2f}x** faster than {res['prompts']} "
              f"single-prompt jobs; on 4 ranks, 2 data-parallel groups are **{res['dp2_vs_one_group_speedup']:.2f}x** "
              f"faster than one group of 4."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from --out's JSON")
    args = ap.parse_args(argv)
    res = load_or_run(args, run, write=False)
    publish(res, table(res), args.out, OUT, "prompt_list",
            "## Prompt lists: throughput (`python -m benchmarks.prompt_list`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
