"""Failing ranks end the whole job quickly, with a message naming the rank and the cause.

Two things on the rendezvous store (the c10d TCPStore every torchrun/env:// job already has):
- a failure board: a rank whose job raises posts ``rank r: <cause>`` before it exits;
- heartbeats: every rank's watchdog thread increments its own counter every ``interval`` seconds.

Every rank's watchdog reads the board and the others' counters. When a peer posted a failure, or its counter has
not moved for ``stale_after`` seconds (killed by a signal, out of memory, node lost), the watchdog ends this rank
with ``[rank r] error: job aborted: ...`` and exit code EXIT_PEER_FAILED, even while the main thread is stuck in a
collective (NCCL would otherwise wait for its timeout). With gloo a dead peer usually makes the pending collective
raise at once; ``explain`` then names the culprit from the board or from whose heartbeat stopped.

Exit codes of launch/generate.py: 2 bad input, 3 ranks disagree on a cache decision, 4 this rank failed,
5 another rank failed, 75 preempted (stopped on SIGTERM or checkpoint.signal after writing a checkpoint: rerun the
same command to continue; magcache_dist/preempt.py).
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time

EXIT_RANK_FAILED = 4
EXIT_PEER_FAILED = 5


def _default_exit(code: int) -> None:
    sys.stderr.flush()
    os._exit(code)  # the main thread may be blocked inside a collective: end the process from here


class HealthMonitor:
    def __init__(self, store, rank: int, world_size: int, interval: float = 0.5, stale_after: float = 10.0,
                 grace: float = 3.0, prefix: str = "magcache/health/", exit_fn=_default_exit):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.interval, self.stale_after, self.grace, self.prefix = interval, stale_after, grace, prefix
        self.exit_fn = exit_fn
        self._lock = threading.Lock()  # one store connection, used by the watchdog and the main thread
        self._stop = threading.Event()
        self._reported = threading.Event()  # the main thread has reported the failure itself
        self._beats = 0
        self._seen: dict[int, tuple[int, float]] = {}  # peer -> (last counter, local time it last moved)
        self._store_down_since: float | None = None
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []  # e.g. the SIGTERM handler's diagnosis (on_launcher_stop)

    # ---- store keys ------------------------------------------------------------------------------------
    def _key(self, *parts) -> str:
        return self.prefix + "/".join(str(p) for p in parts)

    def _beat(self) -> None:
        with self._lock:
            self._beats = self.store.add(self._key("hb", self.rank), 1)

    def post_failure(self, cause: str) -> None:
        """Tell every other rank why this one is going down (best effort: the store may be gone too)."""
        try:
            with self._lock:
                self.store.set(self._key("fail", self.rank), cause)
                self.store.add(self._key("failures"), 1)
        except Exception:  # noqa: BLE001 - the message is still printed by the caller
            pass

    def posted_failures(self) -> dict[int, str]:
        with self._lock:
            if self.store.add(self._key("failures"), 0) == 0:
                return {}
            out = {}
            for r in range(self.world_size):
                k = self._key("fail", r)
                if r != self.rank and self.store.check([k]):
                    out[r] = self.store.get(k).decode(errors="replace")
            return out

    def mark_done(self) -> None:
        """This rank finished normally: its heartbeat stopping is not a failure."""
        try:
            with self._lock:
                self.store.set(self._key("done", self.rank), "1")
                self.store.add(self._key("dones"), 1)
        except Exception:  # noqa: BLE001
            pass

    def _counters(self) -> dict[int, int]:
        """Heartbeat counter of every peer still running."""
        with self._lock:
            any_done = self.store.add(self._key("dones"), 0) > 0
            return {r: self.store.add(self._key("hb", r), 0) for r in range(self.world_size)
                    if r != self.rank and not (any_done and self.store.check([self._key("done", r)]))}

    # ---- diagnosis ---------------------------------------------------------------------------------------
    def peer_problem(self, now: float | None = None) -> str | None:
        """A failure posted by a peer, or a peer whose heartbeat has stopped for ``stale_after`` seconds."""
        posted = self.posted_failures()
        if posted:
            r = min(posted)
            return f"rank {r} failed: {posted[r]}"
        now = time.monotonic() if now is None else now
        for r, c in self._counters().items():
            last = self._seen.get(r)
            if last is None or c != last[0]:
                self._seen[r] = (c, now)
            elif c > 0 and now - last[1] > self.stale_after:
                return (f"rank {r} stopped responding: no heartbeat for {now - last[1]:.0f} s (killed by a signal, "
                        f"out of memory, or its node was lost)")
        return None

    def explain(self, wait: float | None = None) -> str | None:
        """After a collective failed in this rank: which peer caused it? Polls the board for ``wait`` seconds
        and reports a peer whose heartbeat did not move meanwhile. None when every peer looks alive."""
        wait = max(4 * self.interval, 1.0) if wait is None else wait
        try:
            start = self._counters()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                posted = self.posted_failures()
                if posted:
                    r = min(posted)
                    return f"rank {r} failed: {posted[r]}"
                time.sleep(min(0.1, wait))
            now = self._counters()
            dead = [r for r in now if now[r] == start.get(r)]
            if dead:
                return (f"rank {dead[0]} stopped responding: its heartbeat stopped (killed by a signal, out of "
                        f"memory, or its node was lost)")
        except Exception as e:  # noqa: BLE001
            return (f"lost the rendezvous store ({type(e).__name__}): the rank or launcher hosting it (rank 0 "
                    f"without torchrun) is gone")
        return None

    def mark_reported(self) -> None:
        self._reported.set()

    # ---- watchdog ------------------------------------------------------------------------------------------
    def start(self) -> "HealthMonitor":
        self._beat()
        self._thread = threading.Thread(target=self._run, name="magcache-health", daemon=True)
        self._thread.start()
        return self

    def spawn(self, target, *args, name: str) -> None:
        """Run ``target(*args)`` on a daemon thread that ``stop`` waits for (it may use the store)."""
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._helpers.append(t)
        t.start()

    def stop(self, timeout: float = 15.0) -> bool:
        """End the watchdog and wait (at most ``timeout`` s) for it and the helper threads; True when all ended.

        A thread still inside a store call when the interpreter exits aborts the process ("terminate called
        without an active exception", SIGABRT instead of the rank's exit code): returning from C++ while Python
        finalizes unwinds that thread through a destructor. The store's own timeout (10 s) bounds each call."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        others = [t for t in (self._thread, *self._helpers) if t is not None and t is not threading.current_thread()]
        for t in others:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in others)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                problem = self.peer_problem()
                self._store_down_since = None
            except Exception as e:  # noqa: BLE001
                now = time.monotonic()
                self._store_down_since = self._store_down_since or now
                if now - self._store_down_since < self.stale_after:
                    continue
                problem = (f"lost the rendezvous store for {now - self._store_down_since:.0f} s "
                           f"({type(e).__name__}): the rank or launcher hosting it is gone")
            if problem:
                self._abort(problem)
                return

    def _abort(self, problem: str) -> None:
        # give the main thread a moment to report on its own (gloo usually raises in the collective at once)
        if self._reported.wait(self.grace) or self._stop.is_set():
            return
        print(f"[rank {self.rank}] error: job aborted: {problem}", file=sys.stderr, flush=True)
        self.exit_fn(EXIT_PEER_FAILED)


