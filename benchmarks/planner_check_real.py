"""The dry-run planner against measured runs at real size (issue 19, item 2): the Wan2.1-T2V-1.3B DiT (30 blocks,
width 1536, random weights: the planner's figures do not depend on their values) sampled at three geometries, in
fp32 and bf16, on one rank and on two (Ulysses 2, gloo, one process per rank). Each rank has one intra-op thread,
as torchrun starts it and as the profile is measured (``python -m magcache_dist.planner.measure``).

Measured per run: the sampler's wall time (``sample``: every call computed, prepared text included) and the rank's
peak resident memory while sampling (VmHWM after the peak was reset once the model was built, minus the RSS before
the model was built: the interpreter and torch's libraries are not the job's). Estimated: the planner's
``per_rank.time_s.sampling`` and ``memory_bytes.total`` on ``--profile``. Text: 20 random umT5-width tokens per
branch (prepared once, as a real job does); no text encoder or VAE runs (the planner costs the DiT's sampling).

    .venv/bin/python -m magcache_dist.planner.measure --name cpu --tokens 256   # the profile (minutes)
    .venv/bin/python -m benchmarks.planner_check_real [--steps 4] [--profile cpu]  # ~25 min on 2 cores

Prints a table and writes benchmarks/results/planner_check_real.json (and its block in benchmarks/README.md).

    .venv/bin/python -m benchmarks.planner_check_real --phases     # ~5 min on 2 cores

The whole job's phases (issue 26, item 5) at the smallest geometry (5 x 48 x 48, fp32), one process and torchrun 2:
``load`` (a random real-size 1.3B checkpoint written once, dropped from the page cache, streamed in by the job's
loader on every rank at once; ``load_warm``: the same again from the page cache), ``encode`` (umT5-XXL at its real
width, random weights, with 2 of its 24 layers: the whole encoder needs 23 GB in fp32, and bf16 runs 176x slower
than fp32 on this CPU; the plan's encode compute is scaled by 2 / 24, its read is not measured), ``sample`` (as
above), ``decode`` (the real-size Wan VAE, random weights, 32 px tiles dealt over the ranks) and ``write`` (rank 0's
mp4), each rank's wall and CPU seconds (the write's with the ffmpeg process's) against the plan's ``job.phases`` on
``--profile``. Other work on the machine stretches wall time, so CPU time is the measure of the compute phases.
Writes benchmarks/results/planner_check_phases.json (and its README block). ``--phases --replan`` plans the stored
measurements again with the current planner and profile (after ``python -m magcache_dist.planner.measure``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "planner_check_real.json")
GEOMETRIES = [(5, 48, 48), (9, 64, 64), (9, 96, 96)]  # frames, height, width: 18, 48 and 108 tokens
MODEL = "wan2.1-t2v-1.3b"
TEXT_TOKENS = 20

# Both children's job: its config, family, sampler and this rank's context (frames, height, width, steps, dtype and
# EXTRA overrides set before it; WORLD_SIZE from torchrun)
CHILD_CONTEXT = r"""world = int(os.environ.get("WORLD_SIZE", "1"))
cfg = load_config(None, [f"model.name={MODEL}", f"model.dtype={dtype}", f"video.frames={frames}",
                         f"video.height={height}", f"video.width={width}", f"sampler.num_steps={steps}",
                         "cache.mode=off", f"parallel.ulysses_degree={world}", "planner.device=cpu", *EXTRA])
family = make_family(cfg)
scfg = family.sampler_config()
if world > 1:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    par = build_dist_context(parallel_dims(cfg))
else:
    par = solo_context()"""

CHILD = r"""
import json, os, sys, time
import torch


def status(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))


torch.set_num_threads(1)
frames, height, width, dtype, steps, out = sys.argv[1:7]
from magcache_dist.cache.factory import build_cache
from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.job import cache_spec, parallel_dims
from magcache_dist.parallel import solo_context
from magcache_dist.parallel.apply import apply_sequence_parallel
from magcache_dist.parallel.dims import build_dist_context
from magcache_dist.sampling.loop import sample
from models.wan import get_config
from models.wan_i2v import build_wan_model

EXTRA = []
CHILD_CONTEXT
base = status("VmRSS")
with torch.device("meta"):
    model = build_wan_model(get_config(MODEL)).to(dtype=getattr(torch, dtype))
