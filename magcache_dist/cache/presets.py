"""Built-in presets: the published calibrations with each family's official decision rule, plus our own models.

The published arrays are copied into ``data/published_ratios.json`` (from the MagCache release); the package
never reads anything outside itself at run time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from magcache_dist.cache.ratios import RatioTable
from magcache_dist.errors import InputError

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


@dataclass(frozen=True)
class FamilyRule:
    """How one model family's official MagCache release turns ratios into decisions.

    calls_per_step: 2 for Wan (cond and uncond calls are counted together and retention is in calls),
        1 where each branch counts its own steps.
    retention_rounding: "floor" -> int(x), "half_up" -> int(x + 0.5), applied to calls_per_step*N*R.
    strict: skip only if error < thresh (Wan) instead of <=.
    abs_error: accumulate |1 - ratio| (all but Open-Sora, which accumulates 1 - ratio).
    ratio_power: exponent applied to each ratio (Open-Sora uses the square root).
    forced_grid: (L, i): the step mapping to index i of an L-step grid, round(s*(L-1)/(N-1)) == i, is always
        computed (FLUX.1-dev: (28, 11)).
    retention_window: which calls are always computed. "head": the first retention_calls. Wan2.2's two-expert
        models place them around the expert switch (split = calls_per_step x the switch step, n = all calls):
        "switch-t2v" (T2V-A14B): call < int(split*R), or split <= call <= (n - split)*R + split;
        "switch-i2v" (I2V-A14B): call < int(split + (n - split)*R), i.e. the whole high-noise expert and the first
        R of the low-noise one. The second T2V bound is compared as the release compares it, a torch int64
        counter against a Python float, i.e. in float32.
    """
    name: str
    calls_per_step: int = 1
    retention_rounding: str = "floor"
    strict: bool = False
    abs_error: bool = True
    ratio_power: float = 1.0
    forced_grid: tuple[int, int] | None = None
    retention_window: str = "head"

    def retention_calls(self, num_steps: int, retention: float) -> int:
        x = self.calls_per_step * num_steps * retention
        return int(x + 0.5) if self.retention_rounding == "half_up" else int(x)

    @property
    def needs_switch(self) -> bool:
        """Whether the retained calls depend on the step at which a two-expert model switches experts."""
        return self.retention_window != "head"

    def retained_call(self, call: int, calls: int, split: int, retention: float) -> bool:
        """For a switch window: whether call ``call`` of ``calls`` is retained when the high-noise expert makes
        the first ``split`` calls."""
        if self.retention_window == "switch-i2v":
            return call < int(split + (calls - split) * retention)
        if self.retention_window == "switch-t2v":
            upper = float(np.float32((calls - split) * retention + split))
            return call < int(split * retention) or split <= call <= upper
        raise AssertionError(self.retention_window)


RULES = {
    "wan": FamilyRule("wan", calls_per_step=2, strict=True),
    "hunyuanvideo": FamilyRule("hunyuanvideo"),
    "flux": FamilyRule("flux", retention_rounding="half_up", forced_grid=(28, 11)),
    "opensora": FamilyRule("opensora", abs_error=False, ratio_power=0.5),
    # FLUX.1-schnell has no official MagCache release: FLUX's loop without dev's forced step (calibrated per model)
    "flux-schnell": FamilyRule("flux-schnell", retention_rounding="half_up"),
    # Wan2.2 A14B (MagCache4Wan2.2): Wan's loop, one call counter and one cache state shared by both experts,
    # retention placed around the expert switch (the split step comes from the job: see expert_switch_step)
    "wan2.2-t2v": FamilyRule("wan2.2-t2v", calls_per_step=2, strict=True, retention_window="switch-t2v"),
    "wan2.2-i2v": FamilyRule("wan2.2-i2v", calls_per_step=2, strict=True, retention_window="switch-i2v"),
}


@dataclass(frozen=True)
class Preset:
    name: str
    rule: FamilyRule
    table: RatioTable
    defaults: dict  # published thresh / K / retention / steps


_PUBLISHED = {
    # name: (rule, default (thresh, K, retention))
    "wan2.1-t2v-1.3b": ("wan", (0.12, 2, 0.2)),
    "wan2.1-t2v-14b": ("wan", (0.24, 6, 0.2)),
    "wan2.1-i2v-14b-480p": ("wan", (0.24, 6, 0.2)),
    "wan2.1-i2v-14b-720p": ("wan", (0.24, 6, 0.2)),
    "hunyuanvideo-t2v-720p": ("hunyuanvideo", (0.24, 6, 0.2)),
    "hunyuanvideo-t2v-544p": ("hunyuanvideo", (0.24, 6, 0.2)),
    "flux.1-dev": ("flux", (0.24, 5, 0.1)),
    "opensora-1.2": ("opensora", (0.12, 3, 0.2)),
    # MagCache4Wan2.2's README settings (E006K2R04, E006K2R01, E006K2R02)
    "wan2.2-t2v-a14b": ("wan2.2-t2v", (0.06, 2, 0.4)),
    "wan2.2-i2v-a14b": ("wan2.2-i2v", (0.06, 2, 0.1)),
    # TI2V-5B: the release's decision code fails before its first step (init_magcache without a split step);
    # its forward's branch for a missing split step is Wan2.1's head retention, int(2*N*R) calls: that is our rule
    "wan2.2-ti2v-5b-t2v": ("wan", (0.06, 2, 0.2)),
    "wan2.2-ti2v-5b-i2v": ("wan", (0.06, 2, 0.2)),
}

# two-expert presets: the sampler settings their ratios were calibrated with (Wan2.2's wan/configs), which place the
# expert switch: (sample_shift, boundary)
_SWITCH = {"wan2.2-t2v-a14b": (12.0, 0.875), "wan2.2-i2v-a14b": (5.0, 0.900)}

# Our own calibrated models: name -> (file in data/, rule, defaults). Filled by calibration runs.
_OWN = {
    "tiny-video": ("tiny-video.json", "wan", (0.12, 2, 0.2)),
    # configs/flux-schnell-tiny.yaml calibrated with cache.mode=calibrate (4 steps, seeded random weights)
    "flux.1-schnell-tiny": ("flux.1-schnell-tiny.json", "flux-schnell", (0.12, 1, 0.25)),
}


@lru_cache(maxsize=None)
def _published() -> dict:
    with open(os.path.join(DATA_DIR, "published_ratios.json")) as f:
        return json.load(f)["models"]


def preset_names() -> list[str]:
    own = [n for n, (fname, _, _) in _OWN.items() if os.path.isfile(os.path.join(DATA_DIR, fname))]
    return sorted(_PUBLISHED) + own


def get_preset(name: str) -> Preset:
    if name in _PUBLISHED:
        rule, (thresh, k, r) = _PUBLISHED[name]
        entry = _published()[name]
        table = RatioTable.from_published(entry, where=f"preset {name}")
        table.meta["preset"] = name
        defaults = dict(thresh=thresh, K=k, retention=r, num_steps=entry["num_steps"])
        if name in _SWITCH:
            defaults.update(shift=_SWITCH[name][0], boundary=_SWITCH[name][1])
        return Preset(name, RULES[rule], table, defaults)
    if name in _OWN:
        fname, rule, (thresh, k, r) = _OWN[name]
        path = os.path.join(DATA_DIR, fname)
        if os.path.isfile(path):
            table = RatioTable.load(path)
            table.meta["preset"] = name
            return Preset(name, RULES[rule], table, dict(thresh=thresh, K=k, retention=r,
                                                         num_steps=table.num_steps))
    raise InputError(f"cache.magcache.preset={name!r} is unknown; choose one of {preset_names()} "
                     f"or set cache.magcache.ratios_file")


def get_rule(name: str) -> FamilyRule:
    if name not in RULES:
        raise InputError(f"cache.magcache.rule={name!r} is unknown; choose one of {sorted(RULES)}")
    return RULES[name]


def preset_switch_step(name: str, num_steps: int) -> int | None:
    """A two-expert preset's expert switch at ``num_steps`` with its published shift and boundary (None for the
    others): what ``python -m magcache_dist.schedule`` uses when --switch-step is not given."""
    if name not in _SWITCH:
        return None
    from magcache_dist.sampling.grids import expert_switch_step

    return expert_switch_step(num_steps, *_SWITCH[name])
