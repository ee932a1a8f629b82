"""HunyuanVideo (guidance-distilled T2V) as an adapter around diffusers' ``HunyuanVideoTransformer3DModel``.

The adapter adds the sampler seams and routes the joint attention of the double- and single-stream blocks through
our ``attn_op`` seam (models.mmdit); the text token refiner runs once per call on the whole text (text tokens are
re-embedded every step, as published). Weights load from the diffusers layout or from Tencent's official layout
(``double_blocks.N.img_attn_qkv`` ...), converted by ``HUNYUAN_OFFICIAL``.

Shape legend: B batch, C channels, F/H/W latent frames/height/width, L image tokens, T text tokens, D width.
"""
from __future__ import annotations

import torch
from diffusers import HunyuanVideoTransformer3DModel

from models.layouts import Rule
from models.mmdit import JointContext, JointSeams, image_token_lens

# Published size from tencent/HunyuanVideo (diffusers config); hunyuanvideo-tiny: ours (pixel space, tiny text
# encoder); tiny-hunyuanvideo: ours (the full pipeline's latent space at toy size).
HUNYUAN_CONFIGS = {
    "hunyuanvideo": dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                         num_layers=20, num_single_layers=40, num_refiner_layers=2, patch_size=2, patch_size_t=1,
                         text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56),
                         guidance_embeds=True),
    "hunyuanvideo-tiny": dict(in_channels=3, out_channels=3, num_attention_heads=4, attention_head_dim=16,
                              num_layers=1, num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1,
                              text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(4, 6, 6),
                              guidance_embeds=True),
    # the full pipeline (LLaMA + CLIP text, HunyuanVideo VAE) at toy size, for tests (tests/support/hunyuan_tiny.py)
    "tiny-hunyuanvideo": dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                              num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
                              text_embed_dim=32, pooled_projection_dim=24, rope_axes_dim=(4, 6, 6),
                              guidance_embeds=True),
}

_D = "transformer_blocks.{i}."
_R = "context_embedder.token_refiner.refiner_blocks.{i}."
_OR = "txt_in.individual_token_refiner.blocks.{i}."
HUNYUAN_OFFICIAL = [
    Rule("img_in.proj.{p}", ("x_embedder.proj.{p}",)),
    Rule("time_in.mlp.0.{p}", ("time_text_embed.timestep_embedder.linear_1.{p}",)),
    Rule("time_in.mlp.2.{p}", ("time_text_embed.timestep_embedder.linear_2.{p}",)),
    Rule("guidance_in.mlp.0.{p}", ("time_text_embed.guidance_embedder.linear_1.{p}",)),
    Rule("guidance_in.mlp.2.{p}", ("time_text_embed.guidance_embedder.linear_2.{p}",)),
    Rule("vector_in.in_layer.{p}", ("time_text_embed.text_embedder.linear_1.{p}",)),
    Rule("vector_in.out_layer.{p}", ("time_text_embed.text_embedder.linear_2.{p}",)),
    Rule("txt_in.input_embedder.{p}", ("context_embedder.proj_in.{p}",)),
    Rule("txt_in.t_embedder.mlp.0.{p}", ("context_embedder.time_text_embed.timestep_embedder.linear_1.{p}",)),
    Rule("txt_in.t_embedder.mlp.2.{p}", ("context_embedder.time_text_embed.timestep_embedder.linear_2.{p}",)),
    Rule("txt_in.c_embedder.linear_1.{p}", ("context_embedder.time_text_embed.text_embedder.linear_1.{p}",)),
    Rule("txt_in.c_embedder.linear_2.{p}", ("context_embedder.time_text_embed.text_embedder.linear_2.{p}",)),
    Rule(_OR + "norm1.{p}", (_R + "norm1.{p}",)),
    Rule(_OR + "norm2.{p}", (_R + "norm2.{p}",)),
    Rule(_OR + "self_attn_qkv.{p}", (_R + "attn.to_q.{p}", _R + "attn.to_k.{p}", _R + "attn.to_v.{p}"), "split"),
    Rule(_OR + "self_attn_proj.{p}", (_R + "attn.to_out.0.{p}",)),
    Rule(_OR + "mlp.fc1.{p}", (_R + "ff.net.0.proj.{p}",)),
    Rule(_OR + "mlp.fc2.{p}", (_R + "ff.net.2.{p}",)),
    Rule(_OR + "adaLN_modulation.1.{p}", (_R + "norm_out.linear.{p}",)),
    Rule("double_blocks.{i}.img_mod.linear.{p}", (_D + "norm1.linear.{p}",)),
    Rule("double_blocks.{i}.txt_mod.linear.{p}", (_D + "norm1_context.linear.{p}",)),
    Rule("double_blocks.{i}.img_attn_qkv.{p}", (_D + "attn.to_q.{p}", _D + "attn.to_k.{p}", _D + "attn.to_v.{p}"),
         "split"),
    Rule("double_blocks.{i}.txt_attn_qkv.{p}",
         (_D + "attn.add_q_proj.{p}", _D + "attn.add_k_proj.{p}", _D + "attn.add_v_proj.{p}"), "split"),
    Rule("double_blocks.{i}.img_attn_q_norm.weight", (_D + "attn.norm_q.weight",)),
    Rule("double_blocks.{i}.img_attn_k_norm.weight", (_D + "attn.norm_k.weight",)),
    Rule("double_blocks.{i}.txt_attn_q_norm.weight", (_D + "attn.norm_added_q.weight",)),
    Rule("double_blocks.{i}.txt_attn_k_norm.weight", (_D + "attn.norm_added_k.weight",)),
    Rule("double_blocks.{i}.img_attn_proj.{p}", (_D + "attn.to_out.0.{p}",)),
    Rule("double_blocks.{i}.txt_attn_proj.{p}", (_D + "attn.to_add_out.{p}",)),
    Rule("double_blocks.{i}.img_mlp.fc1.{p}", (_D + "ff.net.0.proj.{p}",)),
    Rule("double_blocks.{i}.img_mlp.fc2.{p}", (_D + "ff.net.2.{p}",)),
    Rule("double_blocks.{i}.txt_mlp.fc1.{p}", (_D + "ff_context.net.0.proj.{p}",)),
    Rule("double_blocks.{i}.txt_mlp.fc2.{p}", (_D + "ff_context.net.2.{p}",)),
    Rule("single_blocks.{i}.linear1.{p}",
         ("single_transformer_blocks.{i}.attn.to_q.{p}", "single_transformer_blocks.{i}.attn.to_k.{p}",
          "single_transformer_blocks.{i}.attn.to_v.{p}", "single_transformer_blocks.{i}.proj_mlp.{p}"),
         "split_qkv_rest"),
    Rule("single_blocks.{i}.linear2.{p}", ("single_transformer_blocks.{i}.proj_out.{p}",)),
    Rule("single_blocks.{i}.q_norm.weight", ("single_transformer_blocks.{i}.attn.norm_q.weight",)),
    Rule("single_blocks.{i}.k_norm.weight", ("single_transformer_blocks.{i}.attn.norm_k.weight",)),
    Rule("single_blocks.{i}.modulation.linear.{p}", ("single_transformer_blocks.{i}.norm.linear.{p}",)),
    Rule("final_layer.linear.{p}", ("proj_out.{p}",)),
    Rule("final_layer.adaLN_modulation.1.{p}", ("norm_out.linear.{p}",), "swap"),
]
HUNYUAN_OFFICIAL_MARKER = "double_blocks."


