"""Plot a calibration file as the MagCache paper does: magnitude ratio, its std over tokens, cosine distance.

    python -m tools.plot_calibration magcache_dist/cache/data/tiny-video.json docs/tiny_video_magnitude.png

Also prints the numbers behind the magnitude-law verdict (ratio near 1 early, falling in the last steps).
"""
from __future__ import annotations

import argparse
import os
import sys

from magcache_dist.cache.ratios import RatioTable


def law_summary(table: RatioTable) -> dict:
    """Per branch: mean ratio over the first 80% of steps (after the placeholder) and over the last 20%."""
    out = {}
    n = table.num_steps
    cut = max(2, int(round(0.8 * n)))
    for b, r in table.ratios.items():
        body, tail = r[1:cut], r[cut:]
        out[b] = dict(body_mean=sum(body) / len(body), body_min=min(body), body_max=max(body),
                      tail=[round(v, 4) for v in tail], tail_mean=sum(tail) / max(1, len(tail)),
                      monotone_tail=all(x >= y for x, y in zip(r[cut - 1:], r[cut:])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ratios")
    ap.add_argument("png")
    args = ap.parse_args(argv)
    table = RatioTable.load(args.ratios)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(table.num_steps))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for b, style in zip(table.branches, ("o-", "s--")):
        axes[0].plot(steps[1:], table.ratios[b][1:], style, ms=3, label=b)
        if b in table.std:
            axes[1].plot(steps[1:], table.std[b][1:], style, ms=3, label=b)
        if b in table.cos_dist:
            axes[2].plot(steps[1:], table.cos_dist[b][1:], style, ms=3, label=b)
    axes[0].axhline(1.0, color="gray", lw=0.8)
    axes[0].set(title="magnitude ratio ||r_t|| / ||r_t-1||", xlabel="step", ylabel="mean over tokens")
    axes[1].set(title="token-wise std of the ratio", xlabel="step")
    axes[2].set(title="cosine distance 1 - cos(r_t, r_t-1)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    m = table.meta
    fig.suptitle(f"{m.get('model', '?')}: {table.num_steps} steps {m.get('solver', '')}, shift {m.get('shift')}, "
                 f"CFG {m.get('guidance')}, {m.get('resolution')}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    fig.savefig(args.png, dpi=110)
    for b, s in law_summary(table).items():
        print(f"{b}: steps 1..{int(round(0.8 * table.num_steps)) - 1} mean {s['body_mean']:.4f} "
              f"[{s['body_min']:.4f}, {s['body_max']:.4f}]; last 20%: {s['tail']} (mean {s['tail_mean']:.4f}, "
              f"non-increasing: {s['monotone_tail']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