model.to_empty(device="cpu")
torch.manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.uniform_(-0.03, 0.03)  # the values do not change the cost
g = torch.Generator().manual_seed(0)
model.eval().requires_grad_(False)
apply_sequence_parallel(model, par)
text = {b: torch.randn(1, TEXT_TOKENS, 4096, generator=g) * 0.1 for b in scfg.branches}
noise = family.make_noise(0)
policy = build_cache(cache_spec(cfg, family, scfg))
from diffusers import UniPCMultistepScheduler  # noqa: F401  (the sampler's scheduler: imported once per job, not timed)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: the peak while sampling, not while building
t = time.perf_counter()
with torch.no_grad():
    res = sample(model, noise, text, scfg, policy, par)
elapsed = time.perf_counter() - t
peak = status("VmHWM") - base
got = dict(rank=par.rank, sample_s=elapsed, peak_bytes=peak, calls=len(res.decisions),
           computed=sum(1 for d in res.decisions if d["compute"]))
with open(f"{out}.rank{par.rank}.json", "w") as f:
    json.dump(got, f)
if world > 1:
    dist.destroy_process_group()
""".replace("CHILD_CONTEXT", CHILD_CONTEXT).replace("MODEL", repr(MODEL)).replace("TEXT_TOKENS", str(TEXT_TOKENS))


def run_child(frames, height, width, dtype, steps, sp, tmp) -> list[dict]:
    out = os.path.join(tmp, f"{frames}x{height}x{width}-{dtype}-sp{sp}")
    script = os.path.join(tmp, "child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    args = [str(frames), str(height), str(width), dtype, str(steps), out]
    if sp == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={sp}", script, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    paths = [f"{out}.rank{r}.json" for r in range(sp)]
    if not all(os.path.isfile(p) for p in paths):  # (a rank that aborts at exit, after its results, is tolerated)
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.load(open(p)) for p in paths]


def estimate(frames, height, width, dtype, steps, sp, profile) -> dict:
    from magcache_dist.config import load_config
    from magcache_dist.planner import plan_job

    cfg = load_config(None, [f"model.name={MODEL}", f"model.dtype={dtype}", f"video.frames={frames}",
                             f"video.height={height}", f"video.width={width}", f"sampler.num_steps={steps}",
                             "cache.mode=off", f"parallel.ulysses_degree={sp}", f"planner.device={profile}",
                             "output_dir=/tmp/unused"])
    p = plan_job(cfg)["per_rank"]
    return dict(tokens=p["tokens"], time_s=p["time_s"]["sampling"], memory_bytes=p["memory_bytes"]["total"])


PHASES_OUT = os.path.join(ROOT, "benchmarks", "results", "planner_check_phases.json")
PHASE_GEOMETRY = (5, 48, 48)
ENC_LAYERS = 2  # of umT5-XXL's 24
UMT5_LAYERS = 24
PHASE_TILES = ["vae.tiling=true", "vae.tile_height=32", "vae.tile_width=32", "vae.tile_stride_height=24",
               "vae.tile_stride_width=24"]  # tiled on 1 rank too: the plan costs the decode that runs

PHASES_CHILD = r"""
import json, os, sys, time
import torch

torch.set_num_threads(1)
frames, height, width, steps, ckpt, out = sys.argv[1:7]


def waited():  # seconds this process was runnable but waiting for a CPU (/proc/self/schedstat): others' share
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


from diffusers import AutoencoderKLWan
from magcache_dist.cache.factory import build_cache
from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.families.folders import stream_weights
from magcache_dist.io.video import to_frames, write_mp4
from magcache_dist.job import cache_spec, parallel_dims
from magcache_dist.parallel import solo_context
from magcache_dist.parallel.apply import apply_sequence_parallel
from magcache_dist.parallel.dims import build_dist_context
from magcache_dist.parallel.vae import WanTiles, decode_split
from magcache_dist.sampling.loop import sample
from models.wan import get_config
from models.wan_i2v import build_wan_model

dtype, EXTRA = "float32", [*TILES]
CHILD_CONTEXT
got = dict(rank=par.rank)
# encode: umT5-XXL at its real width (d_model 4096, d_ff 10240, 64 heads, gated GELU; random weights) with
# ENC_LAYERS of its 24 layers and a 1024-token vocabulary, on a prompt and a negative prompt padded to 512 tokens
# (magcache_dist/families/wan.py encode_prompts): the planner's encode compute is scaled by ENC_LAYERS / 24
from transformers import UMT5Config, UMT5EncoderModel
tcfg = UMT5Config(vocab_size=1024, d_model=4096, d_kv=64, d_ff=10240, num_layers=ENC_LAYERS, num_heads=64,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                  pad_token_id=0, eos_token_id=1)
with torch.device("meta"):
    t5 = UMT5EncoderModel(tcfg)