def hunyuan_config(name: str) -> dict:
    if name not in HUNYUAN_CONFIGS:
        raise ValueError(f"model.name={name!r} is not a HunyuanVideo size; choose one of {sorted(HUNYUAN_CONFIGS)}")
    return dict(HUNYUAN_CONFIGS[name])


class HunyuanVideoDiT(JointSeams, HunyuanVideoTransformer3DModel):
    """diffusers' HunyuanVideo transformer plus the sampler seams; joint attention goes through ``attn_op``."""

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, JointContext]:
        """x [B, C, F, H, W], t [B] in 0..1000, cond HunyuanCond -> image tokens [B, L, D]."""
        dtype = self.x_embedder.proj.weight.dtype
        b = x.shape[0]
        cos, sin = self.rope(x)  # [L, Dh] each
        g = torch.full((b,), float(cond.guidance) * 1000.0, device=x.device, dtype=dtype)
        temb, _ = self.time_text_embed(t.to(dtype), cond.pooled.to(x.device, dtype).expand(b, -1), g)
        tokens = self.x_embedder(x.to(dtype))  # [B, L, D]
        mask = cond.mask.to(x.device).expand(b, -1)
        txt = self.context_embedder(cond.text.to(x.device, dtype).expand(b, -1, -1), t.to(dtype), mask)  # [B, T, D]
        p, pt = self.config.patch_size, self.config.patch_size_t
        grid = (x.shape[2] // pt, x.shape[3] // p, x.shape[4] // p)
        return tokens, JointContext(temb=temb, txt=txt, freqs=torch.stack([cos, sin], 1), txt_freqs=None,
                                    k_lens=image_token_lens(b, tokens.shape[1], x.device),
                                    txt_lens=mask.sum(1).long(), grid=grid)

    def forward_blocks(self, tokens: torch.Tensor, ctx: JointContext) -> torch.Tensor:
        txt = ctx.txt
        for block in list(self.transformer_blocks) + list(self.single_transformer_blocks):
            tokens, txt = block(tokens, txt, ctx.temb, None, ctx)
        return tokens  # [B, L, D]: image tokens only

    def unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        """[B, L, C*pt*p*p] -> [B, C, F, H, W] (diffusers' channel order: C, pt, p, p)."""
        p, pt = self.config.patch_size, self.config.patch_size_t
        f, h, w = grid
        out = out.float().reshape(out.shape[0], f, h, w, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

