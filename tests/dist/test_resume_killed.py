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


def test_killed_prompt_list_reuses_done_videos_and_continues_the_interrupted_one(tiny_ckpt, tmp_path):
    """A 3-video list killed after its 13th step (video 1, 5 of 8 steps done, its last checkpoint after step 4): a
    rerun of the same command reuses video 0, continues video 1 from step 4 and makes video 2; every video equals
    the uninterrupted list's, bit for bit."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves right\na blue square moves up\na yellow triangle grows\n")

    def args(out):
        return job_overrides(tiny_ckpt, str(out), "save_video=true", "checkpoint.every_n_steps=2",
                             f"prompts_file={prompts}")

    ref = _entry(args(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "job"
    killed = _entry(args(out), "kill_after_steps@13")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "summary.json").exists()
    part = json.loads((out / ".summary" / "group0-of1.json").read_text())
    assert [v["status"] for v in part["videos"]] == ["done", "pending", "pending"]  # never "done" before its report
    names = [v["name"] for v in part["videos"]]
    assert json.loads((out / names[1] / "checkpoint" / POINTER).read_text())["next_step"] == 4
    rerun = _entry(args(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(v["status"], v["reused"], v["resumed_from_step"]) for v in summary["videos"]] == [
        ("done", True, None), ("done", False, 4), ("done", False, None)]
    for n in names:
        assert torch.equal(_latents(tmp_path / "ref" / n), _latents(out / n)), n
        assert (tmp_path / "ref" / n / "video.mp4").read_bytes() == (out / n / "video.mp4").read_bytes()
