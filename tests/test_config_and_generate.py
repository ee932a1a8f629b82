"""Config validation (clear errors naming the key) and end-to-end generation through launch/generate.py."""
import json
import os
import subprocess
import sys

import pytest
import torch

from magcache_dist.config import load_config, to_dict
from magcache_dist.job import validate_job
from tests.helpers import ODD_VIDEO, job_config, job_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generate(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch/generate.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


@pytest.mark.parametrize("override,key", [
    ("modle.name=tiny", "modle"),  # unknown top-level key
    ("cache.treshold=0.1", "treshold"),  # unknown nested key
    ("sampler.num_steps=many", "sampler.num_steps"),  # wrong type
    ("parallel.ulysses_degree=1.5", "parallel.ulysses_degree"),
])
def test_unknown_keys_and_wrong_types_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(os.path.join(ROOT, "configs/default.yaml"), [override])


@pytest.mark.parametrize("extra,world,msg", [
    (["parallel.ulysses_degree=2"], 1, r"parallel\.ulysses_degree=2 x ring_degree=1 x cfg_degree=1 = 2 does not match WORLD_SIZE=1"),
    (["parallel.ulysses_degree=3"], 3, r"ulysses_degree=3 does not divide num_heads=4"),
    (["parallel.cfg_degree=3"], 3, r"parallel\.cfg_degree=3 must be 1 or 2"),
    (["parallel.cfg_degree=2", "sampler.guidance=1.0"], 2, r"cfg_degree=2 needs classifier-free guidance"),
    (["parallel.fsdp=true"], 1, r"parallel\.fsdp=true shards weights over the sequence-parallel group"),
    (["parallel.backend=horovod"], 1, r"parallel\.backend='horovod' is unknown"),
    (["parallel.backend=xfuser"], 1, r"parallel\.backend=xfuser needs CUDA"),
    (["cache.mode=fast"], 1, r"cache\.mode='fast' is unknown"),
    (["cache.magcache.preset=wan3"], 1, r"cache\.magcache\.preset='wan3' is unknown"),
    (["cache.magcache.K=0"], 1, r"cache\.magcache\.K=0"),
    (["cache.magcache.thresh=-1"], 1, r"cache\.magcache\.thresh=-1"),
    (["cache.magcache.retention=1.2"], 1, r"cache\.magcache\.retention=1\.2"),
    (["sampler.num_steps=0"], 1, r"sampler\.num_steps=0"),
    (["sampler.solver=ddim"], 1, r"sampler\.solver='ddim'"),
    (["video.height=30"], 1, r"video\.height=30 must be a positive multiple of the patch size 4"),
    (["prompt=   "], 1, r"prompt is empty; pass prompt="),  # a string stays a string: blank, not null
    (["model.name=gpt2"], 1, r"model\.name='gpt2' is unknown"),
    (["model.dtype=int8"], 1, r"model\.dtype='int8'"),
])
def test_bad_input_is_rejected_before_any_collective(tiny_ckpt, tmp_path, extra, world, msg):
    with pytest.raises(ValueError, match=msg):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "out"), *extra), world)


def test_blank_prompt(tiny_ckpt, tmp_path):
    cfg = job_config(tiny_ckpt, str(tmp_path / "o"))
    cfg.prompt = "  \n"
    with pytest.raises(ValueError, match="prompt is empty"):
        validate_job(cfg, 1)


def test_missing_checkpoint_and_unwritable_output(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"model\.ckpt='/nonexistent/x\.safetensors' does not exist"):
        validate_job(job_config("/nonexistent/x.safetensors", str(tmp_path / "o")), 1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output_dir"):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "file")), 1)


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
    plan = subprocess.run([sys.executable, "-m", "magcache_dist.plan", "--preset", "wan2.1-t2v-1.3b", "--steps", "10",
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
    assert sorted(os.listdir(out)) == ["frames.png", "latents.pt", "report.json", "video.mp4"]  # no temp files left


def test_cache_mode_off_survives_yaml(tmp_path):
    assert load_config(None, ["cache.mode=off"]).cache.mode == "off"  # YAML 1.1 would make it a boolean
    f = tmp_path / "c.yaml"
    f.write_text("cache:\n  mode: off\n")
    assert load_config(str(f)).cache.mode == "off"


def test_default_demo_config_validates():
    cfg = load_config(os.path.join(ROOT, "configs/default.yaml"))
    validate_job(cfg, 1)


def test_strings_stay_strings(tmp_path, monkeypatch):
    """Prompts and paths are taken as written: no YAML booleans or numbers, no ${...} interpolation."""
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    cfg = load_config(None, ["prompt=no", "negative_prompt=${oc.env:SECRET_TOKEN}", "output_dir=123",
                             "cache.magcache.preset=null", "cache.mode=off", 'model.name="tiny"'])
    assert (cfg.prompt, cfg.negative_prompt, cfg.output_dir) == ("no", "${oc.env:SECRET_TOKEN}", "123")
    assert cfg.cache.magcache.preset is None and cfg.cache.mode == "off" and cfg.model.name == "tiny"
    (tmp_path / "job.yaml").write_text("prompt: yes\nnegative_prompt: 1e3\noutput_dir: '${oc.env:SECRET_TOKEN}'\n"
                                       "cache: {mode: off, magcache: {thresh: 0.5}}\nseed: 7\n")
    cfg = load_config(str(tmp_path / "job.yaml"))
    assert (cfg.prompt, cfg.negative_prompt, cfg.output_dir) == ("yes", "1e3", "${oc.env:SECRET_TOKEN}")
    assert (cfg.cache.mode, cfg.cache.magcache.thresh, cfg.seed) == ("off", 0.5, 7)  # numbers are still numbers
    assert "s3cret" not in json.dumps(to_dict(cfg))


def test_memory_preflight_can_be_overridden(tiny_ckpt, tmp_path):
    huge = ["video.frames=4096", "video.height=2048", "video.width=2048", "parallel.ulysses_degree=1"]
    with pytest.raises(ValueError, match=r"memory: the planner estimates [\d.]+ GB per rank for sampling, but only"):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), *huge), 1)
    validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), *huge, "planner.memory_check=false"), 1)  # forced


def test_settings_left_behind_by_a_switch_are_not_errors(tiny_ckpt, tmp_path):
    """A config file's MagCache settings stay behind when the command line switches cache.mode; a key set after the
    switch (or with it, in the same source) must apply."""
    (tmp_path / "job.yaml").write_text("cache: {mode: magcache, magcache: {preset: wan2.1-t2v-1.3b, thresh: 0.12, K: 2}}\n")
    base = [f"model.ckpt={tiny_ckpt}", "model.name=tiny", f"output_dir={tmp_path / 'o'}", *ODD_VIDEO]
    validate_job(load_config(str(tmp_path / "job.yaml"), base + ["cache.mode=teacache",
                                                                  "cache.teacache.coefficients=[1.0,0.0]"]), 1)
    with pytest.raises(ValueError, match=r"cache\.magcache\.K does not apply here \(cache\.mode='teacache'\)"):
        validate_job(load_config(str(tmp_path / "job.yaml"), base + ["cache.mode=teacache", "cache.magcache.K=3"]), 1)
    (tmp_path / "tea.yaml").write_text("cache: {mode: teacache, magcache: {thresh: 0.12}}\n")  # the file contradicts itself
    with pytest.raises(ValueError, match=r"cache\.magcache\.thresh does not apply here"):
        validate_job(load_config(str(tmp_path / "tea.yaml"), base), 1)
