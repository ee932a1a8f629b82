"""The command lines as a user runs them, each in its own process: launch/generate.py end to end (its schedule
equals the `python -m magcache_dist.schedule` command's), exit code 2 for bad input without a traceback, exit code 4
for a non-finite prediction, and the output folder's lock held by another live process."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.support import ROOT
from tests.support.helpers import job_overrides


def _generate(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch/generate.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def test_generate_rejects_bad_input_with_exit_code_2(tmp_path):
    p = _generate("--config", "configs/default.yaml", "cache.magcache.K=0", f"output_dir={tmp_path}")
    assert p.returncode == 2 and "cache.magcache.K=0" in p.stderr and "Traceback" not in p.stderr
    p = _generate("--config", "configs/default.yaml", "sampler.stepz=3", f"output_dir={tmp_path}")
    assert p.returncode == 2 and "stepz" in p.stderr and "Traceback" not in p.stderr
    assert not os.listdir(tmp_path)


def test_generate_end_to_end_matches_the_plan_command(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    args = job_overrides(tiny_ckpt, str(out), "save_video=true", "sampler.num_steps=10")
    p = _generate(*args)
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "report.json").read_text())
    plan = subprocess.run([sys.executable, "-m", "magcache_dist.schedule", "--preset", "wan2.1-t2v-1.3b", "--steps", "10",
                           "--thresh", "0.12", "--K", "2", "--retention", "0.2"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    expect = json.loads(plan.stdout)
    assert report["skipped_steps"] == expect["skipped_steps"]
    assert (report["computed_calls"], report["total_calls"]) == (expect["computed_calls"], expect["total_calls"])
    assert report["computed_calls"] < report["total_calls"]
    decisions = report["ranks"][0]["decisions"]
    assert [(d["step"], d["branch"]) for d in decisions] == [(s, b) for s in range(10) for b in ("cond", "uncond")]
    assert set(report["phases_s"]) >= {"build", "encode", "sample", "write", "total"}
    assert report["cache"]["source"] == "preset:wan2.1-t2v-1.3b"
    assert (out / "video.mp4").stat().st_size > 1000 and (out / "frames.png").exists()
    latents = torch.load(out / "latents.pt", weights_only=True)
    assert latents.shape == (1, 3, 5, 20, 28) and torch.isfinite(latents).all()
    # no temp files left; logs/rank0.log: a copy of what the rank printed
    assert sorted(os.listdir(out)) == ["frames.png", "latents.pt", "logs", "report.json", "video.mp4"]
    assert "wrote" in (out / "logs" / "rank0.log").read_text()


def test_generate_exits_4_on_non_finite_output(nan_ckpt, tmp_path):
    out = tmp_path / "job"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "launch/generate.py"),
                        *job_overrides(nan_ckpt, str(out), "save_video=true")],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert p.returncode == 4, p.stderr[-2000:]
    assert "NonFiniteError: the 'cond' prediction at step 0" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "video.mp4").exists() and not (out / "report.json").exists()


_HOLD = """
import sys, time
from magcache_dist.io.probe import OutputLock
lock = OutputLock({d!r})
print("held", flush=True)
time.sleep(60)
"""


def test_output_lock_names_the_holder_and_dies_with_it(tmp_path):
    from magcache_dist.io.probe import LOCK_NAME, OutputLock

    d = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, d=d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"output_dir=.* is in use by another job \(pid {holder.pid} on host"):
            OutputLock(d)
    finally:
        holder.kill()  # SIGKILL: no release ran, the kernel drops the lock
        holder.wait()
    lock = OutputLock(d)  # free again, although the dead holder's file is still there
    with pytest.raises(ValueError, match="in use by another job"):
        OutputLock(d)  # and exclusive within one process too
    lock.release()
    assert not os.path.exists(os.path.join(d, LOCK_NAME))  # released: nothing left in the output folder
    OutputLock(d).release()
