"""python -m magcache_dist.eval started the way torchrun starts it (two plain processes with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT): each rank scores its share, rank 0 writes the result, equal to one process's."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.unit.test_eval import frames, id_job, noisy

pytestmark = [pytest.mark.dist, pytest.mark.timeout(240)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path):
    return [{k: v for k, v in r.items() if k != "cached"} for r in json.load(open(path))["candidates"][0]["rows"]]


def test_two_ranks_score_their_shares_and_rank_0_writes_what_one_process_writes(tmp_path):
    vids = [(f"v{i}", f"prompt {i}", i, frames(i)) for i in range(3)]
    ref = id_job(tmp_path / "ref", vids)
    cand = id_job(tmp_path / "cand", [(n, p, s, noisy(f, 6)) for n, p, s, f in vids])
    args = [sys.executable, "-m", "magcache_dist.eval", "--reference", ref, "--candidate", cand, "--no-lpips",
            "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    one = subprocess.run(args + ["--out", str(tmp_path / "one" / "e.json")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    port, procs = _free_port(), []
    for r in range(2):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(args + ["--out", str(tmp_path / "two" / "e.json")], cwd=ROOT, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert "wrote" in outs[0][0] and outs[1][0] == ""  # only rank 0 prints and writes
    assert _rows(tmp_path / "two" / "e.json") == _rows(tmp_path / "one" / "e.json")
    assert json.load(open(tmp_path / "two" / "e.json"))["workers"] == 2


def test_a_rejected_input_exits_2_on_every_rank_with_one_message(tmp_path):
    vids = [(f"v{i}", f"prompt {i}", i, frames(i)) for i in range(2)]
    ref = id_job(tmp_path / "ref", vids)
    args = [sys.executable, "-m", "magcache_dist.eval", "--reference", ref, "--candidate", ref, "--no-lpips"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    port, procs = _free_port(), []
    for r in range(2):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(args, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert "is the --reference folder" in outs[0][1] and outs[1][1] == "" and "Traceback" not in outs[0][1]
