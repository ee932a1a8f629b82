"""The sbatch scripts of scripts/slurm/ run for real, with stand-ins for srun and scontrol
(tests/support/fake_slurm: srun starts SLURM_NTASKS local tasks with a job step's variables): two array tasks
(prompts_shard from SLURM_ARRAY_TASK_ID / COUNT) run concurrently into one folder, and a two-task list job; the
videos equal one process's bit for bit (array: one rank per task) or within 1e-4 (Ulysses 2)."""
import json
import os
import socket
import subprocess
import sys

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support import ROOT
from tests.support.helpers import job_overrides

SLURM = os.path.join(ROOT, "scripts/slurm")
FAKE = os.path.join(ROOT, "tests/support/fake_slurm")
PROMPTS = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows"]


def _env(**slurm):
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(PATH=f"{FAKE}:{os.path.dirname(sys.executable)}:{env.get('PATH', '')}", OMP_NUM_THREADS="1", **slurm)
    return env


def _sbatch(script, args, **slurm):
    return subprocess.Popen(["bash", os.path.join(SLURM, script), "configs/default.yaml", *args], cwd=ROOT,
                            env=_env(**slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(procs, timeout=300):
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[0][-1500:] + o[1][-3000:] for o in outs)


def test_scripts_parse():
    for script in ("prompt_list.sbatch", "array.sbatch"):
        subprocess.run(["bash", "-n", os.path.join(SLURM, script)], check=True)


def test_array_tasks_fill_one_folder_and_the_list_script_runs(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    solo = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo"), f"prompts_file={prompts}")),
                   solo_context())
    extra = job_overrides(tiny_ckpt, "unused")[:2] + job_overrides(tiny_ckpt, "unused")[3:]  # all but output_dir
    common = dict(SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NUM_NODES="1", SLURM_ARRAY_TASK_COUNT="2",
                  SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_JOB_ID="900")
    procs = [_sbatch("array.sbatch", [str(prompts), str(tmp_path / "array"), *extra], SLURM_ARRAY_TASK_ID=str(i),
                     SLURM_JOB_ID=str(901 + i), **common) for i in (0, 1)]
    _done(procs)
    summary = json.loads((tmp_path / "array" / "summary.json").read_text())
    assert summary["videos_done"] == 3 and summary["shards"] == 2
    for v, s in zip(summary["videos"], solo["videos"]):
        assert torch.equal(torch.load(tmp_path / "array" / v["dir"] / "latents.pt", weights_only=True),
                           torch.load(tmp_path / "solo" / s["dir"] / "latents.pt", weights_only=True)), v["dir"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _done([_sbatch("prompt_list.sbatch", [str(prompts), str(tmp_path / "list"), *extra], SLURM_NTASKS="2",
                   SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NUM_NODES="1", SLURM_JOB_ID="950", MASTER_PORT=str(port))])
    summary = json.loads((tmp_path / "list" / "summary.json").read_text())
    assert summary["videos_done"] == 3 and summary["group_size"] == 2
    for v, s in zip(summary["videos"], solo["videos"]):
        a = torch.load(tmp_path / "list" / v["dir"] / "latents.pt", weights_only=True)
        b = torch.load(tmp_path / "solo" / s["dir"] / "latents.pt", weights_only=True)
        assert (a - b).abs().max() < 1e-4, v["dir"]
