"""Magnitude-ratio tables: per CFG branch, one ratio per sampling step, plus how they were measured.

A table is what calibration writes and what a preset holds. ``gamma[branch][s]`` is the mean over tokens of
|r_s| / |r_{s-1}| for that branch; entry 0 has no predecessor and is the placeholder 1.0.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from magcache_dist.errors import InputError

FORMAT = "magcache-ratios/1"


def nearest_interp(values, n: int) -> list[float]:
    """Nearest-neighbour resampling to n entries: target i takes source round_half_even(i*(L-1)/(n-1))."""
    src = np.asarray(values, dtype=np.float64)
    if n < 1:
        raise InputError(f"num_steps={n} must be >= 1")
    if n == 1:
        return [float(src[-1])]
    idx = np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)
    return [float(v) for v in src[idx]]


@dataclass
class RatioTable:
    num_steps: int
    ratios: dict[str, list[float]]  # branch -> [num_steps]
    std: dict[str, list[float]] = field(default_factory=dict)
    cos_dist: dict[str, list[float]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # model, resolution, sampler, shift, source ...

    def __post_init__(self):
        if not self.ratios:
            raise InputError("ratios: at least one branch is required")
        for branch, vals in self.ratios.items():
            if not isinstance(vals, (list, tuple)) or len(vals) != self.num_steps:
                got = len(vals) if isinstance(vals, (list, tuple)) else type(vals).__name__
                raise InputError(f"ratios.{branch}: expected {self.num_steps} values (num_steps), got {got}")
            for i, v in enumerate(vals):
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise InputError(f"ratios.{branch}[{i}]={v!r}: magnitude ratios must be finite and > 0")

    @property
    def branches(self) -> list[str]:
        return list(self.ratios)

    def for_steps(self, n: int) -> dict[str, list[float]]:
        """Per-branch ratios resampled to n steps (identity when n == num_steps)."""
        if n == self.num_steps:
            return {b: list(v) for b, v in self.ratios.items()}
        return {b: nearest_interp(v, n) for b, v in self.ratios.items()}

    # ---- files -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {"format": FORMAT, "num_steps": self.num_steps, "branches": {}, "meta": self.meta}
        for b in self.ratios:
            out["branches"][b] = {"ratios": self.ratios[b]}
            if b in self.std:
                out["branches"][b]["std"] = self.std[b]
            if b in self.cos_dist:
                out["branches"][b]["cos_dist"] = self.cos_dist[b]
        return out

    def save(self, path: str) -> None:
        from magcache_dist.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, obj: dict, where: str = "ratios file") -> "RatioTable":
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object")
        if "mag_ratios" in obj:  # the published layout (see data/published_ratios.json)
            return cls.from_published(obj, where)
        if obj.get("format") != FORMAT:
            raise InputError(f"{where}: 'format' must be {FORMAT!r} (or a published entry with 'mag_ratios')")
        n = obj.get("num_steps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"{where}: 'num_steps' must be an integer >= 1, got {n!r}")
        branches = obj.get("branches")
        if not isinstance(branches, dict) or not branches:
            raise InputError(f"{where}: 'branches' must be an object {{branch: {{'ratios': [...]}}}}, got "
                             f"{type(branches).__name__}")
        fields = {"ratios": {}, "std": {}, "cos_dist": {}}
        for b, v in branches.items():
            if not isinstance(v, dict) or "ratios" not in v:
                raise InputError(f"{where}: branches.{b} must be an object with a 'ratios' list")
            for name, out in fields.items():
                if name not in v:
                    continue
                vals = v[name]
                if not isinstance(vals, list):
                    raise InputError(f"{where}: branches.{b}.{name} must be a list of {n} numbers (num_steps), got "
                                     f"{type(vals).__name__}")
                if len(vals) != n:
                    raise InputError(f"{where}: {name}.{b}: expected {n} values (num_steps), got {len(vals)}")
                for i, x in enumerate(vals):
                    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                        raise InputError(f"{where}: branches.{b}.{name}[{i}]={x!r} must be a finite number")
                out[b] = [float(x) for x in vals]
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise InputError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
        return cls(num_steps=n, ratios=fields["ratios"], std=fields["std"], cos_dist=fields["cos_dist"],
                   meta=dict(meta))

    @classmethod
    def from_published(cls, entry: dict, where: str) -> "RatioTable":
        """Published layout: one flat list, interleaved (cond, uncond) or single, with leading 1.0 padding."""
        raw = entry["mag_ratios"]
        if not isinstance(raw, list) or not raw:
            raise InputError(f"{where}: 'mag_ratios' must be a non-empty list of numbers, got {type(raw).__name__}")
        for i, v in enumerate(raw):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{where}: mag_ratios[{i}]={v!r} must be a finite number")
        raw = [float(v) for v in raw]
        n = entry.get("num_steps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"{where}: 'num_steps' must be an integer >= 1, got {n!r}")
        pad = entry.get("padding", 0)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise InputError(f"{where}: 'padding' must be an integer >= 0, got {pad!r}")
        interleaved = entry.get("interleaved", False)
        if not isinstance(interleaved, bool):
            raise InputError(f"{where}: 'interleaved' must be true or false, got {interleaved!r}")
        branches = entry.get("branches", ["cond", "uncond"] if interleaved else ["cond"])
        if not isinstance(branches, list) or len(branches) != (2 if interleaved else 1) \
                or not all(isinstance(b, str) and b for b in branches) or len(set(branches)) != len(branches):
            need = "2 distinct branch names (interleaved)" if interleaved else "1 branch name"
            raise InputError(f"{where}: 'branches' must list {need}, got {branches!r}")
        if interleaved:
            if len(raw) != 2 * n:
                raise InputError(f"{where}: interleaved mag_ratios must hold 2*num_steps={2 * n} values, "
                                 f"got {len(raw)}")
            ratios = {branches[0]: raw[0::2], branches[1]: raw[1::2]}
        else:
            # Open-Sora's list has no placeholder for step 0 (29 values for 30 steps): add it.
            missing = n - len(raw)
            if missing not in (0, 1) or (missing == 1 and pad != 0):
                raise InputError(f"{where}: mag_ratios must hold num_steps={n} values, got {len(raw)}")
            ratios = {branches[0]: [1.0] * missing + raw}
        meta = {k: v for k, v in entry.items() if k not in ("mag_ratios",)}
        return cls(num_steps=n, ratios=ratios, meta=meta)

    @classmethod
    def load(cls, path: str) -> "RatioTable":
        if not os.path.isfile(path):
            raise InputError(f"cache.magcache.ratios_file={path!r} does not exist; "
                             f"write one with cache.mode=calibrate or "
                             f"use cache.magcache.preset")
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except UnicodeDecodeError as e:
            raise InputError(f"cache.magcache.ratios_file={path!r} is not valid JSON: it is not UTF-8 text (byte "
                             f"{e.start}: a binary file?); give a ratio file written by cache.mode=calibrate") from None
        except json.JSONDecodeError as e:
            raise InputError(f"cache.magcache.ratios_file={path!r} is not valid JSON: {e}") from None
        where = f"cache.magcache.ratios_file={path!r}"
        try:
            return cls.from_json(obj, where=where)
        except ValueError as e:  # name the config key also for errors found inside the table
            raise InputError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
