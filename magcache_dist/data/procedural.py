"""A procedural video data set: one coloured shape on a plain dark background that moves, bounces or resizes.

Every sample is a pure function of (seed, index): ``ProceduralVideos(seed)[i]`` -> (video [3, F, H, W] in [-1, 1],
caption). Captions use only words of ``models.tiny_text.VOCAB``, e.g. "a small red circle moves left",
"a blue square grows", "a big yellow triangle bounces".

Shapes are drawn with a signed distance and a one-pixel anti-aliased edge, so any resolution works; the default
is the demo's 16 x 64 x 64. Shape legend: C channels (3), F frames, H/W pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.92, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.98, 0.90, 0.10),
    "white": (0.97, 0.97, 0.97),
    "cyan": (0.10, 0.90, 0.92),
    "magenta": (0.92, 0.15, 0.85),
    "orange": (1.00, 0.55, 0.05),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "bounces", "grows", "shrinks")
SIZES = {"small": 0.10, "big": 0.17}  # radius as a fraction of the shorter side
BACKGROUND = (0.08, 0.08, 0.10)  # near-black, fixed: the captions never describe it


@dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one clip (drawn from the seed; the caption is derived from it)."""
    colour: str
    shape: str
    motion: str
    size: str  # "small" | "big" (moving/bouncing shapes); grows/shrinks ignore it
    pos: float  # 0..1: the coordinate that does not move (row for left/right, column for up/down/bounces)
    offset: float  # 0..1: start/end margin jitter, or the resize centre
    speed: float  # 0.75..1: fraction of the path travelled (moves) / bounce height / resize range

    def caption(self) -> str:
        if self.motion in ("left", "right", "up", "down"):
            return f"a {self.size} {self.colour} {self.shape} moves {self.motion}"
        if self.motion == "bounces":
            return f"a {self.size} {self.colour} {self.shape} bounces"
        return f"a {self.colour} {self.shape} {self.motion}"


def caption_words() -> set[str]:
    """Every word any caption can contain."""
    return {"a", "moves", *COLOURS, *SHAPES, *MOTIONS, *SIZES}


def _sdf(shape: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, < 0 inside) of a shape of 'radius' r centred at the origin; x, y, r broadcast."""
    if shape == "circle":
        return torch.sqrt(x * x + y * y) - r
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) - 0.85 * r
    # upright equilateral-ish triangle: three half-planes, apex up (y grows downwards)
    n = math.sqrt(5.0)
    left = (-2.0 * x - y) / n
    right = (2.0 * x - y) / n
    return torch.maximum(torch.maximum(left, right), y) - 0.55 * r


def render(spec: VideoSpec, frames: int = 16, height: int = 64, width: int = 64) -> torch.Tensor:
    """[3, F, H, W] float32 in [-1, 1]."""
    side = min(height, width)
    t = torch.linspace(0.0, 1.0, frames)  # [F]
    r0 = SIZES[spec.size] * side
    cx = torch.full((frames,), 0.0)
    cy = torch.full((frames,), 0.0)
    r = torch.full((frames,), r0)
    margin_x, margin_y = r0 + 2.0, r0 + 2.0
    if spec.motion in ("left", "right"):
        span = (width - 2 * margin_x) * spec.speed
        start = margin_x + (width - 2 * margin_x - span) * spec.offset
        path = start + span * t
        cx = path.flip(0) if spec.motion == "left" else path
        cy = cy + margin_y + (height - 2 * margin_y) * spec.pos
    elif spec.motion in ("up", "down"):
        span = (height - 2 * margin_y) * spec.speed
        start = margin_y + (height - 2 * margin_y - span) * spec.offset
        path = start + span * t
        cy = path.flip(0) if spec.motion == "up" else path
        cx = cx + margin_x + (width - 2 * margin_x) * spec.pos
    elif spec.motion == "bounces":  # two hops on the floor
        floor = height - margin_y
        hop = (height - 2 * margin_y) * spec.speed
        phase = spec.offset * 0.5
        cy = floor - hop * torch.sin(math.pi * (2.0 * t + phase)).abs()
        cx = cx + margin_x + (width - 2 * margin_x) * spec.pos
    else:  # grows / shrinks around a point near the centre
        small, big = 0.06 * side, (0.06 + 0.20 * spec.speed) * side
        path = small + (big - small) * t
        r = path if spec.motion == "grows" else path.flip(0)
        m = big + 2.0
        cx = cx + m + (width - 2 * m) * spec.pos
        cy = cy + m + (height - 2 * m) * spec.offset
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5  # [1, H, 1]
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5  # [1, 1, W]
    d = _sdf(spec.shape, xs - cx[:, None, None], ys - cy[:, None, None], r[:, None, None])  # [F, H, W]
    alpha = (0.5 - d).clamp(0.0, 1.0)[None]  # [1, F, H, W], one-pixel anti-aliased edge
    fg = torch.tensor(COLOURS[spec.colour])[:, None, None, None]
    bg = torch.tensor(BACKGROUND)[:, None, None, None]
    video = bg + (fg - bg) * alpha  # [3, F, H, W] in [0, 1]
    return video * 2.0 - 1.0


class ProceduralVideos:
    """Deterministic, index-addressable, unbounded: sample i depends only on (seed, i)."""

    def __init__(self, seed: int = 0, frames: int = 16, height: int = 64, width: int = 64):
        self.seed, self.frames, self.height, self.width = seed, frames, height, width

    def spec(self, index: int) -> VideoSpec:
        rng = np.random.default_rng([self.seed, index])
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        motion = MOTIONS[rng.integers(len(MOTIONS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        pos, offset = float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 1.0))
        speed = float(rng.uniform(0.75, 1.0))
        return VideoSpec(colour, shape, motion, size, pos, offset, speed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec(index)
        return render(spec, self.frames, self.height, self.width), spec.caption()

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, list[str]]:
        """Samples start .. start+size-1 stacked: ([B, 3, F, H, W], captions)."""
        items = [self[start + i] for i in range(size)]
        return torch.stack([v for v, _ in items]), [c for _, c in items]
