"""Entry point of the multi-process tests: one process per rank, gloo on loopback, several jobs per group."""
from __future__ import annotations

import datetime
import json
import os
import time
import traceback


def worker(rank: int, world: int, port: int, jobs: list, result_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from magcache_dist.config import load_config
    from magcache_dist.job import parallel_dims
    from magcache_dist.parallel.dims import build_dist_context
    from magcache_dist.run import run_job

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    ds_ready = False
    try:
        for name, overrides in jobs:
            start = time.perf_counter()
            cfg = load_config(None, overrides)
            if cfg.parallel.backend == "deepspeed" and not ds_ready:
                import deepspeed

                deepspeed.init_distributed(dist_backend="gloo")
                ds_ready = True
            dims = parallel_dims(cfg)
            par = build_dist_context(dims, cfg.parallel.backend)
            try:
                run_job(cfg, par)
                status = "ok"
            except Exception as e:  # reported to the test, which decides
                status = f"{type(e).__name__}: {e}"
                if not type(e).__name__ == "SkipDisagreement":
                    status += "\n" + traceback.format_exc()
            with open(os.path.join(result_dir, f"{name}.rank{rank}.json"), "w") as f:
                json.dump({"status": status, "seconds": round(time.perf_counter() - start, 3)}, f)
    finally:
        dist.destroy_process_group()


def spawn(world: int, jobs: list, result_dir: str, timeout: float = 240.0) -> None:
    """Run ``jobs`` on ``world`` processes; fail (and kill them) if they do not finish in ``timeout`` seconds."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(worker, args=(world, port, jobs, result_dir), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"distributed test did not finish within {timeout}s (hang)")


def check_against_solo(result_dir, job: str, ref_report: dict, ref_latents, world: int = 2, tol: float = 1e-4) -> dict:
    """The checks every multi-process equality test makes of a spawned ``job`` (its outputs in ``result_dir/job``):
    every rank finished, one decision per step on all ranks, the single-process run's skipped steps, final latents
    within ``tol`` of it. Returns the job's report."""
    import pathlib

    import torch

    d = pathlib.Path(result_dir)
    for rank in range(world):
        status = json.loads((d / f"{job}.rank{rank}.json").read_text())["status"]
        assert status == "ok", (job, rank, status)
    report = json.loads((d / job / "report.json").read_text())
    assert report["world_size"] == world and report["decisions_identical_across_ranks"], job
    assert report["skipped_steps"] == ref_report["skipped_steps"], job
    if report.get("plan"):  # a MagCache job: what ran is what the calibrated plan said
        assert report["plan"]["skipped_steps"] == report["skipped_steps"], job
    latents = torch.load(d / job / "latents.pt", weights_only=True)
    assert latents.shape == ref_latents.shape, job
    diff = (latents - ref_latents).abs().max().item()
    print(f"{job}: max |latents - single process| = {diff:.3g}")
    assert diff < tol, (job, diff)
    return report
