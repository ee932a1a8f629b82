"""What does the embedded model draw first? Its estimate of the average clip for a caption, at high noise.

    python -m benchmarks.conditional_mean                                   # the shipped weights
    python -m benchmarks.conditional_mean --ckpt /tmp/tiny_train/tiny-video-004750.safetensors

At sigma near 1 the best prediction of the clean video is the mean of the data for that caption, and a sampler
starting from noise builds everything else around it: a model whose mean has no motion draws static blobs. For
sigma in {0.999, 0.95, 0.9} and 16 noise draws (the prediction averaged over them), this prints and records:
- "a red circle grows" / "shrinks": the red mass (sum of red minus the mean of green and blue, clamped at 0, over
  the 32x32 latent) in frames 0, 3, 6, 9, 12, 15; the data's grows ~19x in area;
- "a big red circle moves right" / "left": the red colour centroid x per frame (0..31) and the mean absolute
  difference of the two predictions' column profiles (how much the direction word changes the mean at all),
  next to the data's own mean (16 clips, one per row).
Writes benchmarks/results/conditional_mean.json.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from benchmarks._common import probe_job

from tools.tinydata.procedural import VideoSpec, render
from magcache_dist.io.atomic import atomic_write_text
from models.tiny_ae import PixelAutoencoder

SIGMAS = (0.999, 0.95, 0.9)
FRAMES = slice(None, None, 3)  # frames 0, 3, ..., 15


def redness(x0: torch.Tensor) -> torch.Tensor:
    """[N, 3, F, H, W] -> mean over N of red minus mean(green, blue): [F, H, W]."""
    m = x0.mean(0)
    return m[0] - m[1:].mean(0)


def centroid_x(red: torch.Tensor) -> list[float]:
    """Per-frame x centroid (latent pixels) of the part of the column profile above its median."""
    prof = red.mean(1)  # [F, W]
    prof = (prof - prof.median(1, keepdim=True).values).clamp(min=0)
    xs = torch.arange(prof.shape[1], dtype=prof.dtype)
    return [round(float((p * xs).sum() / (p.sum() + 1e-6)), 1) for p in prof[FRAMES]]


def mass(red: torch.Tensor) -> list[int]:
    """Red mass (positive part summed over the frame) in frames 0, 3, ..., 15."""
    return [round(float(m)) for m in red.clamp(min=0).sum((1, 2))[FRAMES]]


def main(argv=None) -> int:
    args, job = probe_job(__doc__, 16, "conditional_mean.json", argv)
    ae = PixelAutoencoder(2)
    rows = np.linspace(0.0, 1.0, args.draws)
    data_right = torch.stack([ae.encode(render(VideoSpec("red", "circle", "right", "big", float(p), 0.0, 1.0))[None])[0]
                              for p in rows])
    res = dict(ckpt=job.cfg.model.ckpt, draws=args.draws, data_right_centroid_x=centroid_x(redness(data_right)),
               sigmas={})
    print(f"data, 'moves right': centroid x {res['data_right_centroid_x']}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in SIGMAS:
            x_t = s * torch.randn(data_right.shape, generator=g)  # sigma * noise: the clean part is ~0
            t = torch.full((args.draws,), s * 1000.0)
            red = {}
            for cap in ("a red circle grows", "a red circle shrinks", "a big red circle moves right",
                        "a big red circle moves left"):
                v = job.model(x_t, t, job.text.encode([cap] * args.draws))
                red[cap] = redness(x_t - s * v)  # x0 = x_t - sigma v
            r, l = red["a big red circle moves right"], red["a big red circle moves left"]
            row = dict(grows_mass=mass(red["a red circle grows"]), shrinks_mass=mass(red["a red circle shrinks"]),
                       right_centroid_x=centroid_x(r), left_centroid_x=centroid_x(l),
                       right_minus_left=round(float((r.mean(1) - l.mean(1)).abs().mean()), 4))
            res["sigmas"][str(s)] = row
            print(f"sigma {s}: grows mass {row['grows_mass']}  shrinks mass {row['shrinks_mass']}\n"
                  f"  right centroid x {row['right_centroid_x']}  left {row['left_centroid_x']}  "
                  f"mean |right - left| {row['right_minus_left']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
