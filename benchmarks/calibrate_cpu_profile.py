"""Measure this CPU for the dry-run planner's ``cpu`` profile (one intra-op thread, as the tests and the planner
check run) and write magcache_dist/planner/profiles/cpu.json.

    python -m benchmarks.calibrate_cpu_profile          # ~20 s
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from magcache_dist.io.atomic import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_of(fn, repeats=5, inner=1):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def main() -> int:
    torch.set_num_threads(1)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
        out[str(dtype).split(".")[1]] = 2 * 1024 * 256 * 1024 / best_of(lambda: a @ b)
    q = torch.randn(1, 4, 1024, 32)
    attn_flops = 4 * 1024 * 1024 * 128 / best_of(lambda: F.scaled_dot_product_attention(q, q, q))
    src = torch.randn(8 * 1024 * 1024)
    dst = torch.empty_like(src)
    mem_bw = 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src))
    tiny = torch.zeros(4)
    op_s = best_of(lambda: tiny.add_(1), inner=20000)
    profile = dict(
        name="cpu",
        description=(f"this machine, one intra-op thread ({platform.processor() or platform.machine()}, torch "
                     f"{torch.__version__}); measured by benchmarks/calibrate_cpu_profile.py on a shared host, so "
                     f"expect noise. Attention efficiency = measured SDPA FLOP/s / measured fp32 GEMM FLOP/s."),
        peak_flops=dict(float32=out["float32"], bfloat16=out["bfloat16"], float16=out["bfloat16"]),
        gemm_efficiency=1.0, attention_efficiency=min(1.0, attn_flops / out["float32"]),
        memory_bandwidth=mem_bw, memory_capacity=24e9,
        link_bandwidth=1.0e9, link_efficiency=1.0, link_latency_s=5e-5,  # gloo loopback: assumed, not measured
        op_overhead_s=op_s,
        source="measured: 1024x256x1024 GEMM, SDPA [1,4,1024,32], 32 MB copy, 4-element add_",
    )
    path = os.path.join(ROOT, "magcache_dist/planner/profiles/cpu.json")
    atomic_write_text(path, json.dumps(profile, indent=1))
    print(f"{'quantity':<28}{'value':>14}")
    for k, v in (("fp32 GEMM GFLOP/s", out["float32"] / 1e9), ("bf16 GEMM GFLOP/s", out["bfloat16"] / 1e9),
                 ("SDPA GFLOP/s", attn_flops / 1e9), ("memory GB/s", mem_bw / 1e9), ("op overhead us", op_s * 1e6)):
        print(f"{k:<28}{v:>14.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
