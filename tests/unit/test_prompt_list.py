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
from magcache_dist.prompts import read_prompts, slug, video_identity
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
    ids = [video_identity("a big red circle moves right", "", 3, None), "name:blue-up",
           video_identity("a yellow triangle grows", "blurry", 3, None)]
    names = [f"a-big-red-circle-moves-right-{ids[0][3:11]}", "blue-up", f"a-yellow-triangle-grows-{ids[2][3:11]}"]
    assert [v["name"] for v in summary["videos"]] == names
    assert [v["video_id"] for v in summary["videos"]] == ids
    assert [v["seed"] for v in summary["videos"]] == [3, 5, 3]  # the job's seed unless the line gives one
    assert summary["videos_done"] == summary["videos_total"] == 3 and summary["videos_reused"] == 0
    for v in summary["videos"]:
        assert sorted(os.listdir(out / v["dir"])) == ["frames.png", "latents.pt", "report.json", "video.mp4"]
        report = json.loads((out / v["dir"] / "report.json").read_text())
        assert report["status"] == "done" and report["config"]["prompt"] == v["prompt"]
        assert report["video_id"] == v["video_id"]
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
    third = listed["summary"]["videos"][2]["name"]
    before = {n: _latents(out / n / "latents.pt") for n in ("blue-up", third)}
    # video 1 lost its latents' tail (a copy cut short); video 2 has no report (it was interrupted)
    data = (out / "blue-up" / "latents.pt").read_bytes()
    (out / "blue-up" / "latents.pt").write_bytes(data[:-10])
    os.remove(out / third / "report.json")
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


def test_edited_reordered_and_split_lists_reuse_every_made_video(tiny_ckpt, tmp_path):
    """A video's folder derives from its identity, not its line: a list with a line inserted before the others,
    reordered, or cut in two reuses every video made before and makes only the new one."""
    first = ["a red circle moves right", "a blue square moves up", "a yellow triangle grows"]
    p, out = tmp_path / "p.txt", tmp_path / "out"
    p.write_text("\n".join(first) + "\n")
    made = run_job(_list_job(tiny_ckpt, out, p), solo_context())
    assert made["videos_done"] == 3 and made["videos_reused"] == 0
    p.write_text("\n".join(["a green circle moves left", *reversed(first)]) + "\n")  # a line inserted, reordered
    edited = run_job(_list_job(tiny_ckpt, out, p), solo_context())
    assert [v["reused"] for v in edited["videos"]] == [False, True, True, True]
    assert edited["videos_reused"] == 3 and edited["videos_done"] == 4
    before = {v["video_id"]: v["dir"] for v in made["videos"]}
    assert all(before[v["video_id"]] == v["dir"] for v in edited["videos"][1:])
    p.write_text(first[1] + "\n")  # the list split: one part on its own
    part = run_job(_list_job(tiny_ckpt, out, p), solo_context())
    assert part["videos_reused"] == 1 and part["videos"][0]["video_id"] == made["videos"][1]["video_id"]
    p.write_text("\n".join(first) + "\n")  # the job's seed is part of every identity: another seed, new videos
    reseeded = run_job(load_config(None, job_overrides(tiny_ckpt, str(out), f"prompts_file={p}", "seed=4")),
                       solo_context())
    assert reseeded["videos_reused"] == 0


def test_identity_names_folders_and_follows_image_content(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# suite v1\na red circle moves right\n\n  a Blue square: moves UP!  \n")
    videos = read_prompts(str(p), 7, "neg", None)
    ids = [video_identity("a red circle moves right", "neg", 7, None), video_identity("a Blue square: moves UP!",
                                                                                      "neg", 7, None)]
    assert [(v.index, v.name, v.video_id, v.prompt, v.seed, v.negative_prompt, v.line) for v in videos] == [
        (0, f"a-red-circle-moves-right-{ids[0][3:11]}", ids[0], "a red circle moves right", 7, "neg", 2),
        (1, f"a-blue-square-moves-up-{ids[1][3:11]}", ids[1], "a Blue square: moves UP!", 7, "neg", 4)]
    assert len(set(ids)) == 2 and all(len(i) == 19 for i in ids)
    # the image counts by its content: a copy elsewhere is the same video, other bytes at the same path are not
    a, b = tmp_path / "a.png", tmp_path / "staged" / "b.png"
    a.write_bytes(b"\x89PNG first frame")
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert video_identity("p", "", 1, str(a)) == video_identity("p", "", 1, str(b))
    same = video_identity("p", "", 1, str(a))
    a.write_bytes(b"\x89PNG another frame")
    assert video_identity("p", "", 1, str(a)) != same != video_identity("p", "", 1, None)
    p.write_text("same prompt\nsame prompt\n")  # two lines that are one video
    with pytest.raises(ValueError, match="lines 1 and 2 describe the same video"):
        read_prompts(str(p), 7, "", None)
    assert slug("!!!") == "video" and len(slug("word " * 40)) <= 48
