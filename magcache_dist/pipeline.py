"""From a validated JobConfig to the pieces the sampler needs: model, text encoder, cache policy, noise, decode.

Model families plug in through ``register_family``: a ``ModelFamily`` validates its part of the config before any
collective, builds the denoiser (with the ``embed`` / ``forward_blocks`` / ``forward_head`` / ``unpatchify`` seams)
and its conditioning, makes the noise and decodes latents to pixels. The sampler, cache and parallel code are
shared by all families.
"""
from __future__ import annotations

import importlib
import os

import torch

from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache, preset_names
from magcache_dist.auto import check_store, job_sigmas
from magcache_dist.cache.base import check_branch_sync
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.magcache import MagCachePolicy
from magcache_dist.cache.online import OnlineConfig, build_online
from magcache_dist.cache.presets import get_rule
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.checkpoint import validate_checkpointing
from magcache_dist.io.probe import ensure_writable_dir
from magcache_dist.config import JobConfig, resolve_path
from magcache_dist.parallel.apply import check_backend
from magcache_dist.parallel.fsdp import check_fsdp
from magcache_dist.parallel.dims import ParallelDims
from magcache_dist.sampling.loop import SamplerConfig
from magcache_dist.sampling.schedulers import SOLVERS
from models.loading import check_shapes, load_state_dict_strict, read_shapes, read_tensors
from models.tiny_ae import PixelAutoencoder
from models.tiny_text import TinyTextEncoder
from models.wan import WAN_CONFIGS, WanConfig, WanModel, get_config
from models.wan_i2v import build_wan_model

CACHE_MODES = ("off", "magcache", "calibrate", "teacache", "auto", "online")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEXT_ENCODER_PREFIX = "text_encoder."


class ModelFamily:
    """How one family of models is validated, built, conditioned and decoded (see TinyVideoFamily)."""

    def validate(self, cfg: JobConfig) -> None:
        """Family-specific checks (geometry, files) before any collective; raise ValueError naming the key."""

    @staticmethod
    def check_ckpt_exists(cfg: JobConfig) -> None:
        if cfg.model.ckpt is not None and not os.path.exists(resolve_path(cfg.model.ckpt)):
            raise ValueError(f"model.ckpt={cfg.model.ckpt!r} does not exist (relative paths are taken from the "
                             f"project root); set model.ckpt=null for seeded random weights")

    @staticmethod
    def check_geometry(cfg: JobConfig, frames_multiple: int, spatial_multiple: int, one_frame: bool = False):
        v = cfg.video
        if one_frame and v.frames != 1:
            raise ValueError(f"video.frames={v.frames}: {cfg.model.name} is an image model; set video.frames=1")
        for key, val, m in (("video.frames", v.frames, frames_multiple), ("video.height", v.height, spatial_multiple),
                            ("video.width", v.width, spatial_multiple)):
            if val < 1 or val % m:
                raise ValueError(f"{key}={val} must be a positive multiple of {m} for model {cfg.model.name}")

    def num_heads(self, cfg: JobConfig) -> int:
        return get_config(cfg.model.name).num_heads

    def build(self, cfg: JobConfig, device) -> tuple[torch.nn.Module, object]:
        """(denoiser with the sampler seams, conditioning encoder)."""
        raise NotImplementedError

    def encode(self, encoder, cfg: JobConfig, prompt: str, negative: str, branches) -> dict:
        """{branch: conditioning passed as-is to model.embed}."""
        raise NotImplementedError

    def make_noise(self, cfg: JobConfig, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] latents -> [B, 3, F', H', W'] video in [-1, 1]."""
        raise NotImplementedError

    def sampler_config(self, cfg: JobConfig) -> SamplerConfig:
        """CFG mode and sigma grid of the family (default: Wan's separate CFG calls on its shifted grid)."""
        return sampler_config(cfg)

    def default_preset(self, name: str) -> str | None:
        """The MagCache preset used when cache.preset and cache.ratios_file are both unset."""
        return None

    def cache_rule(self, name: str) -> str:
        """The decision rule written into ratio files calibrated on this model."""
        return "wan"


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(names, family) -> None:
    """``family``: a stateless ModelFamily instance, or a ModelFamily class instantiated once per job (per call
    of ``get_family``) for families that keep per-job handles between build, encode and decode."""
    for n in names:
        _FAMILIES[n] = family


def family_names() -> list[str]:
    """Every model name with a pipeline, registered or registering on first use (magcache_dist.families)."""
    from magcache_dist.families import MODULES

    return sorted(set(_FAMILIES).union(*MODULES.values()))


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        from magcache_dist.families import MODULES

        module = next((m for m, names in MODULES.items() if name in names), None)
        if module is None:
            raise ValueError(f"model.name={name!r} has no pipeline; choose one of {family_names()}")
        importlib.import_module(module)  # registers its names
    family = _FAMILIES[name]
    return family() if isinstance(family, type) else family


def sampler_config(cfg: JobConfig) -> SamplerConfig:
    s = cfg.sampler
    if s.solver not in SOLVERS:
        raise ValueError(f"sampler.solver={s.solver!r} is unknown; choose one of {SOLVERS}")
    if s.shift <= 0:
        raise ValueError(f"sampler.shift={s.shift} must be > 0")
    return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver)


