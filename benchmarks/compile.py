"""model.compile at real size on this CPU (issue 26, item 4): the Wan2.1-T2V-1.3B DiT's block stack (30 blocks,
random weights built here: nothing is downloaded), eager vs compiled the way ``model.compile=true`` compiles it
(``magcache_dist.compile.compile_blocks``: torch.compile, inductor, of every block's forward), in one run: the
first compiled call (it pays the compilation), the best of several later calls of each, the outputs' difference,
and how many frames dynamo compiled after the first call (0: no recompilation).

    .venv/bin/python -m benchmarks.compile [--tokens 27 128] [--dtype float32] [--threads 2] [--repeats 3]

Prints a table and writes benchmarks/results/compile.json (and its block in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "compile.json")
GRIDS = {27: (3, 3, 3), 128: (2, 8, 8), 512: (2, 16, 16), 1560: (6, 10, 26)}  # tokens -> latent patches


def best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def inputs(model, tokens: int, text_tokens: int = 20):
    """The block stack's input at ``tokens`` tokens: embedded latents and the prepared condition, as the sampler
    hands them to ``forward_blocks``."""
    cfg = model.cfg
    f, h, w = GRIDS[tokens]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, f * cfg.patch_size[0], h * cfg.patch_size[1], w * cfg.patch_size[2], generator=g)
    text = torch.randn(1, text_tokens, cfg.text_dim, generator=g)
    with torch.no_grad():
        return model.embed(x, torch.tensor([700.0]), model.prepare_condition(text))


def run(args) -> dict:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from magcache_dist.compile import compile_blocks
    from models.wan import WanModel, get_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = WanModel(get_config("wan2.1-t2v-1.3b")).to(dtype).eval().requires_grad_(False)
    res = dict(model="wan2.1-t2v-1.3b (random weights), block stack (30 blocks)", dtype=args.dtype,
               threads=args.threads, repeats=args.repeats, host=platform.node(), torch=torch.__version__,
               backend="inductor", rows=[])
    cases = {n: inputs(model, n) for n in args.tokens}
    eager = {}
    with torch.no_grad():
        for n, (tok, ctx) in cases.items():
            eager[n] = best(lambda: model.forward_blocks(tok, ctx), args.repeats)
        compile_blocks(model)
        for n, (tok, ctx) in cases.items():
            torch._dynamo.reset()  # each token count compiled afresh, as a job (one token count) compiles it
            frames0 = counters["frames"]["total"]
            first_s, _ = best(lambda: model.forward_blocks(tok, ctx), 1)
            frames1 = counters["frames"]["total"]
            comp_s, out = best(lambda: model.forward_blocks(tok, ctx), args.repeats)
            ref_s, ref = eager[n]
            diff = float((out.float() - ref.float()).abs().max())
            row = dict(tokens=n, eager_s=ref_s, compiled_first_call_s=first_s, compiled_s=comp_s,
                       speedup=ref_s / comp_s, frames_compiled_first_call=frames1 - frames0,
                       frames_compiled_later=counters["frames"]["total"] - frames1, max_abs_diff=diff,
                       max_abs_output=float(ref.float().abs().max()))
            res["rows"].append(row)
            print(row, flush=True)
    return res


def table(res: dict) -> str:
    lines = [f"{res['model']}, {res['dtype']}, {res['threads']} CPU threads, torch {res['torch']} ({res['backend']}); "
             f"best of {res['repeats']} calls after the first; one run. The first compiled call includes the "
             f"compilation (dynamo is reset before each token count: a job compiles for its one token count).", "",
             "| tokens | eager | compiled | speedup | first compiled call | frames compiled: first call / later | "
             "max abs diff (max abs output) |", "| ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in res["rows"]:
        lines.append(f"| {r['tokens']} | {r['eager_s']:.3f} s | {r['compiled_s']:.3f} s | {r['speedup']:.2f}x | "
                     f"{r['compiled_first_call_s']:.1f} s | {r['frames_compiled_first_call']} / "
                     f"{r['frames_compiled_later']} | {r['max_abs_diff']:.2e} ({r['max_abs_output']:.1f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[27, 128], choices=sorted(GRIDS))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    res = run(args)
    publish(res, table(res), args.out, OUT, "compile", "## model.compile at real size (`python -m benchmarks.compile`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
