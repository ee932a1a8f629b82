"""Run one function per simulated rank in threads (single-process mock distribution for tests and laptops)."""
from __future__ import annotations

import threading

from magcache_dist.parallel.comm import SoloComm, ThreadComm, ThreadHub
from magcache_dist.parallel.dims import ParallelContext


def _abort_all(contexts: list[ParallelContext]):
    for ctx in contexts:
        for comm in ctx.comms().values():
            if isinstance(comm, ThreadComm):
                comm.hub.abort()


def run_threads(fn, contexts: list[ParallelContext], timeout: float = 120.0) -> list:
    """fn(ctx) on every context at once; returns the results in rank order or raises the first rank's error.

    A rank that raises breaks every hub so the other ranks fail fast instead of waiting for it.
    """
    return _run(fn, contexts, lambda: _abort_all(contexts), timeout)


def run_on_comms(fn, size: int, timeout: float = 120.0) -> list:
    """fn(comm) on ``size`` simulated ranks of one group (ThreadComms on one hub; a SoloComm for one rank), the
    results in rank order, errors and hangs as in ``run_threads``."""
    if size == 1:
        return [fn(SoloComm())]
    hub = ThreadHub(size, timeout)
    return _run(fn, [ThreadComm(hub, r) for r in range(size)], hub.abort, timeout)


def _run(fn, args: list, abort, timeout: float) -> list:
    """fn(a) for each of ``args`` in its own thread; ``abort()`` when one raises or they outlive ``timeout``."""
    results, errors = [None] * len(args), [None] * len(args)

    def body(i):
        try:
            results[i] = fn(args[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[i] = e
            abort()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if any(t.is_alive() for t in threads):
        abort()
        raise TimeoutError(f"simulated ranks did not finish within {timeout}s")
    primary = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if primary or any(errors):
        raise (primary or [e for e in errors if e is not None])[0]
    return results
