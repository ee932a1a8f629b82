"""Sigma grids of the families that sample with Euler on their own schedule (sigma 1 = noise, final sigma 0).

- HunyuanVideo / Open-Sora 1.2 (rectified flow): s_i = 1 - i/N, sigma_i = shift*s / (1 + (shift-1)*s).
  HunyuanVideo's published shift is 7.0 (flow_shift); Open-Sora's is resolution- and length-dependent
  (``opensora_shift``, its "timestep transform").
- FLUX.1-dev: the same s_i with BFL's exponential time shift, mu linear in the image token count
  (0.5 at 256 tokens, 1.15 at 4096): sigma = e^mu / (e^mu + 1/s - 1). FLUX.1-schnell: no shift.
"""
from __future__ import annotations

import math

import numpy as np

from magcache_dist.errors import InputError, InternalError


def linear_grid(num_steps: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1]


def shifted_sigmas(num_steps: int, shift: float) -> tuple[float, ...]:
    s = linear_grid(num_steps)
    return tuple(float(v) for v in shift * s / (1 + (shift - 1) * s))


def flux_mu(image_seq_len: int, base_len: int = 256, max_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + (base_shift - m * base_len)


def flux_sigmas(num_steps: int, image_seq_len: int, shift: bool = True) -> tuple[float, ...]:
    s = linear_grid(num_steps)
    if not shift:
        return tuple(float(v) for v in s)
    e = math.exp(flux_mu(image_seq_len))
    return tuple(float(v) for v in e / (e + (1.0 / s - 1.0)))


def opensora_shift(height: int, width: int, num_frames: int, base_resolution: int = 512 * 512) -> float:
    """Open-Sora 1.2's timestep-transform ratio for a pixel height x width x num_frames video."""
    frames = 1 if num_frames == 1 else num_frames // 17 * 5
    return math.sqrt(height * width / base_resolution) * math.sqrt(frames)


def check_grid(sigmas, num_steps: int, what: str) -> None:
    """A family's sigma grid is usable: ``num_steps`` finite values in (0, 1], not increasing, so that step 0 never
    divides by zero or starts from something other than noise. ``what``: the keys that made the grid, for the
    message (an InputError)."""
    vals = [float(s) for s in sigmas]
    ok = len(vals) == num_steps and all(math.isfinite(s) and 0 < s <= 1 + 1e-6 for s in vals) \
        and all(a >= b for a, b in zip(vals, vals[1:]))
    if not ok:
        shown = ", ".join(f"{s:.4g}" for s in vals[:4]) + (" ..." if len(vals) > 4 else "")
        raise InputError(f"the sampler's sigma grid for {what} is not usable ([{shown}]: it must hold "
                         f"sampler.num_steps={num_steps} finite values in (0, 1], not increasing); change those "
                         f"values")


def wan_timesteps(num_steps: int, shift: float, grid: str = "sampler") -> np.ndarray:
    """Integer timesteps of a Wan flow grid, t = int(1000 * shift*s / (1 + (shift-1)*s)).
    ``sampler``: s = linspace(1 - 1/1000, 0, N+1)[:-1], the grid Wan's and diffusers' UniPC sample on (and
    sampling.schedulers.FlowScheduler); ``magcache``: s = linspace(1, 0.01, N+1)[:-1], the grid on which
    MagCache4Wan2.2's ``get_timesteps`` counts the high-noise steps (in float32). They agree at the published 40
    steps, not at every step count."""
    if grid not in ("sampler", "magcache"):
        raise InternalError(f"grid={grid!r} must be 'sampler' or 'magcache'")
    top, bottom = (1 - 1 / 1000, 0.0) if grid == "sampler" else (1.0, 0.01)
    s = np.linspace(top, bottom, num_steps + 1)[:-1]
    sig = shift * s / (1 + (shift - 1) * s)
    if grid == "magcache":  # get_timesteps casts the sigmas to float32 before scaling them
        sig = sig.astype(np.float32)
    return (sig * 1000).astype(np.int64)


def expert_switch_step(num_steps: int, shift: float, boundary: float, grid: str = "sampler") -> int:
    """Wan2.2 A14B: the number of steps the high-noise expert makes (t >= boundary * 1000), i.e. the index of the
    low-noise expert's first step. The project switches, and places MagCache's switch windows, on the sampler's
    grid (docs/magcache.md "Wan2.2")."""
    return int((wan_timesteps(num_steps, shift, grid) >= boundary * 1000).sum())
