"""Tiny random Wan2.1 checkpoints in both published layouts, built locally (no download).

Components are the real library classes at toy sizes: transformers' UMT5EncoderModel and CLIPVisionModel, a
word-level tokenizer saved as a fast tokenizer, diffusers' AutoencoderKLWan (Wan's 4-level layout, base_dim 8,
16 latent channels), and our DiT (``tiny-wan-t2v`` / ``tiny-wan-i2v``). The official layout stores Wan's own key
names (converted back from the library names with the inverse maps below), the diffusers layout uses
``save_pretrained`` folders.
"""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import save_file

from magcache_dist.random_weights import randomize
from models.loading import official_to_diffusers_key
from models.wan import get_config
from models.wan_i2v import build_wan_model

WORDS = ("a an the and of on in to with is red green blue yellow white black cat dog bird car boat tree house "
         "runs walks flies swims moves jumps sits over under near river road sky city night day slowly fast "
         "camera pans zooms static blurry low quality").split()
T5_SIZE = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
CLIP_SIZE = dict(hidden_size=160, intermediate_size=320, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                 patch_size=14)
VAE_SIZE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True])
# small Wan video for the tests: 9 frames -> 3 latent frames; 48 x 48 px -> 6 x 6 latents -> 3 x 3 patches: 27 tokens
WAN_VIDEO = ["video.frames=9", "video.height=48", "video.width=48", "video.fps=8"]


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # T5 adds EOS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_t5(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(WORDS) + 3, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                     tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, **T5_SIZE)
    model = randomize(UMT5EncoderModel(cfg), seed, std=0.3).eval()
    model.encoder.embed_tokens.weight = model.shared.weight
    return model


def build_clip(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_act="gelu", layer_norm_eps=1e-5, **CLIP_SIZE))
    return randomize(model, seed, std=0.08).eval()


def build_vae(seed: int):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE_SIZE).eval()


# ---- inverse key maps: library names -> Wan's official names -------------------------------------------------
def t5_hf_to_official(sd: dict) -> dict:
    rules = [(r"^shared\.weight$", "token_embedding.weight"), (r"^encoder\.final_layer_norm\.", "norm."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
              r"blocks.\1.pos_embedding.embedding."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"blocks.\1.attn.\2."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2.")]
    out = {}
    for k, v in sd.items():
        if k == "encoder.embed_tokens.weight":
            continue
        for pat, rep in rules:
            new, n = re.subn(pat, rep, k)
            if n:
                out[new] = v.contiguous()
                break
        else:
            raise KeyError(k)
    return out


def clip_hf_to_official(model) -> dict:
    sd = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    out = {"visual.patch_embedding.weight": sd["embeddings.patch_embedding.weight"],
           "visual.cls_embedding": sd["embeddings.class_embedding"].view(1, 1, -1),
           "visual.pos_embedding": sd["embeddings.position_embedding.weight"][None],
           "visual.pre_norm.weight": sd["pre_layrnorm.weight"], "visual.pre_norm.bias": sd["pre_layrnorm.bias"],
           "visual.post_norm.weight": sd["post_layernorm.weight"], "visual.post_norm.bias": sd["post_layernorm.bias"],
           # parts of the open-clip checkpoint that Wan's I2V does not use
           "visual.head": torch.randn(CLIP_SIZE["hidden_size"], 8), "log_scale": torch.tensor(2.0),
           "textual.token_embedding.weight": torch.randn(10, 8)}
    for i in range(CLIP_SIZE["num_hidden_layers"]):
        p, q = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for s in ("weight", "bias"):
            out[q + f"attn.to_qkv.{s}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{s}"] for n in "qkv"])
            out[q + f"attn.proj.{s}"] = sd[p + f"self_attn.out_proj.{s}"]
            out[q + f"norm1.{s}"] = sd[p + f"layer_norm1.{s}"]
            out[q + f"norm2.{s}"] = sd[p + f"layer_norm2.{s}"]
            out[q + f"mlp.0.{s}"] = sd[p + f"mlp.fc1.{s}"]
            out[q + f"mlp.2.{s}"] = sd[p + f"mlp.fc2.{s}"]
    return {k: v.contiguous() for k, v in out.items()}


