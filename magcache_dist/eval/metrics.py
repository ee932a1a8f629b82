"""PSNR and SSIM of a video against a reference video: the MagCache release's per-frame definitions (what
``python -m magcache_dist.eval`` reports) and the pooled ones the benchmarks have always used.

Legend: F frames, C channels (3), H x W pixels, P planes (frames x channels); ``x_FCHW`` are frames, either uint8
(0..255, divided by 255 in float64 as the release does) or floating point in [0, 1].

The release (Zehong-Ma/MagCache, eval/magcache/common_metrics/calculate_psnr.py and calculate_ssim.py) scores
each frame on its own and averages the frames:
- PSNR: MSE over the frame's channels and pixels in [0, 1], 10 log10(1 / MSE), 100 dB when the MSE is below
  1e-10 (i.e. at most 100 dB: ``PSNR_CAP``).
- SSIM: Wang et al. 2004 per channel (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid
  windows only), averaged over the map, the channels, then the frames.
The benchmarks' ``psnr`` pools the MSE over the whole video instead (so it is never above the per-frame mean);
their ``ssim`` averages the same maps as the release, so the two SSIMs agree to rounding.

Speed (benchmarks/eval_speed.py). ``ssim_map`` is the definition written out: a 2-D 11x11 convolution in float64,
about 18 s of one core per 720x1280 frame. ``frame_ssim`` computes the same numbers (float64 throughout; equal
to ``ssim_map``'s means within 1e-12) with the Gaussian applied as two 1-D passes of shifted multiply-adds over
blocks of rows that stay in cache: 11 + 11 taps instead of 121, no im2col. uint8 frames give PSNR exactly (an
integer sum of squared differences). Both run on whatever device their tensors are on (CUDA included), all
planes at once there; on the CPU one plane and ``CPU_ROWS`` rows at a time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from magcache_dist.errors import InputError

PSNR_CAP = 100.0  # identical frames (PSNR = inf) count as this, as in the release (MSE < 1e-10 -> 100 dB)
K1, K2 = 0.01, 0.03  # SSIM's constants (data range 1): C1 = K1^2, C2 = K2^2
CPU_ROWS = 64  # output rows per block on the CPU: 5 maps x (64 + 10) rows x 1280 x 8 bytes stay in L2/L3


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for data range 1, capped at ``PSNR_CAP``."""
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(1.0 / mse))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Benchmarks' PSNR: videos [C, F, H, W] in [-1, 1]; one MSE over all pixels with data range 1 (after mapping
    to [0, 1])."""
    mse = float(((a.double() - b.double()) / 2).pow(2).mean())
    return psnr_from_mse(mse)


def gaussian_taps(window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[window] float64 1-D Gaussian summing to 1 (cv2.getGaussianKernel's values for these arguments)."""
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    return g / g.sum()


