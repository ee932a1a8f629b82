"""Wan's text encoder, VAEs (Wan2.1's, Wan2.2's) and image encoder, as the library models that implement them, from
either layout.

- umT5-XXL encoder -> transformers' ``UMT5EncoderModel``
- Wan VAE -> diffusers' ``AutoencoderKLWan`` (latents normalised per channel: (mu - mean) / std); the Wan2.2 VAE
  (TI2V-5B: 48 latent channels, residual levels, 2x2 patchified pixels) -> the same class with ``is_residual``
- CLIP ViT-H/14 (open-clip xlm-roberta-large-vit-huge-14, vision tower only) -> transformers' ``CLIPVisionModel``

Official layout: single ``.pth`` files in Wan's own key names (converted by the rule tables below, strictly);
architecture sizes are read from the tensors' shapes. Diffusers layout: ``from_pretrained`` on local folders.
Nothing is downloaded and nothing is unpickled (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import re
from functools import lru_cache

import torch
import torch.nn as nn

from models.layouts import Rule, official_to_diffusers, rename_key
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
UMT5_RULES = [
    Rule("token_embedding.weight", ("shared.weight", "encoder.embed_tokens.weight"), "tie"),
    Rule("norm.weight", ("encoder.final_layer_norm.weight",)),
    Rule("blocks.{i}.norm1.weight", ("encoder.block.{i}.layer.0.layer_norm.weight",)),
    Rule("blocks.{i}.attn.{c:q|k|v|o}.weight", ("encoder.block.{i}.layer.0.SelfAttention.{c}.weight",)),
    Rule("blocks.{i}.pos_embedding.embedding.weight",
         ("encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",)),
    Rule("blocks.{i}.norm2.weight", ("encoder.block.{i}.layer.1.layer_norm.weight",)),
    Rule("blocks.{i}.ffn.gate.0.weight", ("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight",)),  # GELU side
    Rule("blocks.{i}.ffn.fc1.weight", ("encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight",)),
    Rule("blocks.{i}.ffn.fc2.weight", ("encoder.block.{i}.layer.1.DenseReluDense.wo.weight",)),
]


def t5_official_to_hf(sd: dict, where: str) -> dict:
    return official_to_diffusers(sd, UMT5_RULES, 0, where, "is this Wan's umT5 encoder file?")


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
_RESNET = [("residual.0.gamma", "norm1.gamma"), ("residual.2.{p}", "conv1.{p}"), ("residual.3.gamma", "norm2.gamma"),
           ("residual.6.{p}", "conv2.{p}"), ("shortcut.{p}", "conv_shortcut.{p}")]


@lru_cache(maxsize=None)

def _vae_ends_rules() -> tuple:
    """The rules the Wan2.1 and Wan2.2 VAEs share: the (post-)quant convs, each side's first conv, middle (resnet,
    attention, resnet of one width: no shortcut) and head."""
    side = "{side:encoder|decoder}"
    return (
        Rule("conv1.{p}", ("quant_conv.{p}",)),
        Rule("conv2.{p}", ("post_quant_conv.{p}",)),
        Rule(side + ".conv1.{p}", (side + ".conv_in.{p}",)),
        Rule(side + ".head.0.gamma", (side + ".norm_out.gamma",)),
        Rule(side + ".head.2.{p}", (side + ".conv_out.{p}",)),
        Rule(side + ".middle.1.{s}", (side + ".mid_block.attentions.0.{s}",)),
        *(Rule(side + ".middle.{2*j}." + a, (side + ".mid_block.resnets.{j}." + b,)) for a, b in _RESNET[:4]),
    )

def vae_rules(num_res_blocks: int = 2) -> tuple[Rule, ...]:
    """Official Wan VAE keys <-> diffusers' AutoencoderKLWan keys (Wan's 4-level layout).

    Decoder ``upsamples`` is one flat list: per level ``num_res_blocks + 1`` residual blocks, then an upsampler;
    diffusers groups them as ``up_blocks.L.resnets.i`` / ``up_blocks.L.upsamplers.0``. Middle: resnet, attention,
    resnet.
    """
    n = num_res_blocks + 2  # flat entries per decoder level
    pos = "|".join(str(i) for i in range(num_res_blocks + 1))
    return (
        *_vae_ends_rules(),
        *(Rule("encoder.downsamples.{i}." + a, ("encoder.down_blocks.{i}." + b,)) for a, b in _RESNET),
        Rule("encoder.downsamples.{i}.resample.1.{p}", ("encoder.down_blocks.{i}.resample.1.{p}",)),
        Rule("encoder.downsamples.{i}.time_conv.{p}", ("encoder.down_blocks.{i}.time_conv.{p}",)),
        *(Rule(f"decoder.upsamples.{{{n}*l+r}}." + a, (f"decoder.up_blocks.{{l}}.resnets.{{r:{pos}}}." + b,))
          for a, b in _RESNET),
        Rule(f"decoder.upsamples.{{{n}*l+{n - 1}}}.resample.1.{{p}}",
             ("decoder.up_blocks.{l}.upsamplers.0.resample.1.{p}",)),
        Rule(f"decoder.upsamples.{{{n}*l+{n - 1}}}.time_conv.{{p}}",
             ("decoder.up_blocks.{l}.upsamplers.0.time_conv.{p}",)),
    )


WAN_VAE_RULES = vae_rules(2)


def vae_official_to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """One official Wan VAE key -> diffusers' AutoencoderKLWan key (ValueError for a key outside the table)."""
    return rename_key(key, vae_rules(num_res_blocks), "Wan VAE")[0]


