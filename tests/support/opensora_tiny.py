"""A tiny random Open-Sora 1.2 checkpoint folder in the published layout (built locally, no download).

- ``transformer/``: our STDiT3 at the ``tiny-opensora`` size, ``config.json`` with STDiT3Config's field names (as
  hpcai-tech/OpenSora-STDiT-v3 ships it) + ``model.safetensors``;
- ``vae/``: the VideoAutoencoderPipeline at toy size, ``model.safetensors`` with the release's key prefixes
  (``spatial_vae.module.*`` = a diffusers AutoencoderKL of stride 8, ``temporal_vae.*`` = VAE_Temporal with 8
  filters, ``scale`` / ``shift``), ``config.json`` as the release's (vae_2d, vae_temporal, micro_frame_size, scale,
  shift) and ``spatial_vae/config.json`` (the 2D VAE's diffusers config, since it is not the release's SDXL VAE);
- ``text_encoder/`` + ``tokenizer/``: transformers' T5EncoderModel (t5-v1_1 style, width 32) and a word-level
  tokenizer (tests/support/wan_tiny.py).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from magcache_dist.random_weights import randomize
from models.opensora import STDiT3, opensora_config
from models.opensora_vae import OpenSoraVAE, OpenSoraVAEConfig, TemporalVAEConfig
from tests.support.wan_tiny import WORDS, build_tokenizer

T5_SIZE = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
SPATIAL_2D = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16],
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  layers_per_block=1, norm_num_groups=4, act_fn="silu", sample_size=64)
TEMPORAL = dict(type="VAE_Temporal", in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=8, num_res_blocks=1,
                channel_multipliers=[1, 2, 2, 4], temporal_downsample=[False, True, True], num_groups=4)
SHIFT, SCALE = (-0.10, 0.34, 0.27, 0.98), (3.85, 2.32, 2.33, 3.06)
# 23 frames -> 5 + 2 latent frames (one full 17-frame chunk and a 6-frame rest, padded by 2 in front); 48 x 48 px ->
# 6 x 6 latents -> 3 x 3 patches: 63 tokens, odd on purpose (sequence parallelism over 2 ranks pads and masks)
VIDEO = ["video.frames=23", "video.height=48", "video.width=48", "video.fps=24"]


def vae_config() -> OpenSoraVAEConfig:
    t = {k: tuple(v) if isinstance(v, list) else v for k, v in TEMPORAL.items() if k != "type"}
    return OpenSoraVAEConfig(vae_2d=dict(SPATIAL_2D), temporal=TemporalVAEConfig(**t), shift=SHIFT, scale=SCALE)


def build_vae(seed: int = 2) -> OpenSoraVAE:
    torch.manual_seed(seed)
    return OpenSoraVAE(vae_config()).eval()


def build_t5(seed: int = 1):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(WORDS) + 3, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                   pad_token_id=0, eos_token_id=1, **T5_SIZE)
    return randomize(T5EncoderModel(cfg), seed, std=0.3).eval()


def _json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def build_folder(name: str, root: str, seed: int = 0) -> str:
    assert name == "tiny-opensora", name
    mcfg = opensora_config(name)
    torch.manual_seed(seed)
    dit = randomize(STDiT3(mcfg), seed).eval()
    os.makedirs(os.path.join(root, "transformer"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
              os.path.join(root, "transformer", "model.safetensors"))
    _json(os.path.join(root, "transformer", "config.json"),
          dict(architectures=["STDiT3"], model_type="STDiT3", input_size=[None, None, None],
               input_sq_size=mcfg.input_sq_size, in_channels=mcfg.in_channels, patch_size=list(mcfg.patch_size),
               hidden_size=mcfg.hidden_size, depth=mcfg.depth, num_heads=mcfg.num_heads, mlp_ratio=mcfg.mlp_ratio,
               class_dropout_prob=0.1, pred_sigma=mcfg.pred_sigma, drop_path=0.0,
               caption_channels=mcfg.caption_channels, model_max_length=mcfg.model_max_length, qk_norm=True,
               enable_flash_attn=False, enable_layernorm_kernel=False, skip_y_embedder=False))
    vae = build_vae(seed + 2)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    sd["scale"], sd["shift"] = vae.scale.clone(), vae.shift.clone()  # persistent buffers in the release
    os.makedirs(os.path.join(root, "vae"), exist_ok=True)
    save_file(sd, os.path.join(root, "vae", "model.safetensors"))
    _json(os.path.join(root, "vae", "config.json"),
          dict(architectures=["VideoAutoencoderPipeline"], model_type="VideoAutoencoderPipeline",
               vae_2d=dict(type="VideoAutoencoderKL", from_pretrained="spatial_vae", micro_batch_size=4),
               vae_temporal=TEMPORAL, micro_frame_size=17, shift=list(SHIFT), scale=list(SCALE),
               freeze_vae_2d=False, cal_loss=False))
    _json(os.path.join(root, "vae", "spatial_vae", "config.json"), dict(_class_name="AutoencoderKL", **SPATIAL_2D))
    build_t5(seed + 1).save_pretrained(os.path.join(root, "text_encoder"))
    build_tokenizer().save_pretrained(os.path.join(root, "tokenizer"))
    return root


def pipeline_overrides(name: str, folder: str, out: str, *extra: str) -> list[str]:
    return [f"model.name={name}", f"ckpt_dir={folder}", f"output_dir={out}", "progress=false", "model.dtype=float32",
            "text_encoder.dtype=float32", "vae.dtype=float32", "sampler.solver=euler", "sampler.num_steps=8",
            "sampler.guidance=7", "cache.magcache.preset=opensora-1.2", "cache.magcache.thresh=0.24",
            "cache.magcache.K=5", "cache.magcache.retention=0.2", "prompt=a red car moves on the road", *VIDEO,
            *extra]
