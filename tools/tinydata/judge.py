"""Read a caption back from a video of the procedural set: colour, shape, size and motion of its one object.

This is how the project checks that the embedded model's videos match their prompts with numbers, not only by
eye: ``describe(video)`` measures the foreground (pixels far from the fixed background colour) and names what it
sees in the captions' own words; ``judge(video, caption)`` compares that with what the caption asked for. On the
data set itself (``render``) it reads every attribute back correctly (tests/unit/test_tiny_model.py).

Measurements, per frame on the foreground mask (pixels at >= 60% of the video's strongest contrast to the
background, so a trail's fainter ghosts do not count; then a 3x3 majority filter that removes specks):
- colour: mean RGB of the foreground over all frames, nearest entry of ``COLOURS``;
- shape: fill ratio = area / bounding-box area (square ~0.98, circle ~0.79, upright triangle ~0.6), median
  over frames with enough pixels;
- size: the radius the shape's area implies, against the midpoint of the two caption sizes;
- motion: area ratio last/first (grows, shrinks), else vertical path length much longer than the net vertical
  displacement (bounces), else the larger of the net x / y centroid displacements (left, right, up, down).
Shape legend: C channels (3), F frames, H/W pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tools.tinydata.procedural import BACKGROUND, COLOURS, MOTIONS, SHAPES, SIZES, VideoSpec, render

ATTRIBUTES = ("colour", "shape", "size", "motion")
_FG_THRESHOLD = 0.25  # max |rgb - background| (in [0, 1]) below which a pixel is never foreground
_MIN_PIXELS = 12  # a frame with fewer foreground pixels has no measurable object


def _shape_area_factor(shape: str, side: int = 64) -> float:
    """Area / radius^2 of a rendered shape (measured on the renderer, so it matches the data exactly)."""
    v = render(VideoSpec("white", shape, "grows", "small", 0.5, 0.5, 1.0), frames=2, height=side, width=side,
               trail=False)
    r0 = 0.26 * side  # the last frame of 'grows' at speed 1 has radius (0.06 + 0.20) * side
    return float((v[0, -1] > 0).float().sum()) / (r0 * r0)


def parse_caption(caption: str) -> dict:
    """The attributes a caption of the procedural set asks for (size None when it does not say)."""
    words = caption.lower().split()
    want = dict(colour=None, shape=None, size=None, motion=None)
    for w in words:
        if w in COLOURS:
            want["colour"] = w
        elif w in SHAPES:
            want["shape"] = w
        elif w in SIZES:
            want["size"] = w
        elif w in MOTIONS:
            want["motion"] = w
    return want


def foreground(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> boolean mask [F, H, W] of pixels that are not background (specks removed)."""
    rgb = (video.float().clamp(-1, 1) + 1) / 2
    bg = torch.tensor(BACKGROUND)[:, None, None, None]
    dist = (rgb - bg).abs().amax(0)  # [F, H, W]
    # the shape itself, not its fading trail: at least 60% of the video's (robust) strongest contrast
    level = max(_FG_THRESHOLD, 0.6 * float(torch.quantile(dist.flatten()[::7], 0.995)))
    raw = (dist > level).float()
    return F.avg_pool2d(raw[:, None], 3, stride=1, padding=1)[:, 0] > 0.5


def describe(video: torch.Tensor) -> dict:
    """What a video shows, in caption words, plus the raw measurements behind them."""
    c, f, h, w = video.shape
    mask = foreground(video)
    rgb = (video.float().clamp(-1, 1) + 1) / 2
    area = mask.flatten(1).sum(1).float()  # [F]
    seen = area >= _MIN_PIXELS
    out = dict(colour=None, shape=None, size=None, motion=None, frames_with_object=int(seen.sum()))
    if int(seen.sum()) < max(2, f // 2):
        return out
    m = mask.float()
    mean_rgb = (rgb * m[None]).flatten(1).sum(1) / m.sum()
    out["rgb"] = [round(float(x), 3) for x in mean_rgb]
    out["colour"] = min(COLOURS, key=lambda k: float(((torch.tensor(COLOURS[k]) - mean_rgb) ** 2).sum()))

    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    cx = (m * xs).flatten(1).sum(1) / area.clamp(min=1)
    cy = (m * ys).flatten(1).sum(1) / area.clamp(min=1)
    fills = []
    for i in torch.nonzero(seen).flatten().tolist():
        rows, cols = torch.nonzero(mask[i], as_tuple=True)
        box = float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
        fills.append(float(area[i]) / box)
    fill = float(torch.tensor(fills).median())
    out["fill"] = round(fill, 3)
    out["shape"] = "square" if fill > 0.9 else ("circle" if fill > 0.7 else "triangle")

    idx = torch.nonzero(seen).flatten()
    first, last = idx[: max(1, len(idx) // 8)], idx[-max(1, len(idx) // 8):]
    a0, a1 = float(area[first].mean()), float(area[last].mean())
    dx = float(cx[last].mean() - cx[first].mean())
    dy = float(cy[last].mean() - cy[first].mean())
    path_y = float((cy[idx][1:] - cy[idx][:-1]).abs().sum())
    out.update(area_ratio=round(a1 / a0, 3), dx=round(dx, 2), dy=round(dy, 2), path_y=round(path_y, 2))
    side = min(h, w)
    if a1 / a0 > 2.0:
        out["motion"] = "grows"
    elif a0 / a1 > 2.0:
        out["motion"] = "shrinks"
    elif path_y > 0.35 * side and path_y > 2.5 * abs(dy):
        out["motion"] = "bounces"
    elif max(abs(dx), abs(dy)) > 0.15 * side:
        out["motion"] = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    else:
        out["motion"] = "still"
    if out["motion"] not in ("grows", "shrinks"):
        r = math.sqrt(float(area[idx].median()) / _AREA_FACTOR[out["shape"]])
        r_mid = 0.5 * (SIZES["small"] + SIZES["big"]) * side
        out["radius"] = round(r, 2)
        out["size"] = "big" if r > r_mid else "small"
    return out


def judge(video: torch.Tensor, caption: str) -> dict:
    """{attribute: True/False} for every attribute the caption names, plus 'seen' (what describe() read)."""
    want, seen = parse_caption(caption), describe(video)
    verdict = {k: seen[k] == v for k, v in want.items() if v is not None}
    return dict(verdict=verdict, want=want, seen=seen, all=all(verdict.values()))


_AREA_FACTOR = {s: _shape_area_factor(s) for s in SHAPES}