def load_wan_vae(path: str, layout: str, dtype=torch.float32, device="cpu"):
    """``path``: the official ``Wan2.1_VAE.pth`` or the diffusers ``vae/`` folder."""
    from diffusers import AutoencoderKLWan

    if layout == "diffusers":  # built on the meta device and filled (accelerate), not randomly initialised first
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        return vae.to(device=device).eval().requires_grad_(False)
    else:
        sd = read_tensors(path)
        try:
            base_dim, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"{path}: not a Wan VAE state dict (missing {e})") from None
        with torch.device("meta"):  # no random init of 127M parameters only to overwrite them (it has no buffers)
            vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   attn_scales=[], temperal_downsample=[False, True, True])
        vae = vae.to_empty(device="cpu")
        _strict(vae, official_to_diffusers(sd, WAN_VAE_RULES, 0, path, "is this Wan2.1_VAE.pth?"), path)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---- Wan2.2 VAE (TI2V-5B) ----------------------------------------------------------------------------------------
# Published per-channel statistics of the Wan2.2 VAE's 48 latent channels (Wan-Video/Wan2.2 wan/modules/vae2_2.py
# Wan2_2_VAE; the same values as the latents_mean / latents_std of Wan-AI/Wan2.2-TI2V-5B-Diffusers' vae/config.json).
# The official code scales with [mean, 1 / std]: z = (mu - mean) * (1 / std), decoded from z / (1 / std) + mean.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
# The released Wan2.2 VAE (Wan2_2_VAE: c_dim 160, decoder 256, z_dim 48, temporal downsampling [False, True, True],
# 2x2 patchified pixels) as AutoencoderKLWan arguments: what a file's shapes do not show, and the fallback for what
# a damaged file lacks (the key check then names what is missing).
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                 out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)