def validate_job(cfg: JobConfig, world_size: int) -> tuple[WanConfig, ParallelDims, SamplerConfig]:
    """Everything checkable before a process group exists. Raises ValueError naming the key and the fix."""
    if cfg.model.name not in family_names():
        known = sorted(set(family_names()) | set(WAN_CONFIGS))
        if cfg.model.name in WAN_CONFIGS:
            raise ValueError(f"model.name={cfg.model.name!r}: its text encoder and VAE are not wired into a pipeline "
                             f"yet; use model.name=tiny-video (the embedded model) or tiny")
        raise ValueError(f"model.name={cfg.model.name!r} is unknown; choose one of {known}")
    family = get_family(cfg.model.name)
    mcfg = get_config(cfg.model.name) if cfg.model.name in WAN_CONFIGS else None
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.model.dtype!r} must be one of {sorted(DTYPES)}")
    if cfg.cpu_threads is not None and cfg.cpu_threads < 1:
        raise ValueError(f"cpu_threads={cfg.cpu_threads} must be >= 1 (or null for the default, 1 on CPU)")
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise ValueError("prompt is empty; pass prompt=\"a red circle moves right\"")
    family.validate(cfg)
    check_applicable(cfg)
    v = cfg.video
    if v.fps < 1:
        raise ValueError(f"video.fps={v.fps} must be >= 1")
    scfg = family.sampler_config(cfg)
    dims = ParallelDims(cfg.parallel.ulysses_degree, cfg.parallel.ring_degree, cfg.parallel.cfg_degree)
    num_heads = family.num_heads(cfg)
    dims.validate(world_size, num_heads, len(scfg.branches))
    check_backend(cfg.parallel.backend)
    if cfg.parallel.fsdp:
        check_fsdp(dims)
    if cfg.parallel.timeout_s <= 0:
        raise ValueError(f"parallel.timeout_s={cfg.parallel.timeout_s} must be > 0")
    if cfg.cache.mode not in CACHE_MODES:
        raise ValueError(f"cache.mode={cfg.cache.mode!r} is unknown; choose one of {CACHE_MODES}")
    check_branch_sync(cfg.cache.branch_sync)
    if cfg.cache.mode in ("magcache", "teacache", "online"):
        build_policy(cfg, scfg)  # resolves preset / ratio file / coefficients and checks the thresholds
    check_store(cfg)
    ensure_writable_dir(os.path.abspath(cfg.output_dir), "output_dir")
    if cfg.cache.mode in ("calibrate", "auto"):  # where the calibrated table goes (if this run calibrates)
        out = cfg.cache.calibration_out
        ensure_writable_dir(os.path.dirname(os.path.abspath(out)) if out else os.path.abspath(cfg.output_dir),
                            "cache.calibration_out")
        if out and os.path.isdir(out):
            raise ValueError(f"cache.calibration_out={out!r} is a directory; give a file path (e.g. ratios.json)")
    validate_checkpointing(cfg, world_size)
    if not cfg.dry_run:
        from magcache_dist.planner.preflight import memory_preflight

        memory_preflight(cfg, world_size)  # last: the estimate needs a valid job
    return mcfg, dims, scfg


def _is_wan(cfg: JobConfig) -> bool:
    from magcache_dist.families import MODULES

    return cfg.model.name in MODULES["magcache_dist.families.wan"]


