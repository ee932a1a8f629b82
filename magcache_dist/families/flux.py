"""FLUX.1-dev (guidance-distilled: one call per step with the guidance as an input) and FLUX.1-schnell
(timestep-distilled, no guidance input, 4 steps) on the shared sampler, cache and parallel code.

Two kinds of names:
- ``flux.1-dev`` / ``flux.1-schnell`` (and ``tiny-flux-*``, the same pipeline at toy size for tests): the full
  pipeline from a diffusers-layout folder (``ckpt_dir``: transformer/, text_encoder/ = CLIP-L, tokenizer/,
  text_encoder_2/ = T5-XXL, tokenizer_2/, vae/, scheduler/). ``model.ckpt`` may name Black Forest Labs' official
  single-file transformer (``flux1-dev.safetensors``): it replaces transformer/ and is converted tensor by tensor.
  CLIP's pooled vector and T5's features (``max_sequence_length`` tokens, no mask) are computed once and both
  encoders freed before sampling; latents are 16 x H/8 x W/8, packed into 2x2 patches (64 channels); sigmas are
  shifted by the image token count as the folder's scheduler says (dev: exponential shift, mu linear in the
  token count; schnell: none); rank 0 decodes with the VAE (``z / scaling_factor + shift_factor``). Output: one
  image (image.png).
- ``flux.1-dev-tiny`` / ``flux.1-schnell-tiny``: pixel space, the tiny word-level text encoder, ``model.ckpt``.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families import components, folders
from magcache_dist.families.base import DTYPES, CostFigures, meta_param_count
from magcache_dist.families.common import (
    CLIP_L_TEXT_PARAMS,
    T5_XXL_ENCODER_PARAMS,
    PipelineFamily,
    encode_prompt,
    pooled,
)
from magcache_dist.sampling.grids import flux_mu, flux_sigmas, linear_grid
from magcache_dist.sampling.loop import SamplerConfig
from models.flux import FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, FluxDiT, flux_config
from models.layouts import is_official, official_to_diffusers
from models.loading import check_shapes, read_shapes
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16
# T5 tokens (max_sequence_length): BFL's published defaults (dev 512, schnell 256); the toy pipeline: 32
T5_TOKENS = {"flux.1-dev": 512, "flux.1-schnell": 256, "tiny-flux-dev": 32, "tiny-flux-schnell": 32}
PUBLISHED = ("flux.1-dev", "flux.1-schnell")
VAE_SCALE = 8  # FLUX's VAE: 4 levels, 3 downsamplings
COMPONENTS = dict(transformer="transformer", clip="text_encoder", clip_tokenizer="tokenizer", t5="text_encoder_2",
                  t5_tokenizer="tokenizer_2", vae="vae")
FIX = "copy the complete FLUX.1 diffusers release into ckpt_dir (docs/adding_a_model.md lists its folders)"
# the scheduler of the published folders (scheduler/scheduler_config.json), used when the folder has none
SCHEDULERS = {"dev": dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                          max_image_seq_len=4096, shift=3.0),
              "schnell": dict(use_dynamic_shifting=False, shift=1.0)}


@dataclass
class FluxCond:
    text: torch.Tensor  # [1, T, joint_attention_dim] (T5 features in the published model)
    pooled: torch.Tensor  # [1, pooled_projection_dim] (CLIP's pooled vector in the published model)
    guidance: float  # embedded guidance (dev); unused by schnell

    def to(self, device):
        return FluxCond(self.text.to(device), self.pooled.to(device), self.guidance)


@dataclass(frozen=True)
class FluxFolder:
    """The files of a FLUX.1 job (``ckpt_dir`` in the diffusers layout, ``model.ckpt`` optionally)."""
    root: str
    transformer: str  # weights: a diffusers .safetensors / index json, or the official single file
    shapes: dict  # the transformer's tensor names and shapes as stored (read from the headers once)
    official: bool  # transformer holds BFL's official key names
    clip: str
    clip_tokenizer: str
    t5: str
    t5_tokenizer: str
    vae: str
    scheduler: dict
    vae_config: dict


@dataclass(frozen=True)
class FluxEncoders:
    folder: FluxFolder
    device: object


def pipeline_sigmas(num_steps: int, image_tokens: int, sched: dict) -> tuple[float, ...]:
    """The sigma grid diffusers' FluxPipeline gives FlowMatchEulerDiscreteScheduler with the folder's config:
    s = 1 .. 1/N, then the exponential shift at mu(image tokens) when ``use_dynamic_shifting``, else the
    constant ``shift`` (1 for schnell: no shift)."""
    s = linear_grid(num_steps)
    if sched.get("use_dynamic_shifting", False):
        mu = flux_mu(image_tokens, sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096),
                     sched.get("base_shift", 0.5), sched.get("max_shift", 1.15))
        e = torch.tensor(mu, dtype=torch.float64).exp().item()
        return tuple(float(v) for v in e / (e + (1.0 / s - 1.0)))
    shift = float(sched.get("shift", 1.0))
    return tuple(float(v) for v in shift * s / (1 + (shift - 1) * s))


def check_flux_scheduler(root: str) -> dict | None:
    """The folder's scheduler/scheduler_config.json (None when absent): a FlowMatchEulerDiscreteScheduler whose
    fields this project implements (components.NO_EFFECT), with a grid that is finite at every step: shift > 0,
    and under use_dynamic_shifting finite base / max shifts over two different sequence lengths."""
    sched = components.check_scheduler(root, ("FlowMatchEulerDiscreteScheduler",))
    if sched is None:
        return None
    where = f"ckpt_dir={root!r}: scheduler/scheduler_config.json"
    dynamic = sched.get("use_dynamic_shifting", False)
    numbers = ("base_shift", "max_shift") if dynamic else ("shift",)
    for key in numbers:
        v = sched.get(key, SCHEDULERS["dev"][key])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (key == "shift" and v <= 0):
            raise InputError(f"{where} has {key}={v!r}; it must be a {'number > 0' if key == 'shift' else 'number'}"
                             f" (the release: {SCHEDULERS['dev'][key]})")
    if dynamic and sched.get("base_image_seq_len", 256) == sched.get("max_image_seq_len", 4096):
        raise InputError(f"{where} has base_image_seq_len = max_image_seq_len = {sched.get('max_image_seq_len')}; "
                         f"the shift is interpolated between them, so they must differ (the release: 256 and 4096)")
    return sched


class FluxFamily(PipelineFamily):
    family = "FLUX.1"
    image_model = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = flux_config(self.name)
        self.schnell = "schnell" in self.name

    def cache_rule(self) -> str:
        return "flux-schnell" if self.schnell else "flux"

    def num_heads(self) -> int:
        return self.mcfg["num_attention_heads"]

    # ---- before any collective ---------------------------------------------------------------------------
    def validate(self) -> None:
        super().validate()
        if self.schnell and self.cfg.sampler.guidance != 1.0:
            raise InputError(f"sampler.guidance={self.cfg.sampler.guidance}: FLUX.1-schnell takes no guidance; set "
                             f"sampler.guidance=1")

    def check_geometry(self) -> None:
        if self.pixel:
            self.check_multiples(1, 2, one_frame=True)
        else:
            self.check_multiples(1, 2 * VAE_SCALE, one_frame=True, what=" (VAE stride 8 x patch 2)")

    @functools.cached_property
    def folder(self) -> FluxFolder:
        """Every file of the job, checked against model.name (resolved once: validate, build and decode use it)."""
        cfg = self.cfg
        root = folders.ckpt_root(cfg, self.name, "FLUX.1", "diffusers folder",
                                 "transformer/, text_encoder/, text_encoder_2/, vae/, ...", model_ckpt=True)
        c = COMPONENTS
        paths = {k: folders.need(root, os.path.join(c[k], "config.json"), f"{k} config", FIX)
                 for k in ("transformer", "clip", "t5", "vae")}
        for k in ("clip_tokenizer", "t5_tokenizer"):
            folders.need(root, c[k], f"{k.replace('_', ' ')} folder", FIX, is_dir=True)
            components.check_tokenizer(os.path.join(root, c[k]), root, k.replace("_", " "), FIX)
        for k in ("clip", "t5", "vae"):  # read after the transformer has loaded: checked now, from headers
            components.check_pretrained(root, c[k], k if k == "vae" else f"{k} text encoder", FIX)
        # the transformer's config describes the model that model.name builds, in every field of the math
        folders.check_fields(folders.read_config(paths["transformer"], root), self.mcfg, paths["transformer"], root,
                             self.name)
        clip_cfg = folders.read_config(paths["clip"], root)
        folders.check_fields(clip_cfg, dict(hidden_size=self.mcfg["pooled_projection_dim"]), paths["clip"], root,
                             self.name)
        t5_cfg = folders.read_config(paths["t5"], root)
        folders.check_fields(t5_cfg, dict(d_model=self.mcfg["joint_attention_dim"]), paths["t5"], root, self.name)
        vae_cfg = folders.read_config(paths["vae"], root)
        folders.check_fields(vae_cfg, dict(latent_channels=self.mcfg["in_channels"] // 4), paths["vae"], root,
                             self.name)
        levels = len(vae_cfg.get("block_out_channels", [0] * 4))
        if 2 ** (levels - 1) != VAE_SCALE:
            raise InputError(f"ckpt_dir={cfg.ckpt_dir!r}: vae/config.json has {levels} levels (stride "
                             f"{2 ** (levels - 1)}) but FLUX.1's VAE has stride {VAE_SCALE}; replace vae/")
        sched = check_flux_scheduler(root) or self.default_scheduler
        if cfg.model.ckpt is not None:  # BFL's official single file (or a diffusers-named one) replaces transformer/
            weights = resolve_path(cfg.model.ckpt)
            if not os.path.isfile(weights):
                raise InputError(f"model.ckpt={cfg.model.ckpt!r} does not exist; point it at the transformer file "
                                 f"(e.g. flux1-dev.safetensors) or set model.ckpt=null to use ckpt_dir/transformer")
            components.check_weight_file(weights, None, "model.ckpt")
        else:
            weights = folders.diffusers_weights(os.path.dirname(paths["transformer"]), root)
        shapes = read_shapes(weights)
        return FluxFolder(root=root, transformer=weights, shapes=shapes,
                          official=is_official(shapes, FLUX_OFFICIAL_MARKER),
                          clip=os.path.dirname(paths["clip"]), clip_tokenizer=os.path.join(root, c["clip_tokenizer"]),
                          t5=os.path.dirname(paths["t5"]), t5_tokenizer=os.path.join(root, c["t5_tokenizer"]),
                          vae=os.path.dirname(paths["vae"]), scheduler=sched, vae_config=vae_cfg)

    def validate_pipeline(self) -> None:
        folder = self.folder
        folders.check_encoder_options(self.cfg)
        if self.cfg.vae.tiling or self.cfg.vae.parallel:
            folders.check_tiles(self.cfg)
        # names and shapes of the transformer's weights (headers only), against the model model.name builds
        with torch.device("meta"):
            model = FluxDiT(**self.mcfg)
        where = self._weights_where()
        shapes = folder.shapes
        if folder.official:
            converted = {}
            for key, shape in shapes.items():
                converted.update({k: tuple(v.shape) for k, v in self._convert({key: torch.empty(shape, device="meta")},
                                                                              where).items()})
            shapes = converted
        check_shapes(model, shapes, where)

    @property
    def default_scheduler(self) -> dict:
        """The released scheduler_config.json of the variant (a folder without scheduler/, or a dry run)."""
        return SCHEDULERS["schnell" if self.schnell else "dev"]

    def _weights_where(self) -> str:
        if self.cfg.model.ckpt is not None:
            return f"model.ckpt={self.cfg.model.ckpt!r}"
        return f"ckpt_dir={self.cfg.ckpt_dir!r} (transformer)"

    def _convert(self, sd: dict, where: str) -> dict:
        hidden = self.mcfg["num_attention_heads"] * self.mcfg["attention_head_dim"]
        return official_to_diffusers(sd, FLUX_OFFICIAL, hidden, where)

    # ---- geometry and cost -------------------------------------------------------------------------------
    def latent_shape(self):
        v = self.cfg.video
        if self.pixel:
            return self.mcfg["in_channels"] // 4, 1, v.height, v.width
        return self.mcfg["in_channels"] // 4, 1, v.height // VAE_SCALE, v.width // VAE_SCALE

    def image_tokens(self) -> int:
        _, _, h, w = self.latent_shape()
        return (h // 2) * (w // 2)

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        dim = m["num_attention_heads"] * m["attention_head_dim"]
        # double-stream and single-stream blocks both cost ~24*D^2 FLOPs per token (qkv+out and a 4x MLP)
        return CostFigures(params=meta_param_count(lambda: FluxDiT(**m)), dim=dim, ffn_dim=4 * dim,
                           num_heads=m["num_attention_heads"], num_layers=m["num_layers"] + m["num_single_layers"],
                           patch_size=(1, 2, 2), in_channels=m["in_channels"] // 4, out_channels=m["in_channels"] // 4,
                           text_tokens=T5_TOKENS.get(self.name, TINY_TEXT_LEN), text_mode="joint",
                           text_dim=m["joint_attention_dim"])

    def encoder_params(self) -> dict[str, int]:
        # CLIP-L's text tower and T5-XXL's encoder (openai/clip-vit-large-patch14, google/t5-v1_1-xxl)
        return {} if self.name not in PUBLISHED else {"CLIP-L text encoder": CLIP_L_TEXT_PARAMS,
                                                      "T5-XXL encoder": T5_XXL_ENCODER_PARAMS}

    def vae_params(self) -> int:
        return 83_819_683 if self.name in PUBLISHED else 0  # FLUX.1's AutoencoderKL (16 latent channels)

    def vae_decode_flops_per_pixel(self) -> float:
        # FLUX.1's AutoencoderKL decoder (128-256-512-512, 16 latent channels), FlopCounterMode, a 128 x 128 decode
        return 9.47e6 if self.name in PUBLISHED else 0.0

    def sampler_config(self) -> SamplerConfig:
        s = self.cfg.sampler
        if self.pixel:
            sigmas = flux_sigmas(s.num_steps, self.image_tokens(), shift=not self.schnell)
        else:
            sched = self.folder.scheduler if self.cfg.ckpt_dir is not None else self.default_scheduler
            sigmas = pipeline_sigmas(s.num_steps, self.image_tokens(), sched)
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=sigmas)

    # ---- build / encode / decode -------------------------------------------------------------------------
    def build(self, device, weights=True):
        mcfg = self.mcfg
        if not self.pixel:
            with torch.device("meta"):
                model = torch.nn.Module.to(FluxDiT(**mcfg), dtype=DTYPES[self.cfg.model.dtype])
            if weights:
                self.load_weights(model, device)
            return model.eval().requires_grad_(False), FluxEncoders(self.folder, device)
        torch.manual_seed(self.cfg.model.init_seed)
        model = FluxDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["joint_attention_dim"], max_len=TINY_TEXT_LEN)
        if self.cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_pixel_weights(model, text, FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, hidden)
        return self.finish(model, text, device)

    def load_weights(self, model, device, share=None) -> int | None:
        """The full pipeline's transformer, materialised in model.dtype on the job device (an FSDP-sharded one
        as this rank's shards) and streamed in tensor by tensor (official files converted on the way). The pixel
        sizes loaded everything in ``build``."""
        if self.pixel:
            return None
        folder, where = self.folder, self._weights_where()
        convert = (lambda sd: self._convert(sd, where)) if folder.official else None
        return folders.stream_weights(model, device, folder.transformer, where, convert, share=share)

    def weights_converted(self) -> bool:
        if self.pixel or self.cfg.model.ckpt is None:  # transformer/ of a diffusers folder: read as stored
            return False
        try:
            return self.folder.official
        except (InputError, ValueError, OSError):  # planned where the files are not: a single file is BFL's
            return True

    def encode(self, encoder, prompt, negative, branches):
        if self.pixel:
            feats, n = encode_prompt(encoder, prompt, 0)  # FLUX's T5 has no text mask: the real tokens only
            return {"cond": FluxCond(feats, pooled(feats, n), float(self.cfg.sampler.guidance))}
        return self.encode_many(encoder, [(prompt, negative)], branches)[0]

    def encode_many(self, encoder, texts, branches):
        """CLIP-L's pooled vector and T5's features of each prompt (FLUX has no negative prompt: guidance is an
        input of dev, schnell has none); each encoder is loaded once for the whole list, run and freed."""
        if self.pixel:
            return super().encode_many(encoder, texts, branches)
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        folder, device = encoder.folder, encoder.device
        dev, dtype = folders.encoder_place(self.cfg, device)
        prompts = [p for p, _ in texts]
        with torch.no_grad():
            tok = AutoTokenizer.from_pretrained(folder.clip_tokenizer, local_files_only=True)
            clip = CLIPTextModel.from_pretrained(folder.clip, torch_dtype=dtype, local_files_only=True).to(dev).eval()
            pooled_vecs = [self._clip_pooled(clip, tok, p, dev) for p in prompts]
            del clip
            folders.free_memory(dev)
            tok = AutoTokenizer.from_pretrained(folder.t5_tokenizer, local_files_only=True)
            t5 = T5EncoderModel.from_pretrained(folder.t5, torch_dtype=dtype, local_files_only=True).to(dev).eval()
            feats = [self._t5_features(t5, tok, p, dev) for p in prompts]
            del t5
            folders.free_memory(dev)
        g = float(self.cfg.sampler.guidance)
        return [{"cond": FluxCond(f.to(device), v.to(device), g)} for f, v in zip(feats, pooled_vecs)]

    @staticmethod
    def _clip_pooled(clip, tok, prompt: str, dev) -> torch.Tensor:
        """[1, 768]: CLIP-L's pooled output of the prompt padded / truncated to the tokenizer's length (77)."""
        n = tok.model_max_length if tok.model_max_length < 10_000 else clip.config.max_position_embeddings
        ids = tok([prompt], padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        return clip(ids.to(dev), output_hidden_states=False).pooler_output

    def _t5_features(self, t5, tok, prompt: str, dev) -> torch.Tensor:
        """[1, T, 4096]: T5's last hidden state over max_sequence_length tokens, padding included (no mask)."""
        ids = tok([prompt], padding="max_length", max_length=T5_TOKENS[self.name], truncation=True,
                  return_tensors="pt").input_ids
        return t5(ids.to(dev), output_hidden_states=False)[0]

    def decode(self, latents, model=None):
        """[1, 16, 1, H/8, W/8] -> [1, 3, 1, H, W] in [-1, 1] (rank 0)."""
        if self.pixel:
            return super().decode(latents, model)
        image = folders.vae_decode(*self._decode_input(latents, model, self.cfg.vae.tiling), latents.device)
        return image[:, :, None]  # [1, 3, 1, H, W]

    def _decode_input(self, latents, model, tiled: bool):
        """(the VAE, tiled or not, the image latent it decodes [1, 16, H/8, W/8]: scaled, shifted, in its dtype)."""
        from diffusers import AutoencoderKL

        cfg, device = self.cfg, latents.device
        folders.offload_for_decode(cfg, model, device)
        vae = AutoencoderKL.from_pretrained(self.folder.vae, torch_dtype=DTYPES[cfg.vae.dtype],
                                            local_files_only=True).to(device).eval()
        if tiled:  # square tiles: tile_height / tile_stride_height
            t = cfg.vae
            vae.enable_tiling()
            vae.tile_sample_min_size = t.tile_height
            vae.tile_latent_min_size = t.tile_height // VAE_SCALE
            vae.tile_overlap_factor = 1 - t.tile_stride_height / t.tile_height
        c = vae.config
        z = latents[:, :, 0].float() / c.scaling_factor + (c.shift_factor or 0.0)  # [1, 16, H/8, W/8]
        return vae, z.to(next(vae.parameters()).dtype)

    def tile_decoder(self, latents, model, parts):
        """diffusers' tiled decode of AutoencoderKL (square tiles: vae.tile_height / tile_stride_height)."""
        if self.pixel:
            return super().tile_decoder(latents, model, parts)
        from magcache_dist.parallel.vae import Finished, KLTiles

        vae, z = self._decode_input(latents, model, tiled=True)
        return Finished(KLTiles(vae, z), lambda v: v.float().clamp(-1, 1)[:, :, None])