@lru_cache(maxsize=None)
def vae22_rules(num_res_blocks: int = 2) -> tuple[Rule, ...]:
    """Official Wan2.2 VAE keys <-> diffusers' AutoencoderKLWan(is_residual=True) keys.

    What differs from the Wan2.1 table: each level is a residual block of its own (Down_ResidualBlock /
    Up_ResidualBlock, official ``downsamples.L.downsamples.j`` / ``upsamples.L.upsamples.j``; diffusers
    ``down_blocks.L.resnets.j`` / ``up_blocks.L.resnets.j``): ``num_res_blocks`` residual blocks per encoder level
    (``num_res_blocks + 1`` per decoder level), then, on every level but the last, the resampler at the next index
    (diffusers' ``downsampler`` / ``upsampler``, without an index). The levels' shortcuts (AvgDown3D, DupUp3D) and
    the 2x2 pixel patchify hold no weights. Middle and head: as in Wan2.1.
    """
    out = list(_vae_ends_rules())
    for official, ours, sampler, n in (("encoder.downsamples", "encoder.down_blocks", "downsampler", num_res_blocks),
                                       ("decoder.upsamples", "decoder.up_blocks", "upsampler", num_res_blocks + 1)):
        inner = official.split(".")[1]
        pos = "|".join(str(j) for j in range(n))
        out += [Rule(f"{official}.{{l}}.{inner}.{{j:{pos}}}." + a, (f"{ours}.{{l}}.resnets.{{j}}." + b,))
                for a, b in _RESNET]
        out += [Rule(f"{official}.{{l}}.{inner}.{n}.{part}.{{p}}", (f"{ours}.{{l}}.{sampler}.{part}.{{p}}",))
                for part in ("resample.1", "time_conv")]
    return tuple(out)


def wan22_vae_config(shapes: dict, where: str = "Wan2.2 VAE") -> dict:
    """AutoencoderKLWan arguments of an official Wan2.2 VAE state dict, read from its keys and shapes (key -> shape):
    widths, latent channels, levels, residual blocks per level, where time is downsampled, the pixel patch. What a
    file lacks keeps the released value (WAN22_VAE), so a damaged file is reported by its keys, not here."""
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in WAN22_VAE.items()}

    def dim(key, axis=0):
        return shapes[key][axis] if key in shapes and len(shapes[key]) > axis else None

    cfg["base_dim"] = dim("encoder.conv1.weight") or cfg["base_dim"]
    cfg["z_dim"] = dim("conv2.weight") or cfg["z_dim"]
    levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    res = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\."
                                                              r"residual\.", k))}
    if levels == list(range(len(levels))) and len(levels) > 1:
        widths = [dim(f"encoder.downsamples.{i}.downsamples.0.residual.2.weight") for i in levels]
        if all(widths) and all(w % cfg["base_dim"] == 0 for w in widths):
            cfg["dim_mult"] = [w // cfg["base_dim"] for w in widths]
    if res == set(range(len(res))) and res:
        cfg["num_res_blocks"] = len(res)
    n = cfg["num_res_blocks"]
    cfg["temperal_downsample"] = [f"encoder.downsamples.{i}.downsamples.{n}.time_conv.weight" in shapes
                                  for i in range(len(cfg["dim_mult"]) - 1)]
    head = dim("decoder.head.0.gamma")
    if head and head % cfg["dim_mult"][0] == 0:
        cfg["decoder_base_dim"] = head // cfg["dim_mult"][0]
    cfg["in_channels"] = dim("encoder.conv1.weight", 1) or cfg["in_channels"]
    cfg["out_channels"] = dim("decoder.head.2.weight") or cfg["out_channels"]
    patch = round((cfg["in_channels"] / 3) ** 0.5)
    if patch < 1 or 3 * patch * patch != cfg["in_channels"]:
        raise ValueError(f"{where}: the encoder's first convolution takes {cfg['in_channels']} channels; the Wan2.2 "
                         f"VAE takes 3 x p x p (RGB pixels patchified p x p; the release: 12, p = 2)")
    cfg["patch_size"] = patch
    cfg["scale_factor_temporal"] = 2 ** sum(cfg["temperal_downsample"])
    cfg["scale_factor_spatial"] = patch * 2 ** (len(cfg["dim_mult"]) - 1)
    return cfg


def _meta_wan22_vae(cfg: dict):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):  # no random init of 0.7B parameters only to overwrite them (it has no buffers)
        return AutoencoderKLWan(latents_mean=list(WAN22_LATENTS_MEAN[: cfg["z_dim"]]),
                                latents_std=list(WAN22_LATENTS_STD[: cfg["z_dim"]]), **cfg)


