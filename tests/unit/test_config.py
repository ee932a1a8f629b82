"""Config loading and validation that the bad-input catalogue (tests/support/bad_inputs.py) does not express:
YAML pitfalls, strings kept as written, the memory preflight's override, settings left behind by a mode switch."""
import json
import os

import pytest

from magcache_dist.config import evolve, load_config, to_dict
from magcache_dist.job import validate_job
from tests.support import ROOT
from tests.support.helpers import ODD_VIDEO, job_config


def test_blank_prompt(tiny_ckpt, tmp_path):
    cfg = evolve(job_config(tiny_ckpt, str(tmp_path / "o")), prompt="  \n")
    with pytest.raises(ValueError, match="prompt is empty"):
        validate_job(cfg, 1)


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
    from magcache_dist.planner.preflight import memory_preflight

    huge = ["video.frames=4096", "video.height=2048", "video.width=2048", "parallel.ulysses_degree=1"]
    with pytest.raises(ValueError, match=r"memory: the planner estimates [\d.]+ GB per rank for sampling, but only"):
        memory_preflight(validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), *huge), 1), 1)
    forced = validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), *huge, "planner.memory_check=false"), 1)
    assert memory_preflight(forced, 1) == dict(checked=False, reason="planner.memory_check=false")


def test_settings_left_behind_by_a_switch_are_not_errors(tiny_ckpt, tmp_path):
    """A config file's MagCache settings stay behind when the command line switches cache.mode; a key set after the
    switch (or with it, in the same source) must apply."""
    (tmp_path / "job.yaml").write_text("cache: {mode: magcache, "
                                       "magcache: {preset: wan2.1-t2v-1.3b, thresh: 0.12, K: 2}}\n")
    base = [f"model.ckpt={tiny_ckpt}", "model.name=tiny", f"output_dir={tmp_path / 'o'}", *ODD_VIDEO]
    validate_job(load_config(str(tmp_path / "job.yaml"), base + ["cache.mode=teacache",
                                                                  "cache.teacache.coefficients=[1.0,0.0]"]), 1)
    with pytest.raises(ValueError, match=r"cache\.magcache\.K does not apply here \(cache\.mode='teacache'\)"):
        validate_job(load_config(str(tmp_path / "job.yaml"), base + ["cache.mode=teacache", "cache.magcache.K=3"]), 1)
    # the file contradicts itself
    (tmp_path / "tea.yaml").write_text("cache: {mode: teacache, magcache: {thresh: 0.12}}\n")
    with pytest.raises(ValueError, match=r"cache\.magcache\.thresh does not apply here"):
        validate_job(load_config(str(tmp_path / "tea.yaml"), base), 1)


def test_auto_dtypes_follow_the_device_and_a_given_dtype_stays():
    from magcache_dist.planner import plan_job

    wan = ["model.name=wan2.1-t2v-1.3b", "video.frames=81", "video.height=480", "video.width=832"]
    assert load_config(None, wan).model.dtype == "auto"
    assert plan_job(load_config(None, [*wan, "planner.device=h100"]))["dtype"] == "bfloat16"  # planned for a GPU
    assert plan_job(load_config(None, [*wan, "planner.device=cpu"]))["dtype"] == "float32"
    assert plan_job(load_config(None, [*wan, "planner.device=cpu", "model.dtype=bfloat16"]))["dtype"] == "bfloat16"


def test_validation_returns_a_resolved_frozen_job_and_leaves_the_config_alone(tmp_path):
    # unset keys are None in the config as written; the family fills them in a copy, the job is frozen
    import dataclasses

    cfg = load_config(os.path.join(ROOT, "configs/default.yaml"), [f"output_dir={tmp_path / 'o'}", "model.dtype=auto",
                                                                   "sampler.shift=null"])
    before = to_dict(cfg)
    job = validate_job(cfg, 1)
    assert to_dict(cfg) == before and cfg.model.dtype == "auto" and cfg.sampler.shift is None
    assert job.cfg.model.dtype == "float32" and job.cfg.sampler.shift == 5.0 and job.scfg.shift == 5.0
    assert job.cfg.sampler.guidance == 5.0 and job.cfg.sampler.solver == "unipc"  # as the config file says
    for obj, key in ((cfg, "seed"), (cfg.sampler, "shift"), (job, "cfg"), (job.cfg.cache.magcache, "thresh"),
                     (job.scfg, "num_steps")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, key, 1)
    assert evolve(cfg, **{"sampler.num_steps": 4}).sampler.num_steps == 4 and cfg.sampler.num_steps == 20
