"""Multi-node launches on localhost (issue 27.1), each checked against the single process: a two-"node" torchrun
rendezvous (one rank per node, static rendezvous at 127.0.0.1) spreading one video over both nodes (Ulysses 2),
and a two-task job started the way srun starts it (SLURM's variables only, no torchrun, no RANK) making a prompt
list as two data-parallel groups, one per "node"."""
import json
import os
import re
import socket
import subprocess
import sys

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support import ROOT
from tests.support.helpers import job_overrides

GENERATE = os.path.join(ROOT, "launch/generate.py")
PROMPTS = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows"]


def _clean_env(**extra):
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs, timeout=300):
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[1][-3000:] for o in outs)
    return outs


def _latents(path):
    return torch.load(path, weights_only=True)


def test_two_node_torchrun_rendezvous_equals_one_process(tiny_ckpt, tmp_path):
    solo = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo"))), solo_context())
    port = _port()
    args = job_overrides(tiny_ckpt, str(tmp_path / "two"), "parallel.ulysses_degree=2")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(n),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               GENERATE, *args], cwd=ROOT, env=_clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    _wait(procs)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2 and report["parallel"]["ulysses_degree"] == 2
    assert report["decisions_identical_across_ranks"] and report["skipped_steps"] == solo["skipped_steps"]
    diff = (_latents(tmp_path / "two" / "latents.pt") - _latents(tmp_path / "solo" / "latents.pt")).abs().max()
    assert diff < 1e-4, diff


def test_srun_style_two_tasks_make_a_list_as_two_groups(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    solo = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo"), f"prompts_file={prompts}")),
                   solo_context())
    args = job_overrides(tiny_ckpt, str(tmp_path / "dp"), f"prompts_file={prompts}", "parallel.dp_degree=2",
                         "progress=true")
    port = _port()
    # what srun exports to each of 2 tasks on 2 nodes (1 task per node): no RANK, no torchrun; the rendezvous
    # address is the node list's first host (127.0.0.[1-2] -> 127.0.0.1)
    procs = [subprocess.Popen([sys.executable, GENERATE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_clean_env(SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_PROCID=str(r),
                                             SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0",
                                             SLURM_NODEID=str(r), SLURM_STEP_NODELIST="127.0.0.[1-2]",
                                             MASTER_PORT=str(port)))
             for r in (0, 1)]
    outs = _wait(procs)
    # progress: one line per finished video from each group's rank 0, no progress bars (two groups, one terminal)
    lines = re.findall(r"\[group (\d)\] video (\d) \S+: \d+/16 calls, [0-9.]+ s; (\d) left in this group, "
                       r"ETA \d+ s", outs[0][0] + outs[1][0])  # rank r is group r's rank 0
    assert lines == [("0", "0", "1"), ("0", "2", "0"), ("1", "1", "0")], outs[0][0] + outs[1][0]
    assert "sampling:" not in outs[0][1] + outs[1][1] and "step/s" not in outs[0][1] + outs[1][1]
    for r in (0, 1):  # each rank's log file holds what it printed
        log = (tmp_path / "dp" / "logs" / f"rank{r}.log").read_text()
        assert f"rank {r} of 2" in log and outs[r][0].strip().splitlines()[-1] in log
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["videos_done"] == 3 and (summary["dp_degree"], summary["group_size"]) == (2, 1)
    parts = sorted(os.listdir(tmp_path / "dp" / ".summary"))
    assert "group0-of2.json" in parts and "group1-of2.json" in parts  # both tasks worked, as two groups
    for v, s in zip(summary["videos"], solo["videos"]):
        assert v["video_id"] == s["video_id"]
        assert torch.equal(_latents(tmp_path / "dp" / v["dir"] / "latents.pt"),
                           _latents(tmp_path / "solo" / s["dir"] / "latents.pt")), v["dir"]