t5 = t5.to_empty(device="cpu").eval().requires_grad_(False)
torch.manual_seed(0)
with torch.no_grad():
    for p in t5.parameters():
        p.uniform_(-0.02, 0.02)
    ids = torch.randint(2, 1024, (2, 512))
    mask = torch.zeros_like(ids)
    mask[:, :30] = 1
    t5(input_ids=ids[:, :8], attention_mask=mask[:, :8])  # warm-up
    par.group.gather_objects(None)
    t, c, q = time.perf_counter(), time.process_time(), waited()
    t5(input_ids=ids, attention_mask=mask)
    got["encode"], got["encode_cpu"] = time.perf_counter() - t, time.process_time() - c
    got["encode_wait"] = waited() - q
del t5
with torch.device("meta"):
    model = build_wan_model(get_config(MODEL))
par.group.gather_objects(None)  # start together: the ranks share the storage
t, c, q = time.perf_counter(), time.process_time(), waited()
stream_weights(model, "cpu", ckpt, "benchmark checkpoint")
got["load"], got["load_cpu"] = time.perf_counter() - t, time.process_time() - c
got["load_wait"] = waited() - q
par.group.gather_objects(None)
t, c, q = time.perf_counter(), time.process_time(), waited()
stream_weights(model, "cpu", ckpt, "benchmark checkpoint")  # again, from the page cache
got["load_warm"], got["load_warm_cpu"] = time.perf_counter() - t, time.process_time() - c
got["load_warm_wait"] = waited() - q
model.eval()
apply_sequence_parallel(model, par)
g = torch.Generator().manual_seed(0)
text = {b: torch.randn(1, TEXT_TOKENS, 4096, generator=g) * 0.1 for b in scfg.branches}
policy = build_cache(cache_spec(cfg, family, scfg))
from diffusers import UniPCMultistepScheduler  # noqa: F401
t, c, q = time.perf_counter(), time.process_time(), waited()
with torch.no_grad():
    res = sample(model, family.make_noise(0), text, scfg, policy, par)
got["sample"], got["sample_cpu"] = time.perf_counter() - t, time.process_time() - c
got["sample_wait"] = waited() - q
torch.manual_seed(0)
vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True]).eval()
v = cfg.vae
vae.enable_tiling(tile_sample_min_height=v.tile_height, tile_sample_min_width=v.tile_width,
                  tile_sample_stride_height=v.tile_stride_height, tile_sample_stride_width=v.tile_stride_width)
par.group.gather_objects(None)
t, c, q = time.perf_counter(), time.process_time(), waited()
with torch.no_grad():
    video = decode_split(WanTiles(vae, res.latents.float()), par.group)
got["decode"], got["decode_cpu"] = time.perf_counter() - t, time.process_time() - c
got["decode_wait"] = waited() - q
if par.rank == 0:
    import resource

    def kids():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    t, c, k, q = time.perf_counter(), time.process_time(), kids(), waited()
    write_mp4(out + ".mp4", to_frames(video.clamp(-1, 1)[0]), 16)
    got["write"], got["write_cpu"] = time.perf_counter() - t, time.process_time() - c + kids() - k  # + ffmpeg's
    got["write_wait"] = waited() - q
    got["mp4_bytes"] = os.path.getsize(out + ".mp4")
with open(f"{out}.rank{par.rank}.json", "w") as f:
    json.dump(got, f)
if world > 1:
    dist.destroy_process_group()
