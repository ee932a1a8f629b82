"""Open-Sora 1.2's STDiT3, compact and pure torch, with the official checkpoint key names
(``spatial_blocks.N.attn.qkv.weight``, ``y_embedder.y_proj.fc1.weight``, ``rope.freqs`` ...).

Each layer is a spatial block (attention within a frame) followed by a temporal block (attention across frames
at one spatial position, 1D RoPE on the frame index); both cross-attend to the text and are modulated by the
timestep (adaLN-single: one ``t_block`` projection plus a per-block ``scale_shift_table``). Classifier-free
guidance is batched: the unconditional rows use the learned null caption ``y_embedder.y_embedding``.
The attention seams (``attn_op``) are swapped for sequence parallelism from outside.

Shape legend: B batch, C channels, F frames, S patches per frame, L = F*S tokens, D width, N heads, Dh head dim,
T text tokens, Ct caption channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import LocalAttention
from models.attention_joint import LocalFactorizedAttention
from models.wan import RMSNorm, apply_rope


@dataclass(frozen=True)
class STDiT3Config:
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    caption_channels: int = 4096
    model_max_length: int = 300
    pred_sigma: bool = True  # the head also predicts a (unused) sigma: out channels = 2 * in_channels
    input_sq_size: int = 512
    vae_spatial_stride: int = 8  # latent -> pixel factor, for the resolution-scaled 2D position embedding
    freq_dim: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.pred_sigma else self.in_channels

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.head_dim % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must split into an even head_dim over "
                             f"num_heads={self.num_heads}")


# STDiT3-XL/2 is Open-Sora 1.2 (hpcai-tech/OpenSora-STDiT-v3); opensora-1.2-tiny: ours (pixel space, tiny text
# encoder); tiny-opensora: the published pipeline at toy size (4 latent channels, VAE stride 8, a tiny T5 of width 32).
OPENSORA_CONFIGS = {
    "opensora-1.2": STDiT3Config(),
    "tiny-opensora": STDiT3Config(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=16,
                                  input_sq_size=64, freq_dim=32),
    "opensora-1.2-tiny": STDiT3Config(hidden_size=64, depth=2, num_heads=4, in_channels=3, patch_size=(1, 4, 4),
                                      caption_channels=32, model_max_length=16, vae_spatial_stride=1,
                                      input_sq_size=32, freq_dim=32),
}


def opensora_config(name: str, **overrides) -> STDiT3Config:
    if name not in OPENSORA_CONFIGS:
        raise ValueError(f"model.name={name!r} is not an Open-Sora size; choose one of {sorted(OPENSORA_CONFIGS)}")
    return replace(OPENSORA_CONFIGS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoidal embedding: [B] -> [B, dim], cos first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pos_embed_2d(dim: int, h: int, w: int, scale: float, base_size: int) -> torch.Tensor:
    """Open-Sora's resolution-scaled 2D sin-cos embedding, [h*w, dim]: first half the column coordinate, second
    half the row coordinate, each (sin, cos) over dim/4 frequencies."""
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    col = torch.arange(w).float() / scale * (base_size / w)
    row = torch.arange(h).float() / scale * (base_size / h)
    col, row = col[None, :].expand(h, w).reshape(-1), row[:, None].expand(h, w).reshape(-1)
    sincos = lambda p: torch.cat([torch.sin(torch.outer(p, inv_freq)), torch.cos(torch.outer(p, inv_freq))], -1)  # noqa: E731
    return torch.cat([sincos(col), sincos(row)], dim=-1)


class Mlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim_in, hidden), nn.Linear(hidden, dim_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch, cin, dim):
        super().__init__()
        self.proj = nn.Conv3d(cin, dim, kernel_size=patch, stride=patch)


class CaptionEmbedder(nn.Module):
    def __init__(self, cfg: STDiT3Config):
        super().__init__()
        self.y_proj = Mlp(cfg.caption_channels, cfg.hidden_size, cfg.hidden_size)
        self.y_embedding = nn.Parameter(torch.randn(cfg.model_max_length, cfg.caption_channels)
                                        / cfg.caption_channels**0.5)


class RotaryFrames(nn.Module):
    """The temporal RoPE's frequencies (rotary-embedding-torch's ``freqs`` parameter, theta 10000)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.freqs = nn.Parameter(1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim), requires_grad=False)

    def per_token(self, num_frames: int, per_frame: int) -> torch.Tensor:
        """Complex factors [F*S, Dh/2] for frame-major tokens (frame index f for every token of frame f)."""
        angles = torch.outer(torch.arange(num_frames, dtype=torch.float64, device=self.freqs.device),
                             self.freqs.double())
        return torch.polar(torch.ones_like(angles), angles).repeat_interleave(per_frame, dim=0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, axis: str):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = RMSNorm(dim // num_heads, 1e-6), RMSNorm(dim // num_heads, 1e-6)
        self.rope = axis == "temporal"
        self.attn_op = LocalFactorizedAttention(axis)  # swapped by magcache_dist.parallel

    def forward(self, x, ctx: "STContext"):
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.num_heads, d // self.num_heads).unbind(2)  # [B, L, N, Dh]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope(q, ctx.freqs), apply_rope(k, ctx.freqs)
        return self.proj(self.attn_op(q, k, v, (ctx.grid[0], ctx.grid[1] * ctx.grid[2])).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear, self.kv_linear, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.attn_op = LocalAttention()  # text keys are whole on every rank: always local

    def forward(self, x, y, y_lens):
        b, l, d = x.shape
        n = self.num_heads
        q = self.q_linear(x).view(b, l, n, d // n)
        k, v = self.kv_linear(y).view(b, y.shape[1], 2, n, d // n).unbind(2)
        return self.proj(self.attn_op(q, k, v, y_lens).flatten(2))


class STDiT3Block(nn.Module):
    def __init__(self, cfg: STDiT3Config, temporal: bool):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(d, cfg.num_heads, "temporal" if temporal else "spatial")
        self.cross_attn = CrossAttention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), d)
        self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d**0.5)

    def forward(self, x, ctx: "STContext"):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (
            self.scale_shift_table[None] + ctx.t_mlp.view(x.shape[0], 6, -1)).chunk(6, dim=1)  # 6 x [B, 1, D]
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a) + shift_a, ctx)
        x = x + self.cross_attn(x, ctx.y, ctx.y_lens)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)  # [B, L, D]