def on_launcher_stop(monitor: HealthMonitor, rank: int, stop=None):
    """A SIGTERM handler: torchrun stops the surviving ranks with SIGTERM as soon as one rank dies, usually before
    they have said why. Name the cause known from the failure board / heartbeats (as the watchdog would) and exit
    with EXIT_PEER_FAILED. When no peer is to blame, the signal is a request to stop (a preemption: SLURM, the
    scheduler, an operator): with ``stop`` (magcache_dist/preempt.StopRequest) the flag is set at once and the job
    stops after the current step with a checkpoint, while a thread asks the board (a peer's failure still ends the
    rank with EXIT_PEER_FAILED); without it, say the launcher stopped the job and exit 143 (128 + SIGTERM)."""
    def diagnose(signum):
        cause = monitor.explain(wait=max(4 * monitor.interval, 1.0))
        if monitor._reported.is_set():  # the main thread reported meanwhile (its collective failed): its exit code
            return
        if cause:
            monitor.mark_reported()
            print(f"[rank {rank}] error: job aborted: {cause} (stopped by the launcher)", file=sys.stderr, flush=True)
            _default_exit(EXIT_PEER_FAILED)
        if stop is not None:
            print(f"[rank {rank}] stop requested ({signal.Signals(signum).name}): finishing the current step, then "
                  f"writing a checkpoint", file=sys.stderr, flush=True)
            return
        monitor.mark_reported()
        print(f"[rank {rank}] error: stopped by the launcher (SIGTERM); no rank reported a failure", file=sys.stderr,
              flush=True)
        _default_exit(128 + signum)

    def handler(signum, frame):
        if monitor._reported.is_set():  # this rank already reported; the launcher is only cleaning up
            _default_exit(EXIT_PEER_FAILED)
        if stop is None:
            diagnose(signum)
            return
        stop.request(signum)  # the main thread sees it at the end of its step
        monitor.spawn(diagnose, signum, name="magcache-stop")
    return handler


