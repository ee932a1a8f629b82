"""Peak resident memory while loading the Wan2.1-T2V-1.3B DiT at real size (issue 19, item 1), single process.

A random checkpoint is written first (tools/make_wan_checkpoint.py: official layout in fp32 and bf16, diffusers
layout in bf16; nothing is downloaded). Each load then runs in a fresh process, as the Wan family builds its DiT:
meta-device model, ``to_empty`` in ``model.dtype``, weights filled by ``models.loading.load_streaming`` (one tensor
at a time); for comparison the whole-file loader the project used before (``read_tensors`` +
``load_state_dict_strict``); and under torchrun 2 with ``parallel.fsdp`` (the DiT sharded on the meta device, each
rank streaming in only its shards: "weights" is then the rank's share, and the worse rank is shown); and under
torchrun 2 without FSDP, the ranks sharing the read (each reads a row block of every tensor, the two all-gather:
magcache_dist/parallel/load_share.py; each holds the whole model). Reported: peak
RSS of the process (VmHWM) and that peak minus the RSS after
``import torch`` (the interpreter and torch's libraries), each over the weights' size in the model's dtype, and the
bytes the load read (/proc/self/io rchar: under fsdp a rank reads only its rows of each sharded tensor) over the
file's size. ``--only fsdp`` (or ``--only shared``) reruns the matching rows and keeps the others of the results
file.

    .venv/bin/python -m benchmarks.load_memory [--model wan2.1-t2v-1.3b] [--keep DIR]

Prints a table and writes benchmarks/results/load_memory.json (and its block in benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "load_memory.json")

CHILD = r"""
import json, sys, time
import torch


def hwm():  # this process's peak RSS (VmHWM: ru_maxrss would carry the parent's peak across fork + exec)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))


def rchar():  # bytes this process has read through read() calls (the checkpoint, plus a few small files)
    with open("/proc/self/io") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("rchar:"))


base = hwm()
from models.loading import load_state_dict_strict, load_streaming, read_tensors
from magcache_dist.parallel.fsdp import local_param_bytes
from models.wan import get_config
from models.wan_i2v import build_wan_model
path, model_name, dtype, loader = sys.argv[1:5]
t = time.perf_counter()
with torch.device("meta"):
    model = build_wan_model(get_config(model_name)).to(dtype=getattr(torch, dtype))
if loader == "fsdp":  # as run.parallelize does it: shard on the meta device, then stream in this rank's shards
    import torch.distributed as dist
    from magcache_dist.parallel.dims import ParallelDims, build_dist_context
    from magcache_dist.parallel.fsdp import apply_fsdp

    dist.init_process_group("gloo")
    apply_fsdp(model, build_dist_context(ParallelDims(dist.get_world_size(), 1)), "cpu")
share = None
if loader == "shared":  # as run.load_share does it for a group of ranks that all hold the whole model
    import torch.distributed as dist
    from magcache_dist.parallel.comm import DistComm
    from magcache_dist.parallel.load_share import RowShare

    dist.init_process_group("gloo")
    share = RowShare(DistComm(dist.group.WORLD, list(range(dist.get_world_size()))))
model = model.to_empty(device="cpu")
read0 = rchar()
if loader == "whole":
    load_state_dict_strict(model, read_tensors(path), "bench")
else:
    load_streaming(model, path, "bench", share=share)
wall = time.perf_counter() - t
weights = local_param_bytes(model)  # the rank's share under fsdp, else every parameter
print("RESULT " + json.dumps(dict(base=base, peak=hwm(), weights=weights, wall_s=wall, read_bytes=rchar() - read0)),
      flush=True)
if loader in ("fsdp", "shared"):
    dist.destroy_process_group()
