"""Simulated ranks for tests: a body run on N threads, each with its rank's ThreadComm (real tensors, real
collectives between the threads); a hung rank or an error on any rank fails the caller, not the session."""
from __future__ import annotations

import threading

from magcache_dist.parallel.comm import SoloComm, ThreadComm, ThreadHub


def on_ranks(body, size: int):
    """``body(comm)`` on ``size`` thread ranks; the results in rank order."""
    if size == 1:
        return [body(SoloComm())]
    hub = ThreadHub(size, timeout=120)
    out, errors = [None] * size, []

    def run(r):
        try:
            out[r] = body(ThreadComm(hub, r))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            hub.abort()

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a simulated rank hung"
    if errors:
        raise errors[0]
    return out