def build_health_monitor(rank: int, world_size: int, **kw) -> HealthMonitor | None:
    """A monitor on a new client connection to the job's rendezvous store (MASTER_ADDR:MASTER_PORT).

    Keys are namespaced by torchrun's run id and restart count so a restarted job never sees stale failures.
    """
    import torch.distributed as dist

    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if world_size < 2 or not host or not port:
        return None
    store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=10),
                          wait_for_workers=False)
    prefix = (f"magcache/health/{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")
    return HealthMonitor(store, rank, world_size, prefix=prefix, **kw).start()


def failure_origin(exc: BaseException) -> str:
    """``file:line in function`` of the innermost project frame of an exception (where the cause was raised)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mine = [f for f in frames if os.path.abspath(f.filename).startswith(root)] or frames
    if not mine:
        return ""
    f = mine[-1]
    return f"{os.path.relpath(f.filename, root)}:{f.lineno} in {f.name}"


def report_failure(exc: BaseException, rank: int, monitor: HealthMonitor | None, log_dir: str | None = None) -> int:
    """The launcher's handler for an unexpected exception on this rank; returns the exit code.

    If another rank failed first (its failure is on the board, or its heartbeat stopped), this exception is only
    the consequence (e.g. gloo's "connection closed"): report the peer. Otherwise this rank is the origin: post
    the cause for the others, record it for torchrun's summary, and say where it was raised.
    """
    own = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    peer = monitor.explain() if monitor is not None else None
    if monitor is not None:
        monitor.mark_reported()
    if peer is not None:
        print(f"[rank {rank}] error: job aborted: {peer} (here: {own})", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILED
    where = failure_origin(exc)
    cause = f"{own}{f' (at {where})' if where else ''}"
    if monitor is not None:
        monitor.post_failure(cause)
    print(f"[rank {rank}] error: {cause}", file=sys.stderr, flush=True)
    from magcache_dist.sampling.loop import NonFiniteError

    if log_dir is not None and not isinstance(exc, NonFiniteError):  # a bug: its whole traceback, for the report
        path = write_traceback(exc, rank, log_dir)
        print(f"[rank {rank}] the traceback is in {path}" if path else f"[rank {rank}] (traceback not written)",
              file=sys.stderr, flush=True)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's failure summary then shows the cause
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        try:
            raise RuntimeError(f"rank {rank}: {cause}") from exc
        except RuntimeError as wrapped:
            get_error_handler().record_exception(wrapped)
    return EXIT_RANK_FAILED


def write_traceback(exc: BaseException, rank: int, log_dir: str) -> str | None:
    """``log_dir/rank<r>-traceback.txt`` with the exception's traceback; its path, or None if it cannot be written
    (the one-line cause on stderr stands either way)."""
    import traceback

    path = os.path.join(log_dir, f"rank{rank}-traceback.txt")
    try:
        os.makedirs(log_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path
