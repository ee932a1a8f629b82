"""From a validated JobConfig to the pieces the sampler needs: model, text encoder, cache policy, noise."""
from __future__ import annotations

import os

import torch

from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache, preset_names
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.config import JobConfig, resolve_path
from magcache_dist.parallel.apply import check_backend
from magcache_dist.parallel.dims import ParallelDims
from magcache_dist.sampling.loop import SamplerConfig
from magcache_dist.sampling.schedulers import SOLVERS
from models.loading import load_state_dict_strict, read_tensors
from models.tiny_text import TinyTextEncoder
from models.wan import WAN_CONFIGS, WanConfig, WanModel, get_config

CACHE_MODES = ("off", "magcache", "calibrate")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEXT_ENCODER_PREFIX = "text_encoder."
# models whose text encoder ships with this project (the tiny word encoder); the rest need issue-6 encoders
_TINY_TEXT = {"tiny", "tiny-video"}


def sampler_config(cfg: JobConfig) -> SamplerConfig:
    s = cfg.sampler
    if s.solver not in SOLVERS:
        raise ValueError(f"sampler.solver={s.solver!r} is unknown; choose one of {SOLVERS}")
    if s.shift <= 0:
        raise ValueError(f"sampler.shift={s.shift} must be > 0")
    return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver)


def validate_job(cfg: JobConfig, world_size: int) -> tuple[WanConfig, ParallelDims, SamplerConfig]:
    """Everything checkable before a process group exists. Raises ValueError naming the key and the fix."""
    if cfg.model.name not in WAN_CONFIGS:
        raise ValueError(f"model.name={cfg.model.name!r} is unknown; choose one of {sorted(WAN_CONFIGS)}")
    if cfg.model.name not in _TINY_TEXT:
        raise ValueError(f"model.name={cfg.model.name!r}: its umT5 text encoder and VAE are not wired into this "
                         f"pipeline yet; use model.name=tiny-video (the embedded model) or tiny")
    mcfg = get_config(cfg.model.name)
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.model.dtype!r} must be one of {sorted(DTYPES)}")
    if cfg.model.ckpt is not None and not os.path.exists(resolve_path(cfg.model.ckpt)):
        raise ValueError(f"model.ckpt={cfg.model.ckpt!r} does not exist (relative paths are taken from the project "
                         f"root); set model.ckpt=null for seeded random weights")
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise ValueError("prompt is empty; pass prompt=\"a red circle moves right\"")
    v = cfg.video
    pf, ph, pw = mcfg.patch_size
    for key, val, p in (("video.frames", v.frames, pf), ("video.height", v.height, ph), ("video.width", v.width, pw)):
        if val < 1 or val % p:
            raise ValueError(f"{key}={val} must be a positive multiple of the patch size {p} of model {cfg.model.name}")
    if v.fps < 1:
        raise ValueError(f"video.fps={v.fps} must be >= 1")
    scfg = sampler_config(cfg)
    dims = ParallelDims(cfg.parallel.ulysses_degree, cfg.parallel.ring_degree, cfg.parallel.cfg_degree)
    dims.validate(world_size, mcfg.num_heads, len(scfg.branches))
    check_backend(cfg.parallel.backend)
    if cfg.parallel.timeout_s <= 0:
        raise ValueError(f"parallel.timeout_s={cfg.parallel.timeout_s} must be > 0")
    if cfg.cache.mode not in CACHE_MODES:
        raise ValueError(f"cache.mode={cfg.cache.mode!r} is unknown; choose one of {CACHE_MODES}")
    if cfg.cache.mode == "magcache":
        build_policy(cfg, scfg)  # resolves preset / ratio file and checks thresh, K, retention, branches
    out = os.path.abspath(cfg.output_dir)
    probe = out
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe if os.path.isdir(probe) else os.path.dirname(probe), os.W_OK) or \
            (os.path.exists(out) and not os.path.isdir(out)):
        raise ValueError(f"output_dir={cfg.output_dir!r} is not a writable directory")
    return mcfg, dims, scfg


def default_preset(model_name: str) -> str | None:
    return model_name if model_name in preset_names() else None


def build_policy(cfg: JobConfig, scfg: SamplerConfig, branches=None, reduce_sum=None):
    c = cfg.cache
    branches = branches or scfg.branches
    if c.mode == "off":
        return NoCache()
    if c.mode == "calibrate":
        return CalibrationPolicy(scfg.num_steps, branches, reduce_sum=reduce_sum)
    preset = c.preset
    if preset is None and c.ratios_file is None:
        preset = default_preset(cfg.model.name)
        if preset is None:
            raise ValueError(f"cache.preset is not set and model {cfg.model.name!r} has no calibrated preset; set "
                             f"cache.preset (one of {preset_names()}), cache.ratios_file, or run cache.mode=calibrate")
    return build_magcache(preset, resolve_path(c.ratios_file), MagCacheConfig(c.thresh, c.K, c.retention),
                          scfg.num_steps, branches, rule=c.rule)


def build_model(cfg: JobConfig, device="cpu") -> tuple[WanModel, TinyTextEncoder]:
    mcfg = get_config(cfg.model.name)
    torch.manual_seed(cfg.model.init_seed)
    model = WanModel(mcfg)
    text = TinyTextEncoder(text_dim=mcfg.text_dim, max_len=mcfg.text_len)
    if cfg.model.ckpt is not None:
        path = resolve_path(cfg.model.ckpt)
        sd = read_tensors(path)
        text_sd = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        dit_sd = {k: v for k, v in sd.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        load_state_dict_strict(model, dit_sd, f"model.ckpt={cfg.model.ckpt!r}")
        if not text_sd:
            raise ValueError(f"model.ckpt={cfg.model.ckpt!r} has no '{TEXT_ENCODER_PREFIX}*' weights for the text encoder")
        load_state_dict_strict(text, text_sd, f"model.ckpt={cfg.model.ckpt!r} (text encoder)")
    model = model.to(device=device, dtype=DTYPES[cfg.model.dtype]).eval()
    return model, text.to(device).eval()


def make_noise(cfg: JobConfig, mcfg: WanConfig, seed: int) -> torch.Tensor:
    """[1, C, F, H, W] float32 from a CPU generator: identical on every rank and device."""
    g = torch.Generator("cpu").manual_seed(seed)
    v = cfg.video
    return torch.randn(1, mcfg.in_dim, v.frames, v.height, v.width, generator=g, dtype=torch.float32)


def encode_texts(text_encoder, prompt: str, negative: str, branches) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {"cond": text_encoder.encode([prompt])}
        if "uncond" in branches:
            out["uncond"] = text_encoder.encode([negative])
    return out
