"""A validated job: everything checkable before a process group exists, checked once.

``validate_job(cfg, world_size)`` returns a ``Job``: the config, its model family (a per-job object), the parallel
layout, the sampler settings and the cache policy (built here, once; ``cache.mode=auto`` builds its own in the run
from the ratio store). Bad input raises ValueError naming the key and the fix, one line per problem where several
are found together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from magcache_dist.auto import check_store, job_sigmas
from magcache_dist.cache.base import CachePolicy
from magcache_dist.cache.factory import SKIPPING_MODES, CacheSpec, build_cache, check_spec, resolve_preset
from magcache_dist.cache.magcache import MagCacheConfig
from magcache_dist.checkpoint import validate_checkpointing
from magcache_dist.config import JobConfig, explicitly_set, resolve_path
from magcache_dist.decode import check_split
from magcache_dist.errors import InputError, reading
from magcache_dist.families import FLUX, HUNYUAN, OPENSORA, WAN, model_spec
from magcache_dist.families.base import DTYPES, ModelFamily, make_family
from magcache_dist.io.probe import ensure_writable_dir
from magcache_dist.parallel.apply import check_backend
from magcache_dist.parallel.dims import ParallelDims
from magcache_dist.parallel.fsdp import check_fsdp
from magcache_dist.parallel.load_share import check_shared_load
from magcache_dist.prompts import VideoSpec, parse_shard, read_prompts, video_config
from magcache_dist.sampling.grids import check_grid
from magcache_dist.sampling.loop import SamplerConfig


@dataclass(frozen=True)
class Job:
    cfg: JobConfig
    family: ModelFamily
    dims: ParallelDims
    scfg: SamplerConfig
    cache: CacheSpec
    policy: CachePolicy | None  # None for cache.mode=auto (built in the run)
    videos: list[VideoSpec] | None = None  # prompts_file: every video of the list (None: one video, cfg.prompt)
    video: VideoSpec | None = None  # the job of one video (videos.video_job): which one (its video_id for reports)


def parallel_dims(cfg: JobConfig) -> ParallelDims:
    p = cfg.parallel
    return ParallelDims(p.ulysses_degree, p.ring_degree, p.cfg_degree, p.dp_degree)


def cache_spec(cfg: JobConfig, family: ModelFamily, scfg: SamplerConfig) -> CacheSpec:
    """The cache section as plain values for the factory (the magcache preset resolved to the model's default)."""
    c = cfg.cache
    m, t, o = c.magcache, c.teacache, c.online
    preset = m.preset
    if c.mode == "magcache":
        preset = resolve_preset(m.preset, m.ratios_file, family.default_preset(), family.name)
    return CacheSpec(
        mode=c.mode, num_steps=scfg.num_steps, branches=tuple(scfg.branches), model=family.name,
        family_rule=family.cache_rule(), branch_sync=c.branch_sync,
        sigmas=tuple(job_sigmas(scfg)) if c.mode == "online" else (), switch_step=family.expert_switch_step(),
        magcache=MagCacheConfig(m.thresh, m.K, m.retention) if c.mode in _MAGCACHE_MODES else None, rule=m.rule,
        preset=preset,
        ratios_file=resolve_path(m.ratios_file), teacache_thresh=t.thresh,
        teacache_coefficients=tuple(t.coefficients) if t.coefficients is not None else None,
        online=dict(predictor=o.predictor, window=o.window, margin=o.margin))


def validate_job(given: JobConfig, world_size: int) -> Job:
    """Everything checkable before a process group exists: the frozen job, its config resolved (``given`` itself is
    left as it is). Raises InputError naming the key and the fix."""
    model_spec(given.model.name)  # an unknown name: the error names the choices
    with reading():
        family = make_family(given)  # resolves: the machine that validates is the one that runs
    cfg = family.cfg
    if cfg.model.dtype not in DTYPES:
        raise InputError(f"model.dtype={cfg.model.dtype!r} must be one of {sorted(DTYPES)}")
    if cfg.cpu_threads is not None and cfg.cpu_threads < 1:
        raise InputError(f"cpu_threads={cfg.cpu_threads} must be >= 1 (or null for the default, 1 on CPU)")
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise InputError("prompt is empty; pass prompt=\"a red circle moves right\"")
    videos = check_prompt_list(given, cfg)
    with reading():  # the family reads the checkpoint's files through models/ and the libraries
        family.validate()
    check_split(cfg, family)
    check_shared_load(cfg.parallel.shared_load)
    check_applicable(given)
    if cfg.video.fps < 1:
        raise InputError(f"video.fps={cfg.video.fps} must be >= 1")
    scfg = checked_sampler(cfg, family)
    dims = parallel_dims(cfg)
    dims.validate(world_size, family.num_heads(), len(scfg.branches))
    check_backend(cfg.parallel.backend)
    if cfg.parallel.backend == "xfuser" and dims.dp_degree > 1:  # xDiT builds its own groups over the whole world
        raise InputError("parallel.backend=xfuser takes the whole world as one group; use parallel.backend=native "
                         "with parallel.dp_degree > 1")
    if cfg.parallel.fsdp:
        check_fsdp(dims)
    if cfg.parallel.timeout_s <= 0:
        raise InputError(f"parallel.timeout_s={cfg.parallel.timeout_s} must be > 0")
    spec = cache_spec(cfg, family, scfg)
    check_spec(spec)  # every mode; the policy's own checks follow when it is built
    policy = None if cfg.cache.mode == "auto" else build_cache(spec)  # rejects what the policy would reject
    check_store(cfg)
    ensure_writable_dir(os.path.abspath(cfg.output_dir), "output_dir")
    if cfg.cache.mode in ("calibrate", "auto"):  # where the calibrated table goes (if this run calibrates)
        out = cfg.cache.calibration.out
        ensure_writable_dir(os.path.dirname(os.path.abspath(out)) if out else os.path.abspath(cfg.output_dir),
                            "cache.calibration.out")
        if out and os.path.isdir(out):
            raise InputError(f"cache.calibration.out={out!r} is a directory; give a file path (e.g. ratios.json)")
    validate_checkpointing(video_config(cfg, videos[0]) if videos else cfg, world_size)  # a list: per video
    return Job(cfg, family, dims, scfg, spec, policy, videos)


def checked_sampler(cfg: JobConfig, family: ModelFamily) -> SamplerConfig:
    """The family's sampler settings, its sigma grid checked: no accepted input starts from NaN at step 0."""
    scfg = family.sampler_config()
    if scfg.sigmas is not None:
        v = cfg.video
        check_grid(scfg.sigmas, scfg.num_steps, f"model.name={cfg.model.name!r} at video.frames={v.frames}, "
                   f"video.height={v.height}, video.width={v.width} (with sampler.num_steps, sampler.shift and the "
                   f"checkpoint's scheduler)")
    return scfg


def check_prompt_list(given: JobConfig, cfg: JobConfig) -> list[VideoSpec] | None:
    """prompts_file: its videos (each one's own inputs checked, e.g. an I2V line's image), else None. ``given``: the
    config as written (which sources set prompt and prompts_file), ``cfg``: resolved."""
    set_at = explicitly_set(given)
    if cfg.prompts_file is None:
        if cfg.prompts_shard is not None:
            raise InputError(f"prompts_shard={cfg.prompts_shard!r} takes a share of a prompt list; pass "
                             f"prompts_file=... or remove prompts_shard")
        if cfg.parallel.dp_degree > 1:
            raise InputError(f"parallel.dp_degree={cfg.parallel.dp_degree} splits a prompt list over groups of ranks; "
                             f"pass prompts_file=... or set parallel.dp_degree=1")
        return None
    at = set_at.get("prompt", -1)  # a config file's prompt stays behind a list given on the command line
    if at >= 1 or at >= set_at.get("prompts_file", 0):
        raise InputError(f"prompt and prompts_file={cfg.prompts_file!r} are both given; a job makes either one video "
                         f"(prompt=...) or the videos of a prompts file: remove one")
    if cfg.resume:
        raise InputError("resume does not apply to a prompt list: a rerun of the same job reuses its done videos and "
                         "continues an interrupted one from its step checkpoint by itself; remove resume=true")
    if cfg.cache.calibration.out is not None:
        raise InputError("cache.calibration.out names one file, but a prompt list calibrates per video (each "
                         "video's folder gets its ratios.json); remove it, or use cache.calibration.store_dir")
    parse_shard(cfg.prompts_shard)  # I/N with 0 <= I < N, before the file is read
    videos = read_prompts(resolve_path(cfg.prompts_file), cfg.seed, cfg.negative_prompt, cfg.image)
    problems = [f"prompts_file={cfg.prompts_file!r} line {v.line}: {key} {why}" for v in videos for key in v.given
                if (why := inapplicable(video_config(cfg, v), key))]
    if problems:
        raise InputError("\n".join(problems[:8]))  # a line's field is checked like the same key of the job
    for v in videos:
        if v.image != cfg.image:  # the line's own inputs: checked like a single video's
            with reading():
                make_family(video_config(cfg, v)).validate()
    return videos


def _is_wan(cfg: JobConfig) -> bool:
    return model_spec(cfg.model.name).family == WAN


def _is_pipeline(cfg: JobConfig) -> bool:
    return not model_spec(cfg.model.name).embedded


def _is_flux(cfg: JobConfig) -> bool:
    return model_spec(cfg.model.name).family == FLUX


def _uses_negative(cfg: JobConfig) -> bool:
    """Whether a negative prompt reaches the model: Open-Sora's batched CFG rows, or an unconditional branch of
    the separate-CFG families (sampler.guidance != 1); FLUX.1 and HunyuanVideo are guidance-distilled (one call,
    no negative). An empty negative prompt is no negative at all."""
    family = model_spec(cfg.model.name).family
    if cfg.negative_prompt == "":
        return True
    if family in (FLUX, HUNYUAN):
        return False
    return family == OPENSORA or cfg.sampler.guidance != 1.0  # unset (None): the family's default, not 1


_MAGCACHE_MODES = ("magcache", "auto", "online")
# key (or section prefix ending in "."), the keys that decide whether it applies, the test, what it is for
APPLIES = [
    ("cache.magcache.preset", ("cache.mode",), lambda c: c.cache.mode == "magcache", "cache.mode=magcache"),
    ("cache.magcache.ratios_file", ("cache.mode",), lambda c: c.cache.mode == "magcache", "cache.mode=magcache"),
    ("cache.magcache.", ("cache.mode",), lambda c: c.cache.mode in _MAGCACHE_MODES,
     "cache.mode=magcache, auto or online (TeaCache's threshold is cache.teacache.thresh)"),
    ("cache.branch_sync", ("cache.mode",), lambda c: c.cache.mode in SKIPPING_MODES,
     "a cache that skips (magcache, auto, online, teacache)"),
    ("cache.teacache.", ("cache.mode",), lambda c: c.cache.mode == "teacache", "cache.mode=teacache"),
    ("cache.online.", ("cache.mode",), lambda c: c.cache.mode == "online", "cache.mode=online"),
    ("cache.calibration.", ("cache.mode",), lambda c: c.cache.mode in ("calibrate", "auto"),
     "cache.mode=calibrate or auto"),
    ("checkpoint.dir", ("checkpoint.every_n_steps", "resume"), lambda c: c.checkpoint.every_n_steps > 0 or c.resume,
     "checkpoint.every_n_steps > 0 or resume=true"),
    ("image", ("model.name",), lambda c: "i2v" in c.model.name, "image-to-video models (wan2.1-i2v-*)"),
    ("ckpt_dir", ("model.name",), _is_pipeline, "models read from a checkpoint folder (not the embedded ones)"),
    ("model.layout", ("model.name",), _is_wan, "Wan2.1 models"),
    ("text_encoder.", ("model.name",), _is_pipeline, "models read from a checkpoint folder (not the embedded ones)"),
    ("vae.", ("model.name",), _is_pipeline, "models read from a checkpoint folder (not the embedded ones)"),
    ("negative_prompt", ("model.name", "sampler.guidance"), _uses_negative,
     "models that run classifier-free guidance (Wan2.1 and the embedded models with sampler.guidance != 1, "
     "Open-Sora 1.2; FLUX.1 and HunyuanVideo are guidance-distilled)"),
    ("sampler.shift", ("model.name",), lambda c: not _is_flux(c),
     "models whose sigma grid takes a shift (FLUX.1's grid comes from its scheduler and the image size)"),
]


def check_applicable(cfg: JobConfig) -> None:
    """A key the user set that does not apply to this model or mode is an error, not silently ignored. A key set
    in an earlier source than the switch that made it inapplicable is left alone: a config file's MagCache
    settings stay behind when the command line says cache.mode=teacache. The first matching row decides a key."""
    set_at, problems, decided = explicitly_set(cfg), [], set()
    for pattern, deciders, applies, what in APPLIES:
        keys = [k for k in set_at if k not in decided and (k == pattern or (pattern.endswith(".")
                                                                           and k.startswith(pattern)))]
        decided.update(keys)
        if not keys or applies(cfg):
            continue
        switched = max((set_at.get(d, -1) for d in deciders), default=-1)
        now = ", ".join(f"{d}={_get(cfg, d)!r}" for d in deciders)
        problems += [f"{k} does not apply here ({now}); it is for {what}: remove it" for k in keys
                     if set_at[k] >= switched]
    if problems:
        raise InputError("\n".join(problems))  # one line per problem


def inapplicable(cfg: JobConfig, key: str) -> str | None:
    """Why ``key`` has no effect for ``cfg`` (the APPLIES row's words), or None when it applies: for values given
    outside the config, e.g. a prompt list line's ``image``."""
    for pattern, deciders, applies, what in APPLIES:
        if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
            if applies(cfg):
                return None
            now = ", ".join(f"{d}={_get(cfg, d)!r}" for d in deciders)
            return f"does not apply here ({now}); it is for {what}: remove it"
    return None


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
