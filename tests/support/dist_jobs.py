"""Shared by the gloo tests of a family's parallel layouts: jobs run under 2 processes against the single-process
run of the same task (latents within a tolerance, the same MagCache decisions on every rank, FSDP shards)."""
from __future__ import annotations

import json

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn


def check_two_rank_jobs(tmp_path, jobs: dict, overrides, full_bytes: dict, tol: float) -> None:
    """``jobs``: {name: (task, layout, [extra overrides])}; ``overrides(task, layout, out, *extra)`` gives a job's
    overrides; the reference of each task is its single-process run from the official layout. ``full_bytes[task]``:
    the model's whole fp32 parameter bytes (a job whose name has "fsdp" must hold under 0.7 of them per rank).
    What each rank reads of the DiT's checkpoint, against the single process: with ``parallel.shared_load=true``
    a row block of every tensor (then an all-gather): under 0.6 each, at least all of it together; under fsdp its
    rows of the sharded blocks: under 0.7; otherwise (auto on CPU) all of it."""
    refs = {}
    for task in sorted({task for task, _, _ in jobs.values()}):
        out = tmp_path / f"ref_{task}"
        report = run_job(load_config(None, overrides(task, "official", str(out))), solo_context())
        refs[task] = (torch.load(out / "latents.pt", weights_only=True), report["skipped_steps"],
                      report["ranks"][0]["phases"]["load"]["read_bytes"])
    spawn(2, [(n, overrides(task, layout, str(tmp_path / n), *extra)) for n, (task, layout, extra) in jobs.items()],
          str(tmp_path), timeout=240)
    for name, (task, _, extra) in jobs.items():
        for rank in range(2):
            status = json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())["status"]
            assert status == "ok", (name, rank, status)
        latents = torch.load(tmp_path / name / "latents.pt", weights_only=True)
        diff = (latents - refs[task][0]).abs().max().item()
        assert diff < tol, (name, diff)
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["world_size"] == 2 and report["decisions_identical_across_ranks"]
        assert report["skipped_steps"] == refs[task][1] and any(refs[task][1].values()), name
        reads, whole = [r["phases"]["load"]["read_bytes"] for r in report["ranks"]], refs[task][2]
        if "parallel.shared_load=true" in extra:
            assert all(b < 0.6 * whole for b in reads) and sum(reads) >= whole, (name, reads, whole)
        elif "fsdp" in name:
            assert all(b < 0.7 * whole for b in reads), (name, reads, whole)
        else:
            assert reads == [whole, whole], (name, reads, whole)
        if "fsdp" in name:  # each rank holds its half of the block weights
            per_rank = [r["param_bytes"] for r in report["ranks"]]
            assert all(b < 0.7 * full_bytes[task] for b in per_rank), (name, per_rank, full_bytes[task])
