"""A prompt list on 4 gloo processes as 2 data-parallel groups of 2 (Ulysses 2), under a timeout: each group makes
its round-robin share, skip decisions are agreed within the group, and every video equals the single-process video
within 1e-4 with the same skipped steps."""
import json

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.helpers import job_overrides

PROMPTS = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows",
           "a small green circle moves left", "a big blue triangle shrinks"]


def test_two_groups_of_two_processes_equal_one_process(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    solo = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo"), f"prompts_file={prompts}")),
                   solo_context())
    job = job_overrides(tiny_ckpt, str(tmp_path / "dp"), f"prompts_file={prompts}", "parallel.ulysses_degree=2",
                        "parallel.dp_degree=2")
    spawn(4, [("dp", job)], str(tmp_path), timeout=240)
    for rank in range(4):
        assert json.loads((tmp_path / f"dp.rank{rank}.json").read_text())["status"] == "ok", rank
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["videos_done"] == 5 and (summary["dp_degree"], summary["group_size"]) == (2, 2)
    for g, share in ((0, [0, 2, 4]), (1, [1, 3])):
        part = json.loads((tmp_path / "dp" / ".summary" / f"group{g}-of2.json").read_text())
        assert [v["index"] for v in part["videos"]] == share
    for v, s in zip(summary["videos"], solo["videos"]):
        report = json.loads((tmp_path / "dp" / v["dir"] / "report.json").read_text())
        ref = json.loads((tmp_path / "solo" / s["dir"] / "report.json").read_text())
        assert report["world_size"] == 2 and report["decisions_identical_across_ranks"]
        assert report["skipped_steps"] == ref["skipped_steps"]
        a = torch.load(tmp_path / "dp" / v["dir"] / "latents.pt", weights_only=True)
        b = torch.load(tmp_path / "solo" / s["dir"] / "latents.pt", weights_only=True)
        assert (a - b).abs().max() < 1e-4, v["name"]
