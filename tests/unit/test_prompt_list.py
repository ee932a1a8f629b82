"""Prompt lists (prompts_file=), one process: the model loads once and every video equals the video a single-prompt
job makes with the same prompt, seed and negative prompt (bit for bit); a rerun reuses exactly the videos whose
report verifies; summary.json / summary.md list every video. Data-parallel groups: tests/sim/test_prompt_list_dp.py
and tests/dist/test_prompt_list_gloo.py; a killed list job: tests/dist/test_resume_killed.py."""
import json
import os

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.prompts import read_prompts, slug
from magcache_dist.run import run_job
from tests.support.helpers import job_overrides

JSONL = [
    {"prompt": "a big red circle moves right"},
    {"prompt": "a small blue square moves up", "seed": 5, "name": "blue-up"},
    {"prompt": "a yellow triangle grows", "negative_prompt": "blurry"},
]


def _list_job(tiny_ckpt, out, prompts, *extra):
    return load_config(None, job_overrides(tiny_ckpt, str(out), "parallel.ulysses_degree=1",
                                           f"prompts_file={prompts}", "seed=3", *extra))


def _latents(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def listed(tiny_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("list")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(e) + "\n" for e in JSONL))
    out = d / "out"
    summary = run_job(_list_job(tiny_ckpt, out, prompts, "save_video=true"), solo_context())
    return dict(dir=d, prompts=prompts, out=out, summary=summary)


def test_folders_reports_and_summary(listed):
    out, summary = listed["out"], listed["summary"]
    names = ["0000-a-big-red-circle-moves-right", "blue-up", "0002-a-yellow-triangle-grows"]
    assert [v["name"] for v in summary["videos"]] == names
    assert [v["seed"] for v in summary["videos"]] == [3, 5, 3]  # the job's seed unless the line gives one
    assert summary["videos_done"] == summary["videos_total"] == 3 and summary["videos_reused"] == 0
    for v in summary["videos"]:
        assert sorted(os.listdir(out / v["dir"])) == ["frames.png", "latents.pt", "report.json", "video.mp4"]
        report = json.loads((out / v["dir"] / "report.json").read_text())
        assert report["status"] == "done" and report["config"]["prompt"] == v["prompt"]
        assert (v["computed_calls"], v["total_calls"]) == (report["computed_calls"], report["total_calls"])
        assert v["computed_calls"] < v["total_calls"]  # the cache skips in every video
    assert json.loads((out / "summary.json").read_text()) == summary
    md = (out / "summary.md").read_text()
    assert md.startswith("# 3 of 3 videos done") and "| 1 | [blue-up](blue-up/) | done |" in md


def test_every_video_equals_its_single_prompt_job(listed, tiny_ckpt, tmp_path):
    for i, e in enumerate(JSONL):
        v = listed["summary"]["videos"][i]
        single = tmp_path / f"single{i}"
        run_job(load_config(None, job_overrides(tiny_ckpt, str(single), "parallel.ulysses_degree=1",
                                                f"prompt={e['prompt']}", f"seed={e.get('seed', 3)}",
                                                f"negative_prompt={e.get('negative_prompt', '')}")), solo_context())
        assert torch.equal(_latents(single / "latents.pt"), _latents(listed["out"] / v["dir"] / "latents.pt")), i


def test_rerun_reuses_only_videos_whose_report_verifies(listed, tiny_ckpt):
    out = listed["out"]
    before = {n: _latents(out / n / "latents.pt") for n in ("blue-up", "0002-a-yellow-triangle-grows")}
    # video 1 lost its latents' tail (a copy cut short); video 2 has no report (it was interrupted)
    data = (out / "blue-up" / "latents.pt").read_bytes()
    (out / "blue-up" / "latents.pt").write_bytes(data[:-10])
    os.remove(out / "0002-a-yellow-triangle-grows" / "report.json")
    summary = run_job(_list_job(tiny_ckpt, out, listed["prompts"], "save_video=true"), solo_context())
    assert [v.get("reused") for v in summary["videos"]] == [True, False, False]
    assert summary["videos_done"] == 3 and summary["videos_reused"] == 1
    for n, lat in before.items():  # remade: the same videos
        assert torch.equal(_latents(out / n / "latents.pt"), lat)
    again = run_job(_list_job(tiny_ckpt, out, listed["prompts"], "save_video=true"), solo_context())
    assert again["videos_reused"] == 3
    # another setting is another job: nothing is reused
    other = run_job(_list_job(tiny_ckpt, out, listed["prompts"], "save_video=true", "cache.magcache.thresh=0.2"),
                    solo_context())
    assert other["videos_reused"] == 0


def test_text_files_skip_comments_and_blank_lines(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# suite v1\na red circle moves right\n\n  a Blue square: moves UP!  \n")
    videos = read_prompts(str(p), 7, "neg", None)
    assert [(v.index, v.name, v.prompt, v.seed, v.negative_prompt, v.line) for v in videos] == [
        (0, "0000-a-red-circle-moves-right", "a red circle moves right", 7, "neg", 2),
        (1, "0001-a-blue-square-moves-up", "a Blue square: moves UP!", 7, "neg", 4)]
    assert slug("!!!") == "video" and len(slug("word " * 40)) <= 48
