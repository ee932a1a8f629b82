"""magcache-tune under torchrun (2 gloo processes, 2 data-parallel groups of one rank): the groups share the videos
(each sampling run deals its chunk of prompts to both groups) and the search reaches the same answer, with the same
per-prompt scores, as a single process."""
import json
import os
import subprocess
import sys

from tests.support import ROOT

PROMPTS = ["a big red circle moves right", "a small blue square moves up", "a yellow triangle grows",
           "a big green circle moves left", "a small white square bounces"]
ARGS = ["--config", "configs/default.yaml", "--target-psnr", "16", "--held-out", "1", "--thresh", "0.04,0.32",
        "--K", "1,4", "--retention", "0.2", "--branch-sync", "joint", "sampler.num_steps=6", "video.frames=2",
        "video.height=32", "video.width=32", "progress=false"]


def test_torchrun_groups_share_the_videos_and_agree_with_one_process(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "magcache_dist.tune", "--prompts", str(prompts), "--out", str(tmp_path / "dp"),
                           *ARGS, "parallel.dp_degree=2"], capture_output=True, text=True, cwd=ROOT, timeout=420,
                          env=env)
    assert dist.returncode == 0, dist.stderr[-3000:]
    solo = subprocess.run([sys.executable, "-m", "magcache_dist.tune", "--prompts", str(prompts), "--out",
                           str(tmp_path / "solo"), *ARGS], capture_output=True, text=True, cwd=ROOT, timeout=420,
                          env=env)
    assert solo.returncode == 0, solo.stderr[-3000:]
    a = json.loads((tmp_path / "dp" / "tune.json").read_text())
    b = json.loads((tmp_path / "solo" / "tune.json").read_text())
    assert a["chosen"]["id"] == b["chosen"]["id"]
    for ca, cb in zip(a["candidates"], b["candidates"]):
        assert (ca["id"], ca["status"]) == (cb["id"], cb["status"])
        assert ca["per_prompt"].keys() == cb["per_prompt"].keys()
        for name in ca["per_prompt"]:
            assert abs(ca["per_prompt"][name]["psnr"] - cb["per_prompt"][name]["psnr"]) < 1e-3, (ca["id"], name)
    # each sampling run of the torchrun search dealt its two prompts to both groups
    sampled = [c for c in a["candidates"] if c["sampled_order"] is not None]
    summary = json.loads((tmp_path / "dp" / "candidates" / sampled[0]["id"] / "summary.json").read_text())
    assert summary["dp_degree"] == 2 and summary["groups"][1]["wall_s"] is not None
    assert [g["group"] for g in summary["groups"]] == [0, 1]