def wan22_vae_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of an official Wan2.2 VAE (WanVAE_ of wan/modules/vae2_2.py) with the architecture ``cfg``
    (WAN22_VAE's fields): official key -> shape. Written from the official module's structure, without building a
    model (the check before any work imports no diffusers)."""
    z, nrb, mult = cfg["z_dim"], cfg["num_res_blocks"], cfg["dim_mult"]
    out: dict[str, tuple[int, ...]] = {}

    def conv(name, o, i, k):  # CausalConv3d / Conv2d: weight [out, in, *kernel] and bias [out]
        out[name + ".weight"], out[name + ".bias"] = (o, i, *k), (o,)

    def res(name, a, b):  # ResidualBlock: RMS_norm, SiLU, conv 3x3x3, RMS_norm, SiLU, dropout, conv 3x3x3 (+ 1x1x1)
        out[name + ".residual.0.gamma"] = (a, 1, 1, 1)
        conv(name + ".residual.2", b, a, (3, 3, 3))
        out[name + ".residual.3.gamma"] = (b, 1, 1, 1)
        conv(name + ".residual.6", b, b, (3, 3, 3))
        if a != b:
            conv(name + ".shortcut", b, a, (1, 1, 1))

    def middle(side, width):  # residual block, attention, residual block
        res(side + ".middle.0", width, width)
        out[side + ".middle.1.norm.gamma"] = (width, 1, 1)  # AttentionBlock on images
        conv(side + ".middle.1.to_qkv", 3 * width, width, (1, 1))
        conv(side + ".middle.1.proj", width, width, (1, 1))
        res(side + ".middle.2", width, width)

    conv("conv1", 2 * z, 2 * z, (1, 1, 1))
    conv("conv2", z, z, (1, 1, 1))
    levels = len(mult)
    dims = [cfg["base_dim"] * u for u in [1, *mult]]
    conv("encoder.conv1", dims[0], cfg["in_channels"], (3, 3, 3))
    for i in range(levels):  # Down_ResidualBlock: nrb residual blocks, then (not on the last level) a resampler
        for j in range(nrb):
            res(f"encoder.downsamples.{i}.downsamples.{j}", dims[i] if j == 0 else dims[i + 1], dims[i + 1])
        if i != levels - 1:
            conv(f"encoder.downsamples.{i}.downsamples.{nrb}.resample.1", dims[i + 1], dims[i + 1], (3, 3))
            if cfg["temperal_downsample"][i]:
                conv(f"encoder.downsamples.{i}.downsamples.{nrb}.time_conv", dims[i + 1], dims[i + 1], (3, 1, 1))
    middle("encoder", dims[-1])
    out["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("encoder.head.2", 2 * z, dims[-1], (3, 3, 3))
    dims = [cfg["decoder_base_dim"] * u for u in [mult[-1], *mult[::-1]]]
    up = cfg["temperal_downsample"][::-1]
    conv("decoder.conv1", dims[0], z, (3, 3, 3))
    middle("decoder", dims[0])
    for i in range(levels):  # Up_ResidualBlock: nrb + 1 residual blocks, then (not on the last level) a resampler
        for j in range(nrb + 1):
            res(f"decoder.upsamples.{i}.upsamples.{j}", dims[i] if j == 0 else dims[i + 1], dims[i + 1])
        if i != levels - 1:
            conv(f"decoder.upsamples.{i}.upsamples.{nrb + 1}.resample.1", dims[i + 1], dims[i + 1], (3, 3))
            if up[i]:  # upsample3d: the time conv doubles the channels (two frames out of one)
                conv(f"decoder.upsamples.{i}.upsamples.{nrb + 1}.time_conv", 2 * dims[i + 1], dims[i + 1], (3, 1, 1))
    out["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", cfg["out_channels"], dims[-1], (3, 3, 3))
    return out


def check_wan22_vae(shapes: dict, where: str) -> dict:
    """The official Wan2.2 VAE file's keys and shapes (key -> shape) against the model they describe, named in the
    file's own keys (missing, unexpected, wrong shape: a ValueError); returns its AutoencoderKLWan arguments."""
    cfg = wan22_vae_config(shapes, where)
    want = wan22_vae_shapes(cfg)
    missing, unexpected = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    if missing or unexpected:
        wan21 = "encoder.downsamples.0.residual.0.gamma" in shapes
        hint = ("it holds the Wan2.1 VAE's keys (Wan2.1_VAE.pth: 16 latent channels, 8x); copy Wan2.2_VAE.pth of the "
                "Wan2.2-TI2V-5B release" if wan21 else "is this the Wan2.2-TI2V-5B release's Wan2.2_VAE.pth?")
        raise ValueError(f"{where}: keys do not match the Wan2.2 VAE: missing keys {missing[:6]} ({len(missing)}), "
                         f"unexpected keys {unexpected[:6]} ({len(unexpected)}); {hint}")
    bad = [(k, tuple(shapes[k]), want[k]) for k in want if tuple(shapes[k]) != want[k]]
    if bad:
        raise ValueError(f"{where}: shape mismatch {bad[:4]} (file vs the Wan2.2 VAE its other tensors describe); is "
                         f"this the Wan2.2-TI2V-5B release's Wan2.2_VAE.pth?")
    return cfg


def load_wan22_vae(path: str, layout: str, dtype=torch.float32, device="cpu"):
    """``path``: the official ``Wan2.2_VAE.pth`` or the diffusers ``vae/`` folder -> AutoencoderKLWan (48 latent
    channels, residual blocks, 2x2 patchified pixels; latent statistics: the folder's config, or the published
    WAN22_LATENTS_MEAN / STD for the official file, which carries none). The official file is checked from its
    header, then streamed tensor by tensor into the model built in ``dtype`` on ``device`` (no host copy of the
    0.7B parameters beside the file's mapped pages)."""
    if layout == "diffusers":
        return load_wan_vae(path, layout, dtype=dtype, device=device)
    from models.loading import load_streaming, read_shapes

    cfg = check_wan22_vae(read_shapes(path), path)
    rules = vae22_rules(cfg["num_res_blocks"])
    vae = _meta_wan22_vae(cfg).to(dtype=dtype).to_empty(device=device)
    load_streaming(vae, path, path,
                   convert=lambda sd: official_to_diffusers(sd, rules, 0, path, "is this Wan2.2_VAE.pth?"))
    return vae.eval().requires_grad_(False)


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
_V, _L = "visual.transformer.{i}.", "encoder.layers.{i}."
CLIP_RULES = [
    Rule("visual.patch_embedding.weight", ("embeddings.patch_embedding.weight",)),
    Rule("visual.cls_embedding", ("embeddings.class_embedding",), "squeeze", ndim=3),  # [1, 1, D] -> [D]
    Rule("visual.pos_embedding", ("embeddings.position_embedding.weight",), "squeeze", ndim=3),  # [1, P, D]
    Rule("visual.pre_norm.{p}", ("pre_layrnorm.{p}",)),
    Rule("visual.post_norm.{p}", ("post_layernorm.{p}",)),
    Rule(_V + "attn.to_qkv.{p}",
         (_L + "self_attn.q_proj.{p}", _L + "self_attn.k_proj.{p}", _L + "self_attn.v_proj.{p}"), "split"),
    Rule(_V + "attn.proj.{p}", (_L + "self_attn.out_proj.{p}",)),
    Rule(_V + "norm1.{p}", (_L + "layer_norm1.{p}",)),
    Rule(_V + "norm2.{p}", (_L + "layer_norm2.{p}",)),
    Rule(_V + "mlp.0.{p}", (_L + "mlp.fc1.{p}",)),
    Rule(_V + "mlp.2.{p}", (_L + "mlp.fc2.{p}",)),
    # text tower, logit scale and projection head: not used by Wan I2V
    Rule("visual.head", (), "drop"),
    Rule("log_scale", (), "drop"),
    Rule("textual.{s}", (), "drop"),
]


def clip_official_to_hf(sd: dict, prefix: str, where: str) -> dict:
    """Wan's open-clip keys -> transformers CLIPVisionModel keys (``prefix`` is its module prefix, if any)."""
    out = official_to_diffusers(sd, CLIP_RULES, 0, where, "is this Wan's open-clip checkpoint?")
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
