"""Model families and the model registry: one row per model name.

Each family module defines a ModelFamily subclass (magcache_dist/families/base.py); the sampler, cache and parallel
code are shared, and a family only says how to validate, build, condition, make noise for and decode its model, and
what its latents look like and cost (see docs/adding_a_model.md).

``MODELS`` is the registry: everything the code knows about a model name is its row here (its family class, its
default MagCache preset, whether it is embedded, the checkpoint layouts it reads); every list of names elsewhere is
derived from it. A family's module is imported only when one of its names is used (``base.make_family``), so a job
on the embedded model (or a rejected bad input) never imports diffusers' or transformers' model code.
"""
from __future__ import annotations

from dataclasses import dataclass

from magcache_dist.errors import InputError

TINY = "magcache_dist.families.tiny:TinyVideoFamily"
WAN = "magcache_dist.families.wan:WanFamily"
FLUX = "magcache_dist.families.flux:FluxFamily"
HUNYUAN = "magcache_dist.families.hunyuanvideo:HunyuanVideoFamily"
OPENSORA = "magcache_dist.families.opensora:OpenSoraFamily"
WAN22 = "magcache_dist.families.wan22:Wan22Family"
WAN22_TI2V = "magcache_dist.families.wan22:Wan22TI2VFamily"


@dataclass(frozen=True)
class ModelSpec:
    """One model name. ``family``: "module:Class" of its ModelFamily. ``preset``: the MagCache preset used when a job
    names neither a preset nor a ratios file (None: no calibration ships; calibrate one or use cache.mode=online).
    ``embedded``: runs without ``ckpt_dir`` (the DiT and a tiny text encoder from ``model.ckpt``, or seeded random
    weights; no VAE). ``layouts``: the ``ckpt_dir`` layouts its family reads (``model.layout`` chooses among several).
    The model's architecture is the entry of the same name in its family's table of sizes (models/*.py)."""
    name: str
    family: str
    preset: str | None
    embedded: bool = False
    layouts: tuple[str, ...] = ("diffusers",)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("tiny", TINY, None, embedded=True, layouts=()),
    ModelSpec("tiny-video", TINY, "tiny-video", embedded=True, layouts=()),
    ModelSpec("wan2.1-t2v-1.3b", WAN, "wan2.1-t2v-1.3b", layouts=("official", "diffusers")),
    ModelSpec("wan2.1-t2v-14b", WAN, "wan2.1-t2v-14b", layouts=("official", "diffusers")),
    ModelSpec("wan2.1-i2v-14b-480p", WAN, "wan2.1-i2v-14b-480p", layouts=("official", "diffusers")),
    ModelSpec("wan2.1-i2v-14b-720p", WAN, "wan2.1-i2v-14b-720p", layouts=("official", "diffusers")),
    ModelSpec("tiny-wan-t2v", WAN, None, layouts=("official", "diffusers")),  # tests' tiny random folders
    ModelSpec("tiny-wan-i2v", WAN, None, layouts=("official", "diffusers")),
    # Wan2.2: two experts (A14B; tiny-wan22-* are the tests' folders) and the dense TI2V-5B, whose default preset is
    # the text-only one (with an image: wan2.2-ti2v-5b-i2v, Wan22TI2VFamily.default_preset)
    ModelSpec("wan2.2-t2v-a14b", WAN22, "wan2.2-t2v-a14b", layouts=("official", "diffusers")),
    ModelSpec("wan2.2-i2v-a14b", WAN22, "wan2.2-i2v-a14b", layouts=("official", "diffusers")),
    ModelSpec("tiny-wan22-t2v", WAN22, "wan2.2-t2v-a14b", layouts=("official", "diffusers")),
    ModelSpec("tiny-wan22-i2v", WAN22, "wan2.2-i2v-a14b", layouts=("official", "diffusers")),
    ModelSpec("wan2.2-ti2v-5b", WAN22_TI2V, "wan2.2-ti2v-5b-t2v", layouts=("official", "diffusers")),
    ModelSpec("tiny-wan22-ti2v", WAN22_TI2V, "wan2.2-ti2v-5b-t2v", layouts=("official", "diffusers")),
    ModelSpec("flux.1-dev", FLUX, "flux.1-dev"),
    ModelSpec("flux.1-schnell", FLUX, None),  # no published ratios for schnell
    ModelSpec("flux.1-dev-tiny", FLUX, "flux.1-dev", embedded=True, layouts=()),
    # calibrated on the tiny pixel-space model only (configs/flux-schnell-tiny.yaml, cache.mode=calibrate)
    ModelSpec("flux.1-schnell-tiny", FLUX, "flux.1-schnell-tiny", embedded=True, layouts=()),
    ModelSpec("tiny-flux-dev", FLUX, "flux.1-dev"),
    ModelSpec("tiny-flux-schnell", FLUX, None),
    ModelSpec("hunyuanvideo", HUNYUAN, "hunyuanvideo-t2v-720p"),
    ModelSpec("hunyuanvideo-tiny", HUNYUAN, "hunyuanvideo-t2v-544p", embedded=True, layouts=()),
    ModelSpec("tiny-hunyuanvideo", HUNYUAN, "hunyuanvideo-t2v-544p"),
    ModelSpec("opensora-1.2", OPENSORA, "opensora-1.2", layouts=("official",)),
    ModelSpec("opensora-1.2-tiny", OPENSORA, "opensora-1.2", embedded=True, layouts=()),
    ModelSpec("tiny-opensora", OPENSORA, "opensora-1.2", layouts=("official",)),
)}


def model_names() -> list[str]:
    """Every model name with a pipeline."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registry row of ``name``; ValueError naming model.name and the choices."""
    if name not in MODELS:
        raise InputError(f"model.name={name!r} is unknown; choose one of {model_names()}")
    return MODELS[name]


def uses_ckpt_dir(name: str) -> bool:
    """Whether model ``name`` is a full pipeline (text encoders, DiT, VAE) read from ``ckpt_dir``."""
    return not model_spec(name).embedded
