"""Shards into one folder (issue 27.2): prompts_shard=I/N jobs and a duplicate job run concurrently as separate
processes on one output_dir; each video is claimed by exactly one worker (made once, none lost), every video equals
the one-process list's bit for bit, and one merged summary.json lists them all. Claims whose holder died expire."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from magcache_dist.claims import Claims, claim_path
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support import ROOT
from tests.support.helpers import job_config, job_overrides

PROMPTS = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows",
           "a small green circle moves left", "a big blue triangle shrinks"]


def _start(args, made_log):
    env = dict(os.environ, FAULT="record_videos@0", FAULT_RANK="0", MADE_LOG=str(made_log), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/support/fault_entry.py"), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shard_jobs_and_a_duplicate_fill_one_folder_each_video_once(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    solo = run_job(job_config(tiny_ckpt, str(tmp_path / "solo"), f"prompts_file={prompts}", "sampler.num_steps=6"),
                   solo_context())
    out, made = tmp_path / "out", tmp_path / "made.log"

    def args(*extra):
        return job_overrides(tiny_ckpt, str(out), f"prompts_file={prompts}", "sampler.num_steps=6", *extra)

    procs = [_start(args("prompts_shard=0/2"), made), _start(args("prompts_shard=1/2"), made),
             _start(args("prompts_shard=0/2"), made)]  # the third: shard 0 submitted twice
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    lines = made.read_text().split()
    names = lines[0::2]
    assert sorted(names) == sorted(v["dir"] for v in solo["videos"])  # each video made exactly once, none lost
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos_total"] == summary["videos_done"] == 5 and summary["shards"] == 2
    assert [v["video_id"] for v in summary["videos"]] == [v["video_id"] for v in solo["videos"]]
    for v in summary["videos"]:
        a = torch.load(out / v["dir"] / "latents.pt", weights_only=True)
        b = torch.load(tmp_path / "solo" / v["dir"] / "latents.pt", weights_only=True)
        assert torch.equal(a, b), v["dir"]
    assert not os.listdir(out / ".claims")  # every claim released
    # a rerun of either shard reuses everything
    rerun = _start(args("prompts_shard=1/2"), made)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert made.read_text().split()[0::2] == names
    assert json.loads((out / "summary.json").read_text())["videos_done"] == 5


def test_bad_shard_values_are_refused(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    for value, msg in (("2/2", r"0 <= I < N"), ("1-2", r"is not I/N"), ("0/0", r"N >= 1")):
        with pytest.raises(ValueError, match=msg):
            run_job(job_config(tiny_ckpt, str(tmp_path / "o"), f"prompts_file={prompts}", f"prompts_shard={value}"),
                    solo_context())
    with pytest.raises(ValueError, match="prompts_shard='0/2' takes a share of a prompt list"):
        run_job(job_config(tiny_ckpt, str(tmp_path / "o"), "prompts_shard=0/2"), solo_context())


def test_claims_expire_when_their_holder_died(tmp_path, monkeypatch):
    out = str(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine, group2 = Claims(out, "run-b"), Claims(out, "run-b")
        assert group2.take("v1") is None and os.path.isfile(claim_path(out, "v1"))
        assert "claimed by pid" in mine.take("v1")  # a live holder (another group of this run): left to it
        assert Claims(out, "run-c").take("v1") is None  # a later run of this process: the earlier run's is stale

        def plant(name, **info):
            os.makedirs(os.path.join(out, ".claims"), exist_ok=True)
            with open(claim_path(out, name), "w") as f:
                json.dump(dict(dict(host=mine.me["host"], pid=live.pid, run_id="x", slurm_job=None, restart=0),
                               **info), f)

        plant("v2")
        assert "claimed by pid" in mine.take("v2")  # another live process on this host
        plant("v3", pid=dead.pid)
        assert mine.take("v3") is None and "is gone" in mine.taken_over[-1]
        mine.release()
        plant("v4", host="elsewhere")
        os.utime(claim_path(out, "v4"), (time.time() - 1000, time.time() - 1000))
        assert mine.take("v4") is None and "no heartbeat for" in mine.taken_over[-1]
        mine.release()
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        requeued = Claims(out, "run-c")
        plant("v5", host="elsewhere", slurm_job="77", restart=0)
        assert requeued.take("v5") is None and "requeued" in requeued.taken_over[-1]
        plant("v6", host="elsewhere", slurm_job="77", restart=1)  # the same incarnation on another node: alive
        assert "claimed by pid" in requeued.take("v6")
        requeued.close()
        assert not os.path.exists(claim_path(out, "v5"))  # released by close
    finally:
        live.kill()
        live.wait()
