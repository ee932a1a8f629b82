"""Failing ranks end the whole job quickly with a message naming the rank and the cause.

Multi-process tests launch ranks like torchrun does, or as bare processes with RANK/WORLD_SIZE/MASTER_* set (as
srun or mpirun would: nothing but our own watchdog ends the survivors). Faults are injected from outside by
tests/support/fault_entry.py. Every test carries a timeout.
"""
import json
import re
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from magcache_dist.launcher.health import EXIT_PEER_FAILED, EXIT_RANK_FAILED, HealthMonitor
from tests.support.helpers import job_overrides
from tests.support import ROOT
ENTRY = os.path.join(ROOT, "tests/support/fault_entry.py")


# ---- the watchdog's logic, on an in-memory store (exact, no processes) -----------------------------------------
class FakeStore:
    def __init__(self):
        self.kv = {}

    def add(self, k, n):
        self.kv[k] = int(self.kv.get(k, 0)) + n
        return self.kv[k]

    def set(self, k, v):
        self.kv[k] = v if isinstance(v, bytes) else str(v).encode()

    def get(self, k):
        return self.kv[k]

    def check(self, keys):
        return all(k in self.kv for k in keys)


def test_monitor_names_a_posted_failure_and_a_silent_rank():
    store = FakeStore()
    mons = [HealthMonitor(store, r, 3, stale_after=10.0) for r in range(3)]
    for m in mons:
        m._beat()
    assert mons[0].peer_problem(now=0.0) is None
    mons[2].post_failure("RuntimeError: CUDA out of memory (at models/wan.py:160 in forward)")
    assert mons[0].peer_problem(now=1.0) == "rank 2 failed: RuntimeError: CUDA out of memory (at models/wan.py:160 in forward)"
    assert mons[2].peer_problem(now=1.0) is None  # a rank never blames itself
    store = FakeStore()
    mons = [HealthMonitor(store, r, 3, stale_after=10.0) for r in range(3)]
    for m in mons:
        m._beat()
    assert mons[0].peer_problem(now=0.0) is None
    for t in (4.0, 8.0, 10.5):  # rank 1 beats, rank 2 is silent from t=0 on
        mons[1]._beat()
        problem = mons[0].peer_problem(now=t)
    assert problem == ("rank 2 stopped responding: no heartbeat for 10 s (killed by a signal, out of memory, or its "
                       "node was lost)")
    mons[2].mark_done()  # a rank that finished normally is not a failure
    mons[1]._beat()
    assert mons[0].peer_problem(now=30.0) is None


def test_watchdog_ends_the_rank_when_a_peer_failed(capsys):
    store, codes = FakeStore(), []
    peer = HealthMonitor(store, 1, 2)
    peer._beat()
    mon = HealthMonitor(store, 0, 2, interval=0.02, grace=0.05, exit_fn=codes.append).start()
    peer.post_failure("ValueError: resume=true: step000004.rank0001.pt is missing")
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.02)
    mon.stop()
    assert codes == [EXIT_PEER_FAILED]
    assert ("[rank 0] error: job aborted: rank 1 failed: ValueError: resume=true: step000004.rank0001.pt is missing"
            in capsys.readouterr().err)


# ---- real processes ------------------------------------------------------------------------------------------
# A rank whose collective failed while torchrun's SIGTERM was being diagnosed: the diagnosis thread polls the
# store; the main thread reports, stops the monitor and exits. stop() must wait for that thread, else the process
# can abort while Python finalizes ("terminate called without an active exception", SIGABRT instead of exit 5).
SIGTERM_DURING_FAILURE = """
import datetime, signal, sys, time
import torch.distributed as dist
from magcache_dist.launcher.health import EXIT_PEER_FAILED, HealthMonitor, on_launcher_stop
from magcache_dist.preempt import StopRequest
master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
client = dist.TCPStore("127.0.0.1", master.port, is_master=False, timeout=datetime.timedelta(seconds=10),
                       wait_for_workers=False)
mon = HealthMonitor(client, 0, 2, interval=0.5).start()
stop = StopRequest()
on_launcher_stop(mon, 0, stop)(signal.SIGTERM, None)  # the handler: sets the stop flag, starts the diagnosis
time.sleep(0.3)
mon.mark_reported()  # the main thread's own report (report_failure) comes first
t = time.monotonic()
ended = mon.stop()
print(f"stop={ended} waited={time.monotonic() - t:.2f} stop_flag={stop.is_set()} "
      f"alive={[th.name for th in [mon._thread, *mon._helpers] if th.is_alive()]}")
sys.exit(EXIT_PEER_FAILED)
"""


