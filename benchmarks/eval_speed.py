"""Time of the eval's PSNR and SSIM per 720x1280 frame on this CPU: the float64 2-D convolution the eval used
before (the release's definition written directly) against the separable, blocked float64 path it uses now, with
the largest difference between their numbers, and the eval's whole path for a pair of mp4 files (ffmpeg decode
included); optionally LPIPS. CPU seconds (this process, one torch thread unless --threads, and its ffmpeg children)
are reported beside wall seconds, since the wall clock of a shared machine varies with its load.

    python -m benchmarks.eval_speed [--frames 2] [--threads 1] [--lpips-backbone PATH] [--device cuda]

Prints a table; writes benchmarks/results/eval_speed.json (and this table into benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch

from benchmarks._common import ROOT, publish
from magcache_dist.eval.metrics import frame_psnr, frame_ssim, psnr_from_mse, ssim_map

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "eval_speed.json")
GOAL_S = 0.5  # PSNR + SSIM of one 720x1280 frame (issue 27)


def frames_720p(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, 720, 1280]: smooth gradients with texture, and a candidate with small errors."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(720), torch.arange(1280), indexing="ij")
    base = torch.stack([(xx // 5 + yy // 3) % 256, (yy // 3) % 256, (xx // 4) % 256]).float()
    x = torch.stack([base + 3 * t + torch.randint(-15, 16, (3, 720, 1280), generator=g) for t in range(n)])
    x = x.clamp(0, 255).to(torch.uint8)
    y = (x.int() + torch.randint(-5, 6, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return x, y


def before(x8: torch.Tensor, y8: torch.Tensor) -> tuple[list[float], list[float]]:
    """The eval before: frames to float [0, 1], float64 MSE, SSIM by the 2-D 11x11 float64 convolution."""
    x, y = x8.float() / 255, y8.float() / 255
    p = [psnr_from_mse(float(m)) for m in (x.double() - y.double()).pow(2).flatten(1).mean(1)]
    f, c, h, w = x.shape
    s = ssim_map(x.double().reshape(-1, 1, h, w), y.double().reshape(-1, 1, h, w))
    return p, s.reshape(f, -1).mean(1).tolist()


def after(x8: torch.Tensor, y8: torch.Tensor, device: str) -> tuple[list[float], list[float]]:
    x, y = x8.to(device), y8.to(device)
    return frame_psnr(x, y), frame_ssim(x, y)


def end_to_end(x8: torch.Tensor, y8: torch.Tensor) -> dict:
    """The eval's own path for one pair of mp4 files (libx264 as the jobs write them): decode both with ffmpeg,
    then PSNR and SSIM, as ``Scorer.task`` runs it (no score cache)."""
    import tempfile

    from magcache_dist.eval.scoring import Pair, Scorer, Settings, Task
    from magcache_dist.io.video import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        ref, cand = os.path.join(tmp, "ref.mp4"), os.path.join(tmp, "cand.mp4")
        write_mp4(ref, x8.permute(0, 2, 3, 1).numpy(), 16)
        write_mp4(cand, y8.permute(0, 2, 3, 1).numpy(), 16)
        scorer = Scorer(Settings(metrics=("psnr", "ssim"), device="cpu", batch_frames=16))
        (row,), w, c = timed(scorer.task, Task(ref, (Pair(0, "v", cand),)))
    n = x8.shape[0]
    assert row[2]["error"] is None, row[2]["error"]
    return dict(path="now, end to end: decode 2 mp4 + PSNR + SSIM (cpu)", wall_s=w / n, cpu_s=c / n)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (ffmpeg, which decodes the mp4 files)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def timed(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w, c = time.perf_counter(), _cpu()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - w, _cpu() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2, help="720x1280 frames timed (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="device of the new path (the old one ran on the CPU)")
    ap.add_argument("--lpips-backbone", help="also time LPIPS with this AlexNet file")
    ap.add_argument("--skip-before", action="store_true", help="do not time the old path (slow: ~18 s a frame)")
    ap.add_argument("--skip-end-to-end", action="store_true", help="do not time decode + PSNR + SSIM of an mp4 pair")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x8, y8 = frames_720p(args.frames)
    n = args.frames
    after(x8[:1, :, :64], y8[:1, :, :64], args.device)  # warm-up
    (p1, s1), w1, c1 = timed(after, x8, y8, args.device)
    _, wp, cp = timed(lambda: frame_psnr(x8.to(args.device), y8.to(args.device)))
    rows = [dict(path=f"now: separable blocked float64 ({args.device})", wall_s=w1 / n, cpu_s=c1 / n,
                 psnr_wall_s=wp / n)]
    diff = None
    if not args.skip_before:
        (p0, s0), w0, c0 = timed(before, x8, y8)
        rows.insert(0, dict(path="before: 2-D conv float64 (cpu)", wall_s=w0 / n, cpu_s=c0 / n))
        diff = dict(psnr=max(abs(a - b) for a, b in zip(p0, p1)), ssim=max(abs(a - b) for a, b in zip(s0, s1)))
    if not args.skip_end_to_end:
        rows.append(end_to_end(x8, y8))
    if args.lpips_backbone:
        from magcache_dist.eval.perceptual import Lpips

        lp = Lpips(args.lpips_backbone, args.device)
        lp.frames(x8[:1], y8[:1])
        _, wl, cl = timed(lp.frames, x8, y8)
        rows.append(dict(path=f"LPIPS alone ({args.device})", wall_s=wl / n, cpu_s=cl / n))
    res = dict(frames=n, size="720x1280", threads=args.threads, device=args.device, goal_s=GOAL_S,
               cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), rows=rows,
               max_abs_difference=diff, psnr=p1, ssim=s1,
               load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)
    lines = [f"PSNR + SSIM of one 720x1280 frame (mean over {n} frames), {args.threads} torch thread(s), "
             f"{os.cpu_count()} cores; load average {res['load_average'][0]:.1f} at the end (a shared machine: CPU "
             f"seconds, of this process and its ffmpeg children, are the steadier figure). Goal: <= {GOAL_S} s.", "",
             "| path | wall s / frame | CPU s / frame |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} |" for r in rows]
    if diff:
        speed = rows[0]["cpu_s"] / rows[1]["cpu_s"]
        lines += ["", f"Speed-up (CPU s): {speed:.0f}x. Largest difference between the two paths' per-frame values: "
                      f"PSNR {diff['psnr']:.1e} dB, SSIM {diff['ssim']:.1e}."]
    publish(res, "\n".join(lines), args.out, DEFAULT_OUT, "eval-speed",
            "## Eval speed: PSNR and SSIM per 720x1280 frame (`python -m benchmarks.eval_speed`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
