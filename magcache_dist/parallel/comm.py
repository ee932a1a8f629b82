"""Communicators: the only path by which ranks exchange tensors.

``DistComm`` wraps a torch.distributed process group (gloo on CPU, NCCL on GPUs). ``ThreadComm`` runs N
simulated ranks as threads of one process, exchanging real tensors through a shared hub: the single-process
tests drive the real sharding, attention and consensus code with it. Both count the bytes they send.
"""
from __future__ import annotations

import pickle
import threading

import torch
import torch.distributed as dist

from magcache_dist.errors import InternalError

_OPS = {"sum", "max", "min"}


class Comm:
    rank: int
    size: int

    def __init__(self):
        self.bytes_sent = 0
        self.calls = 0

    # collectives (every rank of the group must call them in the same order)
    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor: ...
    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]: ...
    def all_to_all(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]: ...
    def ring_shift(self, t: torch.Tensor) -> torch.Tensor:
        """Send t to rank+1, return what rank-1 sent (same shape and dtype)."""
    def exchange_edges(self, top: torch.Tensor, bottom: torch.Tensor) -> tuple:
        """Neighbours in rank order (not a ring): send ``top`` to rank-1 and ``bottom`` to rank+1; return (rank-1's
        ``bottom``, rank+1's ``top``), None at the ends. Every rank sends the same shapes (halo rows)."""
    def broadcast_object(self, obj, src: int = 0): ...
    def gather_objects(self, obj) -> list:
        """Every rank's picklable object, in rank order, on every rank."""
    def gather_to(self, obj, dst: int = 0) -> list | None:
        """Every rank's picklable object, in rank order, on rank ``dst`` only (None elsewhere)."""

    def _count(self, nbytes: int):
        self.bytes_sent += int(nbytes)
        self.calls += 1


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SoloComm(Comm):
    """World of one: every collective is the identity."""

    rank, size = 0, 1

    def all_reduce(self, t, op="sum"):
        return t.clone()

    def all_gather(self, t):
        return [t]

    def all_to_all(self, chunks):
        return list(chunks)

    def ring_shift(self, t):
        return t

    def exchange_edges(self, top, bottom):
        return None, None

    def broadcast_object(self, obj, src=0):
        return obj

    def gather_objects(self, obj):
        return [obj]

    def gather_to(self, obj, dst=0):
        return [obj]


class DistComm(Comm):
    def __init__(self, group, ranks: list[int]):
        super().__init__()
        self.group, self.ranks = group, list(ranks)
        self.rank, self.size = self.ranks.index(dist.get_rank()), len(self.ranks)

    def all_reduce(self, t, op="sum"):
        out = t.clone()
        self._count(_nbytes(t) * (self.size - 1))
        dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                 "min": dist.ReduceOp.MIN}[op], group=self.group)
        return out

    def all_gather(self, t):
        t = t.contiguous()
        outs = [torch.empty_like(t) for _ in range(self.size)]
        self._count(_nbytes(t) * (self.size - 1))
        dist.all_gather(outs, t, group=self.group)
        return outs

    def all_to_all(self, chunks):
        shape = chunks[0].shape
        if any(c.shape != shape for c in chunks):
            raise InternalError("all_to_all needs equal chunk shapes")
        send = torch.stack([c.contiguous() for c in chunks])  # [P, ...]
        recv = torch.empty_like(send)
        self._count(_nbytes(send) * (self.size - 1) // self.size)
        dist.all_to_all_single(recv, send, group=self.group)
        return list(recv.unbind(0))

    def ring_shift(self, t):
        t = t.contiguous()
        out = torch.empty_like(t)
        nxt, prv = self.ranks[(self.rank + 1) % self.size], self.ranks[(self.rank - 1) % self.size]
        self._count(_nbytes(t))
        reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, nxt, group=self.group),
                                       dist.P2POp(dist.irecv, out, prv, group=self.group)])
        for r in reqs:
            r.wait()
        return out

    def exchange_edges(self, top, bottom):
        top, bottom = top.contiguous(), bottom.contiguous()
        ops, above, below = [], None, None
        if self.rank > 0:
            prv = self.ranks[self.rank - 1]
            above = torch.empty_like(bottom)
            ops += [dist.P2POp(dist.isend, top, prv, group=self.group),
                    dist.P2POp(dist.irecv, above, prv, group=self.group)]
        if self.rank < self.size - 1:
            nxt = self.ranks[self.rank + 1]
            below = torch.empty_like(top)
            ops += [dist.P2POp(dist.isend, bottom, nxt, group=self.group),
                    dist.P2POp(dist.irecv, below, nxt, group=self.group)]
        self._count(_nbytes(top) * (self.rank > 0) + _nbytes(bottom) * (self.rank < self.size - 1))
        for r in dist.batch_isend_irecv(ops) if ops else []:
            r.wait()
        return above, below

    def broadcast_object(self, obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src=self.ranks[src], group=self.group)
        return box[0]

    def gather_objects(self, obj):
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_to(self, obj, dst=0):
        out = [None] * self.size if self.rank == dst else None
        dist.gather_object(obj, out, dst=self.ranks[dst], group=self.group)
        return out


class ThreadHub:
    """Shared meeting point of the threads that form one group."""

    def __init__(self, size: int, timeout: float = 60.0):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)

    def abort(self):
        self.barrier.abort()


class ThreadComm(Comm):
    def __init__(self, hub: ThreadHub, rank: int):
        super().__init__()
        self.hub, self.rank, self.size = hub, rank, hub.size

    def _exchange(self, obj):
        self.hub.slots[self.rank] = obj
        self.hub.barrier.wait()
        out = list(self.hub.slots)
        self.hub.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def all_reduce(self, t, op="sum"):
        if op not in _OPS:
            raise InternalError(op)
        self._count(_nbytes(t) * (self.size - 1))
        vals = torch.stack(self._exchange(t.clone()))
        return {"sum": vals.sum(0), "max": vals.max(0).values, "min": vals.min(0).values}[op].to(t.dtype)

    def all_gather(self, t):
        self._count(_nbytes(t) * (self.size - 1))
        return [x.clone() for x in self._exchange(t.clone())]

    def all_to_all(self, chunks):
        self._count(sum(_nbytes(c) for i, c in enumerate(chunks) if i != self.rank))
        rows = self._exchange([c.clone() for c in chunks])
        return [rows[src][self.rank] for src in range(self.size)]

    def ring_shift(self, t):
        self._count(_nbytes(t))
        return self._exchange(t.clone())[(self.rank - 1) % self.size]

    def exchange_edges(self, top, bottom):
        self._count(_nbytes(top) * (self.rank > 0) + _nbytes(bottom) * (self.rank < self.size - 1))
        got = self._exchange((top.clone(), bottom.clone()))
        return (got[self.rank - 1][1] if self.rank > 0 else None,
                got[self.rank + 1][0] if self.rank < self.size - 1 else None)

    def broadcast_object(self, obj, src=0):
        return pickle.loads(pickle.dumps(self._exchange(obj)[src]))

    def gather_objects(self, obj):
        return pickle.loads(pickle.dumps(self._exchange(obj)))

    def gather_to(self, obj, dst=0):
        got = self._exchange(obj)
        return pickle.loads(pickle.dumps(got)) if self.rank == dst else None
