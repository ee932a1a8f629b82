"""HunyuanVideo T2V (guidance-distilled: one call per step, embedded guidance 6.0, Euler on the shift-7 grid) on
the shared sampler, cache and parallel code.

Two kinds of model names (``PipelineFamily.pixel`` tells them apart):
- ``hunyuanvideo-tiny``: the embedded pixel-space size (``model.ckpt``: DiT + tiny text encoder, no VAE);
- ``hunyuanvideo`` (the published 13B model) and ``tiny-hunyuanvideo`` (the same pipeline at toy size, for tests):
  the full pipeline from a diffusers-layout folder ``ckpt_dir`` (hunyuanvideo-community/HunyuanVideo):
  ``transformer/``, ``text_encoder/`` (LLaMA, LlamaModel) + ``tokenizer/``, ``text_encoder_2/`` (CLIP-L,
  CLIPTextModel) + ``tokenizer_2/``, ``vae/`` (AutoencoderKLHunyuanVideo), ``scheduler/`` (optional: its shift).

The full pipeline follows HunyuanVideo's release (and diffusers' ``HunyuanVideoPipeline``, which the tests compare
against): the prompt is put into the video template, LLaMA encodes template + prompt padded to crop_start + 256
tokens, and the features are those of the third-to-last hidden state (``hidden_state_skip_layer`` 2), cropped past
the template's system part, with their attention mask; CLIP-L's pooled output of the prompt (77 tokens) joins the
time embedding; latents are decoded with ``latents / scaling_factor``.

Memory plan (as Wan's): the DiT is created on the meta device and streamed in at ``model.dtype`` (with
``parallel.fsdp``: after sharding, each rank reads only its shards); LLaMA and CLIP
are loaded for encoding only and freed before sampling (``text_encoder.device=cpu`` keeps them off the GPU);
the DiT leaves the GPU (``vae.offload_dit``) unless it fits beside the decode, then the VAE decodes, in spatial
tiles with ``vae.tiling`` (always on more than one rank: the tiles are dealt over the group, magcache_dist/decode.py).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from magcache_dist.errors import InputError
from magcache_dist.families import components, folders
from magcache_dist.families.base import DTYPES, CostFigures, meta_param_count
from magcache_dist.families.common import CLIP_L_TEXT_PARAMS, PipelineFamily, encode_prompt, pooled
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.hunyuan_video import HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, HunyuanVideoDiT, hunyuan_config
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16
LLAMA_TOKENS = 256  # text_len: LLaMA features after the template crop, padded with an attention mask
CLIP_TOKENS = 77  # text_len_2
HIDDEN_STATE_SKIP_LAYER = 2  # the features are hidden_states[-(2 + 1)]
# HunyuanVideo's video prompt template ("dit-llm-encode-video"); crop_start 95 is its system part's token count
# with the published LLaVA-LLaMA-3 tokenizer. Other tokenizers (the tiny test folder) get it computed.
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
PUBLISHED_CROP_START = {"hunyuanvideo": 95}
VAE_STRIDE = (4, 8)  # time, space (AutoencoderKLHunyuanVideo "884": 4x temporal, 8x8 spatial)
DEFAULT_SHIFT, DEFAULT_GUIDANCE = 7.0, 6.0  # HunyuanVideo's flow_shift and embedded_cfg_scale
# parameters of the published encoders and VAE (dry-run planner): LLaVA-LLaMA-3-8B's LlamaModel (vocab 128320, width
# 4096, 32 layers, FFN 14336, 8 KV heads), CLIP-L's text tower, AutoencoderKLHunyuanVideo's default size
PUBLISHED_ENCODER_PARAMS = {"LLaMA text encoder": 7_505_186_816, "CLIP-L text encoder": CLIP_L_TEXT_PARAMS}
PUBLISHED_VAE_PARAMS = 246_478_803
FIX = ("copy the complete diffusers-layout release (transformer, text_encoder, tokenizer, text_encoder_2, "
       "tokenizer_2, vae) into ckpt_dir")
COMPONENTS = {  # folder -> (file that must exist, what it is)
    "transformer": ("config.json", "transformer (HunyuanVideoTransformer3DModel)"),
    "text_encoder": ("config.json", "LLaMA text encoder (LlamaModel)"),
    "tokenizer": (None, "LLaMA tokenizer"),
    "text_encoder_2": ("config.json", "CLIP text encoder (CLIPTextModel)"),
    "tokenizer_2": (None, "CLIP tokenizer"),
    "vae": ("config.json", "VAE (AutoencoderKLHunyuanVideo)"),
}
# transformer/config.json fields that change the math -> checked against model.name's config
DIT_FIELDS = ("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
              "num_single_layers", "num_refiner_layers", "patch_size", "patch_size_t", "text_embed_dim",
              "pooled_projection_dim", "rope_axes_dim", "guidance_embeds")


@dataclass
class HunyuanCond:
    text: torch.Tensor  # [1, T, text_embed_dim], zero-padded
    mask: torch.Tensor  # [1, T] 1 for real tokens (first), 0 for padding
    pooled: torch.Tensor  # [1, pooled_projection_dim]
    guidance: float  # embedded guidance


@dataclass(frozen=True)
class HunyuanEncoders:
    """What ``build`` hands to ``encode`` for the full pipeline: the folder and the job's device."""
    folder: str
    device: object


