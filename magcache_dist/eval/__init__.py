"""Evaluation of cached generations against the original model's, as the MagCache release judges them: PSNR,
SSIM and LPIPS of each candidate video against its reference video, with the calls and wall time each took.

    python -m magcache_dist.eval --reference DIR --candidate DIR [--candidate DIR --label NAME ...] [--out FILE]
    python -m magcache_dist.eval.vbench prompts|export ...

metrics: PSNR / SSIM (the release's per-frame definitions, fast float64; and the benchmarks' pooled PSNR);
perceptual: LPIPS through the ``lpips`` package (AlexNet weights local, or fetched into torch hub's cache);
folders: the layouts read, their JSON checked, the matching by identity; scoring: device, batches, worker
processes or torchrun ranks, and the per-pair score cache; cli: the command; vbench: VBench's prompt list as a
prompts file and a job's videos in VBench's layout. Importing this package imports neither lpips nor
torchvision (LPIPS loads them when it is built).
"""
from magcache_dist.eval.metrics import PSNR_CAP, frame_psnr, frame_ssim, psnr, ssim

__all__ = ["PSNR_CAP", "frame_psnr", "frame_ssim", "psnr", "ssim"]
