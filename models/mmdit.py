"""What the joint text+image families built on diffusers' transformers share: the block context passed through
diffusers' blocks, and the attention processor that routes their joint attention through our ``attn_op`` seam.

diffusers' blocks call ``attn(hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)`` and pass
``image_rotary_emb`` through untouched; our adapters pass the JointContext there, so the processor knows the
text length, the (sharded) image RoPE and the padding. The processor computes the projections, QK norms and RoPE
exactly as diffusers' own processors do, then calls ``attn.attn_op`` (LocalJointAttention, or its SP version).

Shape legend: B batch, L image tokens, T text tokens, D width, N heads, Dh head dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.attention_joint import LocalJointAttention


@dataclass
class JointContext:
    """Everything the block stack needs besides the image tokens. Text tokens are re-embedded at every call."""
    temb: torch.Tensor  # [B, D] time (+ guidance + pooled text) embedding
    txt: torch.Tensor  # [B, T, D] embedded text tokens (kept whole on every rank)
    freqs: torch.Tensor  # [L, 2, Dh] image RoPE (cos, sin) per token: sharded with the tokens
    txt_freqs: torch.Tensor | None  # [T, 2, Dh] text RoPE (FLUX) or None (HunyuanVideo: none on text)
    k_lens: torch.Tensor  # [B] real image tokens of the *global* sequence
    txt_lens: torch.Tensor | None  # [B] real text tokens (None: all)
    grid: tuple  # image token grid


def _rope(x, freqs):
    """Interleaved-pair RoPE (diffusers' apply_rotary_emb, use_real, unbind -1): x [B, S, N, Dh], freqs [S, 2, Dh]."""
    cos, sin = freqs[None, :, 0, None, :], freqs[None, :, 1, None, :]
    x_re, x_im = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-x_im, x_re], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _heads(x, attn):
    return x.unflatten(-1, (attn.heads, -1))  # [B, S, N, Dh]


class JointAttnProcessor:
    """diffusers attention processor for FLUX and HunyuanVideo double- and single-stream blocks.

    Cases: a double-stream block gives image and text apart and has ``add_q_proj`` for text; HunyuanVideo's
    single-stream block gives them apart without it; FLUX's single-stream block gives [text; image] concatenated.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        ctx: JointContext = image_rotary_emb
        concatenated = encoder_hidden_states is None
        if concatenated:
            t = ctx.txt.shape[1]
            txt, img = hidden_states[:, :t], hidden_states[:, t:]
        else:
            img, txt = hidden_states, encoder_hidden_states
        q, k, v = (_heads(proj(img), attn) for proj in (attn.to_q, attn.to_k, attn.to_v))  # [B, Ls, N, Dh]
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if getattr(attn, "add_q_proj", None) is not None:
            tq, tk, tv = (_heads(proj(txt), attn) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if getattr(attn, "norm_added_q", None) is not None:
                tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
        else:
            tq, tk, tv = (_heads(proj(txt), attn) for proj in (attn.to_q, attn.to_k, attn.to_v))  # [B, T, N, Dh]
            if attn.norm_q is not None:
                tq, tk = attn.norm_q(tq), attn.norm_k(tk)
        q, k = _rope(q, ctx.freqs), _rope(k, ctx.freqs)
        if ctx.txt_freqs is not None:
            tq, tk = _rope(tq, ctx.txt_freqs), _rope(tk, ctx.txt_freqs)
        o_img, o_txt = attn.attn_op(q, k, v, tq, tk, tv, ctx.k_lens, ctx.txt_lens)
        o_img, o_txt = o_img.flatten(2).to(q.dtype), o_txt.flatten(2).to(q.dtype)
        if concatenated:
            return torch.cat([o_txt, o_img], dim=1)
        if getattr(attn, "to_out", None) is not None:
            o_img = attn.to_out[1](attn.to_out[0](o_img))
        if getattr(attn, "to_add_out", None) is not None:
            o_txt = attn.to_add_out(o_txt)
        return o_img, o_txt


def install_joint_attention(blocks) -> int:
    """Give every block's ``attn`` our processor and a LocalJointAttention ``attn_op`` submodule."""
    n = 0
    for block in blocks:
        block.attn.set_processor(JointAttnProcessor())
        block.attn.attn_op = LocalJointAttention()
        n += 1
    return n


def image_token_lens(batch: int, num_tokens: int, device) -> torch.Tensor:
    return torch.full((batch,), num_tokens, dtype=torch.long, device=device)


class JointSeams:
    """Sampler seams shared by the diffusers MM-DiT adapters (FLUX, HunyuanVideo): joint attention through a
    swappable ``attn_op``, the modulated head and the reference path. Subclasses add embed, forward_blocks and
    unpatchify; put this class first in the bases."""

    def __init__(self, **config):
        super().__init__(**config)
        install_joint_attention(list(self.transformer_blocks) + list(self.single_transformer_blocks))

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    def forward_head(self, tokens: torch.Tensor, ctx: JointContext) -> torch.Tensor:
        return self.proj_out(self.norm_out(tokens, ctx.temb))  # [B, L, C * patch volume]

    def denoise(self, x, t, cond):
        """Full call through the seams (no cache, no parallelism): the reference path."""
        tokens, ctx = self.embed(x, t, cond)
        return self.unpatchify(self.forward_head(self.forward_blocks(tokens, ctx), ctx), ctx.grid)
