"""Wan2.1's text encoder, VAE and image encoder, as the library models that implement them, from either layout.

- umT5-XXL encoder -> transformers' ``UMT5EncoderModel``
- Wan VAE -> diffusers' ``AutoencoderKLWan`` (latents normalised per channel: (mu - mean) / std)
- CLIP ViT-H/14 (open-clip xlm-roberta-large-vit-huge-14, vision tower only) -> transformers' ``CLIPVisionModel``

Official layout: single ``.pth`` files in Wan's own key names (converted here, key by key, with strict checks);
architecture sizes are read from the tensors' shapes. Diffusers layout: ``from_pretrained`` on local folders.
Nothing is downloaded and nothing is unpickled (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from models.loading import read_tensors

# Published per-channel statistics of Wan2.1's 16 latent channels (also diffusers' AutoencoderKLWan defaults).
WAN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, used by Wan's CLIP
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_HEAD_DIM = 80  # ViT-H/14: width 1280, 16 heads; heads are not visible in the weights' shapes


def _strict(model: nn.Module, sd: dict, where: str) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the model: missing keys {missing[:6]} ({len(missing)}), "
                         f"unexpected keys {unexpected[:6]} ({len(unexpected)}); is this the right file?")
    bad = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{where}: shape mismatch {bad[:4]} (file vs model)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


# ---- umT5 encoder ---------------------------------------------------------------------------------------------
_T5_RULES = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),  # GELU side
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]


def _rename(key: str, rules) -> str | None:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return None


def t5_official_to_hf(sd: dict, where: str) -> dict:
    out = {}
    for k, v in sd.items():
        new = _rename(k, _T5_RULES)
        if new is None:
            raise ValueError(f"{where}: unexpected key {k!r} for Wan's umT5 encoder")
        out[new] = v
    out["encoder.embed_tokens.weight"] = out.get("shared.weight")  # tied
    return out


def t5_config_from_official(sd: dict, where: str):
    from transformers import UMT5Config

    try:
        vocab, d_model = sd["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        d_ff = sd["blocks.0.ffn.fc1.weight"].shape[0]
        d_attn = sd["blocks.0.attn.q.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: not a Wan umT5 encoder state dict (missing {e})") from None
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_attn // heads, d_ff=d_ff, num_layers=layers,
                      num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)


def load_umt5(path: str, layout: str, dtype=torch.float32, device="cpu"):
    """``path``: the official .pth, or the diffusers ``text_encoder/`` folder."""
    from transformers import UMT5EncoderModel

    if layout == "diffusers":
        model = UMT5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:
        sd = read_tensors(path)
        with torch.device("meta"):
            model = UMT5EncoderModel(t5_config_from_official(sd, path))
        model = model.to_empty(device="cpu")
        _strict(model, t5_official_to_hf(sd, path), path)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---- Wan VAE ---------------------------------------------------------------------------------------------------
_VAE_RESNET = [(r"residual\.0\.gamma", "norm1.gamma"), (r"residual\.2\.", "conv1."), (r"residual\.3\.gamma", "norm2.gamma"),
               (r"residual\.6\.", "conv2."), (r"shortcut\.", "conv_shortcut.")]


def _resnet_part(rest: str) -> str:
    for pat, rep in _VAE_RESNET:
        if re.match(pat, rest):
            return re.sub("^" + pat, rep, rest)
    return rest


def vae_official_to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """One official Wan VAE key -> diffusers' AutoencoderKLWan key (Wan's 4-level decoder layout).

    Decoder ``upsamples`` is one flat list: per level ``num_res_blocks + 1`` residual blocks, then an upsampler
    (none after the last level); diffusers groups them as ``up_blocks.L.resnets.i`` / ``up_blocks.L.upsamplers.0``.
    """
    simple = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
              "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
    if key in simple:
        return simple[key]
    m = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not m:
        return key
    side, rest = m.groups()
    if rest.startswith("conv1."):
        return f"{side}.conv_in.{rest[6:]}"
    m = re.match(r"^head\.(\d)\.(.*)$", rest)
    if m:
        return f"{side}.{'norm_out' if m.group(1) == '0' else 'conv_out'}.{m.group(2)}"
    m = re.match(r"^middle\.(\d)\.(.*)$", rest)
    if m:
        i, tail = int(m.group(1)), m.group(2)
        if i == 1:
            return f"{side}.mid_block.attentions.0.{tail}"
        return f"{side}.mid_block.resnets.{i // 2}.{_resnet_part(tail)}"
    m = re.match(r"^downsamples\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.down_blocks.{m.group(1)}.{_resnet_part(m.group(2))}"
    m = re.match(r"^upsamples\.(\d+)\.(.*)$", rest)
    if m:
        level, pos = divmod(int(m.group(1)), num_res_blocks + 2)
        tail = m.group(2)
        if pos == num_res_blocks + 1:
            return f"{side}.up_blocks.{level}.upsamplers.0.{tail}"
        return f"{side}.up_blocks.{level}.resnets.{pos}.{_resnet_part(tail)}"
    return key


def load_wan_vae(path: str, layout: str, dtype=torch.float32, device="cpu"):
    """``path``: the official ``Wan2.1_VAE.pth`` or the diffusers ``vae/`` folder."""
    from diffusers import AutoencoderKLWan

    if layout == "diffusers":
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)
        return vae.to(device=device).eval().requires_grad_(False)
    else:
        sd = read_tensors(path)
        try:
            base_dim, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"{path}: not a Wan VAE state dict (missing {e})") from None
        vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                               temperal_downsample=[False, True, True])
        _strict(vae, {vae_official_to_diffusers_key(k): v for k, v in sd.items()}, path)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def latent_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as [1, C, 1, 1, 1] float32: the VAE's config values (diffusers) or the published Wan ones."""
    z = vae.config.z_dim
    mean = getattr(vae.config, "latents_mean", None) or WAN_LATENTS_MEAN
    std = getattr(vae.config, "latents_std", None) or WAN_LATENTS_STD
    if len(mean) != z or len(std) != z:
        raise ValueError(f"VAE has z_dim={z} but {len(mean)} latents_mean / {len(std)} latents_std values")
    return (torch.tensor(mean, dtype=torch.float32).view(1, z, 1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, z, 1, 1, 1))


