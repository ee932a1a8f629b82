"""The model-family protocol and its registry.

A family says, for one job, how its model is checked, built, conditioned, fed noise and decoded, what shape its
latents have and what one call of its transformer costs (the dry-run planner's figures). The sampler, cache and
parallel code are shared by every family.

A ``ModelFamily`` is a per-job object: ``make_family(cfg)`` builds it from the job's config, and everything a later
phase needs from an earlier one travels through return values (``build`` returns the model and the encoder
handle; ``decode`` takes the model), never through attributes set on the way.

The model registry (magcache_dist.families.MODELS) names each model's family class: a family's module is imported
the first time one of its model names is used, so importing this package loads neither diffusers nor transformers.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

from magcache_dist.config import GUIDANCE, SHIFT, SOLVER, JobConfig, evolve, resolve_dtypes, resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families import model_spec
from magcache_dist.sampling.loop import SamplerConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CostFigures:
    """What the planner needs to cost one transformer call (magcache_dist/planner/cost.py).

    ``text_mode``: "cross" (Wan, Open-Sora: image tokens attend to ``text_tokens`` through cross-attention, the text
    keys/values are projected on every rank) or "joint" (FLUX, HunyuanVideo: ``text_tokens`` join the image tokens
    in every block, on every rank). ``attention_span``: the tokens one query attends to in self-attention, when not
    the whole sequence (Open-Sora alternates spatial and temporal blocks: their mean span). ``prepared_text``: the
    model works out its embedded text and every block's cross-attention keys / values once per branch and
    generation (``prepare_condition``, Wan), so a call does neither; ``text_dim``: the text encoder's width."""
    params: int
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    patch_size: tuple[int, int, int]
    in_channels: int  # per latent voxel, as the patch embedding reads it
    out_channels: int  # per latent voxel, as the head writes it
    text_tokens: int
    text_mode: str = "cross"
    attention_span: int | None = None
    text_dim: int = 0
    prepared_text: bool = False
    experts: int = 1  # Wan2.2 A14B: 2 experts of ``params`` each, one of them running at a time


