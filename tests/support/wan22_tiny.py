"""Tiny random Wan2.2 A14B folders (two experts) in both published layouts, built locally (no download).

The shared components are tests/support/wan_tiny.py's (transformers' UMT5EncoderModel, a word-level fast tokenizer,
diffusers' AutoencoderKLWan); the experts are two differently seeded ``tiny-wan22-{t2v,i2v}`` DiTs. Official layout:
``high_noise_model/`` and ``low_noise_model/`` (Wan's key names and config.json), the umT5 .pth, the tokenizer folder
and ``Wan2.1_VAE.pth``; diffusers layout: ``transformer/`` (high), ``transformer_2/`` (low), a UniPC flow scheduler
and ``model_index.json`` with ``boundary_ratio``, as ``WanPipeline.save_pretrained`` writes them.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from magcache_dist.random_weights import randomize
from models.loading import official_to_diffusers_key
from models.wan import get_config
from models.wan_i2v import build_wan_model
from tests.support.wan_tiny import (
    build_t5,
    build_tokenizer,
    build_vae,
    t5_hf_to_official,
    vae_diffusers_to_official_key,
)

BOUNDARY = {"t2v": 0.875, "i2v": 0.900}
SHIFT = {"t2v": 12.0, "i2v": 5.0}


def build_components(task: str, seed: int = 0) -> dict:
    name = f"tiny-wan22-{task}"
    high = randomize(build_wan_model(get_config(name)), seed).eval()
    low = randomize(build_wan_model(get_config(name)), seed + 10).eval()
    return dict(name=name, high=high, low=low, t5=build_t5(seed + 1), tokenizer=build_tokenizer(),
                vae=build_vae(seed + 2))


def official_config(cfg, task: str) -> dict:
    return dict(model_type=task, patch_size=list(cfg.patch_size), text_len=cfg.text_len, in_dim=cfg.in_dim,
                dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
                num_heads=cfg.num_heads, num_layers=cfg.num_layers, window_size=[-1, -1], qk_norm=True,
                cross_attn_norm=True, eps=cfg.eps)


def diffusers_config(cfg) -> dict:
    return dict(_class_name="WanTransformer3DModel", patch_size=list(cfg.patch_size), num_attention_heads=cfg.num_heads,
                attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps, image_dim=None,
                added_kv_proj_dim=None, rope_max_seq_len=1024)


def save_expert(model, folder: str, config: dict, diffusers: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    sd = model.state_dict()
    if diffusers:
        sd = {official_to_diffusers_key(k): v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def task_of(comps: dict) -> str:
    return comps["name"].rsplit("-", 1)[1]


def save_official(comps: dict, root: str, experts=("high", "low")) -> str:
    task = task_of(comps)
    for name, sub in (("high", "high_noise_model"), ("low", "low_noise_model")):
        if name in experts:
            save_expert(comps[name], os.path.join(root, sub), official_config(comps[name].cfg, task), diffusers=False)
    torch.save(t5_hf_to_official(comps["t5"].state_dict()), os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "google", "umt5-xxl"))
    torch.save({vae_diffusers_to_official_key(k): v.contiguous() for k, v in comps["vae"].state_dict().items()},
               os.path.join(root, "Wan2.1_VAE.pth"))
    return root


def save_diffusers(comps: dict, root: str, boundary="published") -> str:
    """``boundary``: model_index.json's boundary_ratio ("published": the task's; None: left out)."""
    from diffusers import UniPCMultistepScheduler

    task = task_of(comps)
    for name, sub in (("high", "transformer"), ("low", "transformer_2")):
        save_expert(comps[name], os.path.join(root, sub), diffusers_config(comps[name].cfg), diffusers=True)
    comps["t5"].save_pretrained(os.path.join(root, "text_encoder"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "tokenizer"))
    comps["vae"].save_pretrained(os.path.join(root, "vae"))
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT[task],
                            num_train_timesteps=1000).save_pretrained(os.path.join(root, "scheduler"))
    index = {"_class_name": "WanImageToVideoPipeline" if task == "i2v" else "WanPipeline",
             "transformer": ["diffusers", "WanTransformer3DModel"],
             "transformer_2": ["diffusers", "WanTransformer3DModel"]}
    if boundary is not None:
        index["boundary_ratio"] = BOUNDARY[task] if boundary == "published" else boundary
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(index, f)
    return root


def wan22_overrides(task: str, ckpt_dir: str, out: str, *extra: str, image: str | None = None) -> list[str]:
    from tests.support.wan_tiny import WAN_VIDEO

    o = [f"model.name=tiny-wan22-{task}", f"ckpt_dir={ckpt_dir}", f"output_dir={out}", "progress=false",
         "model.dtype=float32", "text_encoder.dtype=float32", "vae.dtype=float32", "sampler.num_steps=8",
         f"sampler.shift={SHIFT[task]}", "sampler.guidance=4.0", "sampler.guidance_2=3.0",
         "cache.magcache.thresh=0.06", "cache.magcache.K=2", "cache.magcache.retention=0.4",
         "prompt=a red car moves on the road", "negative_prompt=blurry low quality", *WAN_VIDEO]
    if image is not None:
        o.append(f"image={image}")
    return [*o, *extra]


# ---- TI2V-5B: one DiT on the Wan2.2 VAE (48 latent channels, residual blocks, 16x spatial) --------------------------
TI2V_VAE_SIZE = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                     attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                     out_channels=12, patch_size=2, scale_factor_spatial=16)
# 9 frames -> 3 latent frames; 64 x 64 px -> 4 x 4 latents -> 2 x 2 patches: 12 tokens
TI2V_VIDEO = ["video.frames=9", "video.height=64", "video.width=64", "video.fps=8"]


def build_ti2v_vae(seed: int):
    from diffusers import AutoencoderKLWan

    g = torch.Generator().manual_seed(seed)
    mean = (0.3 * torch.randn(48, generator=g)).tolist()
    std = (1.0 + torch.rand(48, generator=g)).tolist()
    torch.manual_seed(seed)
    return AutoencoderKLWan(latents_mean=mean, latents_std=std, **TI2V_VAE_SIZE).eval()


def build_ti2v_components(seed: int = 0) -> dict:
    dit = randomize(build_wan_model(get_config("tiny-wan22-ti2v")), seed).eval()
    return dict(name="tiny-wan22-ti2v", dit=dit, t5=build_t5(seed + 1), tokenizer=build_tokenizer(),
                vae=build_ti2v_vae(seed + 2))


def save_ti2v_diffusers(comps: dict, root: str) -> str:
    from diffusers import UniPCMultistepScheduler

    save_expert(comps["dit"], os.path.join(root, "transformer"), diffusers_config(comps["dit"].cfg), diffusers=True)
    comps["t5"].save_pretrained(os.path.join(root, "text_encoder"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "tokenizer"))
    comps["vae"].save_pretrained(os.path.join(root, "vae"))
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                            num_train_timesteps=1000).save_pretrained(os.path.join(root, "scheduler"))
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "WanPipeline", "expand_timesteps": True,
                   "transformer": ["diffusers", "WanTransformer3DModel"]}, f)
    return root


# ---- TI2V-5B's official layout (Wan-AI/Wan2.2-TI2V-5B) ----------------------------------------------------------
# Facts of the official Wan2.2 VAE (Wan-Video/Wan2.2 wan/modules/vae2_2.py) used to name the tiny VAE's tensors the
# official way, written from the diffusers side and independently of the library's rule table
# (models/wan_components.py vae22_rules), so a test through both checks one against the other:
# - quant_conv / post_quant_conv are the top-level conv1 / conv2; an encoder's or decoder's conv_in is its conv1,
#   norm_out / conv_out its head.0 / head.2; mid_block.resnets.0 / .1 and attentions.0 are middle.0 / .2 and .1;
# - a residual block's norm1, conv1, norm2, conv2, conv_shortcut are residual.0, .2, .3, .6 and shortcut;
# - encoder level L (Down_ResidualBlock) is downsamples.L; its blocks are downsamples.L.downsamples.j and its
#   resampler (diffusers' downsampler) the next entry of that list, downsamples.L.downsamples.<num_res_blocks>;
# - decoder level L (Up_ResidualBlock) is upsamples.L with upsamples.L.upsamples.j, j <= num_res_blocks, and its
#   resampler (diffusers' upsampler) at upsamples.L.upsamples.<num_res_blocks + 1>.
_VAE22_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                 "conv_shortcut": "shortcut"}


def vae22_diffusers_to_official_key(key: str, num_res_blocks: int) -> str:
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    side, parts = head, rest.split(".")
    if parts[0] in ("conv_in", "norm_out", "conv_out"):
        name = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}[parts[0]]
        return ".".join([side, name, *parts[1:]])
    if parts[0] == "mid_block":
        if parts[1] == "attentions":
            return ".".join([side, "middle", "1", *parts[3:]])
        return ".".join([side, "middle", str(2 * int(parts[2])), _VAE22_RESNET[parts[3]], *parts[4:]])
    level = {"down_blocks": ("downsamples", "downsampler", num_res_blocks),
             "up_blocks": ("upsamples", "upsampler", num_res_blocks + 1)}
    outer, sampler, last = level[parts[0]]
    if parts[2] == "resnets":
        return ".".join([side, outer, parts[1], outer, parts[3], _VAE22_RESNET[parts[4]], *parts[5:]])
    assert parts[2] == sampler, key
    return ".".join([side, outer, parts[1], outer, str(last), *parts[3:]])


def official_ti2v_config(cfg) -> dict:
    """The official TI2V-5B DiT config.json (its fields; the release's: model_type ti2v, dim 3072, 24 heads ...)."""
    return dict(_class_name="WanModel", model_type="ti2v", patch_size=list(cfg.patch_size), text_len=cfg.text_len,
                in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim,
                out_dim=cfg.out_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, window_size=[-1, -1],
                qk_norm=True, cross_attn_norm=True, eps=cfg.eps)


def save_ti2v_official(comps: dict, root: str, shards: int = 2) -> str:
    """The official TI2V-5B layout: the DiT in Wan's key names as ``shards`` safetensors shards with their index json
    (the release has 3) and config.json, the umT5 .pth, ``google/umt5-xxl/`` and ``Wan2.2_VAE.pth`` (the diffusers
    VAE's tensors under the official names above)."""
    os.makedirs(root, exist_ok=True)
    sd = {k: v.contiguous() for k, v in comps["dit"].state_dict().items()}
    keys, weight_map = list(sd), {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]
        save_file({k: sd[k] for k in part}, os.path.join(root, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(root, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(official_ti2v_config(comps["dit"].cfg), f)
    torch.save(t5_hf_to_official(comps["t5"].state_dict()), os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "google", "umt5-xxl"))
    n = comps["vae"].config.num_res_blocks
    torch.save({vae22_diffusers_to_official_key(k, n): v.contiguous() for k, v in comps["vae"].state_dict().items()},
               os.path.join(root, "Wan2.2_VAE.pth"))
    return root


def with_published_latent_stats(folder: str, root: str) -> str:
    """A copy of a TI2V diffusers folder whose vae/config.json carries the released latent mean / std (what the
    official layout, which has no VAE config, is read with)."""
    import shutil

    from models.wan_components import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

    shutil.copytree(folder, root)
    path = os.path.join(root, "vae", "config.json")
    with open(path) as f:
        c = json.load(f)
    c.update(latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD))
    with open(path, "w") as f:
        json.dump(c, f)
    return root


def ti2v_overrides(ckpt_dir: str, out: str, *extra: str) -> list[str]:
    o = ["model.name=tiny-wan22-ti2v", f"ckpt_dir={ckpt_dir}", f"output_dir={out}", "progress=false",
         "model.dtype=float32", "text_encoder.dtype=float32", "vae.dtype=float32", "sampler.num_steps=8",
         "sampler.shift=5.0", "sampler.guidance=5.0", "cache.magcache.thresh=0.06", "cache.magcache.K=2",
         "cache.magcache.retention=0.2", "prompt=a red car moves on the road", "negative_prompt=blurry low quality",
         *TI2V_VIDEO]
    return [*o, *extra]
