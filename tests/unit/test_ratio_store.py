"""Calibrate on demand: the ratio store, sigma-grid step interpolation and cache.mode=auto end to end."""
import json
import math

import numpy as np
import pytest

from magcache_dist.auto import sigma_grid
from magcache_dist.cache import RatioTable
from magcache_dist.cache.store import RatioStore, interpolate_by_sigma, make_key, weights_fingerprint
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.random_weights import save_tiny_checkpoint
from magcache_dist.run import run_job
from tests.support.helpers import job_config


def _exp_law(sigmas, k):
    """Ratios of a residual whose log magnitude is k * sigma (constant slope: interpolation is exact)."""
    return [1.0] + [math.exp(k * (b - a)) for a, b in zip(sigmas, sigmas[1:])]


@pytest.mark.parametrize("src,dst", [(20, 8), (8, 20), (12, 12), (12, 1)])
def test_sigma_interpolation_is_exact_for_a_constant_slope(src, dst):
    s_src, s_dst = sigma_grid(src, 5.0), sigma_grid(dst, 5.0)
    got = interpolate_by_sigma(_exp_law(s_src, 0.9), s_src, s_dst)
    # 8 -> 20 extrapolates below the smallest calibrated sigma with the last interval's slope
    np.testing.assert_allclose(got, _exp_law(s_dst, 0.9), rtol=1e-12)


def test_interpolation_is_the_identity_on_the_same_grid_and_keeps_the_total_change():
    s10, s19 = sigma_grid(10, 3.0), sigma_grid(19, 3.0)
    rng = np.random.default_rng(0)
    ratios = [1.0] + list(0.8 + 0.15 * rng.random(9))
    np.testing.assert_allclose(interpolate_by_sigma(ratios, s10, s10), ratios, rtol=1e-12)
    up = interpolate_by_sigma(ratios, s10, s19)
    assert up[0] == 1.0 and len(up) == 19 and all(g < 1 for g in up[1:])  # shrinking stays shrinking
    # back onto the calibration grid: the magnitude change over the calibrated range is preserved
    back = interpolate_by_sigma(up, s19, s10)
    assert math.prod(back) == pytest.approx(math.prod(ratios), rel=0.02)


def test_store_round_trip_lookup_rules_and_bad_index(tmp_path):
    store = RatioStore(str(tmp_path / "store"))
    key = make_key("tiny", "sha256:x", 8, [5, 20, 28], "unipc", 5.0, 5.0)
    assert store.lookup(key) is None
    table = RatioTable(num_steps=8, ratios={"cond": [1.0] + [0.99] * 7}, meta=dict(model="tiny"))
    entry = store.save(key, table)
    assert store.lookup(key) == ("exact", entry)
    assert store.load(entry).ratios == table.ratios
    other_steps = dict(key, num_steps=12)
    assert store.lookup(other_steps) == ("steps", entry)
    for field, value in (("resolution", [5, 20, 32]), ("shift", 3.0), ("solver", "euler"), ("weights", "sha256:y"),
                         ("guidance", 1.0), ("model", "tiny-video")):
        assert store.lookup(dict(key, **{field: value})) is None, field
    store.save(key, table)  # saving the same key again replaces its entry
    assert len(store.entries()) == 1
    (tmp_path / "store" / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="cache.calibration.store_dir=.*index.json is not valid JSON"):
        store.lookup(key)


def test_weights_fingerprint_tells_checkpoints_apart(tmp_path):
    a = save_tiny_checkpoint(str(tmp_path / "a.safetensors"), seed=0)
    b = save_tiny_checkpoint(str(tmp_path / "b.safetensors"), seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(None, 3) == "init-seed:3"


def test_auto_needs_a_store_dir(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="cache.mode=auto needs cache.calibration.store_dir"):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), "cache.mode=auto"), 1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache.calibration.store_dir=.* is not a directory"):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "o"), "cache.mode=auto",
                                f"cache.calibration.store_dir={tmp_path / 'file'}"), 1)


def _auto(ckpt, tmp_path, name, store, *extra):
    cfg = job_config(ckpt, str(tmp_path / name), "cache.mode=auto", f"cache.calibration.store_dir={store}", *extra)
    return run_job(cfg, solo_context())


def test_auto_calibrates_once_reuses_interpolates_and_recalibrates_on_a_new_resolution(tiny_ckpt, tmp_path):
    store = tmp_path / "store"
    first = _auto(tiny_ckpt, tmp_path, "first", store)
    assert first["ratios_used"]["lookup"] == "calibrate" and first["computed_calls"] == first["total_calls"] == 16
    stored = first["ratios_used"]["stored"]
    assert stored.startswith(str(store)) and json.loads((store / "index.json").read_text())["entries"][0]["file"] \
        in stored
    table = RatioTable.load(stored)
    assert table.meta["resolution"] == [5, 20, 28] and table.meta["num_steps"] == 8 and set(table.ratios) == \
        {"cond", "uncond"} and len(table.std["cond"]) == 8 and len(table.cos_dist["cond"]) == 8
    mtime = (store / "index.json").stat().st_mtime_ns

    second = _auto(tiny_ckpt, tmp_path, "second", store)  # same key: reuse, no recalibration
    used = second["ratios_used"]
    assert used["lookup"] == "exact" and used["file"] == stored and used["source"] == f"store:{stored}"
    assert second["computed_calls"] < second["total_calls"] and second["cache"]["policy"] == "magcache"
    assert second["cache"]["ratios_meta"]["weights"] == table.meta["weights"]
    assert second["outputs"]["ratios"] is None and (store / "index.json").stat().st_mtime_ns == mtime

    steps = _auto(tiny_ckpt, tmp_path, "steps", store, "sampler.num_steps=12")  # only the step count differs
    assert steps["ratios_used"]["lookup"] == "interpolated" and steps["ratios_used"]["interpolated_from_steps"] == 8
    assert steps["cache"]["calibrated_steps"] == 12 and steps["cache"]["ratios_meta"]["interpolated_from_steps"] == 8
    assert (store / "index.json").stat().st_mtime_ns == mtime

    bigger = _auto(tiny_ckpt, tmp_path, "bigger", store, "video.width=32")  # new resolution: calibrate again
    assert bigger["ratios_used"]["lookup"] == "calibrate" and bigger["computed_calls"] == bigger["total_calls"]
    entries = json.loads((store / "index.json").read_text())["entries"]
    assert sorted(e["key"]["resolution"][2] for e in entries) == [28, 32]


def test_calibrate_with_store_dir_fills_the_store(tiny_ckpt, tmp_path):
    store = tmp_path / "store"
    rep = run_job(job_config(tiny_ckpt, str(tmp_path / "cal"), "cache.mode=calibrate",
                             f"cache.calibration.store_dir={store}"),
                  solo_context())
    assert rep["ratios_used"]["stored"] and rep["ratios_used"]["written"] == str(tmp_path / "cal" / "ratios.json")
    assert RatioTable.load(rep["ratios_used"]["stored"]).ratios == RatioTable.load(rep["ratios_used"]["written"]).ratios
    again = _auto(tiny_ckpt, tmp_path, "auto", store)
    assert again["ratios_used"]["lookup"] == "exact"
