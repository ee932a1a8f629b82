"""Per-video claims: several jobs (the shards of a SLURM array, reruns, several allocations) and the data-parallel
groups of each fill one ``output_dir`` together, and each video is made by exactly one worker.

Rank 0 of a group claims a video just before making it by creating ``output_dir/.claims/<folder>.claim`` with
``O_CREAT | O_EXCL`` (atomic on local file systems and NFS v3+). The file says who holds it (host, pid, the job's
run id, SLURM job id and restart count) and its modification time is the holder's heartbeat, refreshed every
``HEARTBEAT_S`` by a thread while the video is made. The claim is removed once the video's report is written, or
when the worker stops early (an error, a preemption). A claim whose holder died expires and can be taken over:

- its heartbeat is older than ``TIMEOUT_S`` (killed, node lost: any host);
- on the same host, its pid is gone, or it is this very process from an earlier run;
- it was taken by an earlier incarnation of the same SLURM job (``--requeue`` keeps the job id and raises
  SLURM_RESTART_COUNT), which cannot be running any more.

A takeover renames the expired file to a name of the taker's own first (only one rename of a path succeeds), checks
that what it moved is the claim it judged expired, and then creates its own claim with O_EXCL like anyone else.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

CLAIMS = ".claims"
TIMEOUT_S = 300.0
HEARTBEAT_S = 15.0


def claim_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, CLAIMS, f"{name}.claim")


def _identity(run_id: str) -> dict:
    return dict(host=socket.gethostname(), pid=os.getpid(), run_id=run_id, slurm_job=os.environ.get("SLURM_JOB_ID"),
                restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))


def _read(path: str) -> tuple[dict | None, float | None]:
    """(holder info or None when unreadable, the heartbeat time) or (None, None) when the file is gone."""
    try:
        with open(path) as f:
            text = f.read()
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None, None
    try:
        info = json.loads(text)
    except ValueError:
        info = None  # being written (created, not yet filled): only its heartbeat can expire it
    return (info if isinstance(info, dict) else None), mtime


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def expired(info: dict | None, mtime: float, me: dict, timeout_s: float = TIMEOUT_S, now: float | None = None) -> \
        str | None:
    """Why a claim's holder is dead (a sentence), or None while it may be alive."""
    now = time.time() if now is None else now
    if now - mtime > timeout_s:
        return f"no heartbeat for {now - mtime:.0f} s"
    if info is None:
        return None
    if info.get("host") == me["host"]:
        if info.get("pid") == me["pid"] and info.get("run_id") != me["run_id"]:
            return "left by an earlier run of this process"
        if info.get("pid") != me["pid"] and not _pid_alive(info.get("pid")):
            return f"process {info.get('pid')} on {me['host']} is gone"
    if me["slurm_job"] and info.get("slurm_job") == me["slurm_job"] and \
            isinstance(info.get("restart"), int) and info["restart"] < me["restart"]:
        return f"taken before SLURM job {me['slurm_job']} was requeued"
    return None


class Claims:
    """The claims of one group's rank 0, with the heartbeat thread that keeps the held one alive."""

    def __init__(self, output_dir: str, run_id: str, timeout_s: float = TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S):
        self.dir = os.path.join(output_dir, CLAIMS)
        self.output_dir, self.timeout_s, self.heartbeat_s = output_dir, timeout_s, heartbeat_s
        self.me = _identity(run_id)
        self.held: str | None = None
        self.taken_over: list[str] = []  # sentences: whose expired claims this worker took
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, name: str) -> str | None:
        """Claim video ``name``: None when done, else a sentence naming the live holder."""
        os.makedirs(self.dir, exist_ok=True)
        path = claim_path(self.output_dir, name)
        for _ in range(3):
            if self._create(path):
                self.held = path
                self._start()
                return None
            info, mtime = _read(path)
            if mtime is None:
                continue  # released meanwhile: try again
            why = expired(info, mtime, self.me, self.timeout_s)
            if why is None:
                holder = info or {}
                return f"claimed by pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run_id')})"
            if self._take_over(path, info, why):
                continue
        return "claimed by another worker (it changed hands while this one looked)"

    def _create(self, path: str) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(dict(self.me, since=time.strftime("%Y-%m-%d %H:%M:%S"))).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _take_over(self, path: str, judged: dict | None, why: str) -> bool:
        aside = f"{path}.expired-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True  # someone else moved it first: race for the fresh claim
        moved, _ = _read(aside)
        if moved != judged:  # it changed hands between the look and the rename: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        self.taken_over.append(f"{os.path.basename(path)[:-6]}: {why}")
        return True

    def release(self) -> None:
        path, self.held = self.held, None
        if path is not None:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    # ---- heartbeat ---------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="magcache-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            path = self.held
            if path is not None:
                try:
                    os.utime(path)
                except OSError:
                    pass

    def close(self) -> None:
        self.release()
        self._stop.set()
