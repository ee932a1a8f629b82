"""Device profiles for the dry-run planner: peak FLOP/s, efficiencies, memory and link bandwidth (JSON files)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from magcache_dist.errors import InputError

PROFILE_DIR = os.path.join(os.path.dirname(__file__), "profiles")


def per_dtype(value, dtype: str, default: float) -> float:
    """A profile figure given as one number for every dtype, or as dtype name -> number (``default`` when that
    dtype is not listed)."""
    return float(value.get(dtype, default) if isinstance(value, dict) else value)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    peak_flops: dict  # dtype name -> FLOP/s
    gemm_efficiency: float | dict  # a number, or dtype name -> number (a measured profile)
    attention_efficiency: float | dict
    memory_bandwidth: float  # bytes/s
    memory_capacity: float  # bytes
    link_bandwidth: float  # bytes/s per rank and direction (all-to-all, ring)
    link_efficiency: float
    link_latency_s: float
    op_overhead_s: float  # per dispatched op (launch / Python overhead)
    description: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    def efficiency(self, kind: str, dtype: str) -> float:
        """``gemm`` or ``attention`` efficiency in ``dtype`` (a profile may give one number for every dtype)."""
        v = getattr(self, f"{kind}_efficiency")
        return float(v[dtype] if isinstance(v, dict) else v)

    def gemm_rate(self, dtype: str, rows: int) -> float:
        """FLOP/s of GEMMs with ``rows`` rows: peak x efficiency, times rows / (rows + h) where h is the profile's
        ``gemm_half_rows`` (the row count at which a GEMM runs at half its large-size rate; 0 when not given)."""
        h = per_dtype(self.extra.get("gemm_half_rows", {}), dtype, 0.0)
        return self.peak(dtype) * self.efficiency("gemm", dtype) * (rows / (rows + h) if rows > 0 else 1.0)

    def elementwise_bandwidth(self, dtype: str) -> float:
        """Bytes/s at which elementwise work runs: the profile's measured ``elementwise_bandwidth`` for ``dtype``, or
        the memory bandwidth (bandwidth-bound kernels, as on a GPU)."""
        return per_dtype(self.extra.get("elementwise_bandwidth", {}), dtype, self.memory_bandwidth)

    @property
    def device_type(self) -> str:
        """``cuda``, ``cpu`` or another torch device type: the profile's ``device_type`` field; a profile without
        one is the CPU when named ``cpu``, else a CUDA GPU (the shipped GPU profiles, the GPU check's)."""
        return str(self.extra.get("device_type", "cpu" if self.name == "cpu" else "cuda"))

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise InputError(f"planner.device={self.name!r} has no peak FLOP/s for model.dtype={dtype!r}; "
                             f"choose one of {sorted(self.peak_flops)}")
        return float(self.peak_flops[dtype])


def profile_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PROFILE_DIR) if f.endswith(".json"))


# the figures a profile must give, as plain numbers (bytes, bytes/s, FLOP/s, seconds: no units), and the optional
# ones a measured profile adds (a number, or dtype name -> number)
NUMBERS = ("memory_bandwidth", "memory_capacity", "link_bandwidth", "link_efficiency", "link_latency_s",
           "op_overhead_s")
PER_DTYPE = ("peak_flops", "gemm_efficiency", "attention_efficiency", "gemm_half_rows", "elementwise_bandwidth")


def _plain_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def check_profile_fields(obj, where: str) -> None:
    """A profile's JSON: an object with every figure a finite number >= 0 (a value such as "80GB" names its field and
    the unit it is given in)."""
    if not isinstance(obj, dict):
        raise InputError(f"{where} must be a JSON object of figures, got {type(obj).__name__}")
    missing = [k for k in (*NUMBERS, "peak_flops", "gemm_efficiency", "attention_efficiency") if k not in obj]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; every profile gives them (see profiles/h100.json)")
    bad = []
    for k in (*NUMBERS, *PER_DTYPE):
        if k not in obj:
            continue
        v = obj[k]
        values = v.values() if isinstance(v, dict) and k in PER_DTYPE else [v]
        if (k == "peak_flops" and not isinstance(v, dict)) or not all(_plain_number(x) for x in values):
            bad.append(f"{k}={v!r}")
    if bad:
        raise InputError(f"{where} has {'; '.join(bad)}: each must be a plain number >= 0 in the profile's units "
                         f"(bytes, bytes/s, FLOP/s, seconds; peak_flops per dtype), without a unit suffix, e.g. "
                         f"memory_capacity: 80e9")


def load_profile(name_or_path: str) -> DeviceProfile:
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(PROFILE_DIR, f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise InputError(f"planner.device={name_or_path!r} is unknown; choose one of {profile_names()} or give a "
                         f"path to a profile .json")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError (a binary file)
        raise InputError(f"planner.device={name_or_path!r}: {path} is not readable JSON ({e}); give a profile "
                         f"like magcache_dist/planner/profiles/h100.json") from None
    check_profile_fields(obj, f"planner.device={name_or_path!r}: {path}")
    try:
        known = set(DeviceProfile.__dataclass_fields__)
        prof = DeviceProfile(**{k: v for k, v in obj.items() if k in known},
                             extra={k: v for k, v in obj.items() if k not in known})
    except (json.JSONDecodeError, TypeError) as e:
        raise InputError(f"planner.device={name_or_path!r}: {path} is not a valid profile ({e})") from None
    for k in ("gemm_efficiency", "attention_efficiency", "link_efficiency"):
        v = getattr(prof, k)
        values = list(v.values()) if isinstance(v, dict) else [v]
        if isinstance(v, dict) and k != "link_efficiency" and set(v) != set(prof.peak_flops):
            raise InputError(f"planner.device={name_or_path!r}: {k} gives dtypes {sorted(v)} but peak_flops gives "
                             f"{sorted(prof.peak_flops)}")
        top = float("inf") if k == "attention_efficiency" else 1  # relative to the GEMM peak: may exceed 1
        if not all(isinstance(x, (int, float)) and 0 < x <= top for x in values):
            raise InputError(f"planner.device={name_or_path!r}: {k}={v} must be in (0, {top}]")
    return prof
