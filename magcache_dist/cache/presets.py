"""Built-in presets: the published calibrations with each family's official decision rule, plus our own models.

The published arrays are copied into ``data/published_ratios.json`` (from the MagCache release); the package
never reads anything outside itself at run time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

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
    """
    name: str
    calls_per_step: int = 1
    retention_rounding: str = "floor"
    strict: bool = False
    abs_error: bool = True
    ratio_power: float = 1.0
    forced_grid: tuple[int, int] | None = None

    def retention_calls(self, num_steps: int, retention: float) -> int:
        x = self.calls_per_step * num_steps * retention
        return int(x + 0.5) if self.retention_rounding == "half_up" else int(x)


RULES = {
    "wan": FamilyRule("wan", calls_per_step=2, strict=True),
    "hunyuanvideo": FamilyRule("hunyuanvideo"),
    "flux": FamilyRule("flux", retention_rounding="half_up", forced_grid=(28, 11)),
    "opensora": FamilyRule("opensora", abs_error=False, ratio_power=0.5),
    # FLUX.1-schnell has no official MagCache release: FLUX's loop without dev's forced step (calibrated per model)
    "flux-schnell": FamilyRule("flux-schnell", retention_rounding="half_up"),
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
}

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
        return Preset(name, RULES[rule], table, defaults)
    if name in _OWN:
        fname, rule, (thresh, k, r) = _OWN[name]
        path = os.path.join(DATA_DIR, fname)
        if os.path.isfile(path):
            table = RatioTable.load(path)
            table.meta["preset"] = name
            return Preset(name, RULES[rule], table, dict(thresh=thresh, K=k, retention=r,
                                                         num_steps=table.num_steps))
    raise InputError(f"cache.magcache.preset={name!r} is unknown; choose one of {preset_names()} or set cache.magcache.ratios_file")


def get_rule(name: str) -> FamilyRule:
    if name not in RULES:
        raise InputError(f"cache.magcache.rule={name!r} is unknown; choose one of {sorted(RULES)}")
    return RULES[name]
