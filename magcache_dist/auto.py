"""Calibrate on demand: the glue between a job, the ratio store and the cache policy.

``cache.mode=auto``: rank 0 looks the job's key up in ``cache.calibration.store_dir`` and broadcasts what it found, so
every rank builds the same policy from the same numbers even when only rank 0 sees the store:
  - an entry with the same (model, weights, steps, resolution, solver, shift, guidance): MagCache with its ratios;
  - an entry differing only in the step count: its ratios interpolated onto this job's sigma grid
    (magcache_dist/cache/store.py: log magnitude as a function of sigma);
  - nothing: this request runs as a calibration (every call computed: the output is the full-quality video) and
    rank 0 stores the table, so the next request with this key reuses it.
``cache.mode=calibrate`` with ``cache.calibration.store_dir`` set also stores its table. The report's ``ratios_used``
says which ratios were used and where they came from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from magcache_dist.cache.ratios import RatioTable
from magcache_dist.cache.store import RatioStore, interpolate_table, make_key, weights_fingerprint
from magcache_dist.config import JobConfig, resolve_path
from magcache_dist.errors import InputError
from magcache_dist.sampling.schedulers import FlowScheduler


def sigma_grid(num_steps: int, shift: float, solver: str = "unipc", sigmas=None) -> list[float]:
    """The sampler's sigma at each of the ``num_steps`` steps: Wan's shifted grid, or a family's own ``sigmas``."""
    return [float(s) for s in FlowScheduler(solver, num_steps, shift, sigmas=sigmas).sigmas[:num_steps]]


def job_sigmas(scfg) -> list[float]:
    return sigma_grid(scfg.num_steps, scfg.shift, scfg.solver, getattr(scfg, "sigmas", None))


def ratio_key(cfg: JobConfig, scfg) -> dict:
    ckpt = resolve_path(cfg.model.ckpt)
    model = cfg.model.name
    if getattr(scfg, "switch_step", None) is not None:  # two experts: the switch step and the low-noise guidance too
        g2 = scfg.guidance_2 if scfg.guidance_2 is not None else scfg.guidance
        model = f"{model} [switch at step {scfg.switch_step}, guidance_2 {float(g2)}]"
    return make_key(model, weights_fingerprint(ckpt, cfg.model.init_seed), scfg.num_steps,
                    [cfg.video.frames, cfg.video.height, cfg.video.width], scfg.solver, scfg.shift, scfg.guidance)


def calibration_meta(cfg: JobConfig, scfg, dims, rule: str = "wan") -> dict:
    """``rule``: the model family's decision rule (ModelFamily.cache_rule), written into the table."""
    key = ratio_key(cfg, scfg)
    return dict(model=key["model"], weights=key["weights"], num_steps=scfg.num_steps, resolution=key["resolution"],
                solver=scfg.solver, shift=scfg.shift, guidance=scfg.guidance, rule=cfg.cache.magcache.rule or rule,
                sp_degree=dims.sp_degree, ulysses_degree=dims.ulysses_degree, ring_degree=dims.ring_degree,
                cfg_degree=dims.cfg_degree, sigmas=job_sigmas(scfg))


@dataclass
class ResolvedRatios:
    """What ``auto`` found in the store (picklable: it is broadcast from rank 0)."""
    kind: str  # "exact" | "interpolated" | "calibrate"
    key: dict
    table_json: dict | None = None
    file: str | None = None
    from_steps: int | None = None

    @property
    def table(self) -> RatioTable | None:
        return None if self.table_json is None else RatioTable.from_json(self.table_json, where=f"store {self.file}")

    def source(self) -> str:
        if self.kind == "exact":
            return f"store:{self.file}"
        if self.kind == "interpolated":
            return f"store:{self.file} (interpolated from {self.from_steps} steps)"
        return "calibrated on this request"


def lookup(cfg: JobConfig, scfg) -> ResolvedRatios:
    """Resolve ``cache.mode=auto`` against the store (reads files; call on one rank)."""
    store = RatioStore(resolve_path(cfg.cache.calibration.store_dir))
    key = ratio_key(cfg, scfg)
    hit = store.lookup(key)
    if hit is None:
        return ResolvedRatios("calibrate", key)
    kind, entry = hit
    table = store.load(entry)
    if kind == "exact":
        return ResolvedRatios("exact", key, table.to_json(), store.path(entry))
    src = entry["key"]
    src_sigmas = table.meta.get("sigmas") or sigma_grid(src["num_steps"], src["shift"], src["solver"])
    table = interpolate_table(table, src_sigmas, job_sigmas(scfg))
    return ResolvedRatios("interpolated", key, table.to_json(), store.path(entry), from_steps=src["num_steps"])


def resolve_ratios(cfg: JobConfig, scfg, par) -> ResolvedRatios | None:
    """``auto`` only: rank 0 resolves, every rank receives the same answer (or the same error)."""
    if cfg.cache.mode != "auto":
        return None
    found = None
    if par.rank == 0:
        try:
            found = lookup(cfg, scfg)
        except InputError as e:  # tell the other ranks instead of leaving them in the broadcast
            found = f"{e}"
    found = par.group.broadcast_object(found)
    if isinstance(found, str):
        raise InputError(found)
    return found


def store_calibration(cfg: JobConfig, scfg, table: RatioTable) -> str:
    """Rank 0: add the table to ``cache.calibration.store_dir``; returns the file written."""
    store = RatioStore(resolve_path(cfg.cache.calibration.store_dir))
    entry = store.save(ratio_key(cfg, scfg), table)
    return store.path(entry)


def ratios_used(cfg: JobConfig, policy, resolved: ResolvedRatios | None, calibration_file: str | None,
                stored_file: str | None) -> dict:
    """The report's account of which magnitude ratios decided and where they came from."""
    mode = cfg.cache.mode
    out = dict(mode=mode)
    if resolved is not None:
        out.update(lookup=resolved.kind, key=resolved.key)
        if resolved.kind != "calibrate":
            out.update(source=resolved.source(), file=resolved.file, interpolated_from_steps=resolved.from_steps)
    if calibration_file or stored_file:
        out.update(source="calibrated on this request (every call computed)", written=calibration_file,
                   stored=stored_file)
    elif "source" not in out:
        src = getattr(policy, "source", None)
        if mode == "online":
            src = "measured online during this generation (no ratio file)"
        out["source"] = src or "none"
    return out


def check_store(cfg: JobConfig) -> None:
    """Before any collective: auto needs a usable store; calibrate may write into one."""
    c = cfg.cache
    if c.mode == "auto" and not c.calibration.store_dir:
        raise InputError("cache.mode=auto needs cache.calibration.store_dir "
                         "(a directory holding calibrated ratio tables; "
                         "it is created and filled on first use)")
    # auto ignores cache.magcache.preset / cache.magcache.ratios_file
    if c.calibration.store_dir and c.mode in ("auto", "calibrate"):
        RatioStore(os.path.abspath(resolve_path(c.calibration.store_dir))).check()
