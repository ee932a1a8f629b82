"""Parallel layout: ParallelDims and the per-rank ParallelContext holding one communicator per group.

Rank layout (global rank r): cfg index = r // sp, sp rank = r % sp with sp = ulysses * ring; within an SP group
sp rank = ring index * ulysses + ulysses index, so a Ulysses group is a run of consecutive ranks and a ring chunk
is the concatenation of its Ulysses shards.
"""
from __future__ import annotations

from dataclasses import dataclass

from magcache_dist.parallel.comm import Comm, SoloComm, ThreadComm, ThreadHub


@dataclass(frozen=True)
class ParallelDims:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_degree: int = 1

    def __post_init__(self):
        for key in ("ulysses_degree", "ring_degree", "cfg_degree"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"parallel.{key}={v!r} must be an integer >= 1")
        if self.cfg_degree not in (1, 2):
            raise ValueError(f"parallel.cfg_degree={self.cfg_degree} must be 1 or 2 (cond and uncond branches)")

    @property
    def sp_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.sp_degree * self.cfg_degree

    def validate(self, world_size: int, num_heads: int, num_branches: int) -> None:
        """Raise ValueError naming the config key before any collective starts."""
        if self.world_size != world_size:
            raise ValueError(
                f"parallel.ulysses_degree={self.ulysses_degree} x ring_degree={self.ring_degree} x "
                f"cfg_degree={self.cfg_degree} = {self.world_size} does not match WORLD_SIZE={world_size}; "
                f"make the product equal the number of processes")
        if num_heads % self.ulysses_degree:
            raise ValueError(f"parallel.ulysses_degree={self.ulysses_degree} does not divide num_heads={num_heads}; "
                             f"use a divisor of {num_heads} and put the rest in parallel.ring_degree")
        if self.cfg_degree == 2 and num_branches != 2:
            raise ValueError("parallel.cfg_degree=2 needs classifier-free guidance (sampler.guidance != 1)")

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(cfg index, ring index, ulysses index) of a global rank."""
        cfg, sp_rank = divmod(rank, self.sp_degree)
        ring, uly = divmod(sp_rank, self.ulysses_degree)
        return cfg, ring, uly

    def group_ranks(self) -> dict[str, list[list[int]]]:
        """Every group of each kind, as lists of global ranks (same order on all ranks)."""
        u, r, c, sp = self.ulysses_degree, self.ring_degree, self.cfg_degree, self.sp_degree
        return {
            "sp": [[ci * sp + i for i in range(sp)] for ci in range(c)],
            "ulysses": [[ci * sp + ri * u + ui for ui in range(u)] for ci in range(c) for ri in range(r)],
            "ring": [[ci * sp + ri * u + ui for ri in range(r)] for ci in range(c) for ui in range(u)],
            "cfg": [[ci * sp + i for ci in range(c)] for i in range(sp)],
        }


@dataclass
class ParallelContext:
    dims: ParallelDims
    rank: int
    sp: Comm
    ulysses: Comm
    ring: Comm
    cfg: Comm
    world: Comm
    backend: str = "native"

    @property
    def cfg_rank(self) -> int:
        return self.cfg.rank

    def comms(self) -> dict[str, Comm]:
        return dict(sp=self.sp, ulysses=self.ulysses, ring=self.ring, cfg=self.cfg, world=self.world)


def solo_context() -> ParallelContext:
    s = SoloComm()
    return ParallelContext(ParallelDims(), 0, s, s, s, s, s)


def build_dist_context(dims: ParallelDims, backend: str = "native") -> ParallelContext:
    """Create every process group once (all ranks, same order) and return this rank's context."""
    import torch.distributed as dist

    from magcache_dist.parallel.comm import DistComm

    rank = dist.get_rank()
    mine = {}
    for kind, groups in dims.group_ranks().items():
        for ranks in groups:
            g = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                mine[kind] = DistComm(g, ranks) if g is not None else SoloComm()
    world = DistComm(dist.group.WORLD, list(range(dist.get_world_size()))) if dist.get_world_size() > 1 else SoloComm()
    return ParallelContext(dims, rank, mine["sp"], mine["ulysses"], mine["ring"], mine["cfg"], world, backend)


def build_thread_contexts(dims: ParallelDims, timeout: float = 60.0) -> list[ParallelContext]:
    """One context per simulated rank, for running ``dims.world_size`` threads in this process."""
    n = dims.world_size
    comms = [dict() for _ in range(n)]
    for kind, groups in {**dims.group_ranks(), "world": [list(range(n))]}.items():
        for ranks in groups:
            hub = ThreadHub(len(ranks), timeout)
            for i, r in enumerate(ranks):
                comms[r][kind] = ThreadComm(hub, i) if len(ranks) > 1 else SoloComm()
    return [ParallelContext(dims, r, c["sp"], c["ulysses"], c["ring"], c["cfg"], c["world"]) for r, c in enumerate(comms)]
