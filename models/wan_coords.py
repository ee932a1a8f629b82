"""The Wan DiT with fixed coordinate channels appended to its input (the embedded ``tiny-video`` model).

Wan2.1 has no absolute position embedding: 3D RoPE only tells a token how far another one is. A caption such as
"a red circle moves right" describes absolute motion (from the left of the frame to the right, from the first
frame to the last), and a DiT that cannot tell where it is can only draw what the data looks like on average at a
random place: measured on the embedded model, a static blob in the middle of the frame whatever the direction
word (docs/tiny_model.md). Wan's I2V model meets the same need for the first frame by concatenating extra input
channels (``y``) in front of the patch embedding; this model concatenates three fixed ones: the frame, row and
column coordinate of every latent pixel, each spanning [-1, 1] across the video. They are a function of the latent
grid alone, so nothing outside the model changes: ``cfg.in_dim`` counts them (data channels = in_dim - 3), the
blocks, head and every sampler seam are those of ``WanModel``, and sequence parallelism still shards the tokens
after ``embed``.

Shape legend as in models/wan.py.
"""
from __future__ import annotations

import torch

from models.wan import WanConfig, WanModel

COORD_CHANNELS = 3  # frame, row, column


def coordinate_channels(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """[B, 3, F, H, W]: frame, row and column coordinates, each linear from -1 to 1 (0 along a length-1 axis)."""
    b, _, f, h, w = shape
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else
            torch.zeros(1, device=device, dtype=dtype) for n in (f, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # [3, F, H, W]
    return grid[None].expand(b, -1, -1, -1, -1)


class WanCoordModel(WanModel):
    def __init__(self, cfg: WanConfig):
        if cfg.coord_channels != COORD_CHANNELS or cfg.in_dim <= COORD_CHANNELS:
            raise ValueError(f"WanCoordModel needs coord_channels={COORD_CHANNELS} and in_dim > {COORD_CHANNELS} "
                             f"(data channels + coordinates), got coord_channels={cfg.coord_channels}, "
                             f"in_dim={cfg.in_dim}")
        super().__init__(cfg)

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        """x [B, in_dim - 3, F, H, W] latents; the coordinates are appended here."""
        want = self.cfg.in_dim - COORD_CHANNELS
        if x.shape[1] != want:
            raise ValueError(f"latents have {x.shape[1]} channels; this model takes {want} (+{COORD_CHANNELS} "
                             f"coordinate channels it adds itself)")
        coords = coordinate_channels(x.shape, x.device, x.dtype)
        return super().embed(torch.cat([x, coords], dim=1), t, context)
