"""PSNR and SSIM of a video against a reference video: the MagCache release's per-frame definitions (what
``python -m magcache_dist.eval`` reports) and the pooled ones the benchmarks have always used.

Legend: F frames, C channels (3), H x W pixels; ``x_FCHW`` are frames in [0, 1].

The release (Zehong-Ma/MagCache, eval/magcache/common_metrics/calculate_psnr.py and calculate_ssim.py) scores
each frame on its own and averages the frames:
- PSNR: MSE over the frame's channels and pixels in [0, 1], 10 log10(1 / MSE), 100 dB when the MSE is below
  1e-10 (i.e. at most 100 dB: ``PSNR_CAP``).
- SSIM: Wang et al. 2004 per channel (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid
  windows only), averaged over the map, the channels, then the frames.
The benchmarks' ``psnr`` pools the MSE over the whole video instead (so it is never above the per-frame mean);
their ``ssim`` averages the same maps as the release, so the two SSIMs agree to rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from magcache_dist.errors import InputError

PSNR_CAP = 100.0  # identical frames (PSNR = inf) count as this, as in the release (MSE < 1e-10 -> 100 dB)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for data range 1, capped at ``PSNR_CAP``."""
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(1.0 / mse))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Benchmarks' PSNR: videos [C, F, H, W] in [-1, 1]; one MSE over all pixels with data range 1 (after mapping
    to [0, 1])."""
    mse = float(((a.double() - b.double()) / 2).pow(2).mean())
    return psnr_from_mse(mse)


def gaussian_window(window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[1, 1, window, window] float64 Gaussian kernel summing to 1."""
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    g = (g / g.sum())
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of planes [N, 1, H, W] float64 in [0, 1] (K1 0.01, K2 0.03): [N, 1, H - window + 1, W - window + 1],
    valid (unpadded) windows only."""
    k = gaussian_window(window, sigma)
    mu_x, mu_y = F.conv2d(x, k), F.conv2d(y, k)
    sxx = F.conv2d(x * x, k) - mu_x ** 2
    syy = F.conv2d(y * y, k) - mu_y ** 2
    sxy = F.conv2d(x * y, k) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Benchmarks' SSIM: mean over frames and channels of videos [C, F, H, W] in [-1, 1], mapped to [0, 1]."""
    x = ((a.double() + 1) / 2).permute(1, 0, 2, 3).reshape(-1, 1, *a.shape[2:])  # [F*C, 1, H, W]
    y = ((b.double() + 1) / 2).permute(1, 0, 2, 3).reshape(-1, 1, *b.shape[2:])
    return float(ssim_map(x, y, window, sigma).mean())


def _check_frames(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> None:
    if x_FCHW.ndim != 4 or x_FCHW.shape != y_FCHW.shape:
        raise InputError(f"frames must be [F, C, H, W] of one shape, got {tuple(x_FCHW.shape)} and "
                         f"{tuple(y_FCHW.shape)}")


def frame_psnr(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> list[float]:
    """The release's PSNR of each frame (frames in [0, 1]); a video's PSNR is their mean."""
    _check_frames(x_FCHW, y_FCHW)
    mse_F = (x_FCHW.double() - y_FCHW.double()).pow(2).flatten(1).mean(1)
    return [psnr_from_mse(float(m)) for m in mse_F]


def frame_ssim(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor, window: int = 11, sigma: float = 1.5,
               chunk: int = 8) -> list[float]:
    """The release's SSIM of each frame (frames in [0, 1]): the mean over channels of each channel's mean SSIM;
    ``chunk`` frames at a time bound the float64 temporaries."""
    _check_frames(x_FCHW, y_FCHW)
    f, c, h, w = x_FCHW.shape
    if min(h, w) < window:
        raise InputError(f"SSIM needs frames of at least {window}x{window} pixels, got {h}x{w}")
    out: list[float] = []
    for i in range(0, f, chunk):
        x = x_FCHW[i:i + chunk].double().reshape(-1, 1, h, w)  # [n*C, 1, H, W]
        y = y_FCHW[i:i + chunk].double().reshape(-1, 1, h, w)
        s = ssim_map(x, y, window, sigma)  # [n*C, 1, H', W']
        out += s.reshape(-1, c * s.shape[-2] * s.shape[-1]).mean(1).tolist()
    return out
