"""Which rank this process is: from torchrun's variables, or from SLURM's when ``srun`` starts one task per GPU.

- torchrun (and any launcher that sets them): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``.
- ``srun`` (a job step, ``SLURM_STEP_ID`` set): rank ``SLURM_PROCID``, world size ``SLURM_STEP_NUM_TASKS`` (else
  ``SLURM_NTASKS``), local rank ``SLURM_LOCALID``, master address the first host of ``SLURM_STEP_NODELIST`` (else
  ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``; the compact syntax ``node[01-03,07]`` is expanded here, no
  ``scontrol`` needed), master port ``MASTER_PORT`` when set, else ``20000 + SLURM_JOB_ID % 20000`` (two jobs on a
  node get two ports). The values are exported as torchrun's variables, so ``init_process_group`` (env://) and
  the health monitor find them. Variables of an allocation without a step (``salloc``'s shell, the batch script
  itself) are not a job step: a process started there is a single process.

Both present (``RANK`` exported in an srun step, or torchrun inside an allocation): torchrun's describe the ranks
(``TORCHELASTIC_RUN_ID`` set: SLURM's then describe torchrun's own tasks and are not compared); without torchrun
they must agree with SLURM's. Malformed or inconsistent values are an error (exit 2) before anything else.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from magcache_dist.errors import InputError

DEFAULT_PORT_BASE = 20000


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    source: str  # "single", "torchrun" (or any launcher setting RANK/WORLD_SIZE) or "slurm"


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compact host list -> host names: ``node[01-03,07]`` -> node01 node02 node03 node07, ``a1,b[2-3]``
    -> a1 b2 b3, ``r[1-2]-n[1-2]`` -> r1-n1 r1-n2 r2-n1 r2-n2 (zero padding kept). InputError for a malformed
    list."""
    text = text.strip()
    if not text:
        raise InputError("the node list is empty")
    hosts, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise InputError(f"nested '[' in the node list {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise InputError(f"unbalanced ']' in the node list {text!r}")
        elif ch == "," and depth == 0:
            part = text[start:i].strip()
            if not part:
                raise InputError(f"an empty name in the node list {text!r}")
            hosts += _expand_one(part, text)
            start = i + 1
    if depth:
        raise InputError(f"unbalanced '[' in the node list {text!r}")
    return hosts


def _expand_one(part: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", part)
    if m is None:
        if "]" in part or not re.fullmatch(r"[A-Za-z0-9._-]+", part):
            raise InputError(f"{part!r} is not a host name (in the node list {whole!r})")
        return [part]
    head, tail = part[:m.start()], part[m.end():]
    out = []
    for item in m.group(1).split(","):
        r = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if r is None:
            raise InputError(f"[{m.group(1)}] is not a list of numbers and ranges (in the node list {whole!r})")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        if int(hi) < int(lo):
            raise InputError(f"the range {item.strip()!r} runs backwards (in the node list {whole!r})")
        width = len(lo) if lo.startswith("0") else 0
        out += [f"{head}{n:0{width}d}" for n in range(int(lo), int(hi) + 1)]
    return [h for o in out for h in _expand_one(o + tail, whole)]  # the tail may hold another [...]


def _int(env: dict, key: str, low: int = 0) -> int:
    text = env[key].strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) < low:
        raise InputError(f"{key}={env[key]!r} must be an integer >= {low}")
    return int(text)


def _port(env: dict, key: str) -> int:
    p = _int(env, key, 1)
    if p > 65535:
        raise InputError(f"{key}={p} must be a port number (1..65535)")
    return p


def read_ranks(env=None) -> Ranks:
    """This process's rank, world size, local rank and rendezvous address, checked (InputError naming the
    variable and the fix)."""
    env = dict(os.environ if env is None else env)
    torch_keys = [k for k in ("RANK", "WORLD_SIZE") if k in env]
    slurm = ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env) and "SLURM_PROCID" in env
    if len(torch_keys) == 1:
        missing = ({"RANK", "WORLD_SIZE"} - set(torch_keys)).pop()
        raise InputError(f"{torch_keys[0]} is set but {missing} is not; a launcher sets both (torchrun does), or "
                         f"neither for a single process")
    if slurm:
        s_rank = _int(env, "SLURM_PROCID")
        s_world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS", 1) \
            if ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env) else None
        if s_world is None:
            raise InputError("SLURM_PROCID is set in a job step but SLURM_NTASKS is not; start the job with srun "
                             "--ntasks (one task per GPU)")
        s_local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if s_rank >= s_world:
            raise InputError(f"SLURM_PROCID={s_rank} must be < SLURM_NTASKS={s_world}")
    if torch_keys:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE", 1)
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        if rank >= world:
            raise InputError(f"RANK={rank} must be < WORLD_SIZE={world} (ranks count from 0)")
        if slurm and "TORCHELASTIC_RUN_ID" not in env:
            for key, mine, theirs, skey in (("RANK", rank, s_rank, "SLURM_PROCID"),
                                           ("WORLD_SIZE", world, s_world, "SLURM_NTASKS"),
                                           ("LOCAL_RANK", local, s_local, "SLURM_LOCALID")):
                if (key in env or key != "LOCAL_RANK") and mine != theirs:
                    raise InputError(f"{key}={mine} disagrees with {skey}={theirs} of this srun step; unset "
                                     f"{key} (the launcher reads SLURM's variables) or export the same values")
        source = "torchrun"
        addr, port = env.get("MASTER_ADDR"), _port(env, "MASTER_PORT") if "MASTER_PORT" in env else None
    elif slurm:
        rank, world, local, source = s_rank, s_world, s_local, "slurm"
        addr = env.get("MASTER_ADDR")
        if addr is None and world > 1:
            key = next((k for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if k in env),
                       None)
            if key is None:
                raise InputError("a multi-task srun step without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST: set "
                                 "MASTER_ADDR to the first node's address")
            try:
                addr = expand_nodelist(env[key])[0]
            except InputError as e:
                raise InputError(f"{key}={env[key]!r}: {e}; set MASTER_ADDR to the first node's address") from None
        if "MASTER_PORT" in env:
            port = _port(env, "MASTER_PORT")
        elif "SLURM_JOB_ID" in env:
            port = DEFAULT_PORT_BASE + _int(env, "SLURM_JOB_ID") % 20000
        else:
            port = None
    else:
        return Ranks(0, 1, _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, None, None, "single")
    if world > 1 and (not addr or port is None):
        raise InputError(f"WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT (where rank 0 listens); torchrun "
                         f"and srun set them (srun: from SLURM_JOB_ID and the node list), a hand-made launch must")
    return Ranks(rank, world, local, addr, port, source)


def export(r: Ranks) -> None:
    """Make SLURM's ranks torchrun's variables, for env:// rendezvous and the health monitor."""
    if r.source != "slurm":
        return
    os.environ.update(RANK=str(r.rank), WORLD_SIZE=str(r.world), LOCAL_RANK=str(r.local_rank))
    if r.master_addr is not None:
        os.environ["MASTER_ADDR"] = r.master_addr
    if r.master_port is not None:
        os.environ["MASTER_PORT"] = str(r.master_port)
