"""Measure a device profile for the dry-run planner on the machine this runs on, and write it where
``planner.device`` finds it.

    python -m magcache_dist.planner.measure --name mybox             # -> magcache_dist/planner/profiles/mybox.json
    python -m magcache_dist.planner.measure --out /tmp/p.json --device cuda --capacity-from h100
    torchrun --nproc_per_node 8 -m magcache_dist.planner.measure --name h100-node   # + the link over the 8 ranks

Every figure is the best of a few timed repeats after a warm-up, at the shapes of a real-size DiT call (width
``--dim``, default 1536 = Wan2.1-1.3B, FFN ``--ffn``, ``--tokens`` rows, head dim 128):
- ``peak_flops[dtype]`` and ``gemm_half_rows[dtype]``: the block's GEMMs (nn.Linear [tokens, D] x [D, D]^T and
  the FFN's) timed at tokens / 16, tokens / 4 and tokens rows, fitted by rate(rows) = peak * rows / (rows + half):
  few rows run below the peak (``gemm_efficiency`` is 1: the measured rate is the effective peak);
- ``attention_efficiency[dtype]``: SDPA's FLOP/s over the GEMM's, per dtype;
- ``elementwise_bandwidth[dtype]``: bytes/s of a block's elementwise mix (norms, fp32 modulation and casts, GELU,
  gated residual), what the planner charges elementwise traffic at;
- ``memory_bandwidth``: a large copy, bytes read + written per second; ``op_overhead_s``: one tiny op;
- ``memory_capacity``: the GPU's total memory, or the host's RAM on a CPU;
- the link: under torchrun (world > 1) an all-to-all of ``--link-mb`` per rank and a 4-byte all-reduce over the
  job's group (NCCL on GPUs); alone on a CPU, the same between 2 gloo processes on loopback; ``--no-link`` keeps
  the figures of ``--base``;
- the job's other phases (magcache_dist/planner/phases.py): ``storage_bandwidth``, ``host_read_bandwidth`` and
  ``node_host_read_bandwidth`` (the weight loader's read, cold, warm and by ``--readers`` processes at once),
  ``write_start_s``, ``write_pixels_per_s`` and ``write_fork_s_per_byte`` (the mp4 writer, ffmpeg's CPU time
  included) and, on a CPU, ``vae_pass_s`` (the real-size Wan VAE's seconds per decoder call beyond its FLOPs);
  ``--job-phases-only`` measures only these into a copy of ``--base``.
The CPU runs with ``--threads`` intra-op threads (default 1: torchrun starts each rank with OMP_NUM_THREADS=1, and
the planner costs one rank).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from magcache_dist.families.base import DTYPES
from magcache_dist.planner.profiles import PROFILE_DIR, load_profile


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats: int = 5, min_s: float = 0.05, inner: int | None = None, before=None) -> float:
    """Seconds per call of ``fn``: best of ``repeats`` timings, each of ``inner`` calls (default: enough to last
    ``min_s``; collectives pass a fixed count, the same on every rank); ``before`` runs ahead of each timing."""
    fn()
    _sync(device)
    if inner is None:
        t = time.perf_counter()
        fn()
        _sync(device)
        inner = max(1, int(min_s / max(time.perf_counter() - t, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def gemm_flops(dtype, device, tokens: int, dim: int, ffn: int) -> float:
    """FLOP/s of the block's GEMM shapes (attention projections and the FFN, nn.Linear's [out, in] weights), as one
    mix, on ``tokens`` rows."""
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    w_attn = torch.randn(dim, dim, device=device, dtype=dtype)
    w_up, w_down = torch.randn(ffn, dim, device=device, dtype=dtype), torch.randn(dim, ffn, device=device, dtype=dtype)

    def block():
        F.linear(x, w_attn)
        F.linear(F.linear(x, w_up), w_down)

    flops = 2 * tokens * dim * dim + 2 * 2 * tokens * dim * ffn
    return flops / best_time(block, device)


def fit_gemm(rates: dict[int, float]) -> tuple[float, float]:
    """(large-size rate P, half rows h) of rate(M) = P * M / (M + h) fitted to measured {rows: FLOP/s}: a least-
    squares line 1 / rate = 1 / P + (h / P) / M (h >= 0)."""
    xs, ys = [1.0 / m for m in rates], [1.0 / r for r in rates.values()]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if n > 1 and sxx > 0 else 0.0
    if slope <= 0:  # no slow-down at few rows: the best measured rate everywhere
        return max(rates.values()), 0.0
    a = my - slope * mx
    if a <= 0:
        return max(rates.values()), 0.0
    return 1.0 / a, slope / a


def attention_flops(dtype, device, tokens: int, dim: int) -> float:
    heads = max(1, dim // 128)
    q = torch.randn(1, heads, tokens, 128, device=device, dtype=dtype)
    return 4 * tokens * tokens * heads * 128 / best_time(lambda: F.scaled_dot_product_attention(q, q, q), device)


def elementwise_rate(dtype, device, tokens: int, dim: int, ffn: int) -> float:
    """Bytes/s (reads + writes, in ``dtype``) of a DiT block's elementwise work as the models run it: a LayerNorm,
    the fp32 modulation and its cast back, an RMSNorm computed in fp32, the tanh GELU over the FFN activation and a
    gated fp32 residual add. On a GPU these are bandwidth-bound; on a CPU they are often compute-bound (and
    fp32 <-> bf16 conversions are slow without bf16 instructions), far below the copy bandwidth."""
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    up = torch.randn(tokens, ffn, device=device, dtype=dtype)
    w = torch.ones(dim, device=device, dtype=dtype)
    scale, shift = torch.randn(dim, device=device), torch.randn(dim, device=device)

    def mix():
        h = F.layer_norm(x, (dim,))
        h = (h.float() * (1 + scale) + shift).to(dtype)
        xf = h.float()
        (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * w
        F.gelu(up, approximate="tanh")
        (x.float() + h.float() * scale).to(dtype)

    b = torch.finfo(dtype).bits // 8
    nbytes = (2 + 2 + 2 + 2 + 2) * tokens * dim * b + 2 * tokens * ffn * b
    return nbytes / best_time(mix, device)


def bandwidth(device, mb: int = 256) -> float:
    src = torch.empty(mb * 2 ** 20 // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_time(lambda: dst.copy_(src), device, repeats=5)


def storage_read(mb: int = 256, folder: str | None = None) -> float:
    """Bytes/s of a cold sequential read of a ``mb`` MB file (written, flushed and dropped from the page cache
    first where the OS allows): what loading weights from this machine's storage runs at."""
    import tempfile

    block = os.urandom(2 ** 20)
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        for _ in range(mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        with open(f.name, "rb", buffering=0) as r:
            while r.read(16 * 2 ** 20):
                pass
        return mb * 2 ** 20 / (time.perf_counter() - t)


def _write_safetensors(path: str, mb: int) -> int:
    """A safetensors file of the Wan2.1-1.3B DiT's first ``mb`` MB of fp32 tensors, in its order and shapes (the
    loader's real mix of large matrices and small norms and biases), random bytes; its size in bytes."""
    from models.wan import get_config
    from models.wan_i2v import build_wan_model

    with torch.device("meta"):
        shapes = [(k, list(v.shape)) for k, v in build_wan_model(get_config("wan2.1-t2v-1.3b")).state_dict().items()]
    header, end = {}, 0
    for k, shape in shapes:
        n = 4 * math.prod(shape)
        if end + n > mb * 2 ** 20 and header:
            break
        header[k] = dict(dtype="F32", shape=shape, data_offsets=[end, end + n])
        end += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    block = os.urandom(2 ** 20)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for i in range(0, end, len(block)):
            f.write(block[:min(len(block), end - i)])
        f.flush()
        os.fsync(f.fileno())
    return end


def _drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages of a file: no root needed
    finally:
        os.close(fd)


def loader_read(mb: int = 1024, folder: str | None = None, repeats: int = 2, readers: int = 2) -> dict:
    """The weight loader's read (models/loading.py: each tensor read whole into a fresh buffer, then copied into a
    freshly allocated parameter: both pay first-touch page faults) of a
    ``mb`` MB safetensors file, cold (dropped from the page cache first) and warm: ``host_read_bandwidth`` = bytes
    / the warm read's CPU seconds (the copies out of the page cache alone: work, which other load on the machine
    does not stretch), ``storage_bandwidth`` = bytes / (cold - warm) wall seconds (the storage's part). Best of
    ``repeats`` each. The page cache is dropped per file (posix_fadvise), not the storage's own cache (a virtual
    disk's host may still hold the file). Host memory only: the planner adds the copy to a GPU at
    ``host_link_bandwidth``. ``readers`` > 1: as many processes then read the warm file at once (the ranks of a
    node loading together): ``node_host_read_bandwidth`` = readers x bytes / the slowest one's CPU seconds, the
    node's total when its cores and memory are shared."""
    import tempfile

    from models.loading import TensorSource

    with tempfile.TemporaryDirectory(dir=folder) as d:
        path = os.path.join(d, "w.safetensors")
        nbytes = _write_safetensors(path, mb)
        src = TensorSource(path)
        shapes = src.shapes()

        cold, warm, warm_cpu = float("inf"), float("inf"), float("inf")
        for _ in range(repeats):
            _drop_cache(path)
            cold = min(cold, _timed_read(src, shapes)[0])
            w, c = _timed_read(src, shapes)
            warm, warm_cpu = min(warm, w), min(warm_cpu, c)
        together = concurrent_read(path, readers) if readers > 1 else None
    disk = max(cold - warm, 0.05 * warm)  # a cold read no slower than a warm one: the storage's cache served it
    out = dict(storage_bandwidth=nbytes / disk, host_read_bandwidth=nbytes / warm_cpu, cold_s=cold, warm_s=warm,
               warm_cpu_s=warm_cpu, bytes=nbytes)
    if together:  # the node's ranks copy at once: the slowest reader's CPU seconds give the node's total
        out.update(node_host_read_bandwidth=readers * nbytes / max(together), node_readers=readers,
                   together_cpu_s=together)
    return out


def _timed_read(src, shapes) -> tuple[float, float]:
    """(wall, CPU) seconds of the loader's read of every tensor of ``src`` into fresh tensors, all kept, as into a
    model just built by to_empty."""
    kept = []
    t, c = time.perf_counter(), time.process_time()
    for k, shape in shapes.items():
        kept.append(torch.empty(shape))
        kept[-1].copy_(src.read(k))
    return time.perf_counter() - t, time.process_time() - c


def _reader(path: str, barrier, out) -> None:
    from models.loading import TensorSource

    torch.set_num_threads(1)
    src = TensorSource(path)
    shapes = src.shapes()
    barrier.wait()
    out.put(_timed_read(src, shapes)[1])


def concurrent_read(path: str, readers: int) -> list[float]:
    """CPU seconds of each of ``readers`` processes reading the (page-cached) file ``path`` at once, as the ranks of
    a node load the same checkpoint together."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(readers), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(path, barrier, out)) for _ in range(readers)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return got


def writer_cost(folder: str | None = None, hold_gb: float = 2.0) -> dict:
    """The mp4 writer (magcache_dist/io/video.py write_mp4, libx264 through an ffmpeg process) in CPU seconds, this
    process's and the ffmpeg child's (RUSAGE_CHILDREN): ``write_start_s`` = a 1-frame 48 x 48 video, the first of
    the process (as a job's first video: the writer's imports and the ffmpeg look-up included),
    ``write_pixels_per_s`` = the pixels of a 33 x 256 x 256 video over its extra seconds. Frames of uniform random
    bytes: x264's worst case (smooth content encodes several times faster). ``write_fork_s_per_byte``: imageio
    starts ffmpeg with a ``preexec_fn`` (os.setpgrp), so Python forks rather than vforks, and the fork copies the
    page tables of every resident byte of the process: a 1-frame video with ``hold_gb`` GB held, over them."""
    import resource
    import tempfile

    import numpy as np

    from magcache_dist.io.video import write_mp4

    def cpu():
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    import torch

    rng = np.random.default_rng(0)
    got = []
    with tempfile.TemporaryDirectory(dir=folder) as d:
        for shape, hold in (((1, 48, 48), 0), ((33, 256, 256), 0), ((1, 48, 48), 0), ((1, 48, 48), hold_gb)):
            frames = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            held = torch.ones(int(hold * 1e9) // 4)  # resident (written) memory the writer's fork must copy
            c = cpu()
            write_mp4(os.path.join(d, "v.mp4"), frames, 16)
            got.append(cpu() - c)
            del held
    start, big, warm, held = got
    pixels = 33 * 256 * 256 - 48 * 48
    return dict(write_start_s=start, write_pixels_per_s=pixels / max(big - start, 1e-6),
                write_fork_s_per_byte=max(held - warm, 0.0) / (hold_gb * 1e9) if hold_gb else 0.0)


WAN_VAE_FLOPS_PER_PIXEL = 8.70e6  # magcache_dist/families/wan.py vae_decode_flops_per_pixel


def vae_pass_seconds(rate: float) -> dict:
    """Seconds per decoder call of the real-size Wan2.1 VAE (random weights, fp32) beyond its FLOPs at ``rate``
    (FLOP/s): the residual of three decodes (5 x 48 x 48 whole, 5 x 64 x 64 in 32 px tiles, 5 x 96 x 96 in 64 px
    tiles) over their calls (tiles x latent frames), least squares through 0. What the planner adds per call."""
    import torch
    from diffusers import AutoencoderKLWan

    from magcache_dist.parallel.vae import WanTiles

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                           temperal_downsample=[False, True, True]).eval()
    rows = []
    for size, tile in ((48, None), (64, 32), (96, 64)):
        if tile:
            vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                              tile_sample_stride_height=tile * 3 // 4, tile_sample_stride_width=tile * 3 // 4)
        else:
            vae.disable_tiling()
        z = torch.randn(1, 16, 2, size // 8, size // 8)
        job = WanTiles(vae, z)
        with torch.no_grad():
            job.run(job.units[0])  # warm-up
            t = time.process_time()
            out = job.assemble([job.run(u) for u in job.units])
            s = time.process_time() - t
        tiles = [u for u in job.units] if job.tiled else [None]
        pixels = sum(_tile_pixels(job, u, vae) for u in tiles) * out.shape[2]
        rows.append((len(tiles) * z.shape[2], s - pixels * WAN_VAE_FLOPS_PER_PIXEL / rate))
    per = sum(p * r for p, r in rows) / sum(p * p for p, _ in rows)
    return dict(vae_pass_s=max(per, 0.0), vae_pass_fit=[dict(calls=p, residual_s=r) for p, r in rows])


def _tile_pixels(job, unit, vae) -> int:
    """Output pixels (one frame) of a decode tile as the planner counts them (planner.phases.decode_units)."""
    r = vae.spatial_compression_ratio
    _, _, _, h, w = job.z.shape
    if unit is None:
        return h * w * r * r
    i, j = job.rows[unit[0]], unit[1]
    return min(job.tile[0], h - i) * r * min(job.tile[1], w - j) * r


def job_phase_figures(rate: float | None, folder: str | None = None, read_mb: int = 1024, readers: int = 2) -> dict:
    """The figures of the job's other phases (magcache_dist/planner/phases.py): the weight read (a ``read_mb`` MB
    file), the mp4 writer and (``rate``: the fp32 GEMM FLOP/s the VAE's FLOPs are charged at; None: not measured)
    the Wan VAE's cost per decoder call."""
    read = loader_read(mb=read_mb, folder=folder, readers=readers)
    return dict(storage_bandwidth=read["storage_bandwidth"], host_read_bandwidth=read["host_read_bandwidth"],
                **{k: read[k] for k in ("node_host_read_bandwidth", "node_readers") if k in read},
                **writer_cost(folder), **(vae_pass_seconds(rate) if rate else {}),
                job_phases_note=(f"load: the loader's read of {read['bytes'] / 1e9:.2f} GB of the 1.3B DiT's "
                                 f"tensors, cold {read['cold_s']:.2f} s (dropped from the page cache) and warm "
                                 f"{read['warm_s']:.2f} s ({read['warm_cpu_s']:.2f} CPU s); write: CPU s of write_mp4 "
                                 f"(ffmpeg included) on random frames, the fork's per resident byte with 2 GB held; "
                                 f"vae_pass_s: the Wan VAE's seconds per decoder call beyond its FLOPs"))


def op_overhead(device) -> float:
    x = torch.zeros(4, device=device)
    return best_time(lambda: x.add_(1.0), device, repeats=5, min_s=0.02)


def capacity(device) -> float:
    if torch.device(device).type == "cuda":
        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def link_figures(comm_group=None, mb: int = 32, device="cpu") -> tuple[float, float]:
    """(bytes/s leaving a rank in an all-to-all, seconds of a 4-byte all-reduce) over the current process group."""
    import torch.distributed as dist

    world = dist.get_world_size(comm_group)
    n = mb * 2 ** 20 // 4 // world * world
    send, recv = torch.randn(n, device=device), torch.empty(n, device=device)
    small = torch.zeros(1, device=device)

    def timed(fn, count: int) -> float:
        return best_time(fn, device, repeats=3, inner=count, before=lambda: dist.barrier(group=comm_group))

    t_a2a = timed(lambda: dist.all_to_all_single(recv, send, group=comm_group), 5)
    t_lat = timed(lambda: dist.all_reduce(small, group=comm_group), 50)
    sent = n * 4 * (world - 1) / world
    return sent / t_a2a, t_lat


def _loopback_worker(rank: int, port: int, mb: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bw, lat = link_figures(mb=mb)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(dict(link_bandwidth=bw, link_latency_s=lat), f)
    finally:
        dist.destroy_process_group()


def loopback_link(mb: int) -> tuple[float, float]:
    """The link figures between 2 gloo processes on this host (what a CPU job's ranks use)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "link.json")
        mp.start_processes(_loopback_worker, args=(port, mb, out), nprocs=2, join=True, start_method="spawn")
        with open(out) as f:
            got = json.load(f)
    return got["link_bandwidth"], got["link_latency_s"]


def measure(device: str, dtypes: list[str], tokens: int, dim: int, ffn: int, threads: int, read_mb: int = 1024,
            vae: bool = True, readers: int = 2) -> dict:
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    peak, attn, half, rates, elem = {}, {}, {}, {}, {}
    rows = sorted({max(1, tokens // 16), max(1, tokens // 4), tokens})
    for name in dtypes:
        rates[name] = {m: gemm_flops(DTYPES[name], device, m, dim, ffn) for m in rows}
        peak[name], half[name] = fit_gemm(rates[name])
        # SDPA over the GEMMs' large-size rate (above 1 where the GEMMs are the slower kernels, e.g. bf16 on a CPU
        # without bf16 instructions)
        attn[name] = attention_flops(DTYPES[name], device, tokens, dim) / rates[name][tokens]
        elem[name] = elementwise_rate(DTYPES[name], device, tokens, dim, ffn)
    return dict(device_type=torch.device(device).type, peak_flops=peak, gemm_efficiency=1.0, gemm_half_rows=half,
                attention_efficiency=attn,
                elementwise_bandwidth=elem, memory_bandwidth=bandwidth(device), memory_capacity=capacity(device),
                op_overhead_s=op_overhead(device),
                gemm_rates_measured={d: {str(m): r for m, r in v.items()} for d, v in rates.items()},
                **job_phase_figures(peak.get("float32") if vae and torch.device(device).type == "cpu" else None,
                                   read_mb=read_mb, readers=readers))


def job_phases_only(args) -> int:
    """``--job-phases-only``: --base's profile with the job-phase figures measured now (the others kept)."""
    from magcache_dist.io.atomic import atomic_write_text
    from magcache_dist.planner.profiles import PROFILE_DIR as pdir

    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    base_path = args.base if args.base.endswith(".json") else os.path.join(pdir, f"{args.base}.json")
    load_profile(base_path)  # checked
    with open(base_path, encoding="utf-8") as f:
        profile = json.load(f)
    cpu = torch.device(args.device).type == "cpu"
    got = job_phase_figures(profile["peak_flops"].get("float32") if cpu and not args.skip_vae else None,
                            read_mb=args.read_mb, readers=args.readers)
    profile.pop("storage_note", None)
    profile.update(got, name=args.name or os.path.splitext(os.path.basename(args.out))[0])
    profile["job_phases_note"] += f" (measured on {platform.node()}, {time.strftime('%Y-%m-%d')}, added to " \
                                  f"{os.path.basename(base_path)}'s other figures)"
    path = args.out or os.path.join(pdir, f"{args.name}.json")
    atomic_write_text(path, json.dumps(profile, indent=1))
    print(", ".join(f"{k} {v:.4g}" for k, v in got.items() if isinstance(v, float)) + f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", help="profile name (written to magcache_dist/planner/profiles/<name>.json)")
    ap.add_argument("--out", help="or a path to write the profile to")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma-separated (default: float32,bfloat16 and float16 on GPUs)")
    ap.add_argument("--tokens", type=int, default=1024, help="rows of the GEMMs and SDPA's sequence length")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--ffn", type=int, default=8960)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (one rank's)")
    ap.add_argument("--base", default="cpu", help="profile whose link figures are kept with --no-link")
    ap.add_argument("--no-link", action="store_true")
    ap.add_argument("--link-mb", type=int, default=32)
    ap.add_argument("--read-mb", type=int, default=1024, help="size of the file the weight read is timed on")
    ap.add_argument("--readers", type=int, default=2, help="processes reading the file at once (a node's ranks)")
    ap.add_argument("--skip-vae", action="store_true", help="keep --base's vae_pass_s (its measure takes ~20 s)")
    ap.add_argument("--job-phases-only", action="store_true",
                    help="measure only the load / write / VAE-call figures and add them to --base's figures")
    args = ap.parse_args(argv)
    if not args.name and not args.out:
        ap.error("give --name or --out")
    if args.job_phases_only:
        return job_phases_only(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    gpu = args.device.startswith("cuda")
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16", "float16"] if gpu else
                                                         ["float32", "bfloat16"])
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"--dtypes: {d!r} is not one of {sorted(DTYPES)}")
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if gpu:
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
        dist.init_process_group("nccl" if gpu else "gloo")
    try:
        prof = measure(args.device, dtypes, args.tokens, args.dim, args.ffn, args.threads, args.read_mb,
                       not args.skip_vae, args.readers)
        base = load_profile(args.base)
        for k in ("vae_pass_s", "vae_pass_fit", "vae_pass_note"):  # not measured here: --base's (if any)
            if k not in prof and k in base.extra:
                prof[k] = base.extra[k]
        if args.no_link:
            bw, lat, how = base.link_bandwidth, base.link_latency_s, f"kept from profile {base.name!r}"
        elif distributed:
            bw, lat = link_figures(mb=args.link_mb, device=args.device)
            how = f"all-to-all of {args.link_mb} MB and a 4-byte all-reduce over {dist.get_world_size()} ranks"
        else:
            bw, lat = loopback_link(args.link_mb)
            how = f"all-to-all of {args.link_mb} MB and a 4-byte all-reduce between 2 gloo processes on loopback"
        if distributed and dist.get_rank() != 0:
            return 0
    finally:
        if distributed:
            dist.destroy_process_group()
    what = torch.cuda.get_device_name(args.device) if gpu else f"{platform.machine()} CPU, {args.threads} thread(s)"
    name = args.name or os.path.splitext(os.path.basename(args.out))[0]
    profile = dict(
        name=name, description=f"measured on {platform.node()}: {what}, torch {torch.__version__}, by python -m "
                               f"magcache_dist.planner.measure; rerun it on the machine a job runs on",
        **prof, link_bandwidth=bw, link_efficiency=1.0, link_latency_s=lat,
        source=f"GEMM mix (nn.Linear) [rows, {args.dim}] x [{args.dim}, {args.dim}]^T and the FFN [{args.dim}, "
               f"{args.ffn}], at rows {args.tokens // 16}, {args.tokens // 4} and {args.tokens}, "
               f"SDPA over {args.tokens} tokens at head dim 128, a 256 MB copy, a 4-element add_; link: {how}")
    path = args.out or os.path.join(PROFILE_DIR, f"{args.name}.json")
    from magcache_dist.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(profile, indent=1))
    for k in ("peak_flops", "gemm_half_rows", "attention_efficiency", "elementwise_bandwidth"):
        print(f"{k}: " + ", ".join(f"{d} {v:.4g}" for d, v in profile[k].items()))
    print(f"memory_bandwidth {profile['memory_bandwidth']:.4g} B/s, op_overhead {profile['op_overhead_s']:.3g} s, "
          f"link {bw:.4g} B/s, latency {lat:.3g} s\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