""".replace("CHILD_CONTEXT", CHILD_CONTEXT).replace("MODEL", repr(MODEL)).replace(
    "TEXT_TOKENS", str(TEXT_TOKENS)).replace("*TILES", "*" + repr(PHASE_TILES)).replace("ENC_LAYERS", str(ENC_LAYERS))


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def phase_plan(sp: int, steps: int, profile: str) -> dict:
    """The plan's seconds for what the benchmark's child does on ``sp`` ranks, phase by phase."""
    from magcache_dist.config import load_config
    from magcache_dist.planner import plan_job
    from magcache_dist.planner.phases import read_seconds
    from magcache_dist.planner.profiles import load_profile

    f, h, w = PHASE_GEOMETRY
    cfg = load_config(None, [f"model.name={MODEL}", "model.dtype=float32", f"video.frames={f}", f"video.height={h}",
                             f"video.width={w}", f"sampler.num_steps={steps}", "cache.mode=off",
                             f"parallel.ulysses_degree={sp}", f"planner.device={profile}", "output_dir=/tmp/unused",
                             *PHASE_TILES])
    plan = plan_job(cfg)["job"]["phases"]
    # the benchmark's VAE is built, not read: its planned decode is the compute alone; its umT5 has ENC_LAYERS of
    # 24 layers and is built, not read: the planned encode compute scaled by ENC_LAYERS / 24
    enc = plan["encode"]
    warm = read_seconds(plan["load"]["read_bytes"], 0, load_profile(profile))  # the storage's part is 0
    return dict(load=plan["load"]["s"], load_warm=warm, encode=(enc["s"] - enc["read_s"]) * ENC_LAYERS / UMT5_LAYERS,
                sample=plan["sample"]["s"], decode=plan["decode"]["compute_s"], write=plan["write"]["s"])


def publish_phases(res: dict) -> None:
    """The rows (measured against planned, per phase and rank count), the table and its README block."""
    rows = []
    for sp, run in sorted(res["runs"].items()):
        ranks, planned = run["measured"], run["planned"]
        for k in ("load", "load_warm", "encode", "sample", "decode", "write"):
            slow = max((r for r in ranks if k in r), key=lambda r: r[k])  # the slowest rank's figures
            m, cpu = slow[k], slow[k + "_cpu"]
            busy = m - slow[k + "_wait"] if k + "_wait" in slow else None
            rows.append(dict(ranks=int(sp), phase=k, measured_s=m, measured_cpu_s=cpu, not_waiting_s=busy,
                             planned_s=planned[k], error=planned[k] / m - 1,
                             cpu_error=planned[k] / cpu - 1 if cpu else None,
                             not_waiting_error=planned[k] / busy - 1 if busy else None))
            print(f"sp{sp} {k}: measured {m:.2f} s (CPU {cpu:.2f} s, not waiting for a CPU "
                  f"{busy if busy is not None else float('nan'):.2f} s), planned {planned[k]:.2f} s", flush=True)
    res["rows"] = rows

    def pct(x):
        return f"{x:+.0%}" if x is not None else "-"

    def sec(x):
        return f"{x:.2f}" if x is not None else "-"

    lines = ["| ranks | phase | measured wall s (slowest rank) | its CPU s | its wall less CPU waits s | planned s | "
             "error vs wall | error vs CPU | error vs wall less waits |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"] + [
        f"| {r['ranks']} | {r['phase']} | {r['measured_s']:.2f} | {r['measured_cpu_s']:.2f} | "
        f"{sec(r.get('not_waiting_s'))} | {r['planned_s']:.2f} | {pct(r['error'])} | {pct(r['cpu_error'])} | "
        f"{pct(r.get('not_waiting_error'))} |" for r in rows]
    text = ("\n".join(lines) + f"\n\n{MODEL} (random weights, fp32) at {res['geometry']}, {res['steps']} step(s) x "
            f"2 CFG calls, the real-size Wan VAE in 32 px tiles, umT5-XXL at real width with {ENC_LAYERS} of its "
            f"{UMT5_LAYERS} layers (planned encode compute x {ENC_LAYERS}/{UMT5_LAYERS}), one thread per rank, "
            f"profile {res['profile']!r}; machine load average (1 min) {res['load_average_start'][0]:.1f} at the "
            f"start, {res['load_average_end'][0]:.1f} at the end, on {os.cpu_count()} cores. load_warm: the same load "
            f"again from the page cache. write's CPU s include the ffmpeg process. Wall less CPU waits: the wall "
            f"time less the time the rank was runnable but waiting for a CPU (/proc/self/schedstat), what the phase "
            f"would take on an idle machine, I/O waits included."
            + (f" Planned figures re-planned {res['replanned']} on the measurements of the run." if res.get("replanned")
               else ""))
    publish(res, text, PHASES_OUT, PHASES_OUT, "planner_check_phases",
            "## The whole job's phases: planner vs measured (`python -m benchmarks.planner_check_real --phases`)")


def phases_main(steps: int, profile: str, replan: bool = False) -> int:
    import tempfile
    import time

    from tools.make_wan_checkpoint import make

    if replan:  # the stored measurements against the current planner and profile
        with open(PHASES_OUT) as fh:
            res = json.load(fh)
        res["runs"] = {sp: dict(run, planned=phase_plan(int(sp), res["steps"], res["profile"]))
                       for sp, run in res["runs"].items()}
        res["replanned"] = time.strftime("%Y-%m-%d %H:%M")
        publish_phases(res)
        return 0
    f, h, w = PHASE_GEOMETRY
    res = dict(geometry=f"{f}x{h}x{w}", steps=steps, profile=profile, runs={}, load_average_start=os.getloadavg())
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        ckpt = make(os.path.join(tmp, "ckpt"), MODEL, "official", "float32")
        script = os.path.join(tmp, "phases_child.py")
        with open(script, "w") as fh:
            fh.write(PHASES_CHILD)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        for sp in (1, 2):
            drop_cache(ckpt)
            out = os.path.join(tmp, f"phases-sp{sp}")
            args = [str(f), str(h), str(w), str(steps), ckpt, out]
            cmd = [sys.executable, script, *args] if sp == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={sp}", script, *args]
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            paths = [f"{out}.rank{r}.json" for r in range(sp)]
            if not all(os.path.isfile(p) for p in paths):
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            res["runs"][str(sp)] = dict(measured=[json.load(open(p)) for p in paths],
                                        planned=phase_plan(sp, steps, profile))
    res["load_average_end"] = os.getloadavg()
    publish_phases(res)
    return 0


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--phases", action="store_true", help="the whole job's phases at the smallest geometry")
    ap.add_argument("--replan", action="store_true", help="with --phases: re-plan the stored measurements")
    args = ap.parse_args()
    if args.phases:
        return phases_main(args.steps, args.profile, args.replan)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            for f, h, w in GEOMETRIES:
                for sp in (1, 2):
                    ranks = run_child(f, h, w, dtype, args.steps, sp, tmp)
                    est = estimate(f, h, w, dtype, args.steps, sp, args.profile)
                    measured_s = max(r["sample_s"] for r in ranks)
                    measured_b = max(r["peak_bytes"] for r in ranks)
                    rows.append(dict(geometry=f"{f}x{h}x{w}", tokens=est["tokens"], dtype=dtype, sp=sp,
                                     calls=ranks[0]["calls"], measured_s=measured_s, estimated_s=est["time_s"],
                                     time_error=est["time_s"] / measured_s - 1, measured_bytes=measured_b,
                                     estimated_bytes=est["memory_bytes"],
                                     memory_error=est["memory_bytes"] / measured_b - 1))
                    r = rows[-1]
                    print(f"{r['geometry']:>9} {dtype:>8} sp{sp}: {r['measured_s']:.1f} s vs {r['estimated_s']:.1f} s "
                          f"({r['time_error']:+.0%}), {measured_b / 1e9:.2f} GB vs {est['memory_bytes'] / 1e9:.2f} GB "
                          f"({r['memory_error']:+.0%})", flush=True)
    header = "| geometry | tokens | dtype | ranks | calls | measured s | estimated s | time error | measured GB | " \
             "estimated GB | memory error |\n|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [header] + [
        f"| {r['geometry']} | {r['tokens']} | {r['dtype']} | {r['sp']} | {r['calls']} | {r['measured_s']:.1f} | "
        f"{r['estimated_s']:.1f} | {r['time_error']:+.0%} | {r['measured_bytes'] / 1e9:.2f} | "
        f"{r['estimated_bytes'] / 1e9:.2f} | {r['memory_error']:+.0%} |" for r in rows]
    worst_t = max(abs(r["time_error"]) for r in rows)
    worst_m = max(abs(r["memory_error"]) for r in rows)
    summary = (f"worst |time error| {worst_t:.0%} (target 25%), worst |memory error| {worst_m:.0%} (target 15%); "
               f"{MODEL} random weights, {args.steps} step(s) x 2 CFG calls, one thread per rank, profile "
               f"{args.profile!r}")
    publish(dict(rows=rows, steps=args.steps, profile=args.profile, worst_time_error=worst_t,
                 worst_memory_error=worst_m), "\n".join(lines) + "\n\n" + summary, OUT, OUT, "planner_check_real",
            "## Planner vs measured runs at real size (`python -m benchmarks.planner_check_real`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
