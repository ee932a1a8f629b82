"""Time per step under CFG parallel (cfg_degree=2, gloo, 2 processes), branch_sync joint vs official.

    .venv/bin/python -m benchmarks.cfg_sync_timing [--repeats 3 --thresh 0.12 --K 4]

The shipped tiny-video job (configs/default.yaml, 20 steps) at a setting where the official Wan rule makes the two
branches skip different steps (0.12 / K 4: cond and uncond skip different steps). Under CFG parallel each half
computes one branch and the halves meet at every step to combine the predictions, so a step costs as much as
the slower half: where one half computes and the other skips, the skipping half waits. Joint decisions keep both
halves on the same steps. Both modes run in the same processes, alternating, ``--repeats`` times each; the median
sampling time counts. Prints a table and writes benchmarks/results/cfg_sync_timing.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(rank, world, port, args, out_dir):
    import torch
    import torch.distributed as dist

    from magcache_dist.config import load_config
    from magcache_dist.parallel import ParallelDims, build_dist_context
    from magcache_dist.run import run_job

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        par = build_dist_context(ParallelDims(1, 1, 2))
        rows = []
        for rep in range(args.repeats + 1):  # the first round warms up
            for sync in ("official", "joint"):
                cfg = load_config(os.path.join(ROOT, "configs", "default.yaml"), [
                    f"cache.branch_sync={sync}", f"cache.magcache.thresh={args.thresh}", f"cache.magcache.K={args.K}",
                    "parallel.cfg_degree=2", "progress=false", "save_video=false",
                    f"output_dir={os.path.join(out_dir, sync)}"])
                report = run_job(cfg, par)
                if rank == 0 and rep > 0:
                    r = [x for x in report["ranks"]]
                    rows.append(dict(sync=sync, repeat=rep, sample_s=report["phases_s"]["sample"],
                                     steps=cfg.sampler.num_steps, skipped_steps=report["skipped_steps"],
                                     computed_calls=report["computed_calls"],
                                     blocks_s=[x["timings"]["blocks"] for x in r],
                                     wait_s=[x["timings"]["comm_gather"] for x in r]))
        if rank == 0:
            with open(os.path.join(out_dir, "rows.json"), "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--thresh", type=float, default=0.12)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cfg_sync_timing.json"))
    args = ap.parse_args(argv)

    import torch.multiprocessing as mp

    from magcache_dist.io.atomic import atomic_write_text

    out_dir = os.path.join(ROOT, "outputs", "bench_cfg_sync")
    os.makedirs(out_dir, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(2, port, args, out_dir), nprocs=2, join=True, start_method="spawn")
    with open(os.path.join(out_dir, "rows.json")) as f:
        rows = json.load(f)
    summary = {}
    for sync in ("official", "joint"):
        rs = [r for r in rows if r["sync"] == sync]
        med = statistics.median(r["sample_s"] for r in rs)
        summary[sync] = dict(median_sample_s=med, per_step_s=med / rs[0]["steps"],
                             computed_calls=rs[0]["computed_calls"],
                             skipped_steps=rs[0]["skipped_steps"],
                             median_wait_s_per_rank=[statistics.median(r["wait_s"][i] for r in rs) for i in range(2)],
                             median_blocks_s_per_rank=[statistics.median(r["blocks_s"][i] for r in rs)
                                                       for i in range(2)])
    ratio = summary["joint"]["per_step_s"] / summary["official"]["per_step_s"]
    res = dict(setting=dict(thresh=args.thresh, K=args.K, retention=0.2, steps=rows[0]["steps"]), repeats=args.repeats,
               cores=os.cpu_count(), summary=summary, joint_over_official_time_per_step=ratio, rows=rows)
    print(f"CFG parallel (2 processes, gloo, 1 thread each, {os.cpu_count()} cores), tiny-video, "
          f"thresh {args.thresh} K {args.K}, median of {args.repeats}")
    print(f"{'sync':9} {'calls':>6} {'s/step':>8} {'blocks s (cond, uncond half)':>30} {'gather+wait s':>18}")
    for sync, s in summary.items():
        print(f"{sync:9} {s['computed_calls']:>6} {s['per_step_s']:8.4f} "
              f"{s['median_blocks_s_per_rank'][0]:14.3f} {s['median_blocks_s_per_rank'][1]:14.3f} "
              f"{s['median_wait_s_per_rank'][0]:8.3f} {s['median_wait_s_per_rank'][1]:8.3f}")
    print(f"joint / official time per step: {ratio:.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