# ---- components (module-level so tests can watch what is loaded and freed) -------------------------------------
def load_llama(path: str, dtype, device):
    from transformers import LlamaModel

    return LlamaModel.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval().requires_grad_(False)


def load_clip_text(path: str, dtype, device):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval() \
        .requires_grad_(False)


def load_vae(path: str, dtype, device):
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(path, dtype=dtype, local_files_only=True)
    return vae.to(device).eval().requires_grad_(False)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def template_crop_start(tokenizer) -> int:
    """Tokens of the template's system part (before the prompt), special tokens included: what the crop removes."""
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    return len(tokenizer(prefix)["input_ids"])


def llama_features(llama, tokenizer, prompt: str, crop_start: int, max_len: int = LLAMA_TOKENS,
                   skip: int = HIDDEN_STATE_SKIP_LAYER) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [1, max_len, C] float32, mask [1, max_len] long): template + prompt padded on the right to
    crop_start + max_len tokens, the hidden state ``skip`` layers before the last, the system part cropped off."""
    tokenizer.padding_side = "right"  # as HunyuanVideo's text encoder: real tokens first, the crop keeps them
    batch = tokenizer([PROMPT_TEMPLATE.format(prompt)], max_length=crop_start + max_len, padding="max_length",
                      truncation=True, return_tensors="pt")
    device = next(llama.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = llama(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-(skip + 1)]
    return hidden[:, crop_start:].float(), mask[:, crop_start:].long()


def clip_pooled(clip, tokenizer, prompt: str, max_len: int = CLIP_TOKENS) -> torch.Tensor:
    """CLIP-L's pooled output of the prompt padded / truncated to 77 tokens, [1, C] float32."""
    ids = tokenizer([prompt], padding="max_length", max_length=max_len, truncation=True,
                    return_tensors="pt")["input_ids"]
    return clip(ids.to(next(clip.parameters()).device)).pooler_output.float()


