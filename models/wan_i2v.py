"""Wan2.1 image-to-video DiT: the T2V model plus image conditioning, official checkpoint key names.

Differences from T2V (Wan-Video/Wan2.1 ``model_type='i2v'``):
- ``patch_embedding`` takes 36 channels: the 16 noise channels followed by ``y`` = 4 mask channels (first frame
  known) + 16 VAE latents of the conditioning video (the image, then zeros).
- ``img_emb.proj`` = LayerNorm - Linear - GELU - Linear - LayerNorm maps CLIP ViT-H/14 penultimate-layer features
  [B, 257, 1280] to [B, 257, dim]; they are put in front of the (padded) text tokens.
- every cross-attention has ``k_img`` / ``v_img`` / ``norm_k_img``: the output is attn(q, k, v) over the text
  tokens plus attn(q, k_img, v_img) over the image tokens, then ``o``.

The extra conditioning travels in ``I2VCondition``, which the sampler passes opaquely to ``embed``.
Shape legend as in models/wan.py; I image tokens (257), Cy = 20 channels of ``y``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.wan import CrossAttention, PreparedCondition, RMSNorm, WanConfig, WanModel
from models.wan_coords import WanCoordModel


@dataclass
class I2VCondition:
    """Per-branch conditioning of the I2V model (text differs per branch; image and y are shared)."""
    context: torch.Tensor  # [B, T', text_dim] umT5 features of the real tokens
    clip_fea: torch.Tensor  # [B, I, image_dim] CLIP penultimate-layer features
    y: torch.Tensor  # [B, 20, F, H, W] mask (4) + image latents (16)

    def to(self, device):
        return I2VCondition(self.context.to(device), self.clip_fea.to(device), self.y.to(device))


class I2VCrossAttention(CrossAttention):
    """Cross-attention over [image tokens | text tokens]: the last ``text_len`` tokens are text."""

    def __init__(self, dim: int, num_heads: int, eps: float, text_len: int):
        super().__init__(dim, num_heads, eps)
        self.text_len = text_len
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps)

    def kv(self, context) -> tuple[torch.Tensor, ...]:
        """(k, v) over the text tokens and (k_img, v_img) over the image tokens, each [B, *, N, Dh]."""
        b, n, d = context.shape[0], self.num_heads, context.shape[-1]
        img, text = context[:, : -self.text_len], context[:, -self.text_len:]  # [B, I, D], [B, T, D]
        k, v = super().kv(text)
        k_img = self.norm_k_img(self.k_img(img)).view(b, -1, n, d // n)
        return k, v, k_img, self.v_img(img).view(b, -1, n, d // n)

    def forward(self, x, context, kv=None):
        b, l, d = x.shape
        q = self.norm_q(self.q(x)).view(b, l, self.num_heads, d // self.num_heads)
        k, v, k_img, v_img = kv if kv is not None else self.kv(context)
        out = self.attn_op(q, k, v, None) + self.attn_op(q, k_img, v_img, None)  # [B, L, N, Dh]
        return self.o(out.flatten(2))


class ImageEmbedding(nn.Module):
    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(),
                                  nn.Linear(image_dim, dim), nn.LayerNorm(dim))

    def forward(self, clip_fea):
        return self.proj(clip_fea)  # [B, I, D]


class WanI2VModel(WanModel):
    def __init__(self, cfg: WanConfig):
        if cfg.image_dim <= 0:
            raise ValueError(f"WanI2VModel needs image_dim > 0 (the CLIP feature width), got {cfg.image_dim}")
        super().__init__(cfg)
        for block in self.blocks:
            block.cross_attn = I2VCrossAttention(cfg.dim, cfg.num_heads, cfg.eps, cfg.text_len)
        self.img_emb = ImageEmbedding(cfg.image_dim, cfg.dim)
        for block in self.blocks:
            for m in (block.cross_attn.q, block.cross_attn.k, block.cross_attn.v, block.cross_attn.o,
                      block.cross_attn.k_img, block.cross_attn.v_img):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _image_context(self, cond: I2VCondition, text: torch.Tensor, batch: int) -> torch.Tensor:
        """[image tokens | embedded text] -> [B, I + T, D]."""
        img = self.img_emb(cond.clip_fea.to(device=text.device, dtype=self.img_emb.proj[1].weight.dtype))
        return torch.cat([img.expand(batch, -1, -1).to(text.dtype), text], dim=1)

    def prepare_condition(self, cond: I2VCondition) -> PreparedCondition:
        context = self._image_context(cond, self.embed_text(cond.context), cond.context.shape[0])
        return PreparedCondition(context, [block.cross_attn.kv(context) for block in self.blocks], extra=cond.y)

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond):
        """x [B, 16, F, H, W] noise latents + cond (or its PreparedCondition) -> tokens [B, L, D] and a context of
        [image | text] tokens."""
        prepared = cond if isinstance(cond, PreparedCondition) else None
        y = (prepared.extra if prepared is not None else cond.y).to(device=x.device, dtype=x.dtype)
        y = y.expand(x.shape[0], -1, -1, -1, -1)
        if prepared is not None:
            return super().embed(torch.cat([x, y], dim=1), t, prepared)  # 36 input channels
        tokens, ctx = super().embed(torch.cat([x, y], dim=1), t, cond.context)
        return tokens, dataclasses.replace(ctx, context=self._image_context(cond, ctx.context, x.shape[0]))

    def forward(self, x, t, cond: I2VCondition):
        tokens, ctx = self.embed(x, t, cond)
        return self.unpatchify(self.forward_head(self.forward_blocks(tokens, ctx), ctx), ctx.grid)


@dataclass
class LatentCondition:
    """Wan2.2 I2V-A14B's conditioning: text and the ``y`` channels, no CLIP features."""
    context: torch.Tensor  # [B, T', text_dim]
    y: torch.Tensor  # [B, 20, F, H, W] mask (4) + image latents (16)

    def to(self, device):
        return LatentCondition(self.context.to(device), self.y.to(device))


