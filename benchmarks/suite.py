"""The embedded model's prompt suite, end to end: full sampling vs MagCache vs TeaCache (issue 17).

Runs the documented command pair on benchmarks/prompts/tiny_suite.txt (40 prompts):

    # 1. one prompt-list job per method (the demo config; each method's setting on the command line)
    magcache-generate --config configs/default.yaml prompts_file=benchmarks/prompts/tiny_suite.txt \\
        cache.mode=off output_dir=outputs/suite/full
    magcache-generate --config configs/default.yaml prompts_file=benchmarks/prompts/tiny_suite.txt \\
        output_dir=outputs/suite/magcache                                   # the demo's MagCache setting
    magcache-generate --config configs/default.yaml prompts_file=benchmarks/prompts/tiny_suite.txt \\
        cache.mode=teacache cache.teacache.thresh=0.1 output_dir=outputs/suite/teacache
    # 2. score both against the full videos
    python -m magcache_dist.eval --reference outputs/suite/full --candidate outputs/suite/magcache \\
        --candidate outputs/suite/teacache --out benchmarks/results/suite/eval.json

and puts the table into benchmarks/README.md. The jobs run one after the other on one core each (the comparison's
wall times come from one run of this script).

    .venv/bin/python -m benchmarks.suite [--keep] [--lpips-backbone PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from benchmarks._common import ROOT, write_readme_block

SUITE = "benchmarks/prompts/tiny_suite.txt"
RESULTS = os.path.join(ROOT, "benchmarks", "results", "suite")
METHODS = {  # name -> overrides on top of configs/default.yaml
    "full": ["cache.mode=off"],
    "magcache": [],
    "teacache": ["cache.mode=teacache", "cache.teacache.thresh=0.1"],
}
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "", flush=True)
    if p.returncode not in (0, 1):  # eval exits 1 when some videos could not be compared: reported in its table
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed ({p.returncode}):\n{p.stderr[-3000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "outputs", "suite"), help="where the videos go")
    ap.add_argument("--keep", action="store_true", help="keep earlier videos (a rerun reuses them)")
    ap.add_argument("--lpips-backbone", default=None)
    args = ap.parse_args(argv)
    if not args.keep:
        shutil.rmtree(args.out_dir, ignore_errors=True)
    for name, extra in METHODS.items():
        _run([sys.executable, "launch/generate.py", "--config", "configs/default.yaml", f"prompts_file={SUITE}",
              "progress=false", f"output_dir={os.path.join(args.out_dir, name)}", *extra])
    os.makedirs(RESULTS, exist_ok=True)
    cmd = [sys.executable, "-m", "magcache_dist.eval", "--reference", os.path.join(args.out_dir, "full"),
           "--candidate", os.path.join(args.out_dir, "magcache"), "--candidate", os.path.join(args.out_dir, "teacache"),
           "--out", os.path.join(RESULTS, "eval.json")]
    _run(cmd + (["--lpips-backbone", args.lpips_backbone] if args.lpips_backbone else []))
    with open(os.path.join(RESULTS, "eval.md")) as f:
        tables = f.read().strip()
    demo = "the demo setting (MagCache: preset tiny-video, thresh 0.12, K 2, retention 0.2, joint)"
    settings = "; ".join(f"{n}: {' '.join(e) or demo}" for n, e in METHODS.items())
    block = (f"{BEGIN}\n40 prompts of `{SUITE}` on the shipped tiny-video model (configs/default.yaml: 20 steps, "
             f"16 x 64 x 64, seed 0), one prompt-list job per method ({settings}). Per-video tables, JSON and the "
             f"plot: [results/suite/](results/suite/).\n\n{_summary_only(tables)}\n{END}")
    write_readme_block(block, BEGIN, END,
                       "## Prompt suite: full vs MagCache vs TeaCache (`python -m benchmarks.suite`)")
    print(json.dumps({"wrote": os.path.join(RESULTS, "eval.json")}))
    return 0


def _summary_only(md: str) -> str:
    """The combined table of eval.md (what follows its "### Summary" heading) and its LPIPS line."""
    lpips = next((ln for ln in md.splitlines() if ln.startswith("LPIPS")), "")
    table = md.split("### Summary", 1)[1].strip() if "### Summary" in md else md
    return f"{table}\n\n{lpips}".strip()

if __name__ == "__main__":
    sys.exit(main())
