"""Entry point of the multi-process tests: one process per rank, gloo on loopback, kept for the session; each test
sends its jobs to them and checks what they wrote."""
from __future__ import annotations

import atexit
import datetime
import json
import os
import time
import traceback


def _run_jobs(rank: int, jobs: list, result_dir: str, state: dict) -> bool:
    """Run ``jobs`` one after the other on this rank; each job's status goes to ``result_dir/<job>.rank<r>.json``.
    Returns whether every job ended "ok"."""
    import torch.distributed as dist

    from magcache_dist.config import load_config
    from magcache_dist.job import parallel_dims
    from magcache_dist.parallel.dims import build_dist_context
    from magcache_dist.run import run_job

    all_ok = True
    for name, overrides in jobs:
        start = time.perf_counter()
        try:
            cfg = load_config(None, overrides)
            if cfg.parallel.backend == "deepspeed" and not state.get("deepspeed"):
                import deepspeed

                deepspeed.init_distributed(dist_backend=dist.get_backend())
                state["deepspeed"] = True
            run_job(cfg, build_dist_context(parallel_dims(cfg), cfg.parallel.backend))
            status = "ok"
        except Exception as e:  # reported to the test, which decides
            status = f"{type(e).__name__}: {e}"
            if type(e).__name__ != "SkipDisagreement":
                status += "\n" + traceback.format_exc()
        all_ok &= status == "ok"
        with open(os.path.join(result_dir, f"{name}.rank{rank}.json"), "w") as f:
            json.dump({"status": status, "seconds": round(time.perf_counter() - start, 3)}, f)
    return all_ok


def serve(rank: int, world: int, port: int, inboxes: list, outbox) -> None:
    """One rank of a pool: joins the gloo group once, then runs every batch of jobs it is sent until told to stop
    (``None``); after each batch it answers ``(batch, rank, all ok)``."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    state = {}
    try:
        while (msg := inboxes[rank].get()) is not None:
            batch, jobs, result_dir = msg
            outbox.put((batch, rank, _run_jobs(rank, jobs, result_dir, state)))
    finally:
        dist.destroy_process_group()


class Pool:
    """``world`` gloo processes kept for the whole test session: starting processes (Python, torch, the libraries
    a job imports) is most of a small multi-process test's time on 2 cores, so each test sends its jobs to the
    same ranks. A batch that fails or hangs ends the pool; the next batch starts a fresh one."""

    def __init__(self, world: int):
        self.world, self.procs, self.batch = world, None, 0

    def _start(self) -> None:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mpc = mp.get_context("spawn")
        self.inboxes, self.outbox = [mpc.Queue() for _ in range(self.world)], mpc.Queue()
        self.procs = mp.start_processes(serve, args=(self.world, port, self.inboxes, self.outbox),
                                        nprocs=self.world, join=False, start_method="spawn")

    def kill(self) -> None:
        if self.procs is not None:
            for p in self.procs.processes:
                p.kill()
            for p in self.procs.processes:
                p.join(timeout=10)
        self.procs = None

    def close(self) -> None:
        if self.procs is not None:
            for q in self.inboxes:
                q.put(None)
            for p in self.procs.processes:
                p.join(timeout=20)
        self.kill()

    def run(self, jobs: list, result_dir: str, timeout: float) -> None:
        import queue

        if self.procs is None or not all(p.is_alive() for p in self.procs.processes):
            self.kill()
            self._start()
        self.batch += 1
        for q in self.inboxes:
            q.put((self.batch, jobs, result_dir))
        done, all_ok, deadline = set(), True, time.monotonic() + timeout
        try:
            while len(done) < self.world:
                try:
                    batch, rank, ok = self.outbox.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"distributed test did not finish within {timeout}s (hang)") from None
                    dead = [i for i, p in enumerate(self.procs.processes) if not p.is_alive()]
                    if dead:
                        raise RuntimeError(f"ranks {dead} of the {self.world}-process pool died (see their output)")
                    continue
                if batch == self.batch:
                    done.add(rank)
                    all_ok &= ok
        except BaseException:  # a hang, a dead rank, or the test's own timeout: never reuse these ranks
            self.kill()
            raise
        if not all_ok:  # a failed job may leave a collective half done: the next batch gets fresh ranks
            self.kill()


_POOLS: dict[int, Pool] = {}


def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()


def spawn(world: int, jobs: list, result_dir: str, timeout: float = 240.0) -> None:
    """Run ``jobs`` (``[(name, overrides)]``, one after the other) on ``world`` gloo processes, each job's outcome
    in ``result_dir/<name>.rank<r>.json``; fail (and kill the processes) if they do not finish in ``timeout``
    seconds. The processes are the session's pool of that size (started on first use, closed at exit)."""
    if not _POOLS:
        atexit.register(_close_pools)
    _POOLS.setdefault(world, Pool(world)).run(jobs, result_dir, timeout)


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
    if report.get("schedule"):  # a MagCache job: what ran is what the calibrated schedule said
        assert report["schedule"]["skipped_steps"] == report["skipped_steps"], job
    latents = torch.load(d / job / "latents.pt", weights_only=True)
    assert latents.shape == ref_latents.shape, job
    diff = (latents - ref_latents).abs().max().item()
    print(f"{job}: max |latents - single process| = {diff:.3g}")
    assert diff < tol, (job, diff)
    return report
