"""The one place a cache policy is made: ``build_cache(spec)`` from plain values.

``CacheSpec`` holds everything a policy needs (thresholds, the preset or ratio file, TeaCache's coefficients, the
online predictor). A policy is configuration only, the same on every rank; what a rank alone knows (the branches it
runs, the all-reduces over its sequence-parallel group) goes into the per-generation state (``policy.new_state``).
So a job builds its policy once, while validating (where every bad value is rejected before any collective), and
``cache.mode=auto`` builds its one in the run, from what rank 0 found in the ratio store.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from magcache_dist.cache.base import CachePolicy, NoCache, check_branch_sync
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.cache.magcache import MagCacheConfig, MagCachePolicy, build_magcache
from magcache_dist.cache.online import OnlineConfig, build_online
from magcache_dist.cache.presets import get_rule, preset_names
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.errors import InputError

CACHE_MODES = ("off", "magcache", "calibrate", "teacache", "auto", "online")
SKIPPING_MODES = ("magcache", "auto", "online", "teacache")  # the modes whose decisions branch_sync governs


@dataclass(frozen=True)
class CacheSpec:
    mode: str
    num_steps: int
    branches: tuple[str, ...]  # every branch of the job, in call order
    model: str  # model.name (TeaCache's fitted coefficients)
    family_rule: str  # the family's decision rule (used when neither the settings nor a ratio file name one)
    magcache: MagCacheConfig | None  # thresh, K, retention (magcache, auto, online; else None)
    teacache_thresh: float
    branch_sync: str = "joint"
    sigmas: tuple[float, ...] = ()  # online: the sampler's sigma at each step
    switch_step: int | None = None  # two-expert models (Wan2.2 A14B): the low-noise expert's first step
    rule: str | None = None
    preset: str | None = None  # magcache: resolved (the model's default when no ratio file is given)
    ratios_file: str | None = None  # absolute path
    # TeaCache
    teacache_coefficients: tuple[float, ...] | None = None
    # online
    online: dict = field(default_factory=dict)  # OnlineConfig's fields


def resolve_preset(spec_preset: str | None, ratios_file: str | None, default: str | None, model: str) -> str | None:
    """magcache mode: the preset to use (None when a ratio file is given)."""
    if spec_preset is not None or ratios_file is not None:
        return spec_preset
    if default is None:
        raise InputError(f"cache.magcache.preset is not set and model {model!r} has no calibrated preset; set "
                         f"cache.magcache.preset (one of {preset_names()}), cache.magcache.ratios_file, or run "
                         f"cache.mode=calibrate")
    return default


def check_spec(spec: CacheSpec) -> None:
    """What every mode needs before a policy exists: a known mode and branch rule."""
    if spec.mode not in CACHE_MODES:
        raise InputError(f"cache.mode={spec.mode!r} is unknown; choose one of {CACHE_MODES}")
    check_branch_sync(spec.branch_sync)


def build_cache(spec: CacheSpec, resolved=None) -> CachePolicy:
    """The policy of ``spec`` (a ValueError naming the key for a value it rejects). MagCache-rule policies count
    calls over every branch of the job, so CFG-parallel halves stay in step with the single-process run.
    ``resolved``: what cache.mode=auto found in the ratio store (magcache_dist.auto.resolve_ratios)."""
    check_spec(spec)
    mode = spec.mode
    if mode == "off":
        return NoCache()
    if mode == "online":
        return build_online(spec.magcache, spec.num_steps, list(spec.branches), list(spec.sigmas),
                            rule=spec.rule or spec.family_rule, online=OnlineConfig(**spec.online),
                            branch_sync=spec.branch_sync, switch_step=spec.switch_step)
    if mode == "calibrate" or (mode == "auto" and (resolved is None or resolved.table_json is None)):
        return CalibrationPolicy(spec.num_steps)  # auto with nothing stored: calibrate
    if mode == "auto":
        table = resolved.table
        rule = spec.rule or table.meta.get("rule") or spec.family_rule
        return MagCachePolicy(table, get_rule(rule), spec.magcache, spec.num_steps, list(spec.branches),
                              source=resolved.source(), branch_sync=spec.branch_sync, switch_step=spec.switch_step)
    if mode == "teacache":
        coeffs = list(spec.teacache_coefficients) if spec.teacache_coefficients is not None else None
        return build_teacache(spec.model, spec.teacache_thresh, spec.num_steps, coefficients=coeffs,
                              branch_sync=spec.branch_sync)
    if mode == "magcache":
        return build_magcache(spec.preset, spec.ratios_file, spec.magcache, spec.num_steps,
                              list(spec.branches), rule=spec.rule, branch_sync=spec.branch_sync,
                              switch_step=spec.switch_step)
    raise AssertionError(mode)
