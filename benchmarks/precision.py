"""Where bf16 sequence parallelism and the bf16 single process part ways: op by op on one block, per model call and
on the final latents, for every SP layout, in bf16 and fp32 (the precision policy of models/attention.py).

    python -m benchmarks.precision [--steps 6] [--out benchmarks/results/precision.json]

Models: the tests' tiny Wan model on 175 tokens (odd: every layout pads) and the shipped tiny-video model on the
demo's 512 tokens (no padding at degree 2 / 4). Full sampling (no cache), guidance 5. Also the single process
against itself with its attention keys in reverse order (a pure summation-order change: bf16's noise floor) and
the fp32 speed of Ulysses with the padding cut (now) against masked (before), interleaved in one run (threads
as ranks, one intra-op thread). Nothing here is asserted; tests/sim/test_precision.py holds the bounds.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks._common import ROOT

from magcache_dist.cache import NoCache
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts, solo_context
from magcache_dist.parallel.apply import build_sp_attention
from magcache_dist.parallel.attention import UlyssesAttention, _heads_to_seq, _seq_to_heads
from magcache_dist.parallel.shard import Sharder
from magcache_dist.parallel.threads import run_threads
from magcache_dist.sampling import SamplerConfig, sample
from models.attention import LocalAttention, key_padding_mask, sdpa
from models.wan import apply_rope

LAYOUTS = {"u2": ParallelDims(2, 1), "u4": ParallelDims(4, 1), "r2": ParallelDims(1, 2), "r3": ParallelDims(1, 3),
           "u2r2": ParallelDims(2, 2)}
BF16 = torch.bfloat16


class ReversedKeys(torch.nn.Module):
    """Single-process attention with the keys in reverse order: the same math, another summation order."""

    def forward(self, q, k, v, k_lens=None):
        return sdpa(q, k.flip(1), v.flip(1), None)


def diff(a, b) -> dict:
    d = (a.double() - b.double()).abs()
    return dict(max=float(d.max()), frac=float((d > 0).double().mean()))


def on_ranks(dims, fn):
    return run_threads(fn, build_thread_contexts(dims, timeout=600))[0]


def tiny_case():
    from tests.support.helpers import odd_inputs, tiny_model

    noise, texts = odd_inputs()
    return "tiny (175 tokens)", tiny_model(0), noise, texts, SamplerConfig


def demo_case():
    from magcache_dist.families.common import load_dit_and_text
    from models.tiny_text import TinyTextEncoder
    from models.wan import get_config
    from models.wan_i2v import build_wan_model

    model, text = build_wan_model(get_config("tiny-video")), TinyTextEncoder.for_model("tiny-video")
    load_dit_and_text(os.path.join(ROOT, "models", "weights", "tiny-video.safetensors"), model, text)
    with torch.no_grad():
        texts = {"cond": text.encode(["a big red circle moves right"]), "uncond": text.encode([""])}
    noise = torch.randn(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    def make_cfg(num_steps):
        return SamplerConfig(num_steps=num_steps, shift=5.0, guidance=5.0, solver="unipc")  # the demo's sampler

    return "tiny-video (512 tokens)", model.eval(), noise, texts, make_cfg


def per_op(model, noise, texts) -> dict:
    """One block of ``model`` in bf16 at t=999: each op on a shard's rows against the whole sequence."""
    model = copy.deepcopy(model).to(BF16)
    blk, seen = model.blocks[0], {}

    class Record(torch.nn.Module):
        def forward(self, q, k, v, k_lens=None):
            seen["qkv"] = (q, k, v, k_lens)
            return LocalAttention()(q, k, v, k_lens)

    blk.self_attn.attn_op = Record()
    with torch.no_grad():
        tokens, ctx = model.embed(noise, torch.tensor([999.0]), texts["cond"])
        blk(tokens, ctx)
    q, k, v, k_lens = seen["qkv"]
    n = q.shape[1]
    local = LocalAttention()(q, k, v, k_lens)
    s = q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2) * q.shape[-1] ** -0.5
    exact = (torch.softmax(s, -1) @ v.double().transpose(1, 2)).transpose(1, 2)
    rows = {"attention local (bf16 SDPA) vs fp64": diff(local, exact),
            "attention fp32, rounded once, vs fp64": diff(sdpa(q.float(), k.float(), v.float(), None).to(BF16), exact)}
    mask = torch.ones(1, 1, 1, n + 1, dtype=torch.bool)
    mask[..., n:] = False
    pad1 = lambda x: F.pad(x, (0, 0, 0, 0, 0, 1))  # noqa: E731
    rows["attention with 1 masked padding key vs local"] = diff(sdpa(q, pad1(k), pad1(v), mask), local)
    for name, dims in LAYOUTS.items():
        def attend(par):
            chunk = -(-n // par.sp.size)
            lo, hi = par.sp.rank * chunk, (par.sp.rank + 1) * chunk
            pad = lambda x: F.pad(x, (0, 0, 0, 0, 0, chunk * par.sp.size - n))[:, lo:hi]  # noqa: E731
            out = build_sp_attention(par)(pad(q), pad(k), pad(v), k_lens)
            return torch.cat(par.sp.all_gather(out), dim=1)[:, :n]
        out = on_ranks(dims, attend)
        rows[f"attention {name} vs local"] = diff(out, local)
        rows[f"attention {name} vs fp64"] = diff(out, exact)

    def by_rows(fn, x, p, freqs=None):
        chunk = -(-n // p)
        xp = F.pad(x, (0, 0) * (x.dim() - 2) + (0, chunk * p - n))
        fp = None if freqs is None else torch.cat([freqs, freqs[:1].expand(chunk * p - n, -1)])
        cut = [slice(r * chunk, (r + 1) * chunk) for r in range(p)]
        parts = [fn(xp[:, c]) if fp is None else fn(xp[:, c], fp[c]) for c in cut]
        return torch.cat(parts, 1)[:, :n]

    x = blk.norm1(tokens)
    with torch.no_grad():
        for p in (2, 3, 4):
            for name, fn, inp in (("linear q", blk.self_attn.q, x), ("ffn", blk.ffn, x),
                                  ("LayerNorm", blk.norm1, tokens), ("RMSNorm", blk.self_attn.norm_q, x)):
                rows[f"{name} on {p} row shards"] = diff(by_rows(fn, inp, p), fn(inp))
            rows[f"RoPE on {p} row shards"] = diff(by_rows(apply_rope, q, p, ctx.freqs), apply_rope(q, ctx.freqs))
        for p in (2, 3):
            def roundtrip(par):
                return Sharder(par.sp).gather(Sharder(par.sp).shard(tokens, ctx)[0], n)
            out = on_ranks(ParallelDims(1, p), roundtrip)
            rows[f"shard + gather, {p} ranks"] = diff(out, tokens)
    return rows


def model_call(model, noise, texts, dtype, dims=None, op=None, t=999.0):
    def one(par):
        m = apply_sequence_parallel(copy.deepcopy(model).to(dtype), par)
        if op is not None:
            for b in m.blocks:
                b.self_attn.attn_op = op
        with torch.no_grad():
            tokens, ctx = m.embed(noise, torch.tensor([t]), texts["cond"])
            sharder = Sharder(par.sp)
            shard, ctx, _ = sharder.shard(tokens, ctx)
            return sharder.gather(m.forward_head(m.forward_blocks(shard, ctx), ctx), tokens.shape[1]).float()

    return one(solo_context()) if dims is None else on_ranks(dims, one)


def final_latents(model, noise, texts, cfg, dtype, dims=None, op=None):
    def one(par):
        m = apply_sequence_parallel(copy.deepcopy(model).to(dtype), par)
        if op is not None:
            for b in m.blocks:
                b.self_attn.attn_op = op
        return sample(m, noise, texts, cfg, NoCache(), par).latents

    return one(solo_context()) if dims is None else on_ranks(dims, one)


class MaskedPaddingUlysses(UlyssesAttention):
    """Ulysses as it was before the policy: the padding keys masked, not cut (the speed baseline)."""

    def forward(self, q, k, v, k_lens=None):
        q, k, v = (_seq_to_heads(t, self.comm) for t in (q, k, v))
        return _heads_to_seq(sdpa(q, k, v, key_padding_mask(k_lens, k.shape[1])), self.comm)


def ulysses_fp32_ms(repeat=30) -> dict:
    """Median ms of one fp32 call (blocks and head) of the tiny model on 2025 tokens (padded to 2026) under
    Ulysses 2: padding cut (now) against padding masked (before), interleaved in one run."""
    from tests.support.helpers import odd_inputs, tiny_model

    texts = odd_inputs()[1]
    noise = torch.randn(1, 3, 9, 60, 60, generator=torch.Generator().manual_seed(0))

    def one(par):
        m = apply_sequence_parallel(tiny_model(0), par)
        ops = {"padding cut (now)": m.blocks[0].self_attn.attn_op, "padding masked (before)":
               MaskedPaddingUlysses(par.ulysses)}
        times = {k: [] for k in ops}
        with torch.no_grad():
            tokens, ctx = m.embed(noise, torch.tensor([999.0]), texts["cond"])
            shard, ctx, _ = Sharder(par.sp).shard(tokens, ctx)
            for _ in range(repeat):
                for name, op in ops.items():
                    for b in m.blocks:
                        b.self_attn.attn_op = op
                    par.sp.all_reduce(torch.zeros(1))  # start together
                    t0 = time.perf_counter()
                    m.forward_head(m.forward_blocks(shard, ctx), ctx)
                    times[name].append(time.perf_counter() - t0)
        return {k: 1e3 * statistics.median(v[2:]) for k, v in times.items()}

    return on_ranks(ParallelDims(2, 1), one)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "precision.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = {"steps": args.steps, "cases": {}}
    name, model, noise, texts, _ = tiny_case()
    res["per_op_bf16"] = per_op(model, noise, texts)
    print(f"per op, block 0 of {name}, bf16: max abs diff / fraction of elements that differ")
    for k, v in res["per_op_bf16"].items():
        print(f"  {k:48s} {v['max']:.3g}  {100 * v['frac']:.2f}%")
    for case in (tiny_case, demo_case):
        name, model, noise, texts, make_cfg = case()
        cfg = make_cfg(num_steps=args.steps)
        row, solo = {}, {}
        for dtype, tag in ((torch.float32, "fp32"), (BF16, "bf16")):
            call = model_call(model, noise, texts, dtype)
            lat = final_latents(model, noise, texts, cfg, dtype)
            solo[tag] = call, lat
            row[tag] = {"scale_call": float(call.abs().max()), "scale_latents": float(lat.abs().max())}
            if dtype == BF16:
                call32, lat32 = solo["fp32"]
                row[tag]["vs fp32 (single process)"] = dict(call=float((call - call32).abs().max()),
                                                          latents=float((lat - lat32).abs().max()))
                row[tag]["reversed keys (single process)"] = dict(
                    call=float((model_call(model, noise, texts, dtype, op=ReversedKeys()) - call).abs().max()),
                    latents=float((final_latents(model, noise, texts, cfg, dtype, op=ReversedKeys()) - lat)
                                  .abs().max()))
            for lname, dims in LAYOUTS.items():
                row[tag][lname] = dict(call=float((model_call(model, noise, texts, dtype, dims) - call).abs().max()),
                                       latents=float((final_latents(model, noise, texts, cfg, dtype, dims) - lat)
                                                     .abs().max()))
        res["cases"][name] = row
        print(f"\n{name}, {args.steps} steps, guidance {cfg.guidance}, no cache: max abs diff against the single "
              f"process of the same dtype (one call | final latents)")
        print(f"  {'path':34s} {'fp32':>22s} {'bf16':>22s}")
        for k in row["bf16"]:
            if k.startswith("scale"):
                continue
            f = row["fp32"].get(k)
            b = row["bf16"][k]
            fs = f"{f['call']:.3g} | {f['latents']:.3g}" if f else "-"
            bs = f"{b['call']:.3g} | {b['latents']:.3g}"
            print(f"  {k:34s} {fs:>22s} {bs:>22s}")
        print(f"  scale (max |prediction| | max |latent|): bf16 {row['bf16']['scale_call']:.3g} | "
              f"{row['bf16']['scale_latents']:.3g}")
    res["ulysses2_fp32_call_ms"] = ulysses_fp32_ms()
    print("\nfp32, tiny model on 2025 tokens, Ulysses 2, one call (median ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in res["ulysses2_fp32_call_ms"].items()))
    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
