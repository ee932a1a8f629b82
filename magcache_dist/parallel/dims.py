"""Parallel layout: ParallelDims and the per-rank ParallelContext holding one communicator per group.

Rank layout (global rank r): the job's ranks form ``dp_degree`` data-parallel groups of G = cfg * sp consecutive
ranks (dp index = r // G), each working through its own share of a prompt list; every other group below lives
inside one data-parallel group, and a rank's ``rank`` and ``group`` are its place in, and the communicator of, its
own group (a group never takes part in another group's collectives); ``world`` is every rank of the job. Within a
group (rank g): cfg index = g // sp, sp rank = g % sp with sp = ulysses * ring; within an SP group sp rank = ring
index * ulysses + ulysses index, so a Ulysses group is a run of consecutive ranks and a ring chunk is the concatenation
of its Ulysses shards.
"""
from __future__ import annotations

from dataclasses import dataclass

from magcache_dist.errors import InputError
from magcache_dist.parallel.comm import Comm, SoloComm, ThreadComm, ThreadHub


@dataclass(frozen=True)
class ParallelDims:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_degree: int = 1
    dp_degree: int = 1

    def __post_init__(self):
        for key in ("ulysses_degree", "ring_degree", "cfg_degree", "dp_degree"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"parallel.{key}={v!r} must be an integer >= 1")
        if self.cfg_degree not in (1, 2):
            raise InputError(f"parallel.cfg_degree={self.cfg_degree} must be 1 or 2 (cond and uncond branches)")

    @property
    def sp_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def group_size(self) -> int:
        """Ranks of one data-parallel group (the ranks that make one video together)."""
        return self.sp_degree * self.cfg_degree

    @property
    def world_size(self) -> int:
        return self.group_size * self.dp_degree

    def validate(self, world_size: int, num_heads: int, num_branches: int) -> None:
        """Raise ValueError naming the config key before any collective starts."""
        if self.world_size != world_size:
            dp = f" x dp_degree={self.dp_degree}" if self.dp_degree > 1 else ""
            raise InputError(
                f"parallel.ulysses_degree={self.ulysses_degree} x ring_degree={self.ring_degree} x "
                f"cfg_degree={self.cfg_degree}{dp} = {self.world_size} does not match WORLD_SIZE={world_size}; "
                f"make the product equal the number of processes")
        if num_heads % self.ulysses_degree:
            raise InputError(f"parallel.ulysses_degree={self.ulysses_degree} does not divide num_heads={num_heads}; "
                             f"use a divisor of {num_heads} and put the rest in parallel.ring_degree")
        if self.cfg_degree == 2 and num_branches != 2:
            raise InputError("parallel.cfg_degree=2 needs classifier-free guidance (sampler.guidance != 1)")

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(cfg index, ring index, ulysses index) of a rank within its data-parallel group."""
        cfg, sp_rank = divmod(rank % self.group_size, self.sp_degree)
        ring, uly = divmod(sp_rank, self.ulysses_degree)
        return cfg, ring, uly

    def group_ranks(self) -> dict[str, list[list[int]]]:
        """Every group of each kind, as lists of global ranks (same order on all ranks); ``group`` is the
        data-parallel group, ``cfg_group`` the pair of ranks holding the two halves of classifier-free guidance."""
        u, r, c, sp, g = self.ulysses_degree, self.ring_degree, self.cfg_degree, self.sp_degree, self.group_size
        out = {"sp": [], "ulysses": [], "ring": [], "cfg_group": [], "group": []}
        for o in range(0, self.world_size, g):
            out["sp"] += [[o + ci * sp + i for i in range(sp)] for ci in range(c)]
            out["ulysses"] += [[o + ci * sp + ri * u + ui for ui in range(u)] for ci in range(c) for ri in range(r)]
            out["ring"] += [[o + ci * sp + ri * u + ui for ri in range(r)] for ci in range(c) for ui in range(u)]
            out["cfg_group"] += [[o + ci * sp + i for ci in range(c)] for i in range(sp)]
            out["group"].append(list(range(o, o + g)))
        return out


@dataclass
class ParallelContext:
    dims: ParallelDims
    rank: int
    sp: Comm
    ulysses: Comm
    ring: Comm
    cfg_group: Comm  # the classifier-free-guidance pair (cfg_degree 2): the ranks holding cond and uncond
    group: Comm  # this rank's data-parallel group: the ranks that make its videos
    backend: str = "native"
    dp_index: int = 0  # which data-parallel group
    world: Comm | None = None  # every rank of the job (None: the group is the whole job)

    def __post_init__(self):
        if self.world is None:
            self.world = self.group

    @property
    def cfg_rank(self) -> int:
        return self.cfg_group.rank

    def comms(self) -> dict[str, Comm]:
        """The communicators of this rank's data-parallel group (what report.json counts bytes for)."""
        return dict(sp=self.sp, ulysses=self.ulysses, ring=self.ring, cfg_group=self.cfg_group, group=self.group)


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
            if kind == "group" and len(ranks) == dist.get_world_size():
                g = dist.group.WORLD  # one data-parallel group: the job's own
            else:
                g = dist.new_group(ranks) if len(ranks) > 1 else None
            if rank in ranks:
                mine[kind] = DistComm(g, ranks) if g is not None else SoloComm()
    world = DistComm(dist.group.WORLD, list(range(dist.get_world_size()))) if dims.dp_degree > 1 else None
    return ParallelContext(dims, rank % dims.group_size, mine["sp"], mine["ulysses"], mine["ring"], mine["cfg_group"],
                           mine["group"], backend, dp_index=rank // dims.group_size, world=world)


def build_thread_contexts(dims: ParallelDims, timeout: float = 60.0) -> list[ParallelContext]:
    """One context per simulated rank, for running ``dims.world_size`` threads in this process."""
    n, g = dims.world_size, dims.group_size
    comms = [dict() for _ in range(n)]
    kinds = {**dims.group_ranks(), **({"world": [list(range(n))]} if dims.dp_degree > 1 else {})}
    for kind, groups in kinds.items():
        for ranks in groups:
            hub = ThreadHub(len(ranks), timeout)
            for i, r in enumerate(ranks):
                comms[r][kind] = ThreadComm(hub, i) if len(ranks) > 1 else SoloComm()
    return [ParallelContext(dims, r % g, c["sp"], c["ulysses"], c["ring"], c["cfg_group"], c["group"], dp_index=r // g,
                            world=c.get("world")) for r, c in enumerate(comms)]
