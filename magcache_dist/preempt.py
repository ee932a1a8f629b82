"""Preemption: a job asked to stop (SIGTERM, or ``checkpoint.signal`` such as SLURM's ``--signal=B:USR1@120``)
finishes the step every rank is in, writes a step checkpoint of the current video and exits with
``EXIT_PREEMPTED`` (75, "preempted, rerun to continue"). The same command rerun continues from that step (a list:
the video's checkpoint is found by itself; a single video: the pointer says ``preempted``), and on CPU gives the
uninterrupted video bit for bit.

The signal handler only sets a flag (``StopRequest``). The ranks of a data-parallel group agree on the stop step
with one all-reduce of the flag per step (``stop_agreed``), so a rank signalled a moment later than its peers still
stops at the same step; groups stop independently (no collective spans two groups while they work). Under torchrun
the launcher's own SIGTERM means something else as well (a peer failed: magcache_dist/launcher/health.py): the
launcher first asks the failure board, and only when no rank failed treats the signal as a stop request.
"""
from __future__ import annotations

import signal
import threading

import torch

from magcache_dist.errors import InputError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the job stopped on request after writing a checkpoint; rerun it to continue


class Preempted(Exception):
    """Raised on every rank of a group at the agreed stop step (after the checkpoint is written)."""

    def __init__(self, next_step: int | None, where: str):
        self.next_step, self.where = next_step, where
        at = f"continues from step {next_step}" if next_step is not None else "no video was in progress"
        super().__init__(f"preempted: {where}; {at}. Rerun the same command to continue")


class StopRequest:
    """Set by a signal handler (nothing else happens in the handler), read once per step."""

    def __init__(self):
        self._event = threading.Event()
        self.signal_name: str | None = None

    def request(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def signal_number(name: str | int | None, key: str = "checkpoint.signal") -> int | None:
    """``USR1`` / ``SIGUSR1`` / ``10`` -> the signal's number; InputError naming the key for anything else."""
    if name is None:
        return None
    text = str(name).strip().upper()
    names = {s.name: s for s in signal.Signals}
    if text.isdigit() and int(text) in {int(s) for s in signal.Signals}:
        sig = signal.Signals(int(text))
    else:
        sig = names.get(text if text.startswith("SIG") else f"SIG{text}")
    if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP) or sig not in signal.valid_signals():
        raise InputError(f"{key}={name!r} is not a signal a job can catch; use a name such as USR1 or USR2 (SLURM: "
                         f"--signal=B:USR1@120), or leave it null (SIGTERM always stops the job)")
    return int(sig)


def install(stop: StopRequest, extra: int | None) -> None:
    """The configured signal sets the stop flag (SIGTERM is installed by the launcher, see module doc)."""
    if extra is not None and extra != signal.SIGTERM:
        signal.signal(extra, lambda signum, frame: stop.request(signum))


def stop_agreed(par, device="cpu") -> bool:
    """Has any rank of this rank's group been asked to stop? Every rank of the group calls it at the same point
    (once per step, and between videos). False when the job has no stop request installed (tests, library use)."""
    stop = getattr(par, "stop", None)
    if stop is None:
        return False
    flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=device)  # on the GPU for NCCL
    if par.group.size > 1:
        flag = par.group.all_reduce(flag)
    return bool(flag.item() > 0)