def test_monitor_stop_waits_for_the_sigterm_diagnosis_before_exit():
    p = subprocess.run([sys.executable, "-c", SIGTERM_DURING_FAILURE], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == EXIT_PEER_FAILED, p.stderr[-2000:]
    assert "terminate called" not in p.stderr and "error:" not in p.stderr, p.stderr  # the main thread's report only
    waited = float(re.search(r"waited=([0-9.]+)", p.stdout).group(1))
    assert "stop=True" in p.stdout and "stop_flag=True" in p.stdout and "alive=[]" in p.stdout, p.stdout
    assert 1.0 < waited < 10.0  # the diagnosis polls the board for 2 s from the signal on; stop() waited for it


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_launch(args, world=2, fault="", fault_rank=1, timeout=120):
    """Start ``world`` ranks as plain processes; returns [(returncode, stderr, exit time)] in rank order."""
    port = _free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", FAULT=fault, FAULT_RANK=str(fault_rank))
        procs.append(subprocess.Popen([sys.executable, ENTRY, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    ended = [None] * world
    deadline = time.monotonic() + timeout
    while None in ended:
        for r, p in enumerate(procs):
            if ended[r] is None and p.poll() is not None:
                ended[r] = time.monotonic()
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"ranks still running after {timeout}s: {[e is None for e in ended]}")
        time.sleep(0.05)
    return [(p.returncode, p.stderr.read(), t) for p, t in zip(procs, ended)]


def _args(ckpt, out, *extra):
    return job_overrides(ckpt, str(out), "parallel.ulysses_degree=2", "parallel.timeout_s=300", *extra)


def test_rank_raising_inside_attention_ends_every_rank(tiny_ckpt, tmp_path):
    (rc0, err0, t0), (rc1, err1, t1) = _bare_launch(_args(tiny_ckpt, tmp_path / "job", "save_video=true"),
                                                    fault="raise_attn@5")
    cause = "RuntimeError: injected fault inside attention (at tests/support/fault_entry.py"
    assert rc1 == EXIT_RANK_FAILED and f"[rank 1] error: {cause}" in err1, err1[-2000:]
    assert rc0 == EXIT_PEER_FAILED and f"[rank 0] error: job aborted: rank 1 failed: {cause}" in err0, err0[-2000:]
    assert t0 - t1 < 60
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "job" / "video.mp4").exists() and not (tmp_path / "job" / "report.json").exists()


def test_read_error_in_a_shared_load_ends_both_ranks(wan_ckpts, tmp_path):
    """parallel.shared_load=true: rank 1's disk fails at its 5th tensor while rank 0 waits in the all-gather of a
    block; rank 1 exits 4 naming the error and where, rank 0 follows within seconds with 5 naming rank 1."""
    from tests.support.wan_tiny import wan_overrides

    args = wan_overrides("t2v", wan_ckpts["t2v"]["official"], str(tmp_path / "job"), "parallel.ulysses_degree=2",
                         "parallel.shared_load=true", "parallel.timeout_s=300")
    (rc0, err0, t0), (rc1, err1, t1) = _bare_launch(args, fault="raise_read@5")
    cause = "OSError: [Errno 5] injected read error"
    assert rc1 == EXIT_RANK_FAILED and f"[rank 1] error: {cause}" in err1, err1[-2000:]
    assert rc0 == EXIT_PEER_FAILED and f"[rank 0] error: job aborted: rank 1 failed: {cause}" in err0, err0[-2000:]
    assert abs(t0 - t1) < 60 and "Traceback" not in err0 + err1
    assert not (tmp_path / "job" / "report.json").exists()


def test_killed_rank_is_named_by_the_survivor(tiny_ckpt, tmp_path):
    (rc0, err0, t0), (rc1, _, t1) = _bare_launch(_args(tiny_ckpt, tmp_path / "job", "save_video=true"),
                                                 fault="kill_attn@5")
    assert rc1 == -9
    assert rc0 == EXIT_PEER_FAILED, err0[-2000:]
    assert "[rank 0] error: job aborted: rank 1 stopped responding" in err0, err0[-2000:]
    assert t0 - t1 < 60
    assert not (tmp_path / "job" / "video.mp4").exists()


def test_torchrun_kill_one_rank_mid_sampling_then_resume(tiny_ckpt, tmp_path):
    """SIGKILL rank 1 of a 2-rank gloo torchrun job at its 14th attention call (step 5 of 8 under the official
    schedule, pinned here so that the call count stays that); the job ends with a non-zero exit naming rank 1 and
    SIGKILL, no video; resume=true then gives the uninterrupted latents and video bit for bit."""
    job = tmp_path / "job"
    args = _args(tiny_ckpt, job, "save_video=true", "checkpoint.every_n_steps=2", "cache.branch_sync=official")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        ENTRY, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, FAULT="kill_attn@14", FAULT_RANK="1"))
    assert p.returncode != 0 and time.monotonic() - t < 90
    summary = p.stderr[p.stderr.find("Root Cause"):]
    assert "rank      : 1 (local_rank: 1)" in summary and "Signal 9 (SIGKILL)" in summary, p.stderr[-3000:]
    # the survivor names the dead rank, whether its own collective failed first or torchrun's SIGTERM came first
    assert "[rank 0] error: job aborted: rank 1 stopped responding" in p.stderr, p.stderr[-3000:]
    assert re.search(r"rank +: 0 \(local_rank: 0\)\s+exitcode +: 5 ", p.stderr), p.stderr[-3000:]  # not -15
    assert not (job / "video.mp4").exists() and not (job / "report.json").exists()
    assert json.loads((job / "checkpoint" / "latest.json").read_text())["next_step"] in (2, 4)

    ref = _bare_launch(_args(tiny_ckpt, tmp_path / "ref", "save_video=true", "cache.branch_sync=official"))
    assert [r[0] for r in ref] == [0, 0], ref[0][1][-2000:]
    resumed = _bare_launch([*args, "resume=true"])
    assert [r[0] for r in resumed] == [0, 0], resumed[0][1][-2000:]
    report = json.loads((job / "report.json").read_text())
    assert report["checkpoint"]["resumed_from_step"] in (2, 4) and report["decisions_identical_across_ranks"]
    assert torch.equal(torch.load(job / "latents.pt", weights_only=True),
                       torch.load(tmp_path / "ref" / "latents.pt", weights_only=True))
    assert (job / "video.mp4").read_bytes() == (tmp_path / "ref" / "video.mp4").read_bytes()
