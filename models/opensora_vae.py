"""Open-Sora 1.2's video VAE (``VideoAutoencoderPipeline``, hpcai-tech/OpenSora-VAE-v1.2), pure torch.

Two stages, with the published checkpoint's key names:

- ``spatial_vae.module.*``: an SD-style 2D VAE applied to every frame (diffusers' ``AutoencoderKL``; the release
  uses SDXL's VAE from PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers), latents scaled by 0.18215, run on
  ``micro_batch_size`` frames at a time;
- ``temporal_vae.*``: ``VAE_Temporal_SD``, a MAGVIT-like causal 3D-conv encoder/decoder compressing time by 4 on the
  spatial latents (no spatial change), run on chunks of ``micro_frame_size`` = 17 frames (5 latent frames each);
- ``scale`` / ``shift``: per-channel latent normalisation, ``z = (x - shift) / scale``.

Frame arithmetic: a chunk of n frames is front-padded with zeros to a multiple of 4 (causal convolutions see only
the past), so it gives ceil(n / 4) latent frames, and decoding it drops the padded frames again: N pixel frames
give ``latent_frames(N)`` = (N // 17) * 5 + ceil((N % 17) / 4) latent frames, and decoding them with num_frames=N
gives N frames back. Height and width shrink by the 2D VAE's stride (8 in the release).

Shape legend: B batch, C channels, T frames, H, W height / width (pixels or latents).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

SPATIAL_SCALE = 0.18215  # Open-Sora's VideoAutoencoderKL multiplies the 2D latents by this (not SDXL's 0.13025)

# PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, subfolder vae (SDXL's VAE): the 2D stage of the release
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024)
PUBLISHED_2D = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"


@dataclass(frozen=True)
class TemporalVAEConfig:
    """VAE_Temporal's constructor arguments (``VAE_Temporal_SD`` is the default)."""
    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple = (1, 2, 2, 4)
    temporal_downsample: tuple = (False, True, True)
    num_groups: int = 32

    @property
    def time_factor(self) -> int:
        return 2 ** sum(map(bool, self.temporal_downsample))

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(f"temporal_downsample={self.temporal_downsample} needs one entry per level but the last "
                             f"of channel_multipliers={self.channel_multipliers}")
        for m in self.channel_multipliers:
            if (self.filters * m) % self.num_groups:
                raise ValueError(f"filters={self.filters} x {m} is not divisible by num_groups={self.num_groups}")


