"""The embedded demo model's fixed 'autoencoder': 2x2 average pooling down, bilinear upsampling back.

Wan2.1's DiT works on VAE latents with 16 channels and a 4x8x8 stride, so a patch of C*pf*ph*pw = 64 values is
embedded into a much wider model dim. In raw pixel space with 2x8x8 patches a patch holds 384 values, more than a
small model's dim: the patch embedding then has a null space whose share of the initial noise the model can never
see, and so never removes. Working on 2x-downsampled pixels with 2x4x4 patches (96 values per token, dim 128) keeps
the same 512 tokens for a 16x64x64 video without that blind spot. Nothing here is learned.

Shape legend: B batch, C channels (3), F frames, H/W pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PixelAutoencoder:
    def __init__(self, stride: int = 2):
        if stride < 1:
            raise ValueError(f"stride={stride} must be >= 1")
        self.stride = stride

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] in [-1, 1] -> [B, C, F, H/s, W/s]."""
        s = self.stride
        return video if s == 1 else F.avg_pool3d(video, kernel_size=(1, s, s), stride=(1, s, s))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> [B, C, F, h*s, w*s], clamped to [-1, 1]."""
        s = self.stride
        if s > 1:
            latents = F.interpolate(latents.float(), scale_factor=(1, s, s), mode="trilinear", align_corners=False)
        return latents.clamp(-1, 1)
