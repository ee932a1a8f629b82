"""The Wan2.1 VAE at its published size (diffusers' AutoencoderKLWan, 127M parameters, random weights) decoded in
tiles dealt over ranks (issue 26, item 1: magcache_dist/parallel/vae.py): the same latents on 1 and on 2 gloo
processes (one thread each), each rank's wall time, CPU time and peak resident memory above its start (the VAE's
weights already loaded), the ratios 2 ranks / 1 rank from the one run, and whether rank 0's video is bit-equal to the
1-rank one.

    .venv/bin/python -m benchmarks.vae_decode --parallel    # ~1 min on 2 idle cores
    .venv/bin/python -m benchmarks.vae_decode --bands       # the whole decode in row bands: 1, 2, 4 ranks

Writes benchmarks/results/vae_decode_parallel.json (and its README block); ``--bands``: the whole decode (no tiles)
on 1 rank (``vae.decode``) vs 2 and 4 ranks in row bands (magcache_dist/parallel/vae_bands.py), each rank's wall and CPU
time, peak resident memory above its start, bytes sent, and rank 0's video against the 1-rank one
(benchmarks/results/vae_decode_bands.json). The load and whole-vs-tiled decode
figures this script measured before issue 25 are in docs/wan_checkpoints.md.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time

import torch

from benchmarks._common import ROOT, publish

WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])


def rss(key: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def timed(fn):
    reset_peak()
    base = rss()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, rss("VmHWM") - base


PAR_OUT = os.path.join(ROOT, "benchmarks", "results", "vae_decode_parallel.json")
PAR_VIDEO = (5, 128, 128)  # frames, height, width: latents 2 x 16 x 16
PAR_TILE, PAR_STRIDE = 64, 48  # pixels: 3 x 3 tiles


@contextlib.contextmanager
def _gloo_vae(rank: int, world: int, port: int, video: tuple[int, int, int], timeout_s: int):
    """One gloo rank of ``world`` (one thread) with the real-size Wan2.1 VAE (the same random weights on every rank),
    the latents of ``video`` (frames, height, width) and the world's Comm; the process group ends with the block."""
    import datetime

    import torch.distributed as dist
    from diffusers import AutoencoderKLWan

    from magcache_dist.parallel.comm import DistComm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**WAN_VAE).eval()
        f, h, w = video
        z = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
        yield vae, z, DistComm(dist.group.WORLD, list(range(world)))
    finally:
        dist.destroy_process_group()


def _par_rank(rank: int, world: int, port: int, tmp: str) -> None:
    import json

    import torch.distributed as dist

    from magcache_dist.parallel.vae import WanTiles, decode_split

    with _gloo_vae(rank, world, port, PAR_VIDEO, 600) as (vae, z, comm):
        vae.enable_tiling(tile_sample_min_height=PAR_TILE, tile_sample_min_width=PAR_TILE,
                          tile_sample_stride_height=PAR_STRIDE, tile_sample_stride_width=PAR_STRIDE)
        td = WanTiles(vae, z)
        dist.barrier()
        cpu = time.process_time()
        video, s, peak = timed(lambda: decode_split(td, comm))
        stats = comm.gather_objects(dict(rank=rank, seconds=s, cpu_seconds=time.process_time() - cpu, peak_bytes=peak,
                                         tiles=len(range(rank, len(td.units), world))))
        if rank == 0:
            torch.save(video, os.path.join(tmp, f"video{world}.pt"))
            with open(os.path.join(tmp, f"stats{world}.json"), "w") as fh:
                json.dump(dict(ranks=stats, tiles=len(td.units)), fh)


def _spawn_worlds(rank_fn, worlds, tmp: str) -> dict:
    """``rank_fn(rank, world, port, tmp)`` on a fresh gloo world of each size in turn; {world: the stats<world>.json
    its ranks wrote into ``tmp``}."""
    import json
    import socket

    import torch.multiprocessing as mp

    runs = {}
    for world in worlds:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(rank_fn, args=(world, port, tmp), nprocs=world, join=True)
        with open(os.path.join(tmp, f"stats{world}.json")) as fh:
            runs[world] = json.load(fh)
    return runs


