"""Which caption words does the embedded model listen to? Swap one word, measure how much its prediction moves.

    python -m benchmarks.word_sensitivity            # the shipped weights; --ckpt for another file

A data clip ("a big red circle moves right") is noised to sigma in {0.5, 0.9, 0.97} with 4 noise draws; the DiT
predicts v with the true caption and with captions that differ in one word. Reported: ||v(other) - v(true)|| /
||v(true)||. A word the model uses moves the prediction; a word it ignores does not, even at high noise, where
only the caption can say what to draw. Writes benchmarks/results/word_sensitivity.json.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from benchmarks._common import probe_job

from tools.tinydata.procedural import VideoSpec, render
from magcache_dist.io.atomic import atomic_write_text
from models.tiny_ae import PixelAutoencoder

TRUE = "a big red circle moves right"
SWAPS = {  # word class -> caption differing from TRUE in that word only
    "colour (red -> blue)": "a big blue circle moves right",
    "size (big -> small)": "a small red circle moves right",
    "motion kind (moves right -> grows)": "a red circle grows",
    "direction (right -> left)": "a big red circle moves left",
    "shape (circle -> square)": "a big red square moves right",
}
SIGMAS = (0.5, 0.9, 0.97)


def main(argv=None) -> int:
    args, job = probe_job(__doc__, 4, "word_sensitivity.json", argv)
    x0 = PixelAutoencoder(2).encode(render(VideoSpec("red", "circle", "right", "big", 0.5, 0.3, 0.5))[None])
    noise = torch.randn((args.draws, *x0.shape[1:]), generator=torch.Generator().manual_seed(0))
    res = {}
    with torch.no_grad():
        ctx = {c: job.text.encode([c] * args.draws) for c in (TRUE, *SWAPS.values())}
        for s in SIGMAS:
            xt = (1 - s) * x0 + s * noise
            t = torch.full((args.draws,), s * 1000.0)
            ref = job.model(xt, t, ctx[TRUE])
            res[str(s)] = {k: round(float((job.model(xt, t, ctx[c]) - ref).norm() / ref.norm()), 4)
                           for k, c in SWAPS.items()}
    out = dict(ckpt=job.cfg.model.ckpt, caption=TRUE, draws=args.draws, relative_change=res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print("| word swapped | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |")
    print("|---|" + "---|" * len(SIGMAS))
    for k in SWAPS:
        print(f"| {k} | " + " | ".join(f"{100 * res[str(s)][k]:.1f}%" for s in SIGMAS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
