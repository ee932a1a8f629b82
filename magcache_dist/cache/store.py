"""A directory of calibrated ratio tables with an index keyed by how they were measured.

    <store_dir>/index.json      {"format": "magcache-ratio-store/1", "entries": [{"key": {...}, "file": ...}]}
    <store_dir>/<name>.json     one RatioTable each (the calibration file format)

The key is (model, weights, num_steps, resolution, solver, shift, guidance): ``model`` the config name,
``weights`` a fingerprint of the checkpoint (so a fine-tune never reuses its base model's ratios), ``resolution``
[frames, height, width]. ``lookup`` returns the exact entry, else the entry that differs only in ``num_steps``
(nearest step count) for interpolation, else None. Writes are atomic; the index update holds a lock file so two
jobs storing at once do not lose an entry.

Step interpolation (``interpolate_by_sigma``) works on the sampler's sigma grid: the log magnitude of the residual
is treated as a function of sigma, L(sigma), known at the calibration grid (cumulative sum of log ratios);
L is linear between those points and continues with the last interval's slope beyond them. The ratio of a new
step is exp(L(sigma_s) - L(sigma_{s-1})). With a shifted grid the last steps cover much more sigma than the first,
which is where the sharp drop of the ratios comes from; nearest-neighbour resampling of the ratios by step index
(what the published code does) ignores that.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

import numpy as np

from magcache_dist.cache.ratios import RatioTable
from magcache_dist.errors import InputError
from magcache_dist.io.atomic import atomic_write_text

STORE_FORMAT = "magcache-ratio-store/1"
KEY_FIELDS = ("model", "weights", "num_steps", "resolution", "solver", "shift", "guidance")
_FINGERPRINT_BYTES = 1 << 20


def _file_digest(h, path: str) -> None:
    size = os.path.getsize(path)
    h.update(f"{os.path.basename(path)}:{size}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
            h.update(f.read(_FINGERPRINT_BYTES))
        elif size > _FINGERPRINT_BYTES:
            h.update(f.read())


def weights_fingerprint(ckpt: str | None, init_seed: int = 0) -> str:
    """Cheap identity of a checkpoint: sha256 over size, first and last MiB of each file (shards included).

    ``None`` (seeded random weights) is identified by its seed.
    """
    if ckpt is None:
        return f"init-seed:{init_seed}"
    h = hashlib.sha256()
    paths = [ckpt]
    if os.path.isdir(ckpt):
        paths = sorted(os.path.join(ckpt, n) for n in os.listdir(ckpt)
                       if n.endswith((".safetensors", ".json", ".pth", ".pt")))
    elif ckpt.endswith(".json"):
        with open(ckpt) as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        paths += [os.path.join(os.path.dirname(ckpt), s) for s in shards]
    for p in paths:
        _file_digest(h, p)
    return "sha256:" + h.hexdigest()[:16]


def make_key(model: str, weights: str, num_steps: int, resolution, solver: str, shift: float,
             guidance: float) -> dict:
    return dict(model=str(model), weights=str(weights), num_steps=int(num_steps),
                resolution=[int(v) for v in resolution], solver=str(solver), shift=float(shift),
                guidance=float(guidance))


def _same_but_steps(a: dict, b: dict) -> bool:
    return all(a[f] == b[f] for f in KEY_FIELDS if f != "num_steps")


def interpolate_by_sigma(values, src_sigmas, dst_sigmas) -> list[float]:
    """Ratios of one branch measured on the grid ``src_sigmas`` [N] -> ratios on ``dst_sigmas`` [M].

    Entry 0 is the placeholder 1.0 on both grids. Sigmas decrease along each grid.
    """
    src = np.asarray(src_sigmas, dtype=np.float64)
    dst = np.asarray(dst_sigmas, dtype=np.float64)
    r = np.asarray(values, dtype=np.float64)
    if len(src) != len(r):
        raise InputError(f"ratios hold {len(r)} values but the calibration grid has {len(src)} steps")
    if len(dst) == 1:
        return [1.0]
    if len(src) == 1:
        return [1.0] * len(dst)
    cum = np.concatenate([[0.0], np.cumsum(np.log(r[1:]))])  # L at src[i], L(src[0]) = 0
    x, y = src[::-1], cum[::-1]  # increasing sigma for np.interp

    def log_mag(s: np.ndarray) -> np.ndarray:
        out = np.interp(s, x, y)
        lo_slope = (y[1] - y[0]) / (x[1] - x[0])  # beyond the smallest calibrated sigma: last interval's slope
        hi_slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
        out = np.where(s < x[0], y[0] + lo_slope * (s - x[0]), out)
        return np.where(s > x[-1], y[-1] + hi_slope * (s - x[-1]), out)

    lm = log_mag(dst)
    return [1.0] + [float(v) for v in np.exp(np.diff(lm))]


def interpolate_table(table: RatioTable, src_sigmas, dst_sigmas) -> RatioTable:
    """The table resampled to the grid ``dst_sigmas`` (ratios only; std and cosine distance are not carried)."""
    n = len(dst_sigmas)
    ratios = {b: interpolate_by_sigma(v, src_sigmas, dst_sigmas) for b, v in table.ratios.items()}
    meta = dict(table.meta, num_steps=n, interpolated_from_steps=table.num_steps, interpolation="log-magnitude-sigma")
    return RatioTable(num_steps=n, ratios=ratios, meta=meta)


def _entry_problem(e) -> str | None:
    """What is wrong with one index entry, or None."""
    if not isinstance(e, dict):
        return f"is a {type(e).__name__}, not an object"
    key, name = e.get("key"), e.get("file")
    if not isinstance(key, dict) or set(key) != set(KEY_FIELDS):
        return f"'key' must be an object with exactly the fields {sorted(KEY_FIELDS)}"
    steps = key["num_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        return f"key.num_steps={steps!r} must be an integer >= 1"
    if not isinstance(name, str) or not name or os.path.basename(name) != name:
        return f"'file'={name!r} must be a file name inside the store"
    return None


class RatioStore:
    def __init__(self, directory: str):
        self.dir = directory
        self.index_path = os.path.join(directory, "index.json")

    def check(self) -> None:
        """Raise ValueError (naming cache.calibration.store_dir) if the store cannot be read or written."""
        from magcache_dist.io.probe import ensure_writable_dir

        ensure_writable_dir(os.path.abspath(self.dir), "cache.calibration.store_dir")
        for i, e in enumerate(self.entries()):  # the tables too: a broken one must not surface after the model loads
            path = self.path(e)
            if not os.path.isfile(path):
                raise InputError(f"cache.calibration.store_dir={self.dir!r}: "
                                 f"index.json entries[{i}] names {e['file']!r}, which "
                                 f"is missing; fix or remove that entry (or delete index.json to start a new store)")
            try:
                RatioTable.load(path)
            except ValueError as err:
                raise InputError(f"cache.calibration.store_dir={self.dir!r}: "
                                 f"index.json entries[{i}]: {err}; recalibrate or "
                                 f"remove that entry") from None

    def entries(self) -> list[dict]:
        if not os.path.isfile(self.index_path):
            return []
        try:
            with open(self.index_path) as f:
                obj = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"cache.calibration.store_dir={self.dir!r}: "
                             f"index.json is not valid JSON ({e}); delete it to "
                             f"start a new store") from None
        if not isinstance(obj, dict) or obj.get("format") != STORE_FORMAT or not isinstance(obj.get("entries"), list):
            raise InputError(f"cache.calibration.store_dir={self.dir!r}: "
                             f"index.json is not a {STORE_FORMAT!r} index; point "
                             f"cache.calibration.store_dir at a ratio store directory")
        for i, e in enumerate(obj["entries"]):
            problem = _entry_problem(e)
            if problem:
                raise InputError(f"cache.calibration.store_dir={self.dir!r}: "
                                 f"index.json entries[{i}] {problem}; fix or remove "
                                 f"that entry (or delete index.json to start a new store)")
        return obj["entries"]

    def lookup(self, key: dict) -> tuple[str, dict] | None:
        """("exact", entry) or ("steps", entry) with the nearest step count, or None."""
        entries = self.entries()
        for e in reversed(entries):  # the newest wins
            if e.get("key") == key:
                return "exact", e
        near = [e for e in entries if isinstance(e.get("key"), dict) and set(e["key"]) == set(KEY_FIELDS)
                and _same_but_steps(e["key"], key)]
        if not near:
            return None
        best = min(near, key=lambda e: (abs(e["key"]["num_steps"] - key["num_steps"]), -e["key"]["num_steps"]))
        return "steps", best

    def load(self, entry: dict) -> RatioTable:
        path = os.path.join(self.dir, entry["file"])
        return RatioTable.load(path)

    def path(self, entry: dict) -> str:
        return os.path.join(self.dir, entry["file"])

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.dir, exist_ok=True)
        import fcntl

        with open(os.path.join(self.dir, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self, key: dict, table: RatioTable, extra: dict | None = None) -> dict:
        """Write the table and add (or replace) its index entry; returns the entry."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        f, h, w = key["resolution"]
        name = f"{key['model']}-{key['num_steps']}steps-{f}x{h}x{w}-{key['solver']}-{digest}.json"
        entry = dict(key=key, file=name, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}))
        with self._locked():
            table.save(os.path.join(self.dir, name))
            entries = [e for e in self.entries() if e.get("key") != key] + [entry]
            atomic_write_text(self.index_path, json.dumps(dict(format=STORE_FORMAT, entries=entries), indent=1))
        return entry