def gaussian_window(window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[1, 1, window, window] float64 Gaussian kernel summing to 1: the outer product of ``gaussian_taps``."""
    g = gaussian_taps(window, sigma)
    return (g[:, None] * g[None, :])[None, None]


def _ssim_formula(mx, my, exx, eyy, exy):
    c1, c2 = K1 ** 2, K2 ** 2
    mxx, myy, mxy = mx * mx, my * my, mx * my
    return ((2 * mxy + c1) * (2 * (exy - mxy) + c2)) / ((mxx + myy + c1) * ((exx - mxx) + (eyy - myy) + c2))


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of planes [N, 1, H, W] float64 in [0, 1] (K1 0.01, K2 0.03): [N, 1, H - window + 1, W - window + 1],
    valid (unpadded) windows only. The definition, written directly (a 2-D convolution); slow on large frames."""
    k = gaussian_window(window, sigma).to(x.device)
    return _ssim_formula(F.conv2d(x, k), F.conv2d(y, k), F.conv2d(x * x, k), F.conv2d(y * y, k), F.conv2d(x * y, k))


def _unit64(t: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1]: uint8 divided by 255 (as the release divides its uint8 frames), floats as they are."""
    return t.double().div_(255.0) if t.dtype == torch.uint8 else t.double()


def ssim_sums(x_PHW: torch.Tensor, y_PHW: torch.Tensor, window: int = 11, sigma: float = 1.5,
              rows: int | None = None) -> torch.Tensor:
    """[P] float64: the sum of each plane's SSIM map (valid windows), planes [P, H, W] (uint8 or in [0, 1]); the
    mean is the sum / ((H - window + 1) (W - window + 1)). Separable and blocked: see the module's note."""
    p, h, w = x_PHW.shape
    hv, wv = h - window + 1, w - window + 1
    taps = gaussian_taps(window, sigma).tolist()
    cpu = x_PHW.device.type == "cpu"
    rows = rows or (CPU_ROWS if cpu else hv)
    planes = 1 if cpu else p
    out = torch.zeros(p, dtype=torch.float64, device=x_PHW.device)
    for p0 in range(0, p, planes):
        for r0 in range(0, hv, rows):
            n = min(rows, hv - r0)
            xs = _unit64(x_PHW[p0:p0 + planes, r0:r0 + n + window - 1])  # [planes, n + window - 1, W]
            ys = _unit64(y_PHW[p0:p0 + planes, r0:r0 + n + window - 1])
            m = torch.stack([xs, ys, xs * xs, ys * ys, xs * ys])  # [5, planes, n + window - 1, W]
            horiz = m[..., 0:wv] * taps[0]
            for i in range(1, window):
                horiz.add_(m[..., i:i + wv], alpha=taps[i])
            vert = horiz[:, :, 0:n] * taps[0]  # [5, planes, n, W']
            for i in range(1, window):
                vert.add_(horiz[:, :, i:i + n], alpha=taps[i])
            out[p0:p0 + planes] += _ssim_formula(*vert).sum((1, 2))
    return out


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Benchmarks' SSIM: mean over frames and channels of videos [C, F, H, W] in [-1, 1], mapped to [0, 1]."""
    h, w = a.shape[2:]
    x = ((a.double() + 1) / 2).transpose(0, 1).reshape(-1, h, w)  # [F*C, H, W]
    y = ((b.double() + 1) / 2).transpose(0, 1).reshape(-1, h, w)
    return float(ssim_sums(x, y, window, sigma).sum()) / (x.shape[0] * (h - window + 1) * (w - window + 1))


def _check_frames(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> None:
    if x_FCHW.ndim != 4 or x_FCHW.shape != y_FCHW.shape or x_FCHW.dtype != y_FCHW.dtype:
        raise InputError(f"frames must be [F, C, H, W] of one shape and dtype, got {tuple(x_FCHW.shape)} "
                         f"{x_FCHW.dtype} and {tuple(y_FCHW.shape)} {y_FCHW.dtype}")


def frame_mse(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> torch.Tensor:
    """[F] float64 MSE of each frame in [0, 1] units; exact for uint8 frames (an integer sum of squares)."""
    _check_frames(x_FCHW, y_FCHW)
    n = x_FCHW[0].numel()
    if x_FCHW.dtype == torch.uint8:
        d = x_FCHW.to(torch.int32) - y_FCHW.to(torch.int32)
        return (d * d).flatten(1).sum(1, dtype=torch.int64).double() / (n * 255.0 ** 2)
    return (x_FCHW.double() - y_FCHW.double()).pow(2).flatten(1).mean(1)


def frame_psnr(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> list[float]:
    """The release's PSNR of each frame; a video's PSNR is their mean."""
    return [psnr_from_mse(float(m)) for m in frame_mse(x_FCHW, y_FCHW).cpu()]


def frame_ssim(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor, window: int = 11, sigma: float = 1.5,
               rows: int | None = None) -> list[float]:
    """The release's SSIM of each frame: the mean over channels of each channel's mean SSIM."""
    _check_frames(x_FCHW, y_FCHW)
    f, c, h, w = x_FCHW.shape
    if min(h, w) < window:
        raise InputError(f"SSIM needs frames of at least {window}x{window} pixels, got {h}x{w}")
    sums = ssim_sums(x_FCHW.reshape(f * c, h, w), y_FCHW.reshape(f * c, h, w), window, sigma, rows)
    return (sums.reshape(f, c).mean(1) / ((h - window + 1) * (w - window + 1))).cpu().tolist()