@dataclass(frozen=True)
class OpenSoraVAEConfig:
    """The pipeline: the 2D VAE's diffusers config, the temporal VAE's, the chunking and the latent statistics."""
    vae_2d: dict = field(default_factory=lambda: dict(SDXL_VAE))
    temporal: TemporalVAEConfig = TemporalVAEConfig()
    micro_frame_size: int = 17
    micro_batch_size: int = 4
    shift: tuple = (-0.10, 0.34, 0.27, 0.98)
    scale: tuple = (3.85, 2.32, 2.33, 3.06)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.vae_2d["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self.temporal.embed_dim

    @property
    def micro_z_frame_size(self) -> int:
        return math.ceil(self.micro_frame_size / self.temporal.time_factor)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of ``num_frames`` pixel frames (chunks of micro_frame_size, each padded to the factor)."""
        full, rest = divmod(num_frames, self.micro_frame_size)
        return full * self.micro_z_frame_size + math.ceil(rest / self.temporal.time_factor)


# ---- the temporal VAE (VAE_Temporal) ---------------------------------------------------------------------------
class CausalConv3d(nn.Module):
    """Conv3d padded with zeros in front in time (k_t - stride_t frames) and symmetrically in space."""

    def __init__(self, cin: int, cout: int, kernel=3, stride=(1, 1, 1), bias: bool = True):
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        self.pad = (kw // 2, kw // 2, kh // 2, kh // 2, kt - stride[0], 0)
        self.conv = nn.Conv3d(cin, cout, (kt, kh, kw), stride=stride, bias=bias)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), CausalConv3d(cin, cout, 3, bias=False)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), CausalConv3d(cout, cout, 3, bias=False)
        if cin != cout:
            self.conv3 = CausalConv3d(cin, cout, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv3(x) if hasattr(self, "conv3") else x)


class TemporalEncoder(nn.Module):
    def __init__(self, c: TemporalVAEConfig):
        super().__init__()
        widths = [c.filters * m for m in c.channel_multipliers]
        self.conv_in = CausalConv3d(c.in_out_channels, c.filters, 3, bias=False)
        self.block_res_blocks, self.conv_blocks = nn.ModuleList(), nn.ModuleList()
        prev = c.filters
        for i, w in enumerate(widths):
            self.block_res_blocks.append(nn.ModuleList(ResBlock(prev if j == 0 else w, w, c.num_groups)
                                                       for j in range(c.num_res_blocks)))
            prev = w
            if i < len(widths) - 1:  # time / 2 after the level, or nothing (an Identity keeps the indices)
                self.conv_blocks.append(CausalConv3d(w, w, 3, stride=(2, 1, 1)) if c.temporal_downsample[i]
                                        else nn.Identity())
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, c.num_groups) for _ in range(c.num_res_blocks))
        self.norm1 = nn.GroupNorm(c.num_groups, prev)
        self.conv2 = CausalConv3d(prev, 2 * c.latent_embed_dim, 1)

    def forward(self, x):  # [B, C, T, H, W] -> [B, 2 * latent_embed_dim, T / factor, H, W]
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


def depth_to_time(x, ts: int):
    """[B, C * ts, T, H, W] -> [B, C, T * ts, H, W]: channel c * ts + s becomes frame t * ts + s."""
    if ts == 1:
        return x
    b, c, t, h, w = x.shape
    return x.view(b, c // ts, ts, t, h, w).transpose(2, 3).reshape(b, c // ts, t * ts, h, w)


class TemporalDecoder(nn.Module):
    def __init__(self, c: TemporalVAEConfig):
        super().__init__()
        widths = [c.filters * m for m in c.channel_multipliers]
        self.time_strides = [2 if d else 1 for d in c.temporal_downsample]
        prev = widths[-1]
        self.conv1 = CausalConv3d(c.latent_embed_dim, prev, 3)
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, c.num_groups) for _ in range(c.num_res_blocks))
        levels, ups = [], []
        for i in reversed(range(len(widths))):  # deepest level first; stored shallowest first (the checkpoint's order)
            w = widths[i]
            levels.insert(0, nn.ModuleList(ResBlock(prev if j == 0 else w, w, c.num_groups)
                                           for j in range(c.num_res_blocks)))
            prev = w
            if i > 0:  # depth-to-time: channels x time stride, then unfolded into frames
                ts = self.time_strides[i - 1]
                ups.insert(0, CausalConv3d(w, w * ts, 3) if ts > 1 else nn.Identity())
        self.block_res_blocks, self.conv_blocks = nn.ModuleList(levels), nn.ModuleList(ups)
        self.norm1 = nn.GroupNorm(c.num_groups, prev)
        self.conv_out = CausalConv3d(prev, c.in_out_channels, 3)

    def forward(self, z):  # [B, latent_embed_dim, T', H, W] -> [B, C, T' * factor, H, W]
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                ts = self.time_strides[i - 1]
                x = depth_to_time(self.conv_blocks[i - 1](x), ts)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """VAE_Temporal: time / factor, channels in_out_channels -> embed_dim (a diagonal Gaussian)."""

    def __init__(self, c: TemporalVAEConfig):
        super().__init__()
        self.cfg = c
        self.encoder = TemporalEncoder(c)
        self.quant_conv = CausalConv3d(2 * c.latent_embed_dim, 2 * c.embed_dim, 1)
        self.post_quant_conv = CausalConv3d(c.embed_dim, c.latent_embed_dim, 1)
        self.decoder = TemporalDecoder(c)

    def time_padding(self, num_frames: int) -> int:
        return -num_frames % self.cfg.time_factor

    def encode(self, x):
        """[B, C, T, H, W] -> (mean, logvar), each [B, embed_dim, ceil(T / factor), H, W]."""
        x = F.pad(x, (0, 0, 0, 0, self.time_padding(x.shape[2]), 0))  # zero frames in front
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z, num_frames: int):
        """[B, embed_dim, T', H, W] -> [B, C, num_frames, H, W] (the front padding of encode dropped)."""
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.time_padding(num_frames):]


# ---- the pipeline (VideoAutoencoderPipeline) -------------------------------------------------------------------
class SpatialVAE(nn.Module):
    """Holds the diffusers AutoencoderKL as ``module`` (the checkpoint's ``spatial_vae.module.*``)."""

    def __init__(self, vae_2d: dict):
        super().__init__()
        from diffusers import AutoencoderKL

        self.module = AutoencoderKL.from_config(vae_2d)  # a diffusers config dict (unknown keys are ignored)


def _frames_to_batch(x):  # [B, C, T, H, W] -> [B*T, C, H, W]
    return x.transpose(1, 2).flatten(0, 1)


def _batch_to_frames(x, b: int):  # [B*T, C, H, W] -> [B, C, T, H, W]
    return x.unflatten(0, (b, -1)).transpose(1, 2)


class OpenSoraVAE(nn.Module):
    def __init__(self, cfg: OpenSoraVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.spatial_vae = SpatialVAE(cfg.vae_2d)
        self.temporal_vae = TemporalVAE(cfg.temporal)
        shape = (1, -1, 1, 1, 1)
        self.register_buffer("scale", torch.tensor(cfg.scale, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("shift", torch.tensor(cfg.shift, dtype=torch.float32).view(shape), persistent=False)

    def encode(self, x, generator: torch.Generator | None = None):
        """[B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, latent_frames(T), H/8, W/8]. ``generator``:
        sample both posteriors as the release does; None: their means (deterministic)."""
        b, mb = x.shape[0], self.cfg.micro_batch_size
        frames = _frames_to_batch(x)
        parts = []
        for i in range(0, frames.shape[0], mb):  # 2D stage, micro_batch_size frames at a time
            dist = self.spatial_vae.module.encode(frames[i: i + mb]).latent_dist
            parts.append((dist.mean if generator is None else dist.sample(generator)) * SPATIAL_SCALE)
        x_z = _batch_to_frames(torch.cat(parts), b)  # [B, C2d, T, h, w]
        zs = []
        for i in range(0, x_z.shape[2], self.cfg.micro_frame_size):  # temporal stage, 17 frames at a time
            mean, logvar = self.temporal_vae.encode(x_z[:, :, i: i + self.cfg.micro_frame_size])
            if generator is not None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                mean = mean + torch.exp(0.5 * logvar) * noise
            zs.append(mean)
        z = torch.cat(zs, dim=2)
        return (z - self.shift.to(z)) / self.scale.to(z)

    def decode(self, z, num_frames: int, out_device=None):
        """Normalised latents [B, C, T', h, w] -> [B, 3, num_frames, 8h, 8w]; T' must be latent_frames(num_frames).
        Decoded chunk by chunk (5 latent frames, then micro_batch_size frames); ``out_device`` collects the
        frames there (e.g. the CPU, so a long video never sits on the GPU whole)."""
        return torch.cat([self.decode_chunk(z, i, num_frames, out_device) for i in range(self.num_chunks(z))], dim=2)

    def num_chunks(self, z) -> int:
        """How many independent chunks of ``micro_z_frame_size`` latent frames ``decode`` goes through."""
        return -(-z.shape[2] // self.cfg.micro_z_frame_size)

    def decode_chunk(self, z, index: int, num_frames: int, out_device=None):
        """Chunk ``index`` of ``decode`` (it depends on no other chunk): its [B, 3, frames, 8h, 8w]."""
        cfg = self.cfg
        if z.shape[2] != cfg.latent_frames(num_frames):
            raise ValueError(f"{z.shape[2]} latent frames do not decode into num_frames={num_frames} "
                             f"(that needs {cfg.latent_frames(num_frames)})")
        i = index * cfg.micro_z_frame_size
        z = z[:, :, i: i + cfg.micro_z_frame_size]
        z = z * self.scale.to(z) + self.shift.to(z)
        left = num_frames - index * cfg.micro_frame_size
        x_z = self.temporal_vae.decode(z, num_frames=min(cfg.micro_frame_size, left))
        frames = _frames_to_batch(x_z) / SPATIAL_SCALE  # [B*t, C2d, h, w]
        decode_2d = self.spatial_vae.module.decode
        pixels = [decode_2d(frames[j: j + cfg.micro_batch_size]).sample.to(out_device or z.device)
                  for j in range(0, frames.shape[0], cfg.micro_batch_size)]
        return _batch_to_frames(torch.cat(pixels), z.shape[0])
