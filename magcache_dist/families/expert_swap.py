"""Two experts of one architecture on one device's worth of block memory (Wan2.2 A14B without ``parallel.fsdp``).

The device holds one set of block weights, the *slots*: slot ``i`` is block ``i`` of whichever expert owns it. The
other expert's blocks wait in (pinned) host memory, plus one spare block buffer. Trading slot ``i`` to the other
expert is two copies on a side stream, in this order: the slot to the spare buffer (device -> host), the incoming
block's host buffer into the slot (host -> device); then the parameters are re-pointed (the outgoing block's at the
spare, the incoming block's at the slot) and the incoming block's host buffer becomes the next spare. No device
memory is allocated or freed by a trade: the device never holds more than one expert's blocks (both experts'
embeddings and heads, 1.6 % of an expert, stay on the device).

Ordering (what makes it correct without synchronising the host):
- the host -> device copy into slot ``i`` waits for a point of the compute stream recorded after the outgoing
  block's last use (``after``); the device -> host copy only reads the slot, as the compute does;
- the compute that uses an incoming block waits for that slot's copy (``acquire``: a stream wait, not a host wait);
- one side stream runs every trade in issue order, so a spare buffer is written only after the copy that read it.

The copies go through a *copier* (the seam the tests replace): ``SyncCopier`` copies at once (the reference and the
synchronous trade), ``ThreadCopier`` copies on a host thread (a side "stream" on the CPU, for measurements),
``CudaCopier`` on a CUDA side stream with events. Which trades happen when is decided by the caller
(families/wan22.py ``PlacedExperts``).
"""
from __future__ import annotations

import queue
import threading

import torch
import torch.nn as nn


def block_tensors(block: nn.Module) -> list[torch.Tensor]:
    """A block's parameters and buffers, in a fixed order (one architecture: the same order in both experts)."""
    return [*block.parameters(), *block.buffers()]


class SyncCopier:
    """Copies when asked, in order, on the calling thread: the reference (a trade is complete when issued)."""

    def point(self):
        return None

    def trade(self, spare, slot, incoming, after):
        for s, d in zip(spare, slot):
            s.copy_(d)
        for d, h in zip(slot, incoming):
            d.copy_(h)
        return None

    def wait(self, token) -> None:
        pass

    def done(self, token) -> bool:
        return True

    def sync(self) -> None:
        pass


class ThreadCopier(SyncCopier):
    """Copies on one host thread in issue order (a side "stream" on the CPU: torch's copies release the GIL, so
    they run beside the compute of the calling thread). Tokens are threading.Events."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            spare, slot, incoming, ev = job
            SyncCopier.trade(self, spare, slot, incoming, None)
            ev.set()

    def trade(self, spare, slot, incoming, after):
        ev = threading.Event()
        self.jobs.put((spare, slot, incoming, ev))
        return ev

    def wait(self, token) -> None:
        if token is not None:
            token.wait()

    def done(self, token) -> bool:
        return token is None or token.is_set()

    def sync(self) -> None:
        ev = self.trade([], [], [], None)
        ev.wait()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


class CudaCopier(SyncCopier):
    """Copies on a CUDA side stream from / to pinned host memory; tokens are CUDA events. ``point`` records an
    event on the compute (current) stream; ``wait`` makes the compute stream wait for a copy (no host wait)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.side = torch.cuda.Stream(self.device)

    def point(self):
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def trade(self, spare, slot, incoming, after):
        with torch.cuda.stream(self.side):
            if after is not None:
                self.side.wait_event(after)
            for s, d in zip(spare, slot):
                s.copy_(d, non_blocking=True)
            for d, h in zip(slot, incoming):
                d.copy_(h, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.side)
        return ev

    def wait(self, token) -> None:
        if token is not None:
            torch.cuda.current_stream(self.device).wait_event(token)

    def done(self, token) -> bool:
        return token is None or token.query()

    def sync(self) -> None:
        self.side.synchronize()


def default_copier(device):
    return CudaCopier(device) if torch.device(device).type == "cuda" else SyncCopier()


