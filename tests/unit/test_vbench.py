"""python -m magcache_dist.eval.vbench: VBench's prompt list (VBench_full_info.json, read from the vbench package
without importing it) -> a JSONL prompts file the job reads, and a job's videos -> VBench's <prompt>-<i>.mp4.

The package is not a dependency: the tests put a package folder of the same layout on sys.path (vbench/ with
VBench_full_info.json: a list of {"prompt_en", "dimension"[, "auxiliary_info"]}, as vbench 0.1.5 ships it); one
test reads the real package where it is installed."""
import importlib
import importlib.util
import json
import os
import re

import pytest

from magcache_dist.eval import vbench
from magcache_dist.prompts import read_prompts
from tests.unit.test_eval import frames, id_job

INFO = [  # the shape of vbench 0.1.5's VBench_full_info.json (prompts made up; one prompt serves two dimensions)
    {"prompt_en": "a toaster, frozen in time", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a bird and a cat", "dimension": ["multiple_objects"],
     "auxiliary_info": {"multiple_objects": {"object": "bird and cat"}}},
    {"prompt_en": "The harbour at dusk, oil painting", "dimension": ["appearance_style"]},
    {"prompt_en": "The harbour at dusk, oil painting", "dimension": ["scene", "appearance_style"]},
]


@pytest.fixture
def fake_vbench(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "vbench").mkdir(parents=True)
    (site / "vbench" / "__init__.py").write_text("raise ImportError('the real one needs detectron2')\n")
    (site / "vbench" / vbench.INFO_FILE).write_text(json.dumps(INFO))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site / "vbench" / vbench.INFO_FILE


def test_prompts_file_from_the_installed_package(fake_vbench, tmp_path, capsys):
    out = str(tmp_path / "vb.jsonl")
    assert vbench.main(["prompts", "--out", out]) == 0
    lines = [json.loads(ln) for ln in open(out)]
    assert len(lines) == 3 * vbench.SAMPLES  # the repeated prompt once
    assert [ln["prompt"] for ln in lines[::5]] == ["a toaster, frozen in time", "a bird and a cat",
                                                  "The harbour at dusk, oil painting"]
    assert lines[0]["name"].startswith("a-toaster-frozen-in-time-") and lines[4]["name"].endswith("-4")
    assert len({ln["seed"] for ln in lines}) == 15 and all(0 <= ln["seed"] < 2 ** 32 for ln in lines)
    specs = read_prompts(out, 0, "", None)  # the job's own reader takes it: names and seeds as written
    assert [(s.name, s.seed) for s in specs] == [(ln["name"], ln["seed"]) for ln in lines]
    again = str(tmp_path / "again.jsonl")
    assert vbench.main(["prompts", "--out", again, "--dimension", "scene", "--samples", "2"]) == 0
    two = [json.loads(ln) for ln in open(again)]
    assert [ln["prompt"] for ln in two] == ["The harbour at dusk, oil painting"] * 2
    assert two == [ln for ln in lines if ln["prompt"].startswith("The harbour")][:2]  # seeds stable under filtering
    assert vbench.main(["prompts", "--out", again, "--samples", "2", "--seeds", "index", "--seed", "7"]) == 0
    assert [json.loads(ln)["seed"] for ln in open(again)] == [7, 8] * 3
    assert "3 prompts x 2 sample(s) = 6 videos" in capsys.readouterr().out


def test_prompts_bad_inputs_exit_2(fake_vbench, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "vb.jsonl")
    assert vbench.main(["prompts", "--out", out, "--dimension", "smell"]) == 2
    assert "--dimension smell: not a VBench dimension; the dimensions are appearance_style" in capsys.readouterr().err
    assert vbench.main(["prompts", "--out", str(tmp_path / "vb.txt")]) == 2
    fake_vbench.write_text(json.dumps([{"prompt_en": "x", "dimension": "scene"}]))
    assert vbench.main(["prompts", "--out", out]) == 2
    assert "entry [0]" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert vbench.main(["prompts", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "the vbench package is not installed" in err and "pip install --no-deps vbench==0.1.5" in err
    assert not os.path.exists(out)


@pytest.mark.skipif(importlib.util.find_spec("vbench") is None, reason="the vbench package is not installed")
def test_the_real_package_list(tmp_path):
    out = str(tmp_path / "vb.jsonl")
    assert vbench.main(["prompts", "--out", out, "--samples", "1"]) == 0
    assert len(open(out).read().splitlines()) == 944  # 946 entries, two prompts listed twice (vbench 0.1.5)


def test_export_links_a_jobs_videos_as_vbench_names_them(tmp_path, capsys):
    prompts = ["a bird and a cat", "The harbour at dusk, oil painting"]
    videos = [(vbench.video_name(p, i), p, i, frames(i, n=2)) for p in prompts for i in range(2)]
    job = id_job(tmp_path / "job", videos)
    out = tmp_path / "vb"
    assert vbench.main(["export", "--job", job, "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == sorted(f"{p}-{i}.mp4" for p in prompts for i in range(2))
    for n in names:  # VBench reads the prompt back by removing '-<index>' from the stem
        assert re.sub(r"-\d+$", "", n[:-4]) in prompts
        assert os.path.islink(out / n)
    i = int(names[0][-5])
    assert os.path.realpath(out / names[0]) == os.path.join(job, vbench.video_name(names[0][:-6], i), "video.mp4")
    assert "linked 4 videos of 2 prompts" in capsys.readouterr().out
    assert vbench.main(["export", "--job", job, "--out", str(out), "--copy"]) == 0  # a rerun replaces them
    assert sorted(os.listdir(out)) == names and not any(os.path.islink(out / n) for n in names)
    (out / "notes.txt").write_text("x")
    assert vbench.main(["export", "--job", job, "--out", str(out)]) == 2
    assert "holds 'notes.txt', not a video" in capsys.readouterr().err
    assert vbench.main(["export", "--job", job, "--out", os.path.join(job, "vb")]) == 2
    assert "is inside --job" in capsys.readouterr().err
