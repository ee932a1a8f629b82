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
SIZES = {"small": 0.13, "big": 0.19}  # radius as a fraction of the shorter side
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
    speed: float  # 0..1: fraction of the free path travelled (moves) / bounce height / resize range

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


TRAIL = ((2 / 15, 0.45), (4 / 15, 0.25), (6 / 15, 0.12))  # (how long ago in clip time, opacity) of each ghost


def trajectory(spec: VideoSpec, t: torch.Tensor, height: int = 64, width: int = 64):
    """Centre x, centre y and radius (pixels) at clip times t (0 = first frame, 1 = last; any t, also < 0)."""
    side = min(height, width)
    r0 = SIZES[spec.size] * side
    cx, cy, r = torch.zeros_like(t), torch.zeros_like(t), torch.full_like(t, r0)
    margin_x, margin_y = r0 + 2.0, r0 + 2.0
    if spec.motion in ("left", "right", "up", "down"):
        horizontal = spec.motion in ("left", "right")
        length, cross, m_along, m_cross = (width, height, margin_x, margin_y) if horizontal else (
            height, width, margin_y, margin_x)
        span = (length - 2 * m_along) * spec.speed
        start = m_along + (length - 2 * m_along - span) * spec.offset
        path = start + span * (t if spec.motion in ("right", "down") else 1.0 - t)
        fixed = torch.full_like(t, m_cross + (cross - 2 * m_cross) * spec.pos)
        cx, cy = (path, fixed) if horizontal else (fixed, path)
    elif spec.motion == "bounces":  # two hops on the floor
        floor = height - margin_y
        hop = (height - 2 * margin_y) * spec.speed
        cy = floor - hop * torch.sin(math.pi * (2.0 * t + spec.offset * 0.5)).abs()
        cx = cx + margin_x + (width - 2 * margin_x) * spec.pos
    else:  # grows / shrinks around a point near the centre
        small, big = 0.06 * side, (0.06 + 0.20 * spec.speed) * side
        r = (small + (big - small) * (t if spec.motion == "grows" else 1.0 - t)).clamp(min=0.0)
        m = big + 2.0
        cx = cx + m + (width - 2 * m) * spec.pos
        cy = cy + m + (height - 2 * m) * spec.offset
    return cx, cy, r


def render(spec: VideoSpec, frames: int = 16, height: int = 64, width: int = 64, trail: bool = True) -> torch.Tensor:
    """[3, F, H, W] float32 in [-1, 1]. With ``trail``, fading ghosts of where the shape was (``TRAIL``) are drawn
    behind it, as a long exposure would: which way a shape moves is then visible in every single frame."""
    t = torch.linspace(0.0, 1.0, frames)  # [F]
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5  # [1, H, 1]
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5  # [1, 1, W]
    alpha = torch.zeros(frames, height, width)
    for ago, opacity in ((0.0, 1.0), *(TRAIL if trail else ())):
        cx, cy, r = trajectory(spec, t - ago, height, width)
        d = _sdf(spec.shape, xs - cx[:, None, None], ys - cy[:, None, None], r[:, None, None])  # [F, H, W]
        alpha = torch.maximum(alpha, opacity * (0.5 - d).clamp(0.0, 1.0))  # one-pixel anti-aliased edge
    fg = torch.tensor(COLOURS[spec.colour])[:, None, None, None]
    bg = torch.tensor(BACKGROUND)[:, None, None, None]
    video = bg + (fg - bg) * alpha[None]  # [3, F, H, W] in [0, 1]
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
        rng.uniform(0.75, 1.0)  # (drawn and unused: keeps every later draw of the stream where it was)
        # What the caption says fixes the path: a shape that moves crosses the whole frame, edge to edge (only the
        # row or column it travels along is random); a bounce starts on the floor; a resize is about a random
        # centre. Averaged over the random part, each caption's clips still show its motion, which is what a
        # sampler starting from noise sees first. The model knows where the edges and the first frame are from
        # the coordinate channels it is given (models/wan_coords.py). (Random starts on shorter paths average
        # out to a static haze, and a model trained on them drew static blobs: docs/tiny_model.md.)
        speed, offset = (0.6, 0.0) if motion == "bounces" else (1.0, offset)
        return VideoSpec(colour, shape, motion, size, pos, offset, speed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec(index)
        return render(spec, self.frames, self.height, self.width), spec.caption()

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, list[str]]:
        """Samples start .. start+size-1 stacked: ([B, 3, F, H, W], captions)."""
        items = [self[start + i] for i in range(size)]
        return torch.stack([v for v, _ in items]), [c for _, c in items]


def main(argv=None) -> int:
    """python -m tools.tinydata.procedural --sheet docs/data_samples.png: a contact sheet of data clips."""
    import argparse

    from magcache_dist.io.video import contact_sheet, to_frames, write_png

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--sheet", required=True, help="PNG to write: one clip per row, every other frame")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data, rows, seen = ProceduralVideos(args.seed), [], set()
    for i in range(1000):  # the first clip of each motion
        spec = data.spec(i)
        if spec.motion not in seen:
            seen.add(spec.motion)
            rows.append((MOTIONS.index(spec.motion), to_frames(render(spec))[::2]))
            print(f"row {MOTIONS.index(spec.motion)}: {spec.caption()}")
        if len(seen) == len(MOTIONS):
            break
    write_png(args.sheet, contact_sheet(np.concatenate([r for _, r in sorted(rows, key=lambda x: x[0])]), cols=8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
