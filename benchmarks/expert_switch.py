"""Wan2.2 A14B's expert switch without FSDP at real block size on this CPU (issue 29, item 3): ``layers`` blocks of
the real 14B expert (Wan2.1-14B dims: 5120 hidden, 40 heads, 13824 FFN; bf16; random weights built here), in one
run:

- the copy of one block (0.70 GB) and the trade of one slot (the slot to the spare buffer, the other expert's block
  into the slot: families/expert_swap.py), as the synchronous trade does them;
- the synchronous trade of every slot (``PlacedExperts(prefetch=False)``: the host waits) against the prefetched
  one (the last high-noise call trades each block as soon as it has run, on a copy thread: ``ThreadCopier``, this
  CPU's side "stream") and the streamed one (every slot traded when the low-noise call reaches its blocks, which
  wait one by one): the calls' time with the trade against their time without it (the exposed part of the trade),
  at small token counts;
- extrapolated to the 40 blocks of an expert.

Both "host" and "device" are this machine's memory: the copy here is a DRAM memcpy (about 7 GB/s per core, not
PCIe: an H100's pinned copies run at about 50 GB/s per direction on copy engines beside the compute); the overlap
here competes with the compute for the same 2 cores and memory bandwidth, which a GPU's copy engines do not. What
carries over: the trade's order and its correctness (the outputs equal to the untraded ones), the bytes moved per
trade, and where the host waits. The GPU numbers are ``scripts/gpu_check.py``'s ``switch`` step.

    .venv/bin/python -m benchmarks.expert_switch [--layers 4] [--tokens 32 128] [--threads 1] [--repeats 3]

Prints a table and writes benchmarks/results/expert_switch.json (and its block in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "expert_switch.json")
GRIDS = {32: (2, 4, 4), 128: (2, 8, 8), 512: (2, 16, 16)}  # tokens -> latent patches (F, H, W)
FULL_LAYERS = 40


def build(layers: int, seed: int):
    from models.wan import get_config
    from models.wan_i2v import build_wan_model

    with torch.device("meta"):
        m = build_wan_model(get_config("wan2.2-t2v-a14b", num_layers=layers)).to(torch.bfloat16)
    m = m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return m.eval().requires_grad_(False)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(args) -> dict:
    from magcache_dist.families.expert_swap import SyncCopier, ThreadCopier, block_tensors
    from magcache_dist.families.wan22 import PlacedExperts

    torch.set_num_threads(args.threads)
    high, low = build(args.layers, 0), build(args.layers, 1)
    block = block_tensors(high.blocks[0])
    block_bytes = sum(t.numel() * t.element_size() for t in block)
    res = dict(model="wan2.2-t2v-a14b blocks (random weights, bf16)", layers=args.layers, threads=args.threads,
               repeats=args.repeats,
               block_bytes=block_bytes, host=platform.node(), torch=torch.__version__, rows=[])
    dst = [torch.empty_like(t) for t in block]
    timed(lambda: [c.copy_(t) for c, t in zip(dst, block)])
    _, res["copy_block_s"] = timed(lambda: [c.copy_(t) for c, t in zip(dst, block)])  # warm (pages touched)
    dst.clear()
    res["copy_gbytes_per_s"] = block_bytes / res["copy_block_s"] / 1e9
    copier = ThreadCopier()
    model = PlacedExperts(high, low, 875.0, device="cpu", offload_to="cpu", copier=copier)
    model._ensure()
    model.place("low")  # a round trip first: every buffer's pages touched before anything is timed
    model.place("high")
    copier.sync()
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 64, 4096, generator=g, dtype=torch.float32).to(torch.bfloat16)
    hi, lo = torch.tensor([900.0]), torch.tensor([800.0])

    def use(c, prefetch):
        model.copier = model.swap.copier = c
        model.prefetch = prefetch

    try:
        with torch.no_grad():
            for n in args.tokens:
                f, h, w = GRIDS[n]
                x = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g)
                tok_h, ctx_h = model.embed(x, hi, text)
                tok_l, ctx_l = model.embed(x, lo, text)
                times = {k: [] for k in ("high", "prefetched", "embed", "low", "sync", "streamed", "sync_back")}
                model.forward_blocks(tok_h, ctx_h)  # warm-up: the first call at a shape builds its kernels
                model.place("low")
                model.forward_blocks(tok_l, ctx_l)
                copier.sync()
                for _ in range(args.repeats):  # each figure: the best of the repeats
                    use(SyncCopier(), False)
                    model.place("high")
                    use(copier, True)
                    out, t = timed(lambda: model.forward_blocks(tok_h, ctx_h))
                    times["high"].append(t)
                    model.begin_generation(torch.tensor([900.0, 800.0]), 0, ["cond"])  # step 0: the last high

                    def prefetched():  # the armed high-noise call trades each block after it, then the low call
                        model.before_blocks(0, "cond")
                        model.forward_blocks(tok_h, ctx_h)
                        model.embed(x, lo, text)
                        out = model.forward_blocks(tok_l, ctx_l)
                        copier.sync()
                        return out
                    out_pre, t = timed(prefetched)
                    times["prefetched"].append(t)
                    times["embed"].append(timed(lambda: model.embed(x, lo, text))[1])  # the low embed alone
                    ref, t = timed(lambda: model.forward_blocks(tok_l, ctx_l))
                    times["low"].append(t)
                    use(SyncCopier(), False)
                    times["sync"].append(timed(lambda: model.place("high"))[1])  # the host waits

                    def streamed():  # every slot traded when the low call reaches its blocks; they wait one by one
                        model.embed(x, lo, text)
                        out = model.forward_blocks(tok_l, ctx_l)
                        copier.sync()
                        return out
                    use(copier, True)
                    out_str, t = timed(streamed)
                    times["streamed"].append(t)
                    use(SyncCopier(), False)
                    times["sync_back"].append(timed(lambda: model.place("high"))[1])
                    model.place("low")
                    out_sync = model.forward_blocks(tok_l, ctx_l)
                    use(copier, True)
                b = {k: min(v) for k, v in times.items()}
                row = dict(tokens=n, repeats=times, high_blocks_s=b["high"], low_blocks_s=b["low"],
                           low_embed_s=b["embed"], compute_s=b["high"] + b["low"], prefetched_s=b["prefetched"],
                           prefetched_exposed_s=b["prefetched"] - b["high"] - b["embed"] - b["low"],
                           streamed_s=b["streamed"], streamed_exposed_s=b["streamed"] - b["embed"] - b["low"],
                           sync_trade_s=b["sync"], sync_trade_back_s=b["sync_back"],
                           equal=dict(prefetched=bool(torch.equal(out_pre, ref)),
                                      streamed=bool(torch.equal(out_str, ref)),
                                      synchronous=bool(torch.equal(out_sync, ref))))
                full = FULL_LAYERS / args.layers
                row.update(sync_trade_full_s=b["sync"] * full, compute_full_s=row["compute_s"] * full,
                           prefetched_exposed_full_s=row["prefetched_exposed_s"] * full,
                           streamed_exposed_full_s=row["streamed_exposed_s"] * full)
                res["rows"].append(row)
                print(row, flush=True)
    finally:
        copier.close()
    res["trades"] = model.moves
    return res


def table(res: dict) -> str:
    lay = res["layers"]
    lines = [f"{res['model']}: {lay} real-size blocks per expert ({res['block_bytes'] / 1e9:.2f} GB each), "
             f"{res['threads']} compute thread(s) + the copy thread, torch {res['torch']}; best of {res['repeats']} "
             f"per figure, one run. One block copied in "
             f"{res['copy_block_s']:.3f} s ({res['copy_gbytes_per_s']:.1f} GB/s, host to host). 'compute': one "
             f"high-noise plus one low-noise block-stack call without a trade; 'prefetched: exposed': the same two "
             f"calls (and the low-noise embed) with the trade during the first, minus them without; 'streamed: "
             f"exposed': the low-noise embed and call with the trade started at its blocks, minus them without; "
             f"{FULL_LAYERS} blocks: x{FULL_LAYERS / lay:g}.", "",
             "| tokens | compute | synchronous trade | prefetched: exposed | streamed: exposed | outputs equal | "
             f"{FULL_LAYERS} blocks: compute / sync / prefetched / streamed |",
             "| ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in res["rows"]:
        eq = "yes" if all(r["equal"].values()) else f"no {r['equal']}"
        lines.append(f"| {r['tokens']} | {r['compute_s']:.2f} s | {r['sync_trade_s']:.2f} s | "
                     f"{r['prefetched_exposed_s']:+.2f} s | {r['streamed_exposed_s']:+.2f} s | {eq} | "
                     f"{r['compute_full_s']:.1f} / {r['sync_trade_full_s']:.1f} / "
                     f"{r['prefetched_exposed_full_s']:+.1f} / {r['streamed_exposed_full_s']:+.1f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128], choices=sorted(GRIDS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    res = run(args)
    publish(res, table(res), args.out, OUT, "expert_switch",
            "## Wan2.2 A14B: the expert switch at real block size (`python -m benchmarks.expert_switch`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