class WanLatentCondModel(WanModel):
    """Wan2.2 I2V-A14B (``model_type='i2v'`` without ``img_emb``): the T2V model whose patch embedding takes the
    noise followed by ``y`` (in_dim = 16 + 20); cross-attention over the text only."""

    def prepare_condition(self, cond: LatentCondition) -> PreparedCondition:
        return dataclasses.replace(super().prepare_condition(cond.context), extra=cond.y)

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond):
        prepared = cond if isinstance(cond, PreparedCondition) else None
        y = (prepared.extra if prepared is not None else cond.y).to(device=x.device, dtype=x.dtype)
        y = y.expand(x.shape[0], -1, -1, -1, -1)
        return super().embed(torch.cat([x, y], dim=1), t, prepared if prepared is not None else cond.context)


def build_wan_model(cfg: WanConfig) -> WanModel:
    """The T2V or I2V DiT for a config (``image_dim`` > 0 means Wan2.1 I2V; more input than output channels
    without CLIP, Wan2.2 I2V; ``coord_channels`` > 0 the embedded model's coordinate-channel variant,
    models/wan_coords.py)."""
    if cfg.image_dim > 0:
        return WanI2VModel(cfg)
    if cfg.coord_channels > 0:
        return WanCoordModel(cfg)
    if cfg.in_dim > cfg.out_dim:
        return WanLatentCondModel(cfg)
    return WanModel(cfg)


@dataclass
class FirstFrameCondition:
    """Wan2.2 TI2V-5B with an image: the text and the image's normalised VAE latents, the first latent frame."""
    context: torch.Tensor  # [B, T', text_dim]
    z0: torch.Tensor  # [B, C, 1, H, W]

    def to(self, device):
        return FirstFrameCondition(self.context.to(device), self.z0.to(device))


class WanFirstFrameModel(WanModel):
    """Wan2.2 TI2V-5B's image-to-video mode (Wan-Video/Wan2.2 ``textimage2video``, diffusers' ``expand_timesteps``):
    the same DiT as text-to-video; the first latent frame of the input is replaced by the image's latents and the
    tokens of that frame get timestep 0 (a timestep per token), the others the step's."""

    def prepare_condition(self, cond: FirstFrameCondition) -> PreparedCondition:
        return dataclasses.replace(super().prepare_condition(cond.context), extra=cond.z0)

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond):
        prepared = cond if isinstance(cond, PreparedCondition) else None
        z0 = (prepared.extra if prepared is not None else cond.z0).to(device=x.device, dtype=x.dtype)
        x = torch.cat([z0.expand(x.shape[0], -1, -1, -1, -1), x[:, :, 1:]], dim=2)
        pf, ph, pw = self.cfg.patch_size
        frames, per_frame = x.shape[2] // pf, (x.shape[3] // ph) * (x.shape[4] // pw)
        t_tok = t.float()[:, None].expand(x.shape[0], frames * per_frame).clone()  # [B, L]
        t_tok[:, :per_frame] = 0  # the image's tokens (patches of the first latent frame; pf is 1)
        return super().embed(x, t_tok, prepared if prepared is not None else cond.context)
