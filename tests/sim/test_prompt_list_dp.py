"""Data-parallel groups with simulated ranks (threads): 2 groups x Ulysses 2 work through a 5-video prompt list,
each group its round-robin share, and every video equals the single-process video within 1e-4 with the same skip
decisions; the group that finishes last writes the whole summary."""
import json

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import ParallelDims, build_thread_contexts, solo_context
from magcache_dist.parallel.threads import run_threads
from magcache_dist.run import run_job
from tests.support.helpers import job_overrides

PROMPTS = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows", "a green circle",
           "a small red square moves left"]


def _cfg(tiny_ckpt, out, prompts, *extra):
    return load_config(None, job_overrides(tiny_ckpt, str(out), f"prompts_file={prompts}", *extra))


def test_two_groups_of_two_share_the_list_and_equal_one_process(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    solo = run_job(_cfg(tiny_ckpt, tmp_path / "solo", prompts, "parallel.ulysses_degree=1"), solo_context())
    cfg = _cfg(tiny_ckpt, tmp_path / "dp", prompts, "parallel.ulysses_degree=2", "parallel.dp_degree=2")
    outs = run_threads(lambda par: run_job(cfg, par), build_thread_contexts(ParallelDims(2, 1, 1, 2), timeout=60),
                       timeout=300)
    assert outs[1] is None and outs[3] is None  # only rank 0 of each group answers
    summaries = [o for o in outs if o is not None and "videos_total" in o]
    assert len(summaries) >= 1  # the group that finished last (both, if they finished together)
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["videos_done"] == 5 and summary["dp_degree"] == 2 and summary["group_size"] == 2
    parts = {g: json.loads((tmp_path / "dp" / ".summary" / f"group{g}-of2.json").read_text()) for g in (0, 1)}
    assert [v["index"] for v in parts[0]["videos"]] == [0, 2, 4] and [v["index"] for v in parts[1]["videos"]] == [1, 3]
    for v, s in zip(summary["videos"], solo["videos"]):
        a = torch.load(tmp_path / "dp" / v["dir"] / "latents.pt", weights_only=True)
        b = torch.load(tmp_path / "solo" / s["dir"] / "latents.pt", weights_only=True)
        assert (a - b).abs().max() < 1e-4, v["name"]
        rd = json.loads((tmp_path / "dp" / v["dir"] / "report.json").read_text())
        rs = json.loads((tmp_path / "solo" / s["dir"] / "report.json").read_text())
        assert rd["skipped_steps"] == rs["skipped_steps"] and rd["decisions_identical_across_ranks"]
        assert rd["world_size"] == 2  # the video's group, not the whole job