class BlockSwap:
    """Who owns each block slot, the host buffers of the blocks that are not on the device, and the trades.

    ``experts``: name -> a model with ``blocks`` (one architecture), every block of ``resident`` on the device and
    every block of the others in host memory (copied into pinned buffers here when ``pin``). ``log`` records each
    trade as (slot, outgoing, incoming)."""

    def __init__(self, experts: dict, resident: str, copier, pin: bool = False):
        self.blocks = {name: list(m.blocks) for name, m in experts.items()}
        self.n = len(self.blocks[resident])
        if any(len(b) != self.n for b in self.blocks.values()):
            raise ValueError("the experts must have one architecture (as many blocks)")
        self.copier, self.pin = copier, pin
        self.owner = [resident] * self.n
        self.pending: list = [None] * self.n  # the copy into slot i the compute has not waited for yet
        self.host: dict = {name: [None] * self.n for name in experts}
        for name, blocks in self.blocks.items():
            if name != resident:
                for i, block in enumerate(blocks):
                    self.host[name][i] = self._to_host(block)
        ref = block_tensors(self.blocks[resident][0])
        self.spare = [torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin) for t in ref]
        self.log: list[tuple[int, str, str]] = []

    def _to_host(self, block) -> list[torch.Tensor]:
        out = []
        for t in block_tensors(block):
            h = t.data.to("cpu")
            h = h.pin_memory() if self.pin and not h.is_pinned() else h
            t.data = h
            out.append(h)
        return out

    def trade(self, i: int, incoming: str, after=None) -> None:
        """Slot ``i`` to ``incoming`` (nothing when it owns it); ``after``: the compute point its copy in waits."""
        out = self.owner[i]
        if out == incoming:
            return
        slot = [t.data for t in block_tensors(self.blocks[out][i])]
        inc = self.host[incoming][i]
        self.pending[i] = self.copier.trade(self.spare, slot, inc, after)
        for t, h in zip(block_tensors(self.blocks[out][i]), self.spare):
            t.data = h
        for t, d in zip(block_tensors(self.blocks[incoming][i]), slot):
            t.data = d
        self.host[out][i], self.spare, self.host[incoming][i] = self.spare, inc, None
        self.owner[i] = incoming
        self.log.append((i, out, incoming))

    def release(self, i: int, incoming: str) -> None:
        """The outgoing block ``i`` has run for the last time: trade its slot now (after the compute so far)."""
        if self.owner[i] != incoming:
            self.trade(i, incoming, self.copier.point())

    def bring(self, incoming: str) -> int:
        """Every slot not yet ``incoming``'s traded to it, after the compute so far; returns how many."""
        todo = [i for i in range(self.n) if self.owner[i] != incoming]
        after = self.copier.point() if todo else None
        for i in todo:
            self.trade(i, incoming, after)
        return len(todo)

    def acquire(self, name: str, i: int) -> None:
        """Before block ``i`` of ``name`` runs: it owns the slot, and the compute waits for the slot's copy."""
        if self.owner[i] != name:
            raise RuntimeError(f"block {i} of the {name}-noise expert runs while slot {i} holds the "
                               f"{self.owner[i]}-noise expert's (a trade was started too early)")
        if self.pending[i] is not None:
            self.copier.wait(self.pending[i])
            self.pending[i] = None

    def complete(self, name: str) -> bool:
        """Whether every slot is ``name``'s and every copy into them has finished (no waiting)."""
        return all(o == name for o in self.owner) and all(self.copier.done(p) for p in self.pending)

    def sync(self) -> None:
        """Every copy finished (the host waits)."""
        self.copier.sync()
        self.pending = [None] * self.n

    def resident_blocks(self) -> dict[str, int]:
        return {name: self.owner.count(name) for name in self.blocks}

    # ---- all weights to the host and back (a decode that needs the device: vae.offload_dit) ---------------------
    def park(self) -> None:
        """Every slot's block to host memory (its own buffers); the slots are freed."""
        self.sync()
        for i, name in enumerate(self.owner):
            self.host[name][i] = self._to_host(self.blocks[name][i])

    def unpark(self, device) -> None:
        """Every slot's owner back on ``device`` (new slots)."""
        for i, name in enumerate(self.owner):
            for t in block_tensors(self.blocks[name][i]):
                t.data = t.data.to(device)
            self.host[name][i] = None