# ---- CLIP vision tower -----------------------------------------------------------------------------------------
def clip_official_to_hf(sd: dict, prefix: str, where: str) -> dict:
    """Wan's ``visual.*`` keys -> transformers CLIPVisionModel keys (``prefix`` is its module prefix, if any)."""
    out = {}
    for k, v in sd.items():
        if not k.startswith("visual.") or k == "visual.head":
            continue  # text tower, logit scale and the projection head are not used by Wan I2V
        r = k[len("visual."):]
        m = re.match(r"^transformer\.(\d+)\.(.*)$", r)
        if r == "patch_embedding.weight":
            out["embeddings.patch_embedding.weight"] = v
        elif r == "cls_embedding":
            out["embeddings.class_embedding"] = v.reshape(-1)
        elif r == "pos_embedding":
            out["embeddings.position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
        elif r.startswith("pre_norm."):
            out["pre_layrnorm." + r[len("pre_norm."):]] = v
        elif r.startswith("post_norm."):
            out["post_layernorm." + r[len("post_norm."):]] = v
        elif m:
            i, tail = m.groups()
            base = f"encoder.layers.{i}."
            if tail.startswith("attn.to_qkv."):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{tail.split('.')[-1]}"] = part
            else:
                tail = (tail.replace("attn.proj.", "self_attn.out_proj.").replace("norm1.", "layer_norm1.")
                        .replace("norm2.", "layer_norm2.").replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2."))
                out[base + tail] = v
        else:
            raise ValueError(f"{where}: unexpected key {k!r} for Wan's CLIP vision tower")
    return {prefix + k: v for k, v in out.items()}


def clip_config_from_official(sd: dict, where: str):
    from transformers import CLIPVisionConfig

    try:
        width, _, patch, _ = sd["visual.patch_embedding.weight"].shape
        num_pos = sd["visual.pos_embedding"].shape[-2]
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.transformer."))
        mlp = sd["visual.transformer.0.mlp.0.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: not a Wan CLIP state dict (missing {e})") from None
    if width % CLIP_HEAD_DIM:
        raise ValueError(f"{where}: vision width {width} is not a multiple of the ViT-H head dim {CLIP_HEAD_DIM}")
    side = int(round((num_pos - 1) ** 0.5))
    return CLIPVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=width // CLIP_HEAD_DIM, image_size=side * patch, patch_size=patch,
                            hidden_act="gelu", layer_norm_eps=1e-5)


def load_clip_vision(path: str, layout: str, dtype=torch.float32, device="cpu"):
    """``path``: the official open-clip .pth, or the diffusers ``image_encoder/`` folder."""
    from transformers import CLIPVisionModel

    if layout == "diffusers":
        model = CLIPVisionModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:
        sd = read_tensors(path)
        model = CLIPVisionModel(clip_config_from_official(sd, path))
        own = model.state_dict()
        prefix = "vision_model." if any(k.startswith("vision_model.") for k in own) else ""
        conv = clip_official_to_hf(sd, prefix, path)
        conv.update({k: own[k] for k in own if k.endswith("position_ids") and k not in conv})  # buffers
        _strict(model, conv, path)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def clip_features(model, image: torch.Tensor) -> torch.Tensor:
    """image [B, 3, H, W] in [-1, 1] -> penultimate-layer tokens [B, 1 + patches, width] (Wan's ``use_31_block``).

    Preprocessing as Wan's: bicubic resize to the square input size, back to [0, 1], CLIP mean/std.
    """
    size = model.config.image_size
    x = torch.nn.functional.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x * 0.5 + 0.5) - mean) / std
    param = next(model.parameters())
    out = model(pixel_values=x.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
    return out.hidden_states[-2]