"""


def run(args) -> dict:
    from tools.make_wan_checkpoint import make

    tmp = args.keep or tempfile.mkdtemp(prefix="load_memory_")
    files = {}
    for layout, dtype in (("official", "float32"), ("official", "bfloat16"), ("diffusers", "bfloat16")):
        d = os.path.join(tmp, f"{layout}-{dtype}")
        p = os.path.join(d, "diffusion_pytorch_model.safetensors") if layout == "official" else \
            os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors")
        files[(layout, dtype)] = p if os.path.isfile(p) else make(d, args.model, layout, dtype)
    cases = [("official", "float32", "float32", "streaming"), ("official", "float32", "bfloat16", "streaming"),
             ("official", "bfloat16", "bfloat16", "streaming"), ("diffusers", "bfloat16", "bfloat16", "streaming"),
             ("official", "float32", "float32", "whole file (before)"),
             ("official", "float32", "bfloat16", "whole file (before)"),
             ("official", "float32", "float32", "fsdp, torchrun 2"),
             ("official", "bfloat16", "bfloat16", "fsdp, torchrun 2"),
             ("official", "float32", "float32", "shared, torchrun 2"),
             ("official", "bfloat16", "bfloat16", "shared, torchrun 2")]
    rows = []
    cases = [c for c in cases if args.only is None or args.only in c[3]]
    try:
        for layout, file_dtype, model_dtype, loader in cases:
            kind = loader.split()[0].rstrip(",")
            child = [CHILD, files[(layout, file_dtype)], args.model, model_dtype, kind]
            cmd = [sys.executable, "-c", *child] if kind not in ("fsdp", "shared") else \
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "--no-python", sys.executable, "-c", *child]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(p.stderr[-3000:])
            # torchrun's two ranks may print on one line: each result is a flat JSON object after "RESULT "
            results = [json.loads(m) for m in re.findall(r"RESULT (\{[^{}]*\})", p.stdout)]
            r = max(results, key=lambda x: x["peak"] / x["weights"])  # the worst rank
            r["read_bytes_ranks"] = [x["read_bytes"] for x in results]
            row = dict(layout=layout, file_dtype=file_dtype, model_dtype=model_dtype, loader=loader,
                       file_bytes=os.path.getsize(files[(layout, file_dtype)]), **r,
                       peak_over_weights=r["peak"] / r["weights"],
                       load_over_weights=(r["peak"] - r["base"]) / r["weights"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.only is not None and os.path.isfile(args.out):  # the other rows as they were
        with open(args.out) as f:
            old = json.load(f)["rows"]
        key = ("layout", "file_dtype", "model_dtype", "loader")
        new = {tuple(r[k] for k in key): r for r in rows}
        rows = [new.pop(tuple(r[k] for k in key), r) for r in old] + list(new.values())
    return dict(model=args.model, rows=rows)


def table(res: dict) -> str:
    gb = 1e9
    lines = [f"{res['model']} DiT, random weights, one process per load; peak RSS over the weights' size in the "
             f"model's dtype (target: streaming <= 1.15), with and without the RSS of `import torch`.", "",
             "| layout | file | model | loader | weights GB | peak RSS GB | peak / weights | (peak - torch) / weights "
             "| wall s | read / file |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        lines.append(f"| {r['layout']} | {r['file_dtype']} | {r['model_dtype']} | {r['loader']} | "
                     f"{r['weights'] / gb:.2f} | {r['peak'] / gb:.2f} | {r['peak_over_weights']:.2f} | "
                     f"{r['load_over_weights']:.2f} | {r['wall_s']:.1f} | "
                     + (f"{r['read_bytes'] / r['file_bytes']:.2f} |" if "read_bytes" in r else "not measured |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--keep", default=None, help="a folder for the checkpoints, kept (and reused) afterwards")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--only", default=None, help="rerun only the rows whose loader contains this (e.g. fsdp)")
    args = ap.parse_args(argv)
    res = run(args)
    publish(res, table(res), args.out, OUT, "load_memory",
            "## Loading at real size (`python -m benchmarks.load_memory`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
