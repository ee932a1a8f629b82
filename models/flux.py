"""FLUX.1 (dev: guidance-distilled; schnell: timestep-distilled) as an adapter around diffusers'
``FluxTransformer2DModel``, the well-kept definition. The adapter adds the sampler seams and routes the joint
attention through our ``attn_op`` seam (models.mmdit); the state_dict is diffusers' own. Weights load from the
diffusers layout or from Black Forest Labs' official layout (``double_blocks.N.img_attn.qkv`` ...), converted by
``FLUX_OFFICIAL`` below.

Latents [B, C, 1, H, W] (a one-frame video) are packed into 2x2 patches: L = H/2 * W/2 image tokens of 4C
channels; image RoPE ids are (0, row, col), text ids are 0 (BFL's convention).
Shape legend: B batch, L image tokens, T text tokens, D width, Dh head dim.
"""
from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel

from models.layouts import Rule
from models.mmdit import JointContext, JointSeams, image_token_lens

# name -> FluxTransformer2DModel config. Published sizes from black-forest-labs/FLUX.1-{dev,schnell}; tiny: ours.
# dev and schnell differ only in the guidance embedding (schnell is guidance-distilled without it)
_PUBLISHED = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                  joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
# tests and demo: pixel space (3 channels -> 12 packed), text from models.tiny_text (32 channels)
_PIXEL_TINY = dict(in_channels=12, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
                   joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
# the full pipeline at toy size (tests: tests/support/flux_tiny.py): a 4-channel latent VAE (-> 16 packed), T5 and
# CLIP of width 32
_PIPELINE_TINY = dict(_PIXEL_TINY, in_channels=16)
FLUX_CONFIGS = {
    "flux.1-dev": dict(_PUBLISHED, guidance_embeds=True),
    "flux.1-schnell": dict(_PUBLISHED, guidance_embeds=False),
    "flux.1-dev-tiny": dict(_PIXEL_TINY, guidance_embeds=True),
    "flux.1-schnell-tiny": dict(_PIXEL_TINY, guidance_embeds=False),
    "tiny-flux-dev": dict(_PIPELINE_TINY, guidance_embeds=True),
    "tiny-flux-schnell": dict(_PIPELINE_TINY, guidance_embeds=False),
}

_D = "transformer_blocks.{i}."
_S = "single_transformer_blocks.{i}."
FLUX_OFFICIAL = [
    Rule("img_in.{p}", ("x_embedder.{p}",)),
    Rule("txt_in.{p}", ("context_embedder.{p}",)),
    Rule("time_in.in_layer.{p}", ("time_text_embed.timestep_embedder.linear_1.{p}",)),
    Rule("time_in.out_layer.{p}", ("time_text_embed.timestep_embedder.linear_2.{p}",)),
    Rule("vector_in.in_layer.{p}", ("time_text_embed.text_embedder.linear_1.{p}",)),
    Rule("vector_in.out_layer.{p}", ("time_text_embed.text_embedder.linear_2.{p}",)),
    Rule("guidance_in.in_layer.{p}", ("time_text_embed.guidance_embedder.linear_1.{p}",)),
    Rule("guidance_in.out_layer.{p}", ("time_text_embed.guidance_embedder.linear_2.{p}",)),
    Rule("double_blocks.{i}.img_mod.lin.{p}", (_D + "norm1.linear.{p}",)),
    Rule("double_blocks.{i}.txt_mod.lin.{p}", (_D + "norm1_context.linear.{p}",)),
    Rule("double_blocks.{i}.img_attn.qkv.{p}", (_D + "attn.to_q.{p}", _D + "attn.to_k.{p}", _D + "attn.to_v.{p}"),
         "split"),
    Rule("double_blocks.{i}.txt_attn.qkv.{p}",
         (_D + "attn.add_q_proj.{p}", _D + "attn.add_k_proj.{p}", _D + "attn.add_v_proj.{p}"), "split"),
    Rule("double_blocks.{i}.img_attn.norm.query_norm.scale", (_D + "attn.norm_q.weight",)),
    Rule("double_blocks.{i}.img_attn.norm.key_norm.scale", (_D + "attn.norm_k.weight",)),
    Rule("double_blocks.{i}.txt_attn.norm.query_norm.scale", (_D + "attn.norm_added_q.weight",)),
    Rule("double_blocks.{i}.txt_attn.norm.key_norm.scale", (_D + "attn.norm_added_k.weight",)),
    Rule("double_blocks.{i}.img_attn.proj.{p}", (_D + "attn.to_out.0.{p}",)),
    Rule("double_blocks.{i}.txt_attn.proj.{p}", (_D + "attn.to_add_out.{p}",)),
    Rule("double_blocks.{i}.img_mlp.0.{p}", (_D + "ff.net.0.proj.{p}",)),
    Rule("double_blocks.{i}.img_mlp.2.{p}", (_D + "ff.net.2.{p}",)),
    Rule("double_blocks.{i}.txt_mlp.0.{p}", (_D + "ff_context.net.0.proj.{p}",)),
    Rule("double_blocks.{i}.txt_mlp.2.{p}", (_D + "ff_context.net.2.{p}",)),
    Rule("single_blocks.{i}.modulation.lin.{p}", (_S + "norm.linear.{p}",)),
    Rule("single_blocks.{i}.linear1.{p}",
         (_S + "attn.to_q.{p}", _S + "attn.to_k.{p}", _S + "attn.to_v.{p}", _S + "proj_mlp.{p}"), "split_qkv_rest"),
    Rule("single_blocks.{i}.norm.query_norm.scale", (_S + "attn.norm_q.weight",)),
    Rule("single_blocks.{i}.norm.key_norm.scale", (_S + "attn.norm_k.weight",)),
    Rule("single_blocks.{i}.linear2.{p}", (_S + "proj_out.{p}",)),
    Rule("final_layer.linear.{p}", ("proj_out.{p}",)),
    Rule("final_layer.adaLN_modulation.1.{p}", ("norm_out.linear.{p}",), "swap"),
]
FLUX_OFFICIAL_MARKER = "double_blocks."


def flux_config(name: str) -> dict:
    if name not in FLUX_CONFIGS:
        raise ValueError(f"model.name={name!r} is not a FLUX size; choose one of {sorted(FLUX_CONFIGS)}")
    return dict(FLUX_CONFIGS[name])


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, 1, H, W] -> [B, H/2 * W/2, 4C] (2x2 patches, channel-major inside a patch, as diffusers packs)."""
    b, c, _, h, w = x.shape
    return (x[:, :, 0].reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
            .reshape(b, (h // 2) * (w // 2), 4 * c))


def unpack(tokens: torch.Tensor, grid) -> torch.Tensor:
    """[B, L, 4C] -> [B, C, 1, H, W]."""
    _, h2, w2 = grid
    b, c = tokens.shape[0], tokens.shape[-1] // 4
    x = tokens.reshape(b, h2, w2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h2 * 2, w2 * 2)
    return x[:, :, None]


class FluxDiT(JointSeams, FluxTransformer2DModel):
    """diffusers' FLUX transformer plus the sampler seams; joint attention goes through ``attn_op``."""

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, JointContext]:
        """x [B, C, 1, H, W], t [B] in 0..1000, cond FluxCond -> image tokens [B, L, D]."""
        dtype = self.x_embedder.weight.dtype
        b, _, _, h, w = x.shape
        tokens = self.x_embedder(pack(x).to(dtype))  # [B, L, D]
        pooled = cond.pooled.to(x.device, dtype).expand(b, -1)
        if self.config.guidance_embeds:
            g = torch.full((b,), float(cond.guidance) * 1000.0, device=x.device)
            temb = self.time_text_embed(t.to(dtype), g.to(dtype), pooled)
        else:
            temb = self.time_text_embed(t.to(dtype), pooled)
        txt = self.context_embedder(cond.text.to(x.device, dtype).expand(b, -1, -1))  # [B, T, D]
        grid = (1, h // 2, w // 2)
        rows, cols = torch.meshgrid(torch.arange(grid[1]), torch.arange(grid[2]), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(x.device)
        txt_ids = torch.zeros(txt.shape[1], 3, device=x.device)
        cos, sin = self.pos_embed(torch.cat([txt_ids, img_ids.float()]))  # [T + L, Dh]
        freqs = torch.stack([cos, sin], 1)  # [T + L, 2, Dh]
        t_len = txt.shape[1]
        return tokens, JointContext(temb=temb, txt=txt, freqs=freqs[t_len:], txt_freqs=freqs[:t_len],
                                    k_lens=image_token_lens(b, tokens.shape[1], x.device), txt_lens=None, grid=grid)

    def forward_blocks(self, tokens: torch.Tensor, ctx: JointContext) -> torch.Tensor:
        txt = ctx.txt
        for block in self.transformer_blocks:
            txt, tokens = block(hidden_states=tokens, encoder_hidden_states=txt, temb=ctx.temb, image_rotary_emb=ctx)
        for block in self.single_transformer_blocks:
            txt, tokens = block(hidden_states=tokens, encoder_hidden_states=txt, temb=ctx.temb, image_rotary_emb=ctx)
        return tokens  # [B, L, D]: the image tokens only (the cached residual covers these)

    def unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        return unpack(out.float(), grid)  # [B, C, 1, H, W]; FLUX predicts noise - x0, the sampler's convention