def parallel_main() -> int:
    res = dict(video="x".join(map(str, PAR_VIDEO)), tile=PAR_TILE, stride=PAR_STRIDE)
    with tempfile.TemporaryDirectory() as tmp:
        res["runs"] = _spawn_worlds(_par_rank, (1, 2), tmp)
        res["bit_equal"] = bool(torch.equal(torch.load(os.path.join(tmp, "video1.pt")),
                                            torch.load(os.path.join(tmp, "video2.pt"))))
    one, two = res["runs"][1]["ranks"][0], res["runs"][2]["ranks"]
    res["time_ratio"] = max(r["seconds"] for r in two) / one["seconds"]
    res["cpu_time_ratio"] = max(r["cpu_seconds"] for r in two) / one["cpu_seconds"]
    res["peak_ratio"] = {r["rank"]: r["peak_bytes"] / one["peak_bytes"] for r in two}
    rows = [f"| 1 | 0 | {one['tiles']} | {one['seconds']:.2f} s | {one['cpu_seconds']:.2f} s | "
            f"{one['peak_bytes'] / 1e9:.3f} GB | | | |"]
    for r in two:
        rows.append(f"| 2 | {r['rank']} | {r['tiles']} | {r['seconds']:.2f} s | {r['cpu_seconds']:.2f} s | "
                    f"{r['peak_bytes'] / 1e9:.3f} GB | {r['seconds'] / one['seconds']:.2f} | "
                    f"{r['cpu_seconds'] / one['cpu_seconds']:.2f} | {r['peak_bytes'] / one['peak_bytes']:.2f} |")
    table = ("| ranks | rank | tiles | wall | CPU time | peak memory above the start | wall / 1 rank | CPU / 1 rank "
             "| peak / 1 rank |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    text = (table + f"\n\nWan2.1 VAE (127M parameters, random weights), fp32, {res['video']} frames x px, "
            f"{PAR_TILE} px tiles at stride {PAR_STRIDE} ({res['runs'][1]['tiles']} tiles), gloo, 1 thread per rank; "
            f"rank 0's video bit-equal to the 1-rank decode: {res['bit_equal']}; machine load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times need idle cores; CPU time is the work)")
    publish(res, text, PAR_OUT, PAR_OUT, "vae_decode_parallel",
            "## Wan2.1 VAE decode on 1 vs 2 ranks (`python -m benchmarks.vae_decode --parallel`)")
    return 0


BANDS_OUT = os.path.join(ROOT, "benchmarks", "results", "vae_decode_bands.json")
BANDS_VIDEO = (5, 128, 256)  # frames, height, width: latents 2 x 16 x 32, whole decode (vae.tiling=false)


