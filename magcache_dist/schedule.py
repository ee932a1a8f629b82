"""Print the MagCache skip schedule of a preset or ratio file as one JSON object.

    python -m magcache_dist.schedule --preset wan2.1-t2v-1.3b --steps 50 --thresh 0.12 --K 2 --retention 0.2
    python -m magcache_dist.schedule --preset tiny-video --steps 30 --thresh 0.12 --K 4 --retention 0.25 \\
        --branch-sync joint
    python -m magcache_dist.schedule --preset wan2.2-t2v-a14b --steps 40 --thresh 0.06 --K 2 --retention 0.4
"""
from __future__ import annotations

import argparse
import json
import sys

from magcache_dist.cache import MagCacheConfig, build_magcache, get_preset, skip_schedule
from magcache_dist.cache.presets import preset_switch_step
from magcache_dist.errors import InputError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m magcache_dist.schedule", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset")
    src.add_argument("--ratios", help="ratio file (calibration output or a published entry)")
    ap.add_argument("--rule", help="decision rule for --ratios: wan, hunyuanvideo, flux, opensora (default wan)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--thresh", type=float, required=True)
    ap.add_argument("--K", type=int, required=True)
    ap.add_argument("--retention", type=float, required=True)
    ap.add_argument("--switch-step", type=int, default=None,
                    help="two-expert models (Wan2.2 A14B): the low-noise expert's first step (default: from the "
                         "preset's published shift and boundary on the sampler's grid)")
    ap.add_argument("--branch-sync", choices=("official", "joint"), default="official",
                    help="official (default): the family's released per-branch rule; joint: one decision per step "
                         "for all CFG branches (what cache.branch_sync=joint runs)")
    args = ap.parse_args(argv)
    try:
        from magcache_dist.config import RANGES

        top = RANGES["sampler.num_steps"][2]  # the cap generate applies to sampler.num_steps
        if not 1 <= args.steps <= top:
            raise InputError(f"--steps={args.steps} must be >= 1 and <= {top} (as sampler.num_steps)")
        cfg = MagCacheConfig(thresh=args.thresh, K=args.K, retention=args.retention)
        if args.preset:
            branches = get_preset(args.preset).table.branches
        else:
            from magcache_dist.cache import RatioTable
            branches = RatioTable.load(args.ratios).branches
        switch = args.switch_step
        if switch is None and args.preset:
            switch = preset_switch_step(args.preset, args.steps)
        policy = build_magcache(args.preset, args.ratios, cfg, args.steps, branches, rule=args.rule,
                                branch_sync=args.branch_sync, switch_step=switch)
        out = skip_schedule(policy, args.steps, branches)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"preset": args.preset or args.ratios, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
