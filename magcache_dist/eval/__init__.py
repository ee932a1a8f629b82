"""Evaluation of cached generations against the original model's, as the MagCache release judges them: PSNR,
SSIM and LPIPS of each candidate video against its reference video, with the calls and wall time each took.

    python -m magcache_dist.eval --reference DIR --candidate DIR [--candidate DIR --label NAME ...]

metrics: PSNR / SSIM (the release's per-frame definitions and the benchmarks' pooled PSNR); perceptual: LPIPS
through the ``lpips`` package with locally provided AlexNet weights; folders: the layouts read and the matching
by name; cli: the command. Importing this package imports neither lpips nor torchvision (LPIPS loads them when
it is built).
"""
from magcache_dist.eval.metrics import PSNR_CAP, frame_psnr, frame_ssim, psnr, ssim

__all__ = ["PSNR_CAP", "frame_psnr", "frame_ssim", "psnr", "ssim"]
