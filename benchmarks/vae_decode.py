"""The Wan2.1 VAE at its published size (diffusers' AutoencoderKLWan, 127M parameters, random weights): load time and
decode time / peak memory on this machine (issue 19, item 4). Single process, the machine's default threads.

- load, both checkpoint layouts, as the family loads them (models/wan_components.load_wan_vae: built on the meta device
  and filled) against what it did before (a random initialisation first, then the weights copied over);
- decode, fp32, whole and in spatial tiles (vae.tiling, 128 px tiles, stride 96), at 5 x 128 x 128 and 9 x 256 x 256
  (latents 2 x 16 x 16 and 3 x 32 x 32): seconds and the peak resident memory above the model's;
- bf16 against fp32 on one latent frame (8 x 8): the time ratio (this CPU has no bf16 convolution kernels).

    .venv/bin/python -m benchmarks.vae_decode          # ~3 min on 2 cores

Prints a table and writes benchmarks/results/vae_decode.json (and its block in benchmarks/README.md).

    .venv/bin/python -m benchmarks.vae_decode --parallel    # ~1 min on 2 cores

The decode dealt over ranks (issue 26, item 1: magcache_dist/parallel/vae.py): the same VAE decodes the same latents
in tiles on 1 and on 2 gloo processes (one thread each), each rank's wall time and peak resident memory above its
start (the VAE's weights already loaded), the ratios 2 ranks / 1 rank from the one run, and whether rank 0's video
is bit-equal to the 1-rank one. Writes benchmarks/results/vae_decode_parallel.json (and its README block).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from benchmarks._common import ROOT, publish

OUT = os.path.join(ROOT, "benchmarks", "results", "vae_decode.json")
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


def main() -> int:
    from diffusers import AutoencoderKLWan

    from models.loading import read_tensors
    from models.wan_components import WAN_VAE_RULES, _strict, load_wan_vae
    from models.layouts import official_to_diffusers
    from tests.support.wan_tiny import vae_diffusers_to_official_key

    rows, res = [], dict(load={}, decode=[], bf16_over_fp32=None, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**WAN_VAE).eval()
        params = sum(p.numel() for p in vae.parameters())
        vae.save_pretrained(os.path.join(tmp, "vae"))
        official = os.path.join(tmp, "Wan2.1_VAE.pth")
        torch.save({vae_diffusers_to_official_key(k): v.contiguous() for k, v in vae.state_dict().items()}, official)
        del vae

        def old_official():
            v = AutoencoderKLWan(**WAN_VAE)
            _strict(v, official_to_diffusers(read_tensors(official), WAN_VAE_RULES, 0, official), official)
            return v

        loads = {"official, before (random init + copy)": old_official,
                 "official, now (meta device + copy)": lambda: load_wan_vae(official, "official"),
                 "diffusers, before (low_cpu_mem_usage=False)": lambda: AutoencoderKLWan.from_pretrained(
                     os.path.join(tmp, "vae"), low_cpu_mem_usage=False),
                 "diffusers, now (meta device, accelerate)": lambda: load_wan_vae(os.path.join(tmp, "vae"),
                                                                                  "diffusers")}
        for name, fn in loads.items():
            _, s, peak = timed(fn)
            res["load"][name] = dict(seconds=s, peak_bytes=peak)
            rows.append(f"| load | {name} | {s:.2f} s | {peak / 1e9:.2f} GB |")
        vae = load_wan_vae(official, "official")
        with torch.no_grad():
            for (f, h, w) in ((5, 128, 128), (9, 256, 256)):
                z = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8)
                for tiled in (False, True):
                    if tiled:
                        vae.enable_tiling(tile_sample_min_height=128, tile_sample_min_width=128,
                                          tile_sample_stride_height=96, tile_sample_stride_width=96)
                    else:
                        vae.disable_tiling()
                    out, s, peak = timed(lambda: vae.decode(z).sample)
                    res["decode"].append(dict(video=f"{f}x{h}x{w}", tiled=tiled, seconds=s, peak_bytes=peak,
                                              shape=list(out.shape)))
                    rows.append(f"| decode fp32 | {f}x{h}x{w} {'tiled' if tiled else 'whole'} | {s:.2f} s | "
                                f"{peak / 1e9:.2f} GB |")
            vae.disable_tiling()
            z = torch.randn(1, 16, 1, 8, 8)
            _, t32, _ = timed(lambda: vae.decode(z).sample)
            vae16 = vae.to(torch.bfloat16)
            _, t16, _ = timed(lambda: vae16.decode(z.to(torch.bfloat16)).sample)
            res["bf16_over_fp32"] = t16 / t32
            rows.append(f"| decode bf16 / fp32 | 1 latent frame 8x8 | {t16:.2f} s / {t32:.2f} s = {t16 / t32:.1f}x | |")
    res["params"] = params
    table = "| what | case | time | peak memory above the start |\n|---|---|---|---|\n" + "\n".join(rows)
    publish(res, table + f"\n\nWan2.1 VAE, {params / 1e6:.0f}M parameters, random weights; {res['threads']} threads",
            OUT, OUT, "vae_decode", "## Wan2.1 VAE at real size: load and decode (`python -m benchmarks.vae_decode`)")
    return 0


PAR_OUT = os.path.join(ROOT, "benchmarks", "results", "vae_decode_parallel.json")
PAR_VIDEO = (5, 128, 128)  # frames, height, width: latents 2 x 16 x 16
PAR_TILE, PAR_STRIDE = 64, 48  # pixels: 3 x 3 tiles


def _par_rank(rank: int, world: int, port: int, tmp: str) -> None:
    import datetime
    import json

    import torch.distributed as dist
    from diffusers import AutoencoderKLWan

    from magcache_dist.parallel.comm import DistComm
    from magcache_dist.parallel.vae import WanTiles, decode_split

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    try:
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**WAN_VAE).eval()  # the same random weights on every rank
        vae.enable_tiling(tile_sample_min_height=PAR_TILE, tile_sample_min_width=PAR_TILE,
                          tile_sample_stride_height=PAR_STRIDE, tile_sample_stride_width=PAR_STRIDE)
        f, h, w = PAR_VIDEO
        z = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
        comm = DistComm(dist.group.WORLD, list(range(world)))
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
    finally:
        dist.destroy_process_group()


def parallel_main() -> int:
    import json
    import socket

    import torch.multiprocessing as mp

    res = dict(video="x".join(map(str, PAR_VIDEO)), tile=PAR_TILE, stride=PAR_STRIDE, runs={})
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            mp.spawn(_par_rank, args=(world, port, tmp), nprocs=world, join=True)
            with open(os.path.join(tmp, f"stats{world}.json")) as fh:
                res["runs"][world] = json.load(fh)
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


if __name__ == "__main__":
    import sys

    raise SystemExit(parallel_main() if "--parallel" in sys.argv[1:] else main())