def _band_rank(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank: world 1 runs the single-rank road (``vae.decode``, whole); world 2 the row bands with halo
    exchange (``BandDecode`` over gloo)."""
    import json

    import torch.distributed as dist

    from magcache_dist.parallel.vae_bands import BandDecode

    with _gloo_vae(rank, world, port, BANDS_VIDEO, 900) as (vae, z, comm):
        warm = z[:, :, :1, :4, :8]  # first, a small decode: code pages and kernels loaded before the measurement
        with torch.no_grad():
            vae.decode(warm) if world == 1 else BandDecode(vae, warm).run(comm)
        comm.bytes_sent = comm.calls = 0
        dist.barrier()
        cpu = time.process_time()
        if world == 1:
            with torch.no_grad():
                video, s, peak = timed(lambda: vae.decode(z).sample)
        else:
            video, s, peak = timed(lambda: BandDecode(vae, z).run(comm))
        stats = comm.gather_objects(dict(rank=rank, seconds=s, cpu_seconds=time.process_time() - cpu, peak_bytes=peak,
                                         bytes_sent=comm.bytes_sent, messages=comm.calls))
        if rank == 0:
            torch.save(video, os.path.join(tmp, f"video{world}.pt"))
            with open(os.path.join(tmp, f"stats{world}.json"), "w") as fh:
                json.dump(dict(ranks=stats), fh)


BANDS_WORLDS = (1, 2, 4)


def bands_main() -> int:
    # glibc's sliding mmap threshold keeps freed activations in the heap once a large block was freed, so a process's
    # resident high-water mark depends on its allocation order (2 equal ranks measured 0.71 and 1.03 of one rank);
    # a fixed threshold (the ranks are spawned with it) returns every large tensor to the system when freed, so the
    # high-water mark follows the live tensors
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    res = dict(video="x".join(map(str, BANDS_VIDEO)), max_abs_diff={},
               malloc_mmap_threshold=os.environ["MALLOC_MMAP_THRESHOLD_"])
    with tempfile.TemporaryDirectory() as tmp:
        res["runs"] = _spawn_worlds(_band_rank, BANDS_WORLDS, tmp)
        ref = torch.load(os.path.join(tmp, "video1.pt"))
        for world in BANDS_WORLDS[1:]:
            res["max_abs_diff"][world] = float((torch.load(os.path.join(tmp, f"video{world}.pt")) - ref).abs().max())
    one = res["runs"][1]["ranks"][0]
    f, _, w = BANDS_VIDEO
    for world in BANDS_WORLDS[1:]:
        many = res["runs"][world]["ranks"]
        res["runs"][world].update(
            time_ratio=max(r["seconds"] for r in many) / one["seconds"],
            cpu_time_ratio=max(r["cpu_seconds"] for r in many) / one["cpu_seconds"],
            peak_ratio={r["rank"]: r["peak_bytes"] / one["peak_bytes"] for r in many},
            max_peak_ratio=max(r["peak_bytes"] for r in many) / one["peak_bytes"])
    # the planner's halo figure (decode.BAND_HALO_BYTES): the bytes rank 0 of 2 sends its one neighbour, less the
    # middle block's keys/values (2 x 384 channels of its band's latent rows per latent frame), per output column and
    # frame
    lat_f, lat_h, lat_w = (f - 1) // 4 + 1, BANDS_VIDEO[1] // 8, w // 8
    kv = lat_f * (lat_h // 2) * lat_w * 2 * 384 * 4
    res["halo_bytes_per_column_frame"] = (res["runs"][2]["ranks"][0]["bytes_sent"] - kv) / (f * w)
    rows = [f"| 1 (vae.decode) | 0 | {one['seconds']:.2f} s | {one['cpu_seconds']:.2f} s | "
            f"{one['peak_bytes'] / 1e9:.3f} GB | | | | |"]
    for world in BANDS_WORLDS[1:]:
        for r in res["runs"][world]["ranks"]:
            rows.append(f"| {world} (bands) | {r['rank']} | {r['seconds']:.2f} s | {r['cpu_seconds']:.2f} s | "
                        f"{r['peak_bytes'] / 1e9:.3f} GB | {r['seconds'] / one['seconds']:.2f} | "
                        f"{r['cpu_seconds'] / one['cpu_seconds']:.2f} | {r['peak_bytes'] / one['peak_bytes']:.2f} | "
                        f"{r['bytes_sent'] / 1e6:.1f} MB in {r['messages']} |")
    table = ("| ranks | rank | wall | CPU time | peak memory above the start | wall / 1 rank | CPU / 1 rank "
             "| peak / 1 rank | sent |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    diffs = ", ".join(f"{d:.2e} on {n}" for n, d in res["max_abs_diff"].items())
    text = (table + f"\n\nWan2.1 VAE (127M parameters, random weights), fp32, whole decode of {res['video']} frames x "
            f"px (latents {lat_f} x {lat_h} x {lat_w}), gloo, 1 thread per rank, MALLOC_MMAP_THRESHOLD_="
            f"{res['malloc_mmap_threshold']}; rank 0's video against the 1-rank "
            f"decode: max abs difference {diffs} ranks; halo {res['halo_bytes_per_column_frame'] / 1e3:.1f}"
            f" kB per neighbour, output column and frame; machine load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores (wall times need idle cores; CPU time is the work)")
    publish(res, text, BANDS_OUT, BANDS_OUT, "vae_decode_bands",
            "## Wan2.1 VAE whole decode in row bands on 1, 2 and 4 ranks (`python -m benchmarks.vae_decode --bands`)")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(bands_main() if "--bands" in sys.argv[1:] else parallel_main())
