"""The MagCache decision rule against the official releases' loops, transcribed independently here."""
import json
import os

import numpy as np
import pytest

from magcache_dist.cache import MagCacheConfig, RatioTable, build_magcache, get_preset, nearest_interp, skip_schedule
from tests.support import ROOT
from tests.support.helpers import plan_command, plan_json

PUBLISHED = json.load(open(os.path.join(ROOT, "magcache_dist/cache/data/published_ratios.json")))["models"]

WAN_EXAMPLE = [10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26, 28, 29, 31, 32, 34, 35, 37, 38, 40, 41, 43, 45, 47]
FLUX_EXAMPLE = [3, 4, 6, 7, 8, 10, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 24, 25, 27]


def _official_interp(src, n):  # as in the MagCache scripts
    src = np.asarray(src)
    if n == 1:
        return np.array([src[-1]])
    return src[np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)]


def official_wan(raw, n, thresh, k, r):
    raw = np.asarray(raw)
    if len(raw) != 2 * n:
        raw = np.stack([_official_interp(raw[0::2], n), _official_interp(raw[1::2], n)], 1).reshape(-1)
    acc, err, steps, skipped = [1.0, 1.0], [0.0, 0.0], [0, 0], {0: [], 1: []}
    for cnt in range(2 * n):
        b = cnt % 2
        if cnt >= int(2 * n * r):
            acc[b] *= raw[cnt]
            steps[b] += 1
            err[b] += np.abs(1 - acc[b])
            # the official script would add a None residual (crash) when retention is 0: we compute instead
            if err[b] < thresh and steps[b] <= k and cnt >= 2:
                skipped[b].append(cnt // 2)
                continue
            acc[b], err[b], steps[b] = 1.0, 0.0, 0
    return {"cond": skipped[0], "uncond": skipped[1]}


def official_single(raw, n, thresh, k, r, flux=False):
    ratios = np.asarray(raw) if len(raw) == n else _official_interp(raw, n)
    start = int(r * n + 0.5) if flux else int(n * r)
    acc, err, steps, skipped = 1.0, 0.0, 0, []
    for cnt in range(n):
        if cnt >= start:
            acc *= ratios[cnt]
            steps += 1
            err += np.abs(1 - acc)
            forced = flux and np.round(cnt * ((28 - 1) / (n - 1))).astype(int) == 11
            if err <= thresh and steps <= k and not forced and cnt >= 1:  # cnt 0: no residual yet (see above)
                skipped.append(cnt)
                continue
            acc, err, steps = 1.0, 0.0, 0
    return {"cond": skipped}


def official_opensora(raw, thresh, k):  # 30 steps, skip_time 6, sqrt ratios indexed t-1, no abs
    ratio = np.asarray(raw) ** 0.5
    acc, err, steps, skipped = 1.0, 0.0, 0, []
    for t in range(30):
        if t >= 6:
            acc *= ratio[t - 1]
            steps += 1
            err += 1 - acc
            if err <= thresh and steps <= k:
                skipped.append(t)
                continue
            acc, err, steps = 1.0, 0.0, 0
    return {"cond": skipped}


def ours(preset, n, thresh, k, r):
    p = get_preset(preset)
    pol = build_magcache(preset, None, MagCacheConfig(thresh, k, r), n, p.table.branches)
    return skip_schedule(pol, n, p.table.branches)


def test_published_examples():
    out = ours("wan2.1-t2v-1.3b", 50, 0.12, 2, 0.2)
    assert out["skipped_steps"] == {"cond": WAN_EXAMPLE, "uncond": WAN_EXAMPLE}
    assert (out["computed_calls"], out["total_calls"]) == (50, 100)
    out = ours("flux.1-dev", 28, 0.24, 5, 0.1)
    assert out["skipped_steps"] == {"cond": FLUX_EXAMPLE}
    assert (out["computed_calls"], out["total_calls"]) == (9, 28)


GRID = [(n, t, k, r) for n in (50, 40, 30, 28, 20, 10, 7, 2, 1) for t, k, r in
        ((0.12, 2, 0.2), (0.12, 4, 0.2), (0.24, 6, 0.2), (0.24, 5, 0.1), (0.06, 3, 0.0), (0.5, 10, 0.35))]


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"])
def test_wan_family_matches_official(preset):
    raw = PUBLISHED[preset]["mag_ratios"]
    for n, t, k, r in GRID:
        assert ours(preset, n, t, k, r)["skipped_steps"] == official_wan(raw, n, t, k, r), (n, t, k, r)


@pytest.mark.parametrize("preset", ["hunyuanvideo-t2v-720p", "hunyuanvideo-t2v-544p", "flux.1-dev"])
def test_single_call_families_match_official(preset):
    raw = PUBLISHED[preset]["mag_ratios"]
    for n, t, k, r in GRID:
        if preset.startswith("flux") and n == 1:
            continue  # the official FLUX script divides by N-1
        got = ours(preset, n, t, k, r)["skipped_steps"]
        assert got == official_single(raw, n, t, k, r, flux=preset.startswith("flux")), (n, t, k, r)


def test_opensora_matches_official():
    raw = PUBLISHED["opensora-1.2"]["mag_ratios"]
    assert len(raw) == 29
    for t, k in ((0.12, 3), (0.24, 5), (0.05, 2), (1.0, 30)):
        assert ours("opensora-1.2", 30, t, k, 0.2)["skipped_steps"] == official_opensora(raw, t, k), (t, k)


def test_strictness_differs_by_family():
    # a ratio table that makes the error land exactly on the threshold at step 2
    table = RatioTable(num_steps=4, ratios={"cond": [1.0, 1.0, 0.75, 1.0], "uncond": [1.0, 1.0, 0.75, 1.0]})
    from magcache_dist.cache.magcache import MagCachePolicy
    from magcache_dist.cache.presets import RULES

    wan = MagCachePolicy(table, RULES["wan"], MagCacheConfig(0.25, 3, 0.0), 4, ["cond", "uncond"])
    hy = MagCachePolicy(table, RULES["hunyuanvideo"], MagCacheConfig(0.25, 3, 0.0), 4, ["cond", "uncond"])
    # step 0: no residual yet -> computed; step 1: err 0 -> skip; step 2: err 0.25 == thresh:
    # Wan (strict <) computes and resets, so step 3 skips again; HunyuanVideo (<=) skips, then err 0.5 computes
    assert skip_schedule(wan, 4, ["cond", "uncond"])["skipped_steps"]["cond"] == [1, 3]
    assert skip_schedule(hy, 4, ["cond", "uncond"])["skipped_steps"]["cond"] == [1, 2]


def test_interpolation_is_nearest_half_even():
    assert nearest_interp([0, 1, 2, 3, 4], 3) == [0, 2, 4]
    assert nearest_interp([0, 1, 2, 3], 3) == [0, 2, 3]  # 1.5 -> 2 (half to even)
    assert nearest_interp([0, 1, 2, 3, 4, 5], 3) == [0, 2, 5]  # 2.5 -> 2 (half to even), not 3
    assert nearest_interp([5, 6, 7], 1) == [7]  # N == 1 takes the last value
    assert nearest_interp([1, 2], 4) == [1, 1, 2, 2]


def test_retention_and_k_bound():
    out = ours("wan2.1-t2v-14b", 50, 10.0, 3, 0.5)
    for b in ("cond", "uncond"):
        s = out["skipped_steps"][b]
        assert min(s) == 25  # int(2*50*0.5) = 50 calls retained = 25 steps
        runs, run = [], 1
        for a, c in zip(s, s[1:]):
            run = run + 1 if c == a + 1 else 1
            runs.append(run)
        assert max(runs) == 3  # never more than K in a row


@pytest.mark.parametrize("kw,key", [
    (dict(thresh=-0.1), "cache.magcache.thresh"), (dict(K=0), "cache.magcache.K"),
    (dict(retention=1.0), "cache.magcache.retention"),
    (dict(retention=-0.1), "cache.magcache.retention"), (dict(K=1.5), "cache.magcache.K")])
def test_bad_hyper_parameters(kw, key):
    args = dict(thresh=0.1, K=2, retention=0.2) | kw
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MagCacheConfig(**args)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="cache.magcache.preset='nope'"):
        build_magcache("nope", None, MagCacheConfig(), 10, ["cond"])
    with pytest.raises(ValueError, match="num_steps"):
        build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(), 0, ["cond", "uncond"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "magcache-ratios/1", "num_steps": 5,
                               "branches": {"cond": {"ratios": [1.0, 0.99, 0.98]}}}))
    with pytest.raises(ValueError, match=r"ratios\.cond: expected 5 values"):
        RatioTable.load(str(bad))
    bad.write_text(json.dumps({"format": "magcache-ratios/1", "num_steps": 2,
                               "branches": {"cond": {"ratios": [1.0, -1.0]}}}))
    with pytest.raises(ValueError, match=r"ratios\.cond\[1\]"):
        RatioTable.load(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        RatioTable.load(str(tmp_path / "missing.json"))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"format": "magcache-ratios/1", "num_steps": 2,
                               "branches": {"cond": {"ratios": [1, 1]}}}))
    with pytest.raises(ValueError, match="branches"):
        build_magcache(None, str(one), MagCacheConfig(), 2, ["cond", "uncond"])


