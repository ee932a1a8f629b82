"""Sequence-parallel benchmark on the tiny model with gloo (one process per rank on this machine).

For SP = 1, 2, 4 with Ulysses and ring attention: wall time per model call, bytes each rank sends per call
(counted by the communicators, compared with the analytical volume), peak resident memory per rank, and the
share of step time spent in the consensus all-reduce. Prints a table and writes benchmarks/results/sp.json.

    .venv/bin/python -m benchmarks.sp [--frames 8 --size 64 --steps 6]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layouts():
    return [("solo", 1, 1), ("ulysses", 2, 1), ("ring", 1, 2), ("ulysses", 4, 1), ("ring", 1, 4)]


def analytical_bytes(kind: str, p: int, tokens: int, dim: int, out_ch: int, layers: int) -> float:
    """Bytes one rank sends per model call (fp32), padding included as the real exchange carries it."""
    if p == 1:
        return 0.0
    chunk = -(-tokens // p)
    shard = chunk * dim * 4  # one [L/P, D] fp32 tensor (B = 1)
    if kind == "ulysses":  # q, k, v out and the attention output back, each keeping 1/P at home
        attn = 4 * shard * (p - 1) / p
    else:  # ring: K and V travel P-1 hops
        attn = 2 * shard * (p - 1)
    gather = chunk * out_ch * 4 * (p - 1)  # head output all-gathered
    consensus = 4 * 8 * (p - 1)  # the [c, -c, e, -e] float64 all-reduce
    return layers * attn + gather + consensus


def worker(rank, world, port, kind, args, out_path):
    import torch
    import torch.distributed as dist

    from magcache_dist.cache import MagCacheConfig, build_magcache
    from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_dist_context, solo_context
    from magcache_dist.random_weights import tiny_model
    from magcache_dist.sampling import SamplerConfig, sample

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
        dims = ParallelDims(world, 1) if kind == "ulysses" else ParallelDims(1, world)
        par = build_dist_context(dims)
    else:
        par = solo_context()
    try:
        model = apply_sequence_parallel(tiny_model(0), par)
        cfg = SamplerConfig(num_steps=args.steps)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(1, 3, args.frames, args.size, args.size, generator=g)
        texts = {"cond": torch.randn(1, 6, 32, generator=g), "uncond": torch.zeros(1, 0, 32)}
        # thresh 0: every call computed, so each call moves the full attention traffic
        pol = build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(0.0, 2, 0.2), args.steps, cfg.branches)
        sample(model, noise, texts, SamplerConfig(num_steps=1), build_magcache(
            "wan2.1-t2v-1.3b", None, MagCacheConfig(0.0, 2, 0.2), 1, cfg.branches), par)  # warm-up
        for c in par.comms().values():
            c.bytes_sent = 0
        t0 = time.perf_counter()
        res = sample(model, noise, texts, cfg, pol, par)
        wall = time.perf_counter() - t0
        calls = len(res.decisions)
        sent = par.sp.bytes_sent + (par.ulysses.bytes_sent if par.ulysses is not par.sp else 0) + \
            (par.ring.bytes_sent if par.ring is not par.sp and par.ring is not par.ulysses else 0)
        row = dict(rank=rank, wall_s=wall, calls=calls, wall_per_call_s=wall / calls, bytes_per_call=sent / calls,
                   consensus_s=res.timings.consensus, consensus_share=res.timings.consensus / wall,
                   peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        with open(out_path + f".rank{rank}", "w") as f:
            json.dump(row, f)
    finally:
        if world > 1:
            dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/sp.json"))
    args = ap.parse_args()

    import torch.multiprocessing as mp

    from models.wan import get_config

    mcfg = get_config("tiny")
    pf, ph, pw = mcfg.patch_size
    tokens = (args.frames // pf) * (args.size // ph) * (args.size // pw)
    tmp = os.path.join(ROOT, "outputs", "bench_sp")
    os.makedirs(tmp, exist_ok=True)
    rows = []
    for kind, u, r in _layouts():
        world = u * r
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = os.path.join(tmp, f"{kind}{world}")
        mp.start_processes(worker, args=(world, port, kind, args, out), nprocs=world, join=True, start_method="spawn")
        ranks = [json.load(open(out + f".rank{i}")) for i in range(world)]
        rows.append(dict(layout=kind, sp_degree=world, tokens=tokens, ranks=ranks,
                         wall_per_call_s=max(x["wall_per_call_s"] for x in ranks),
                         bytes_per_call=ranks[0]["bytes_per_call"],
                         analytical_bytes_per_call=analytical_bytes(kind, world, tokens, mcfg.dim,
                                                                    mcfg.out_dim * pf * ph * pw, mcfg.num_layers),
                         peak_rss_mib=max(x["peak_rss_mib"] for x in ranks),
                         consensus_share=max(x["consensus_share"] for x in ranks)))
    base = rows[0]["wall_per_call_s"]
    print(f"tiny model ({mcfg.num_layers} layers, dim {mcfg.dim}), {tokens} tokens, {args.steps} steps x 2 calls, "
          f"gloo, 1 thread per rank, {os.cpu_count()} cores")
    hdr = (f"{'layout':8} {'SP':>3} {'s/call':>8} {'vs SP1':>7} {'KiB sent/call':>14} "
          f"{'analytical':>11} {'peak MiB':>9} {'consensus':>10}")
    print(hdr)
    for row in rows:
        print(f"{row['layout']:8} {row['sp_degree']:>3} {row['wall_per_call_s']:8.4f} "
              f"{base / row['wall_per_call_s']:6.2f}x "
              f"{row['bytes_per_call'] / 1024:14.1f} {row['analytical_bytes_per_call'] / 1024:11.1f} "
              f"{row['peak_rss_mib']:9.0f} {100 * row['consensus_share']:9.3f}%")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from magcache_dist.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(dict(tokens=tokens, steps=args.steps, cores=os.cpu_count(), rows=rows),
                                           indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
