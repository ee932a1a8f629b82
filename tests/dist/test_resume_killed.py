"""A job killed mid-run (SIGKILL after a step, or halfway through writing a checkpoint file) and rerun with
resume=true writes the same latents and video, bit for bit, as an uninterrupted run (tests/support/fault_entry.py
injects the fault from outside the library)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from magcache_dist.checkpoint import FORMAT, POINTER
from tests.support import ROOT
from tests.support.helpers import job_overrides


def _latents(out):
    return torch.load(os.path.join(out, "latents.pt"), weights_only=True)


def _entry(args, fault=None, timeout=120):
    env = dict(os.environ, FAULT=fault or "", FAULT_RANK="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests/support/fault_entry.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def uninterrupted(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    ref = _entry(job_overrides(tiny_ckpt, str(out), "save_video=true"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    return out


@pytest.mark.parametrize("fault,expect_next", [("kill_after_step@4", 4), ("kill_in_save@2", 2)])
def test_killed_job_resumes_to_the_same_video(tiny_ckpt, tmp_path, uninterrupted, fault, expect_next):
    """SIGKILL after step 5 of 8 (checkpoints every 2 steps: the last complete one is after step 4), or halfway
    through writing the second checkpoint file (the pointer stays on the first)."""
    common = job_overrides(tiny_ckpt, str(tmp_path / "job"), "save_video=true", "checkpoint.every_n_steps=2")
    killed = _entry(common, fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = tmp_path / "job"
    assert not (out / "video.mp4").exists() and not (out / "report.json").exists()
    ptr = json.loads((out / "checkpoint" / POINTER).read_text())
    assert ptr["next_step"] == expect_next and ptr["format"] == FORMAT
    resumed = _entry([*common, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["resumed_from_step"] == expect_next
    assert torch.equal(_latents(uninterrupted), _latents(out))
    assert (uninterrupted / "video.mp4").read_bytes() == (out / "video.mp4").read_bytes()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp.mp4") or f.startswith(".video")]