_MAGCACHE_MODES = ("magcache", "auto", "online")
# key (or section prefix ending in "."), the keys that decide whether it applies, the test, what it is for
APPLIES = [
    ("cache.preset", ("cache.mode",), lambda c: c.cache.mode == "magcache", "cache.mode=magcache"),
    ("cache.ratios_file", ("cache.mode",), lambda c: c.cache.mode == "magcache", "cache.mode=magcache"),
    ("cache.rule", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES, "cache.mode=magcache, auto or online"),
    ("cache.thresh", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES,
     "cache.mode=magcache, auto or online (TeaCache's is cache.teacache_thresh)"),
    ("cache.K", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES, "cache.mode=magcache, auto or online"),
    ("cache.retention", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES,
     "cache.mode=magcache, auto or online"),
    ("cache.branch_sync", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES + ("teacache",),
     "a cache that skips (magcache, auto, online, teacache)"),
    ("cache.teacache_", ("cache.mode",), lambda c: c.cache.mode == "teacache", "cache.mode=teacache"),
    ("cache.online_", ("cache.mode",), lambda c: c.cache.mode == "online", "cache.mode=online"),
    ("cache.store_dir", ("cache.mode",), lambda c: c.cache.mode in ("calibrate", "auto"), "cache.mode=calibrate or auto"),
    ("cache.calibration_out", ("cache.mode",), lambda c: c.cache.mode in ("calibrate", "auto"),
     "cache.mode=calibrate or auto"),
    ("checkpoint.dir", ("checkpoint.every_n_steps", "resume"), lambda c: c.checkpoint.every_n_steps > 0 or c.resume,
     "checkpoint.every_n_steps > 0 or resume=true"),
    ("image", ("model.name",), lambda c: "i2v" in c.model.name, "image-to-video models (wan2.1-i2v-*)"),
    ("ckpt_dir", ("model.name",), _is_wan, "Wan2.1 models"),
    ("model.layout", ("model.name",), _is_wan, "Wan2.1 models"),
    ("text_encoder.", ("model.name",), _is_wan, "Wan2.1 models"),
    ("vae.", ("model.name",), _is_wan, "Wan2.1 models"),
]


def check_applicable(cfg: JobConfig) -> None:
    """A key the user set that does not apply to this model or mode is an error, not silently ignored. A key set
    in an earlier source than the switch that made it inapplicable is left alone: a config file's MagCache
    settings stay behind when the command line says cache.mode=teacache."""
    from magcache_dist.config import explicitly_set

    set_at, problems = explicitly_set(cfg), []
    for pattern, deciders, applies, what in APPLIES:
        keys = [k for k in set_at if k == pattern or (pattern.endswith((".", "_")) and k.startswith(pattern))]
        if not keys or applies(cfg):
            continue
        switched = max((set_at.get(d, -1) for d in deciders), default=-1)
        now = ", ".join(f"{d}={_get(cfg, d)!r}" for d in deciders)
        problems += [f"{k} does not apply here ({now}); it is for {what}: remove it" for k in keys
                     if set_at[k] >= switched]
    if problems:
        raise ValueError("\n".join(problems))  # one line per problem


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def default_preset(model_name: str) -> str | None:
    family = get_family(model_name) if model_name in family_names() else None
    own = family.default_preset(model_name) if family is not None else None
    return own or (model_name if model_name in preset_names() else None)


def build_policy(cfg: JobConfig, scfg: SamplerConfig, branches=None, reduce_sum=None, reduce_max=None,
                 resolved=None):
    """``resolved``: what cache.mode=auto found in the ratio store (magcache_dist.auto.resolve_ratios)."""
    c = cfg.cache
    branches = branches or scfg.branches
    if c.mode == "off":
        return NoCache()
    if c.mode == "online":  # call counting over all branches, measurements over this rank's SP group
        return build_online(MagCacheConfig(c.thresh, c.K, c.retention), scfg.num_steps, scfg.branches,
                            job_sigmas(scfg), rule=c.rule or get_family(cfg.model.name).cache_rule(cfg.model.name),
                            online=OnlineConfig(c.online_predictor, c.online_window, c.online_margin),
                            reduce_sum=reduce_sum, reduce_max=reduce_max, branch_sync=c.branch_sync)
    if c.mode == "auto":
        if resolved is None or resolved.table_json is None:  # nothing stored for this key: calibrate now
            return CalibrationPolicy(scfg.num_steps, branches, reduce_sum=reduce_sum)
        table = resolved.table
        rule = c.rule or table.meta.get("rule") or get_family(cfg.model.name).cache_rule(cfg.model.name)
        return MagCachePolicy(table, get_rule(rule),
                              MagCacheConfig(c.thresh, c.K, c.retention), scfg.num_steps, branches,
                              source=resolved.source(), branch_sync=c.branch_sync)
    if c.mode == "calibrate":
        return CalibrationPolicy(scfg.num_steps, branches, reduce_sum=reduce_sum)
    if c.mode == "teacache":
        return build_teacache(cfg.model.name, c.teacache_thresh, scfg.num_steps, branches,
                              coefficients=c.teacache_coefficients, reduce_sum=reduce_sum,
                              branch_sync=c.branch_sync)
    preset = c.preset
    if preset is None and c.ratios_file is None:
        preset = default_preset(cfg.model.name)
        if preset is None:
            raise ValueError(f"cache.preset is not set and model {cfg.model.name!r} has no calibrated preset; set "
                             f"cache.preset (one of {preset_names()}), cache.ratios_file, or run cache.mode=calibrate")
    return build_magcache(preset, resolve_path(c.ratios_file), MagCacheConfig(c.thresh, c.K, c.retention),
                          scfg.num_steps, branches, rule=c.rule, branch_sync=c.branch_sync)