def test_plan_command():
    out = plan_json("--preset", "wan2.1-t2v-1.3b", "--steps", "50", "--thresh", "0.12", "--K", "2",
                    "--retention", "0.2")
    assert out == {"preset": "wan2.1-t2v-1.3b", "num_steps": 50, "branch_sync": "official",
                   "skipped_steps": {"cond": WAN_EXAMPLE,
                   "uncond": WAN_EXAMPLE}, "computed_calls": 50, "total_calls": 100}
    out = plan_json("--preset", "flux.1-dev", "--steps", "28", "--thresh", "0.24", "--K", "5", "--retention", "0.1")
    assert out["skipped_steps"] == {"cond": FLUX_EXAMPLE}
    code, _, err = plan_command("--preset", "wan2.1-t2v-1.3b", "--steps", "50", "--thresh", "0.12", "--K", "0",
                                "--retention", "0.2")
    assert code == 2 and "cache.magcache.K=0" in err


def test_plan_command_with_ratio_file(tmp_path):
    path = tmp_path / "r.json"
    get_preset("hunyuanvideo-t2v-720p").table.save(str(path))
    out = plan_json("--ratios", str(path), "--rule", "hunyuanvideo", "--steps", "50", "--thresh", "0.24", "--K", "6",
                    "--retention", "0.2")
    assert out["skipped_steps"] == ours("hunyuanvideo-t2v-720p", 50, 0.24, 6, 0.2)["skipped_steps"]
