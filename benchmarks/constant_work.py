"""Constant work once per generation, at real size (issue 19, item 6): the Wan2.1-T2V-1.3B DiT (random weights,
built here: nothing is downloaded), one call skipped (embed + head) and one computed (+ the 30 blocks), with the
text embedding and every block's cross-attention keys / values worked out at every call (before) and once per
branch (after, ``prepare_condition``), measured in one run; the outputs are checked equal.

    .venv/bin/python -m benchmarks.constant_work [--tokens 27 128] [--dtypes float32 bfloat16] [--threads 2]

Prints a table and writes benchmarks/results/constant_work.json (and its block in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "constant_work.json")
GRIDS = {27: (3, 3, 3), 128: (2, 8, 8), 1560: (6, 10, 26)}  # tokens -> latent patches (F', H', W')


def best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def measure(model, tokens: int, repeats: int, text_tokens: int = 20) -> dict:
    cfg = model.cfg
    f, h, w = GRIDS[tokens]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, f * cfg.patch_size[0], h * cfg.patch_size[1], w * cfg.patch_size[2], generator=g)
    t = torch.tensor([700.0])
    text = torch.randn(1, text_tokens, cfg.text_dim, generator=g)

    def skipped(cond):
        tok, ctx = model.embed(x, t, cond)
        return model.unpatchify(model.forward_head(tok, ctx), ctx.grid)

    def computed(cond):
        tok, ctx = model.embed(x, t, cond)
        return model.unpatchify(model.forward_head(model.forward_blocks(tok, ctx), ctx), ctx.grid)

    with torch.no_grad():
        prepare_s, prepared = best(lambda: model.prepare_condition(text), 1)
        row = dict(tokens=tokens, prepare_once_s=prepare_s)
        for name, fn, r in (("skipped", skipped, max(repeats, 3)), ("computed", computed, repeats)):
            before_s, a = best(lambda: fn(text), r)
            after_s, b = best(lambda: fn(prepared), r)
            row[name] = dict(before_s=before_s, after_s=after_s, speedup=before_s / after_s, equal=torch.equal(a, b))
    return row


def run(args) -> dict:
    from models.wan import WanModel, get_config

    torch.set_num_threads(args.threads)
    res = dict(model="wan2.1-t2v-1.3b (random weights)", threads=args.threads, host=platform.node(),
               torch=torch.__version__, rows=[])
    for dtype in args.dtypes:
        torch.manual_seed(0)
        model = WanModel(get_config("wan2.1-t2v-1.3b")).to(getattr(torch, dtype)).eval().requires_grad_(False)
        for tokens in args.tokens:
            row = dict(dtype=dtype, **measure(model, tokens, args.repeats))
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
        del model
    return res


def table(res: dict) -> str:
    lines = [f"{res['model']}, {res['threads']} CPU threads, best of several calls; 20 prompt tokens padded to 512. "
             f"Before: the text embedding (every call) and 30 blocks' cross-attention keys / values (every computed "
             f"call); after: both once per branch and generation.", "",
             "| dtype | tokens | skipped call before | after | computed call before | after | once per branch | "
             "outputs equal |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in res["rows"]:
        s, c = r["skipped"], r["computed"]
        lines.append(f"| {r['dtype']} | {r['tokens']} | {s['before_s']:.3f} s | {s['after_s']:.4f} s | "
                     f"{c['before_s']:.2f} s | {c['after_s']:.2f} s ({c['speedup']:.2f}x) | "
                     f"{r['prepare_once_s']:.2f} s | {s['equal'] and c['equal']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[27, 128], choices=sorted(GRIDS))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    res = run(args)
    publish(res, table(res), args.out, OUT, "constant_work",
            "## Constant work once per generation (`python -m benchmarks.constant_work`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