class HunyuanVideoFamily(PipelineFamily):
    family = "HunyuanVideo"
    rule = "hunyuanvideo"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = hunyuan_config(self.name)

    def num_heads(self) -> int:
        return self.mcfg["num_attention_heads"]

    @functools.cached_property
    def folder(self) -> str:
        """ckpt_dir, checked and resolved once per job (validate, build, encode and decode read it)."""
        return folders.ckpt_root(self.cfg, self.name, "HunyuanVideo", "folder",
                                 "diffusers layout: hunyuanvideo-community/HunyuanVideo")

    @functools.cached_property
    def transformer_weights(self) -> str:
        return folders.diffusers_weights(os.path.join(self.folder, "transformer"), self.folder)

    # ---- before any collective -----------------------------------------------------------------------------
    def check_geometry(self) -> None:
        if self.pixel:
            self.check_multiples(self.mcfg["patch_size_t"], self.mcfg["patch_size"])
            return
        v, step = self.cfg.video, VAE_STRIDE[1] * self.mcfg["patch_size"]
        if v.frames < 1 or (v.frames - 1) % VAE_STRIDE[0]:
            raise InputError(f"video.frames={v.frames} must be 4k+1 for the HunyuanVideo VAE (e.g. 129); use "
                             f"video.frames={max(1, (v.frames - 1) // 4 * 4 + 1)}")
        for key, val in (("video.height", v.height), ("video.width", v.width)):
            if val < step or val % step:
                raise InputError(f"{key}={val} must be a positive multiple of {step} (VAE stride 8 x patch 2) for "
                                 f"{self.name}; use {key}={max(step, val // step * step)}")

    def sampler_defaults(self) -> dict:
        """The published sampler where the job does not set it: Euler, embedded guidance 6.0, the folder's
        scheduler/scheduler_config.json shift (else HunyuanVideo's 7.0)."""
        if self.pixel:
            return super().sampler_defaults()
        return dict(shift=folders.default_shift(self.cfg, "shift", DEFAULT_SHIFT), guidance=DEFAULT_GUIDANCE,
                    solver="euler")

    def validate_pipeline(self) -> None:
        cfg = self.cfg
        for sub, (file, what) in COMPONENTS.items():  # ckpt_dir itself checked first (self.folder)
            folders.need(self.folder, os.path.join(sub, file) if file else sub, what, FIX, is_dir=file is None)
        self.transformer_weights  # noqa: B018 (found here, before any collective: raises naming what is missing)
        self.check_components()
        for sub, (file, what) in COMPONENTS.items():  # what loads after the transformer: checked now, from headers
            if sub == "transformer":
                continue
            if file is None:
                components.check_tokenizer(os.path.join(self.folder, sub), self.folder, what, FIX)
            else:
                components.check_pretrained(self.folder, sub, what, FIX)
        # the grid is shift-only (grids.shifted_sigmas): a scheduler that shifts by the token count is not it
        components.check_scheduler(self.folder, ("FlowMatchEulerDiscreteScheduler",),
                                   dict(use_dynamic_shifting=False))
        folders.scheduler_shift(self.folder, "shift", DEFAULT_SHIFT)  # checked even when sampler.shift is set
        folders.check_encoder_options(cfg)
        folders.check_tiles(cfg)

    def _config(self, sub: str) -> dict:
        return folders.read_config(os.path.join(self.folder, sub, "config.json"), self.folder)

    def check_components(self) -> None:
        """Every component's config.json against model.name: a checkpoint of another size would load with
        errors only deep inside the job, or (same shapes, other heads) silently compute garbage."""
        m, where = self.mcfg, f"ckpt_dir={self.cfg.ckpt_dir!r}"
        folders.check_fields(self._config("transformer"), {k: m[k] for k in DIT_FIELDS},
                             os.path.join(self.folder, "transformer", "config.json"), self.folder, self.name)
        llama = self._config("text_encoder")
        if llama.get("hidden_size") != m["text_embed_dim"]:
            raise InputError(f"{where}: text_encoder/config.json has hidden_size={llama.get('hidden_size')} but the "
                             f"transformer of model.name={self.name!r} reads text_embed_dim={m['text_embed_dim']}; "
                             f"use the text encoder released with this transformer")
        layers = llama.get("num_hidden_layers")
        if not isinstance(layers, int) or layers < HIDDEN_STATE_SKIP_LAYER:
            raise InputError(f"{where}: text_encoder/config.json has num_hidden_layers={layers}; the features are "
                             f"the hidden state {HIDDEN_STATE_SKIP_LAYER} layers before the last, so it needs >= "
                             f"{HIDDEN_STATE_SKIP_LAYER}; use the released LLaMA text encoder")
        clip = self._config("text_encoder_2")
        if clip.get("hidden_size") != m["pooled_projection_dim"]:
            raise InputError(f"{where}: text_encoder_2/config.json has hidden_size={clip.get('hidden_size')} but the "
                             f"transformer of model.name={self.name!r} reads pooled_projection_dim="
                             f"{m['pooled_projection_dim']}; use the CLIP-L text encoder released with it")
        vae = self._config("vae")
        if vae.get("latent_channels", 16) != m["in_channels"]:
            raise InputError(f"{where}: vae/config.json has latent_channels={vae.get('latent_channels', 16)} but the "
                             f"transformer of model.name={self.name!r} has in_channels={m['in_channels']}; use the "
                             f"VAE released with this transformer")
        strides = (vae.get("temporal_compression_ratio", 4), vae.get("spatial_compression_ratio", 8))
        if strides != VAE_STRIDE:
            raise InputError(f"{where}: vae/config.json compresses time x space by {strides[0]} x {strides[1]}; this "
                             f"pipeline takes the released 4 x 8 VAE (AutoencoderKLHunyuanVideo); use that VAE")

    # ---- geometry and cost -----------------------------------------------------------------------------------
    def latent_shape(self):
        v = self.cfg.video
        if self.pixel:
            return self.mcfg["in_channels"], v.frames, v.height, v.width
        return (self.mcfg["in_channels"], (v.frames - 1) // VAE_STRIDE[0] + 1, v.height // VAE_STRIDE[1],
                v.width // VAE_STRIDE[1])

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        dim = m["num_attention_heads"] * m["attention_head_dim"]
        # double-stream and single-stream blocks both cost ~24*D^2 FLOPs per token (qkv+out and a 4x MLP)
        return CostFigures(params=meta_param_count(lambda: HunyuanVideoDiT(**m)), dim=dim, ffn_dim=4 * dim,
                           num_heads=m["num_attention_heads"], num_layers=m["num_layers"] + m["num_single_layers"],
                           patch_size=(m["patch_size_t"], m["patch_size"], m["patch_size"]),
                           in_channels=m["in_channels"], out_channels=m["out_channels"],
                           text_tokens=TINY_TEXT_LEN if self.pixel else LLAMA_TOKENS, text_mode="joint",
                           text_dim=m["text_embed_dim"])

    def encoder_params(self) -> dict[str, int]:
        return PUBLISHED_ENCODER_PARAMS if self.name == "hunyuanvideo" else {}

    def vae_params(self) -> int:
        return PUBLISHED_VAE_PARAMS if self.name == "hunyuanvideo" else 0

    def vae_decode_flops_per_pixel(self) -> float:
        # AutoencoderKLHunyuanVideo at its default (published) size, torch's FlopCounterMode, 9 x 64 x 64 decode
        return 18.1e6 if self.name == "hunyuanvideo" else 0.0

    def sampler_config(self) -> SamplerConfig:
        s = self.cfg.sampler
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=shifted_sigmas(s.num_steps, s.shift))

    # ---- build / encode / decode -----------------------------------------------------------------------------
    def build(self, device, weights=True):
        if not self.pixel:
            return self.build_pipeline(device, weights)
        mcfg = self.mcfg
        torch.manual_seed(self.cfg.model.init_seed)
        model = HunyuanVideoDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["text_embed_dim"], max_len=TINY_TEXT_LEN)
        if self.cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_pixel_weights(model, text, HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, hidden)
        return self.finish(model, text, device)

    def build_pipeline(self, device, weights: bool):
        """The DiT built on the meta device in model.dtype; read in now, or (``weights=False``, parallel.fsdp)
        by ``load_weights`` once it is sharded."""
        with torch.device("meta"):  # nn.Module.to: diffusers' own .to warns about fp32 modules it has none of
            model = torch.nn.Module.to(HunyuanVideoDiT(**self.mcfg), dtype=DTYPES[self.cfg.model.dtype])
        if weights:
            self.load_weights(model, device)
        return model.eval().requires_grad_(False), HunyuanEncoders(self.folder, device)

    def load_weights(self, model, device, share=None) -> int | None:
        """Full pipeline: the transformer materialised on ``device`` (an FSDP-sharded one as this rank's shards)
        and streamed in tensor by tensor. The pixel size loaded everything in ``build``."""
        if self.pixel:
            return None
        return folders.stream_weights(model, device, self.transformer_weights,
                                      f"ckpt_dir={self.cfg.ckpt_dir!r} (transformer)", share=share)

    def encode(self, encoder, prompt, negative, branches):
        if not self.pixel:
            return self.encode_many(encoder, [(prompt, negative)], branches)[0]
        feats, n = encode_prompt(encoder, prompt, TINY_TEXT_LEN)
        mask = (torch.arange(feats.shape[1]) < n).long()[None]
        return {"cond": HunyuanCond(feats, mask, pooled(feats, n), float(self.cfg.sampler.guidance))}

    def encode_many(self, encoder, texts, branches):
        """Full pipeline: LLaMA, then CLIP, each loaded once for all the prompts and freed right after (the
        model is guidance-distilled: negative prompts are not used)."""
        if self.pixel:
            return super().encode_many(encoder, texts, branches)
        dev, dtype = folders.encoder_place(self.cfg, encoder.device)
        prompts = [p for p, _ in texts]
        with torch.no_grad():
            tokenizer = load_tokenizer(os.path.join(encoder.folder, "tokenizer"))
            crop = PUBLISHED_CROP_START.get(self.name) or template_crop_start(tokenizer)
            llama = load_llama(os.path.join(encoder.folder, "text_encoder"), dtype, dev)
            feats = [llama_features(llama, tokenizer, p, crop) for p in prompts]
            del llama  # run once and freed
            folders.free_memory(dev)
            tokenizer_2 = load_tokenizer(os.path.join(encoder.folder, "tokenizer_2"))
            clip = load_clip_text(os.path.join(encoder.folder, "text_encoder_2"), dtype, dev)
            pools = [clip_pooled(clip, tokenizer_2, p) for p in prompts]
            del clip
            folders.free_memory(dev)
        g, device = float(self.cfg.sampler.guidance), encoder.device
        return [{"cond": HunyuanCond(f.to(device), m.to(device), pl.to(device), g)} for (f, m), pl in zip(feats, pools)]

    def decode(self, latents, model=None):
        """Pixel sizes: the latents are the video. Full pipeline (rank 0): [1, C, F', H', W'] latents -> [1, 3, F,
        H, W] in [-1, 1] (CPU, float32), decoded on the latents' device."""
        if self.pixel:
            return super().decode(latents, model)
        return folders.vae_decode(*self._decode_input(latents, model, self.cfg.vae.tiling), latents.device)

    def _decode_input(self, latents, model, tiled: bool):
        """(the VAE, tiled or not, the latents it decodes: scaled, in its dtype, on its device)."""
        cfg, device = self.cfg, latents.device
        folders.offload_for_decode(cfg, model, device)
        vae = load_vae(os.path.join(self.folder, "vae"), DTYPES[cfg.vae.dtype], device)
        if tiled:
            t = cfg.vae
            vae.enable_tiling(tile_sample_min_height=t.tile_height, tile_sample_min_width=t.tile_width,
                              tile_sample_stride_height=t.tile_stride_height,
                              tile_sample_stride_width=t.tile_stride_width)
        param = next(vae.parameters())
        z = latents.float().to(param.device) / vae.config.scaling_factor
        return vae, z.to(param.dtype)

    def tile_decoder(self, latents, model, parts):
        """diffusers' tiled decode of AutoencoderKLHunyuanVideo (chunks of frames in spatial tiles), tile by tile."""
        if self.pixel:
            return super().tile_decoder(latents, model, parts)
        from magcache_dist.parallel.vae import Finished, HunyuanTiles

        vae, z = self._decode_input(latents, model, tiled=True)
        return Finished(HunyuanTiles(vae, z), lambda v: v.float().clamp(-1, 1))
