"""Preemption (issue 27.5) with real signals sent to real processes: SIGTERM (or checkpoint.signal) stops every rank
after its current step, rank 0 writes a step checkpoint and the job exits 75; the same command rerun continues from
that step and writes the uninterrupted run's video bit for bit; a finished video's step checkpoints are deleted."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from magcache_dist.checkpoint import POINTER
from magcache_dist.preempt import EXIT_PREEMPTED
from tests.support import ROOT
from tests.support.helpers import job_overrides

ENTRY = os.path.join(ROOT, "tests/support/fault_entry.py")
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _start(args, world=1, port=None, **extra):
    procs = []
    for r in range(world):
        env = _env(**extra)
        if world > 1:
            env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, ENTRY, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=240):
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], "\n".join(o[1][-3000:] for o in outs)


def _wait_for(path, predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = open(path).read().split("\n") if os.path.exists(path) else []
        if predicate([ln.split() for ln in lines if ln.strip()]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed the expected steps")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latents(folder):
    return torch.load(os.path.join(folder, "latents.pt"), weights_only=True)


def test_sigterm_checkpoints_and_the_same_command_continues_bit_identical(tiny_ckpt, tmp_path):
    """One process, one video, no periodic checkpoints: SIGTERM after step 3 of 8 -> exit 75 with a checkpoint of
    the step it was in; the unchanged command rerun continues from it and writes the uninterrupted video."""
    ref_out, out, log = tmp_path / "ref", tmp_path / "job", tmp_path / "steps"
    rc, err = _finish(_start(job_overrides(tiny_ckpt, str(ref_out), "save_video=true")))
    assert rc == [0], err
    args = job_overrides(tiny_ckpt, str(out), "save_video=true")
    procs = _start(args, FAULT="slow_steps@400", FAULT_RANK="all", STEP_LOG=str(log))
    _wait_for(f"{log}.0", lambda lines: len(lines) >= 3)
    procs[0].send_signal(signal.SIGTERM)
    rc, err = _finish(procs)
    assert rc == [EXIT_PREEMPTED], err
    assert "preempted" in err and "Rerun the same command to continue" in err
    ptr = json.loads((out / "checkpoint" / POINTER).read_text())
    stopped = ptr["next_step"]
    assert ptr["preempted"] is True and 3 <= stopped < 8
    assert not (out / "report.json").exists()
    rc, err = _finish(_start(args))  # the same command (no resume=true)
    assert rc == [0], err
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["resumed_from_step"] == stopped
    assert torch.equal(_latents(ref_out), _latents(out))
    assert (ref_out / "video.mp4").read_bytes() == (out / "video.mp4").read_bytes()
    assert not (out / "checkpoint").exists()  # a finished video's checkpoints are deleted


def test_a_signal_to_one_rank_stops_both_ranks_of_a_list_at_one_step(tiny_ckpt, tmp_path):
    """Two gloo ranks (Ulysses 2), a 3-video list, checkpoint.signal=USR1 sent to rank 1 only during the second
    video: both ranks stop at the same step (the flag is all-reduced once per step) and exit 75; the rerun reuses
    video 0, continues video 1 from that step, makes video 2, and every video equals the uninterrupted 2-rank
    run's bit for bit."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves right\na blue square moves up\na yellow triangle grows\n")

    def args(out):
        return job_overrides(tiny_ckpt, str(out), f"prompts_file={prompts}", "parallel.ulysses_degree=2",
                             "checkpoint.signal=USR1")

    rc, err = _finish(_start(args(tmp_path / "ref"), world=2, port=_free_port()))
    assert rc == [0, 0], err
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    second = ref["videos"][1]["dir"]
    out, log = tmp_path / "job", tmp_path / "steps"
    procs = _start(args(out), world=2, port=_free_port(), FAULT="slow_steps@300", FAULT_RANK="all",
                   STEP_LOG=str(log))
    _wait_for(f"{log}.1", lambda lines: sum(1 for ln in lines if ln[0] == second) >= 2)
    procs[1].send_signal(signal.SIGUSR1)
    rc, err = _finish(procs)
    assert rc == [EXIT_PREEMPTED, EXIT_PREEMPTED], err
    logs = [[ln.split() for ln in open(f"{log}.{r}").read().splitlines()] for r in (0, 1)]
    assert logs[0] == logs[1]  # the same steps logged on both ranks
    stopped = json.loads((out / second / "checkpoint" / POINTER).read_text())["next_step"]
    # the step in which the stop was agreed is finished and checkpointed (it raises before the log line)
    assert int(logs[0][-1][1]) + 2 == stopped and logs[0][-1][0] == second
    rc, err = _finish(_start(args(out), world=2, port=_free_port()))
    assert rc == [0, 0], err
    summary = json.loads((out / "summary.json").read_text())
    assert [(v["status"], v["reused"], v["resumed_from_step"]) for v in summary["videos"]] == [
        ("done", True, None), ("done", False, stopped), ("done", False, None)]
    for v in ref["videos"]:
        assert torch.equal(_latents(tmp_path / "ref" / v["dir"]), _latents(out / v["dir"])), v["dir"]
        assert not (out / v["dir"] / "checkpoint").exists()
