"""What each phase of a job costs on one rank (time, peak device and host memory), and where the job ran.

The phases are named as everywhere else (STYLE.md, the planner's ``plan.json``): ``load`` (build the model and
parallelize it, weights read), ``encode`` (text / image encoders), ``sample``, ``decode`` (the VAE), ``write``
(rank 0's outputs). ``report.json`` lists each rank's phases under ``ranks[i].phases``:
``{name: {s, device_peak_bytes, host_peak_bytes}}``.

- device peak: ``torch.cuda.max_memory_allocated`` over the phase (the caching allocator's peak of live tensors, its
  statistics reset when the phase starts); null on a CPU job.
- host peak: the process's resident-set high-water mark (``VmHWM``) over the phase. Linux lets a process reset that
  mark (writing ``5`` to ``/proc/self/clear_refs``), so each phase gets its own; where it cannot be reset (another
  OS, a locked-down /proc) the figure is the process's peak so far (``ru_maxrss``), an upper bound, and
  ``host_peak_scope`` says ``process`` instead of ``phase``.
"""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import torch

PHASES = ("load", "encode", "sample", "decode", "write")


def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def host_peak_bytes() -> int:
    """The process's resident-set high-water mark (since the last reset, where one was possible)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _cuda(device) -> torch.device | None:
    device = torch.device(device)
    return device if device.type == "cuda" and torch.cuda.is_available() else None


class PhaseMeter:
    """One rank's phases: ``with meter.phase("sample"): ...``. A phase entered twice adds its times and keeps the
    larger peaks."""

    def __init__(self, device="cpu"):
        self.device = device
        self.records: dict[str, dict] = {}
        self.scope = "phase"

    @contextmanager
    def phase(self, name: str):
        if name not in PHASES:
            raise AssertionError(f"unknown phase {name!r}; the phases are {PHASES}")
        cuda = _cuda(self.device)
        if cuda is not None:
            torch.cuda.synchronize(cuda)
            torch.cuda.reset_peak_memory_stats(cuda)
        if not _reset_host_peak():
            self.scope = "process"
        t = time.perf_counter()
        try:
            yield
        finally:
            if cuda is not None:
                torch.cuda.synchronize(cuda)
            rec = dict(s=time.perf_counter() - t,
                       device_peak_bytes=torch.cuda.max_memory_allocated(cuda) if cuda is not None else None,
                       host_peak_bytes=host_peak_bytes())
            self.add(name, rec)

    def add(self, name: str, rec: dict) -> None:
        old = self.records.get(name)
        if old is not None:
            rec = dict(old, s=old["s"] + rec["s"],
                       device_peak_bytes=_max(old["device_peak_bytes"], rec["device_peak_bytes"]),
                       host_peak_bytes=_max(old["host_peak_bytes"], rec["host_peak_bytes"]))
        self.records[name] = rec

    def note(self, name: str, **counts) -> None:
        """Add counts to a phase's record (e.g. the bytes the load read): summed when noted again."""
        rec = self.records.setdefault(name, dict(s=0.0, device_peak_bytes=None, host_peak_bytes=None))
        for k, v in counts.items():
            rec[k] = rec.get(k, 0) + v

    def seconds(self, name: str) -> float:
        return self.records.get(name, {}).get("s", 0.0)

    def carry(self, names=("load", "encode")) -> "PhaseMeter":
        """A meter for the next video of a list: it starts with this one's ``names`` (the job-wide phases, counted
        with the first video) set to zero time."""
        out = PhaseMeter(self.device)
        out.scope = self.scope
        for n in names:
            if n in self.records:
                out.records[n] = dict(s=0.0, device_peak_bytes=None, host_peak_bytes=None)
        return out

    def describe(self) -> dict:
        """{phase: {s, device_peak_bytes, host_peak_bytes}} in the order of PHASES, plus the host peak's scope."""
        out = {n: dict(self.records[n], s=round(self.records[n]["s"], 4)) for n in PHASES if n in self.records}
        return dict(out, host_peak_scope=self.scope)


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def git_commit(path: str | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (this package by default), else None."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def environment(device="cpu") -> dict:
    """Where the job ran: host name, device name, torch and CUDA versions, the code's git commit."""
    cuda = _cuda(device)
    name = torch.cuda.get_device_name(cuda) if cuda is not None else f"cpu ({os.cpu_count()} cores)"
    return dict(host=socket.gethostname(), device=name, torch=torch.__version__, cuda=torch.version.cuda,
                git_commit=git_commit())
