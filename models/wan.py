"""Wan2.1 diffusion transformer, pure torch.

Parameter names equal the official checkpoint keys (``blocks.N.self_attn.q.weight``, ``head.head.weight``...),
so an official ``.safetensors`` loads with ``strict=True``. Nothing here knows about distribution or caching:
the sampler uses the three seams ``embed`` / ``forward_blocks`` / ``forward_head`` and parallelism swaps the
``attn_op`` submodules from outside.

Shape legend: B batch, L tokens (F*H*W patches), D model dim, N heads, Dh head dim, T text tokens, C channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import LocalAttention


@dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    image_dim: int = 0  # I2V: width of the CLIP image features (1280); 0 = text-only (models/wan_i2v.py builds I2V)
    coord_channels: int = 0  # embedded model: fixed coordinate input channels, counted in in_dim (models/wan_coords.py)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")


# Named sizes. The published ones from Wan-Video/Wan2.1; the tiny ones are ours (tests and the demo).
WAN_CONFIGS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.1-i2v-14b-480p": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, image_dim=1280),
    "wan2.1-i2v-14b-720p": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, image_dim=1280),
    # Wan2.2 (Wan-Video/Wan2.2 wan/configs): A14B = two experts of this size each (high- and low-noise); the I2V
    # experts take [noise | mask + image latents] (36 channels) and have no CLIP branch
    "wan2.2-t2v-a14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-i2v-a14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36),
    # Wan2.2 TI2V-5B: one dense DiT on the Wan2.2 VAE's 48 latent channels (16x spatial compression)
    "wan2.2-ti2v-5b": WanConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
    # tests: the real Wan pipeline (umT5 / VAE / CLIP) with tiny components; 16 latent channels, 2x2 patches
    "tiny-wan-t2v": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=24, freq_dim=32),
    "tiny-wan-i2v": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=36, text_dim=32, text_len=24,
                              freq_dim=32, image_dim=160),
    "tiny-wan22-t2v": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=24, freq_dim=32),
    "tiny-wan22-i2v": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=36, text_dim=32, text_len=24,
                                freq_dim=32),
    "tiny-wan22-ti2v": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=48, out_dim=48, text_dim=32,
                                 text_len=24, freq_dim=32),
    # tests: 4 heads so that Ulysses degree 2 and 4 divide it
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=3, out_dim=3, text_dim=32,
                      text_len=16, freq_dim=32, patch_size=(1, 4, 4)),
    # the embedded demo model: 2x-downsampled pixels (models/tiny_ae.py), 2x4x4 patches -> 512 tokens for 16x64x64
    "tiny-video": WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, in_dim=6, out_dim=3, text_dim=64,
                            text_len=8, freq_dim=64, patch_size=(2, 4, 4), coord_channels=3),
}


def get_config(name: str, **overrides) -> WanConfig:
    if name not in WAN_CONFIGS:
        raise ValueError(f"model.name={name!r} is unknown; choose one of {sorted(WAN_CONFIGS)}")
    return replace(WAN_CONFIGS[name], **overrides)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, dim] with cos first, then sin (Wan's layout), computed in float64 like the original."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_frequencies(head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0) -> torch.Tensor:
    """Complex 3D RoPE factors per token, [L, head_dim/2], split frame/height/width as Wan does."""
    half = head_dim // 2
    split = (half - 2 * (half // 3), half // 3, half // 3)  # 128 -> (22, 21, 21)
    per_axis = []
    for axis_len, n in zip(grid, split):
        inv = 1.0 / theta ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n))
        per_axis.append(torch.polar(torch.ones(axis_len, n, dtype=torch.float64),
                                    torch.outer(torch.arange(axis_len, dtype=torch.float64), inv)))
    f, h, w = grid
    freqs = torch.cat([
        per_axis[0][:, None, None, :].expand(f, h, w, -1),
        per_axis[1][None, :, None, :].expand(f, h, w, -1),
        per_axis[2][None, None, :, :].expand(f, h, w, -1),
    ], dim=-1)
    return freqs.reshape(f * h * w, half)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, L, N, Dh] (interleaved pairs), freqs [L, Dh/2] complex -> rotated x, same dtype."""
    b, l, n, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, l, n, d // 2, 2))
    out = torch.view_as_real(xc * freqs[None, :, None, :]).reshape(b, l, n, d)
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.attn_op = LocalAttention()  # swapped by magcache_dist.parallel for sequence parallelism

    def forward(self, x, freqs, k_lens):
        b, l, d = x.shape
        shape = (b, l, self.num_heads, d // self.num_heads)
        q = apply_rope(self.norm_q(self.q(x)).view(shape), freqs)  # [B, L, N, Dh]
        k = apply_rope(self.norm_k(self.k(x)).view(shape), freqs)
        v = self.v(x).view(shape)
        return self.o(self.attn_op(q, k, v, k_lens).flatten(2))  # [B, L, D]


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.attn_op = LocalAttention()  # text is never sharded: always local

    def kv(self, context) -> tuple[torch.Tensor, ...]:
        """Keys and values of the (embedded) context [B, T, D] -> 2 x [B, T, N, Dh]: they depend on the text only,
        so a generation can compute them once (``WanModel.prepare_condition``)."""
        b, n = context.shape[0], self.num_heads
        k = self.norm_k(self.k(context)).view(b, -1, n, context.shape[-1] // n)
        return k, self.v(context).view(b, -1, n, context.shape[-1] // n)

    def forward(self, x, context, kv=None):
        b, l, d = x.shape
        q = self.norm_q(self.q(x)).view(b, l, self.num_heads, d // self.num_heads)
        k, v = kv if kv is not None else self.kv(context)
        return self.o(self.attn_op(q, k, v, None).flatten(2))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, ctx: "BlockContext", cross_kv=None):
        if ctx.e0.dim() == 4:  # a timestep per token (Wan2.2 TI2V with an image): [B, L, 6, D]
            e = [c.squeeze(2) for c in (self.modulation.float().unsqueeze(1) + ctx.e0).chunk(6, dim=2)]
        else:
            e = (self.modulation.float() + ctx.e0).chunk(6, dim=1)  # 6 x [B, 1, D], fp32
        y = self.self_attn((self.norm1(x).float() * (1 + e[1]) + e[0]).type_as(x), ctx.freqs, ctx.k_lens)
        x = x + (y.float() * e[2]).type_as(x)
        x = x + self.cross_attn(self.norm3(x), ctx.context, cross_kv)
        y = self.ffn((self.norm2(x).float() * (1 + e[4]) + e[3]).type_as(x))
        return x + (y.float() * e[5]).type_as(x)  # [B, L, D]


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        if e.dim() == 3:  # a timestep per token: [B, L, D]
            m = [c.squeeze(2) for c in (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)]
        else:
            m = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)  # 2 x [B, 1, D]
        return self.head((self.norm(x).float() * (1 + m[1]) + m[0]).type_as(x))


@dataclass
class BlockContext:
    """Everything the block stack needs besides the tokens. ``freqs`` is per token so it can be sharded."""
    e: torch.Tensor  # [B, D] time embedding (head); [B, L, D] with a timestep per token
    e0: torch.Tensor  # [B, 6, D] block modulation; [B, L, 6, D] with a timestep per token
    freqs: torch.Tensor  # [L, Dh/2] complex RoPE
    context: torch.Tensor  # [B, T, D]
    k_lens: torch.Tensor | None  # [B] valid (unpadded) key count of the *global* sequence
    grid: tuple[int, int, int]  # (F, H, W) in patches
    cross_kv: list | None = None  # per block: its cross-attention keys / values (a PreparedCondition's), else None
    expert: str | None = None  # two-expert models (models/wan_experts.py): which expert embedded this call


@dataclass
class PreparedCondition:
    """A branch's conditioning worked out once per generation (``WanModel.prepare_condition``): the embedded
    context and every block's cross-attention keys and values. Neither depends on the latents or the timestep, so
    every call of the generation, computed or skipped, reuses them and gets exactly the same numbers."""
    context: torch.Tensor  # [B, T, D] (I2V: [B, I + T, D])
    cross_kv: list  # per block: the tuple its cross-attention's ``kv`` returns
    extra: object = None  # what else ``embed`` needs (I2V: the y channels)


class WanModel(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in self.text_embedding.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for m in self.time_embedding.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    # ---- seams used by the sampler -------------------------------------------------------------------
    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, T', text_dim] umT5 features -> [B, text_len, D], zero-padded to text_len as Wan does."""
        cfg = self.cfg
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"text context has {context.shape[1]} tokens, more than text_len={cfg.text_len}")
        context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))  # [B, T, D]

    def prepare_condition(self, context: torch.Tensor) -> PreparedCondition:
        """What ``embed`` would compute from ``context`` at every call, computed once (see PreparedCondition)."""
        text = self.embed_text(context)
        return PreparedCondition(text, [block.cross_attn.kv(text) for block in self.blocks])

    def embed(self, x: torch.Tensor, t: torch.Tensor, context) -> tuple[torch.Tensor, BlockContext]:
        """x [B, C, F, H, W] latents, t [B] timesteps (0..1000), context [B, T', text_dim] (or the
        PreparedCondition of it) -> tokens [B, L, D]."""
        cfg = self.cfg
        tokens = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # [B, D, F', H', W']
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)  # [B, L, D]
        # t [B], or [B, L] a timestep per token (Wan2.2 TI2V's image tokens sit at t = 0): e [B(, L), D]
        sin = sinusoidal_embedding(cfg.freq_dim, t) if t.dim() == 1 else \
            sinusoidal_embedding(cfg.freq_dim, t.flatten()).unflatten(0, t.shape)
        e = self.time_embedding(sin.to(self.time_embedding[0].weight.dtype))
        e = e.float()
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float().unflatten(-1, (6, cfg.dim))
        prepared = context if isinstance(context, PreparedCondition) else None
        context = prepared.context if prepared is not None else self.embed_text(context)  # [B, T, D]
        freqs = rope_frequencies(cfg.head_dim, grid).to(tokens.device)
        k_lens = torch.full((x.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        return tokens, BlockContext(e=e, e0=e0, freqs=freqs, context=context, k_lens=k_lens, grid=grid,
                                    cross_kv=prepared.cross_kv if prepared is not None else None)

    def first_block(self, ctx: BlockContext) -> WanBlock:
        """The first block the call with ``ctx`` runs (its modulation and norm give TeaCache's probe)."""
        return self.blocks[0]

    def forward_blocks(self, tokens: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        kv = ctx.cross_kv or [None] * len(self.blocks)
        for block, block_kv in zip(self.blocks, kv):
            tokens = block(tokens, ctx, block_kv)  # [B, L, D]
        return tokens

    def forward_head(self, tokens: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        return self.head(tokens, ctx.e)  # [B, L, C * prod(patch)]

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, C*pf*ph*pw] -> [B, C, F, H, W]."""
        pf, ph, pw = self.cfg.patch_size
        f, h, w = grid
        out = out.float().view(out.shape[0], f, h, w, pf, ph, pw, self.cfg.out_dim)
        out = torch.einsum("bfhwpqrc->bcfphqwr", out)
        return out.reshape(out.shape[0], self.cfg.out_dim, f * pf, h * ph, w * pw)

    def forward(self, x, t, context):
        """Plain full forward (no cache, no parallelism): reference path."""
        tokens, ctx = self.embed(x, t, context)
        return self.unpatchify(self.forward_head(self.forward_blocks(tokens, ctx), ctx), ctx.grid)