def vae_diffusers_to_official_key(key: str, num_res_blocks: int = 2) -> str:
    simple = {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
              "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}
    if key in simple:
        return simple[key]
    resnet = [("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
              ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]

    def res(tail):
        for a, b in resnet:
            if tail.startswith(a):
                return b + tail[len(a):]
        return tail

    side, rest = key.split(".", 1)
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[8:]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[9:]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[9:]}"
    m = re.match(r"^mid_block\.attentions\.0\.(.*)$", rest)
    if m:
        return f"{side}.middle.1.{m.group(1)}"
    m = re.match(r"^mid_block\.resnets\.(\d)\.(.*)$", rest)
    if m:
        return f"{side}.middle.{2 * int(m.group(1))}.{res(m.group(2))}"
    m = re.match(r"^down_blocks\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.downsamples.{m.group(1)}.{res(m.group(2))}"
    m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", rest)
    if m:
        return f"{side}.upsamples.{int(m.group(1)) * (num_res_blocks + 2) + num_res_blocks + 1}.{m.group(2)}"
    m = re.match(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.upsamples.{int(m.group(1)) * (num_res_blocks + 2) + int(m.group(2))}.{res(m.group(3))}"
    raise KeyError(key)


# ---- whole checkpoint folders ----------------------------------------------------------------------------------
def build_components(task: str, seed: int = 0) -> dict:
    name = f"tiny-wan-{task}"
    dit = randomize(build_wan_model(get_config(name)), seed).eval()
    comps = dict(name=name, dit=dit, t5=build_t5(seed + 1), tokenizer=build_tokenizer(), vae=build_vae(seed + 2))
    if task == "i2v":
        comps["clip"] = build_clip(seed + 3)
    return comps


def save_official(comps: dict, root: str) -> str:
    os.makedirs(root, exist_ok=True)
    cfg = comps["dit"].cfg
    save_file({k: v.contiguous() for k, v in comps["dit"].state_dict().items()},
              os.path.join(root, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(dict(model_type="i2v" if cfg.image_dim else "t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                       num_heads=cfg.num_heads, num_layers=cfg.num_layers, in_dim=cfg.in_dim, out_dim=cfg.out_dim,
                       text_len=cfg.text_len), f)
    torch.save(t5_hf_to_official(comps["t5"].state_dict()), os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "google", "umt5-xxl"))
    torch.save({vae_diffusers_to_official_key(k): v.contiguous() for k, v in comps["vae"].state_dict().items()},
               os.path.join(root, "Wan2.1_VAE.pth"))
    if "clip" in comps:
        torch.save(clip_hf_to_official(comps["clip"]),
                   os.path.join(root, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
    return root


def save_diffusers(comps: dict, root: str) -> str:
    os.makedirs(os.path.join(root, "transformer"), exist_ok=True)
    cfg = comps["dit"].cfg
    save_file({official_to_diffusers_key(k): v.contiguous() for k, v in comps["dit"].state_dict().items()},
              os.path.join(root, "transformer", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(root, "transformer", "config.json"), "w") as f:
        json.dump(dict(_class_name="WanTransformer3DModel", num_attention_heads=cfg.num_heads,
                       attention_head_dim=cfg.head_dim, num_layers=cfg.num_layers, in_channels=cfg.in_dim,
                       out_channels=cfg.out_dim, ffn_dim=cfg.ffn_dim, text_dim=cfg.text_dim,
                       image_dim=cfg.image_dim or None), f)
    comps["t5"].save_pretrained(os.path.join(root, "text_encoder"))
    comps["tokenizer"].save_pretrained(os.path.join(root, "tokenizer"))
    comps["vae"].save_pretrained(os.path.join(root, "vae"))
    if "clip" in comps:
        comps["clip"].save_pretrained(os.path.join(root, "image_encoder"))
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "WanImageToVideoPipeline" if "clip" in comps else "WanPipeline"}, f)
    return root


def save_image(path: str, h: int = 40, w: int = 56) -> str:
    """A deterministic RGB test image (gradients + a square), aspect ratio != 1 to exercise I2V geometry."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (250, 30, 30)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def wan_overrides(task: str, ckpt_dir: str, out: str, *extra: str, image: str | None = None) -> list[str]:
    o = [f"model.name=tiny-wan-{task}", f"ckpt_dir={ckpt_dir}", f"output_dir={out}", "progress=false",
         "model.dtype=float32", "text_encoder.dtype=float32", "vae.dtype=float32", "sampler.num_steps=8",
         "cache.magcache.preset=wan2.1-t2v-1.3b", "cache.magcache.thresh=0.12", "cache.magcache.K=2",
         "cache.magcache.retention=0.2",
         "prompt=a red car moves on the road", "negative_prompt=blurry low quality", *WAN_VIDEO]
    if image is not None:
        o.append(f"image={image}")
    return [*o, *extra]