def meta_param_count(build) -> int:
    """Parameters of the module ``build()`` makes, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """float32 noise from a CPU generator: identical on every rank and device."""
    return torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class ModelFamily:
    """One job's model family. Subclasses implement the phases; the registry (families.MODELS) maps names to them."""

    image_model = False  # one frame per job, written as image.png (FLUX.1) instead of video.mp4

    def __init__(self, cfg: JobConfig):
        self.name = cfg.model.name
        self.spec = model_spec(self.name)
        self.given = self.cfg = cfg  # as the job was written: None is unset
        self.cfg = self.resolve(cfg)  # what the job runs with: every unset key given the family's default

    def resolve(self, cfg: JobConfig) -> JobConfig:
        """``cfg`` with this machine's dtype for an ``auto`` one and the family's sampler defaults for the unset
        sampler keys (a copy: ``cfg`` itself never changes)."""
        cfg = resolve_dtypes(cfg, on_gpu=torch.cuda.is_available())
        defaults = self.sampler_defaults()
        return evolve(cfg, **{f"sampler.{k}": v for k, v in defaults.items()
                              if getattr(cfg.sampler, k) is None and v is not None})

    def sampler_defaults(self) -> dict:
        """What ``sampler.shift`` / ``.guidance`` / ``.solver`` mean when the job leaves them unset (None: stays
        unset, the family decides without it). ``self.cfg`` is the job as written here."""
        return dict(shift=SHIFT, guidance=GUIDANCE, solver=SOLVER)

    # ---- before any collective ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Every family-specific check (geometry, files, options) before any collective; ValueError naming the
        key and the fix."""
        self.check_geometry()

    def check_geometry(self) -> None:
        """The video geometry checks alone (no file is read): what the dry-run planner needs."""

    def check_ckpt_exists(self) -> None:
        ckpt = self.cfg.model.ckpt
        if ckpt is not None and not os.path.exists(resolve_path(ckpt)):
            raise InputError(f"model.ckpt={ckpt!r} does not exist (relative paths are taken from the project root); "
                             f"set model.ckpt=null for seeded random weights")
        if ckpt is not None and os.path.isfile(resolve_path(ckpt)):
            from magcache_dist.families.components import check_weight_file

            check_weight_file(resolve_path(ckpt), None, "model.ckpt")  # header vs size, pointer: before loading

    def check_multiples(self, frames_multiple: int, spatial_multiple: int, one_frame: bool = False,
                        what: str = "") -> None:
        v = self.cfg.video
        if one_frame and v.frames != 1:
            raise InputError(f"video.frames={v.frames}: {self.name} is an image model; set video.frames=1")
        for key, val, m in (("video.frames", v.frames, frames_multiple), ("video.height", v.height, spatial_multiple),
                            ("video.width", v.width, spatial_multiple)):
            if val < 1 or val % m:
                raise InputError(f"{key}={val} must be a positive multiple of {m}{what} for model {self.name}; "
                                 f"use {key}={max(m, val // m * m)}")

    def num_heads(self) -> int:
        raise NotImplementedError

    def sampler_config(self) -> SamplerConfig:
        """CFG mode and sigma grid of the family (default: Wan's separate CFG calls on its shifted grid)."""
        s = self.cfg.sampler
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver)

    # ---- geometry and cost -------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of what the transformer denoises (the initial noise, batch 1)."""
        raise NotImplementedError

    def cost_figures(self) -> CostFigures:
        raise NotImplementedError

    def encoder_params(self) -> dict[str, int]:
        """Parameters of each encoder the job loads before sampling (one at a time, freed after), by name: what
        the dry-run planner adds to the resident DiT while encoding. Empty: none worth counting."""
        return {}

    def encoder_matmul_params(self) -> dict[str, int]:
        """Of ``encoder_params``, the parameters each token goes through in matrix products (the planner's encode
        FLOPs, 2 per parameter and token): a token embedding is a lookup and is left out where known."""
        return self.encoder_params()

    def vae_params(self) -> int:
        """Parameters of the VAE each rank loads to decode (0: no VAE)."""
        return 0

    def vae_decode_calls_per_tile(self) -> int:
        """Decoder calls per decode tile (the planner's ``vae_pass_s`` term): 1, or per latent frame for a VAE that
        decodes frame by frame."""
        return 1

    def vae_decode_flops_per_pixel(self) -> float:
        """FLOPs of the VAE decode per output pixel and frame (the planner's decode time), 0 without a VAE."""
        return 0.0

    def vae_chunk_frames(self) -> int | None:
        """Frames of one decode tile when the VAE's tiles are chunks of whole frames (Open-Sora), else None."""
        return None

    # ---- the job's phases --------------------------------------------------------------------------------
    def build(self, device, weights: bool = True) -> tuple[torch.nn.Module, object]:
        """(denoiser with the sampler seams, conditioning encoder handle). ``weights=False``: a family that can
        may leave the denoiser on the meta device, for ``load_weights`` after it is sharded (parallel.fsdp: each
        rank then materialises and reads only its shards); the others load it anyway."""
        raise NotImplementedError

    def load_weights(self, model: torch.nn.Module, device, share=None) -> int | None:
        """Materialise and fill a denoiser that ``build(weights=False)`` left on the meta device (nothing to do
        for a family that always loads in ``build``); returns the bytes this rank read (None: nothing read here).
        ``share``: the ranks of a group that all load the whole model read a row block each and all-gather
        (magcache_dist/parallel/load_share.py)."""
        return None

    def weights_converted(self) -> bool:
        """Whether the DiT's file goes through a layout conversion as it loads (every rank then reads it whole:
        ``parallel.shared_load`` shares only a read without one); the planner's load phase asks."""
        return False

    def encode(self, encoder, prompt: str, negative: str, branches) -> dict:
        """{branch: conditioning passed as-is to model.embed}."""
        raise NotImplementedError

    def encode_many(self, encoder, texts: list[tuple[str, str]], branches) -> list[dict]:
        """The conditioning of several (prompt, negative prompt) pairs, in order (a prompt list). A family whose
        encoder is costly to load overrides it to load the encoder once."""
        return [self.encode(encoder, prompt, negative, branches) for prompt, negative in texts]

    def make_noise(self, seed: int) -> torch.Tensor:
        return seeded_noise((1, *self.latent_shape()), seed)

    def decode(self, latents: torch.Tensor, model=None) -> torch.Tensor:
        """[B, C, F, H, W] latents -> [B, 3, F', H', W'] video in [-1, 1]; ``model`` is the denoiser ``build``
        returned (a family may move it off the device to make room for its decoder)."""
        raise NotImplementedError

    def tile_decoder(self, latents: torch.Tensor, model, parts: int):
        """The decode cut into independent tiles for ``parts`` ranks (magcache_dist/parallel/vae.py), its
        assembled result what ``decode`` returns in the tiled mode; ``model`` as in ``decode``. Here: frames in
        ``parts`` pieces, for the decodes that work frame by frame (pixel space, the embedded pixel
        autoencoder); a family whose decoder mixes frames overrides it."""
        from magcache_dist.parallel.vae import ChunkTiles

        cuts = [round(i * latents.shape[2] / parts) for i in range(parts + 1)]
        cuts = sorted(set(cuts))
        return ChunkTiles(lambda i: self.decode(latents[:, :, cuts[i]:cuts[i + 1]], model), len(cuts) - 1)

    band_decode = False  # its VAE decodes in row bands with halo exchange (magcache_dist/parallel/vae_bands.py)

    def band_decoder(self, latents: torch.Tensor, model):
        """The whole decode (``vae.tiling=false``) run in row bands, one per rank (a ``vae_bands.BandDecode``);
        families with ``band_decode`` define it."""
        raise NotImplementedError

    # ---- cache defaults ----------------------------------------------------------------------------------
    def default_preset(self) -> str | None:
        """The MagCache preset used when neither a preset nor a ratios file is given (the registry's)."""
        return self.spec.preset

    def cache_rule(self) -> str:
        """The decision rule written into ratio files calibrated on this model."""
        return "wan"

    def expert_switch_step(self) -> int | None:
        """Two-expert models (Wan2.2 A14B): the step at which the low-noise expert takes over; None otherwise."""
        return None


def family_class(name: str) -> type[ModelFamily]:
    """The family class of a model name (its module is imported on first use)."""
    module, cls = model_spec(name).family.split(":")
    return getattr(importlib.import_module(module), cls)


def make_family(cfg: JobConfig) -> ModelFamily:
    """The job's family object; its ``cfg`` is the job resolved for this family and machine (see ``resolve``)."""
    return family_class(cfg.model.name)(cfg)