def build_model(cfg: JobConfig, device="cpu"):
    """(denoiser, conditioning encoder) for the configured model family."""
    return get_family(cfg.model.name).build(cfg, device)


def load_dit_and_text(cfg: JobConfig, model, text, convert_dit=None) -> None:
    """model.ckpt -> the DiT (top-level keys, through ``convert_dit(sd, where)`` if given) and the tiny text
    encoder (keys under ``text_encoder.``), both loaded strictly."""
    where = f"model.ckpt={cfg.model.ckpt!r}"
    sd = read_tensors(resolve_path(cfg.model.ckpt))
    text_sd = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIX)}
    dit_sd = {k: v for k, v in sd.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    load_state_dict_strict(model, convert_dit(dit_sd, where) if convert_dit else dit_sd, where)
    if not text_sd:
        raise ValueError(f"{where} has no '{TEXT_ENCODER_PREFIX}*' weights for the text encoder")
    load_state_dict_strict(text, text_sd, f"{where} (text encoder)")


def _build_tiny(cfg: JobConfig, device="cpu") -> tuple[WanModel, TinyTextEncoder]:
    mcfg = get_config(cfg.model.name)
    torch.manual_seed(cfg.model.init_seed)
    model = build_wan_model(mcfg)
    text = TinyTextEncoder.for_model(cfg.model.name)
    if cfg.model.ckpt is not None:
        load_dit_and_text(cfg, model, text)
    model = model.to(device=device, dtype=DTYPES[cfg.model.dtype]).eval()
    return model, text.to(device).eval()


def make_noise(cfg: JobConfig, mcfg: WanConfig | None, seed: int) -> torch.Tensor:
    """Initial noise of the configured family (``mcfg`` is ignored; kept for callers of the first API)."""
    return get_family(cfg.model.name).make_noise(cfg, seed)


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """float32 noise from a CPU generator: identical on every rank and device."""
    return torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def encode_texts(text_encoder, prompt: str, negative: str, branches) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {"cond": text_encoder.encode([prompt])}
        if "uncond" in branches:
            out["uncond"] = text_encoder.encode([negative])
    return out


def _check_tiny_checkpoint(cfg: JobConfig, mcfg: WanConfig) -> None:
    shapes = read_shapes(resolve_path(cfg.model.ckpt))
    where = f"model.ckpt={cfg.model.ckpt!r}"
    # built on the CPU, not the meta device: a few MB, and meta-tensor arithmetic in the init imports torch's
    # compiler stack (~1 s), which a rejected input should not pay
    model, text = build_wan_model(mcfg), TinyTextEncoder.for_model(cfg.model.name)
    check_shapes(model, {k: v for k, v in shapes.items() if not k.startswith(TEXT_ENCODER_PREFIX)}, where)
    text_shapes = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in shapes.items() if k.startswith(TEXT_ENCODER_PREFIX)}
    if not text_shapes:
        raise ValueError(f"{where} has no '{TEXT_ENCODER_PREFIX}*' weights for the text encoder")
    check_shapes(text, text_shapes, f"{where} (text encoder)")


class TinyVideoFamily(ModelFamily):
    """The embedded models (``tiny``, ``tiny-video``): tiny word encoder; the 'VAE' is identity (``tiny``) or
    the fixed 2x pixel autoencoder of models/tiny_ae.py (``tiny-video``): noise is drawn at the latent size."""

    def __init__(self, stride: int = 1):
        self.ae = PixelAutoencoder(stride)

    def validate(self, cfg: JobConfig) -> None:
        mcfg = get_config(cfg.model.name)
        self.check_ckpt_exists(cfg)
        if cfg.model.ckpt is not None:  # headers only: a corrupt or foreign file fails here, before any collective
            _check_tiny_checkpoint(cfg, mcfg)
        v = cfg.video
        pf, ph, pw = mcfg.patch_size
        s = self.ae.stride
        for key, val, p in (("video.frames", v.frames, pf), ("video.height", v.height, ph * s),
                            ("video.width", v.width, pw * s)):
            if val < 1 or val % p:
                raise ValueError(f"{key}={val} must be a positive multiple of the patch size {p} of model "
                                 f"{cfg.model.name}")

    def build(self, cfg, device):
        return _build_tiny(cfg, device)

    def encode(self, encoder, cfg, prompt, negative, branches):
        return encode_texts(encoder, prompt, negative, branches)

    def make_noise(self, cfg, seed):
        v, s = cfg.video, self.ae.stride
        return seeded_noise((1, get_config(cfg.model.name).out_dim, v.frames, v.height // s, v.width // s), seed)

    def decode(self, latents):
        return self.ae.decode(latents)


register_family(["tiny"], TinyVideoFamily(stride=1))
register_family(["tiny-video"], TinyVideoFamily(stride=2))
