"""Wan2.2 A14B: on which grid MagCache's switch windows are placed, at step counts other than the published 40.

    python -m benchmarks.wan22_switch_grid [--max-steps 100]

The release (MagCache4Wan2.2) counts the high-noise steps on its own grid (sigmas from 1.0 to 0.01, float32), the
sampler switches experts on its grid (sigmas from 0.999 to 0, as Wan2.2 and diffusers sample). For every step
count 4..max and the published settings (T2V 0.06/K2/R0.4, I2V 0.06/K2/R0.1), the official-sync schedule is run
with the switch windows on either grid, and counted: the low-noise calls that reuse a residual the high-noise
expert computed (a skip at or after the real switch whose branch last computed before it), and the computed calls.
No model runs: the decisions alone (they depend on the ratios, not on the latents). Writes
benchmarks/results/wan22_switch_grid.json.
"""
from __future__ import annotations

import argparse
import os
import sys

from benchmarks._common import ROOT, publish
from magcache_dist.cache import MagCacheConfig, build_magcache
from magcache_dist.cache.presets import _SWITCH, get_preset
from magcache_dist.sampling.grids import expert_switch_step

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "wan22_switch_grid.json")


def schedule(preset: str, n: int, switch: int, real_switch: int) -> dict:
    """Official-sync decisions with the windows at ``switch``; cross-expert reuses judged at ``real_switch``."""
    p = get_preset(preset)
    d = p.defaults
    branches = p.table.branches
    pol = build_magcache(preset, None, MagCacheConfig(d["thresh"], d["K"], d["retention"]), n, branches,
                         switch_step=switch)
    state = pol.new_state(branches)
    last_computed = {b: None for b in branches}
    computed, cross = 0, []
    for step in range(n):
        for b in branches:
            dec = pol.propose(state, step, b)
            pol.commit(state, step, b, dec)
            if dec.compute:
                state[b].has_residual = True
                last_computed[b] = step
                computed += 1
            elif step >= real_switch and last_computed[b] < real_switch:
                cross.append([step, b])
    return dict(computed=computed, cross_expert_reuses=cross)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    res = dict(presets={})
    rows = []
    for preset, (shift, boundary) in _SWITCH.items():
        cases, summary = [], dict(steps=0, differ=0, cross_release=0, cross_sampler=0, cases_cross_release=[])
        for n in range(4, args.max_steps + 1):
            rel = expert_switch_step(n, shift, boundary, grid="magcache")
            samp = expert_switch_step(n, shift, boundary)
            a, b = schedule(preset, n, rel, samp), schedule(preset, n, samp, samp)
            cases.append(dict(num_steps=n, switch_release_grid=rel, switch_sampler=samp, release_grid=a,
                              sampler_grid=b))
            summary["steps"] += 1
            summary["differ"] += rel != samp
            summary["cross_release"] += len(a["cross_expert_reuses"])
            summary["cross_sampler"] += len(b["cross_expert_reuses"])
            if a["cross_expert_reuses"]:
                summary["cases_cross_release"].append(n)
        res["presets"][preset] = dict(shift=shift, boundary=boundary, summary=summary, cases=cases)
        rows.append(f"| {preset} | {summary['steps']} | {summary['differ']} | {summary['cross_release']} "
                    f"({len(summary['cases_cross_release'])} step counts) | {summary['cross_sampler']} |")
        at40 = next(c for c in cases if c["num_steps"] == 40)
        rows.append(f"| {preset} at 40 steps | switch {at40['switch_sampler']} on both | - | "
                    f"{len(at40['release_grid']['cross_expert_reuses'])} | "
                    f"{len(at40['sampler_grid']['cross_expert_reuses'])} |")
    text = "\n".join(["| preset | step counts | grids disagree | low-noise calls reusing a high-noise residual, "
                      "windows on the release's grid | the same, windows on the sampler's grid |",
                      "|---|---|---|---|---|", *rows, "",
                      f"published thresh / K / retention; step counts 4..{args.max_steps}; decisions only"])
    publish(res, text, args.out, DEFAULT_OUT, "wan22_switch_grid",
            "## Wan2.2 A14B: the switch-window grid (`python -m benchmarks.wan22_switch_grid`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