class FinalLayer(nn.Module):
    def __init__(self, cfg: STDiT3Config):
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(d, math.prod(cfg.patch_size) * cfg.out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, d) / d**0.5)

    def forward(self, x, t):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


@dataclass
class STContext:
    t: torch.Tensor  # [B, D] timestep (+ fps) embedding (head)
    t_mlp: torch.Tensor  # [B, 6D] block modulation
    y: torch.Tensor  # [B, T, D] projected caption
    y_lens: torch.Tensor  # [B] real caption tokens
    freqs: torch.Tensor  # [L, Dh/2] complex temporal RoPE per token: sharded with the tokens
    grid: tuple[int, int, int]  # (F, H, W) in patches


@dataclass
class OpenSoraCond:
    """Batched CFG conditioning: rows [cond; uncond]. ``null`` rows use the learned null caption."""
    y: torch.Tensor  # [B, T, Ct] caption features, zero-padded to T
    y_lens: torch.Tensor  # [B]
    null: torch.Tensor  # [B] bool
    fps: float


class STDiT3(nn.Module):
    def __init__(self, cfg: STDiT3Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, cfg.freq_dim)
        self.fps_embedder = TimestepEmbedder(d, cfg.freq_dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.y_embedder = CaptionEmbedder(cfg)
        self.rope = RotaryFrames(cfg.head_dim)
        self.spatial_blocks = nn.ModuleList(STDiT3Block(cfg, temporal=False) for _ in range(cfg.depth))
        self.temporal_blocks = nn.ModuleList(STDiT3Block(cfg, temporal=True) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)

    @property
    def num_heads(self) -> int:
        return self.cfg.num_heads

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: OpenSoraCond) -> tuple[torch.Tensor, STContext]:
        """x [B, C, F, H, W], t [B] in 0..1000 -> tokens [B, L, D] (2D position embedding added per frame)."""
        cfg, dtype = self.cfg, self.x_embedder.proj.weight.dtype
        tokens = self.x_embedder.proj(x.to(dtype))  # [B, D, F', H', W']
        grid = tuple(tokens.shape[2:])
        f, h, w = grid
        resolution_sq = (x.shape[3] * x.shape[4]) ** 0.5 * cfg.vae_spatial_stride
        pos = pos_embed_2d(cfg.hidden_size, h, w, resolution_sq / cfg.input_sq_size, round((h * w) ** 0.5))
        tokens = tokens.flatten(2).transpose(1, 2).view(x.shape[0], f, h * w, -1)  # [B, F, S, D]
        tokens = (tokens + pos.to(tokens)).flatten(1, 2)  # [B, L, D]
        te = self.t_embedder(t) + self.fps_embedder(torch.full_like(t, float(cond.fps)))  # [B, D]
        t_mlp = self.t_block(te)
        y = torch.where(cond.null[:, None, None].to(x.device), self.y_embedder.y_embedding[None, : cond.y.shape[1]],
                        cond.y.to(x.device, dtype))
        y = self.y_embedder.y_proj(y.to(dtype))  # [B, T, D]
        freqs = self.rope.per_token(f, h * w)
        return tokens, STContext(t=te, t_mlp=t_mlp, y=y, y_lens=cond.y_lens.to(x.device), freqs=freqs, grid=grid)

    def forward_blocks(self, tokens: torch.Tensor, ctx: STContext) -> torch.Tensor:
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            tokens = temporal(spatial(tokens, ctx), ctx)  # [B, L, D]
        return tokens

    def forward_head(self, tokens: torch.Tensor, ctx: STContext) -> torch.Tensor:
        return self.final_layer(tokens, ctx.t)  # [B, L, pf*ph*pw*Cout]

    def unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        """[B, L, pf*ph*pw*Cout] -> velocity [B, C, F, H, W] in the sampler's convention (noise - x0).

        Open-Sora's rectified flow predicts x0 - noise in the first C output channels (the rest is the sigma
        head, unused at inference), so the sign flips here."""
        pf, ph, pw = self.cfg.patch_size
        f, h, w = grid
        c = self.cfg.out_channels
        out = out.float().view(out.shape[0], f, h, w, pf, ph, pw, c)
        out = torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(out.shape[0], c, f * pf, h * ph, w * pw)
        return -out[:, : self.cfg.in_channels]

    def forward(self, x, t, cond: OpenSoraCond):
        """Plain full forward (no cache, no parallelism): reference path."""
        tokens, ctx = self.embed(x, t, cond)
        return self.unpatchify(self.forward_head(self.forward_blocks(tokens, ctx), ctx), ctx.grid)
