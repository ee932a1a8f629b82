"""Wan2.2's MagCache decisions (MagCache4Wan2.2) against the release's loop, transcribed independently here.

What the release does (Zehong-Ma/MagCache@df81cb1, MagCache4Wan2.2/magcache_generate.py): ``init_magcache`` patches
the forward of the *class* WanModel and keeps its counter and cache state on the class, so the high- and low-noise
experts share one call counter (a torch int64 tensor bumped in place), one ratio/error/skip-count accumulator pair
and one residual pair; nothing is reset at the switch. The split (in calls) is twice the number of timesteps
>= 1000 * boundary on the release's own grid, and retention is placed around it (T2V and I2V differ).
"""
import json
import os

import numpy as np
import pytest
import torch

from magcache_dist.cache import MagCacheConfig, build_magcache, get_preset, skip_schedule
from magcache_dist.cache.presets import RULES, preset_switch_step
from magcache_dist.errors import InternalError
from magcache_dist.sampling.grids import expert_switch_step, wan_timesteps
from tests.support import ROOT
from tests.support.helpers import plan_command, plan_json

PUBLISHED = json.load(open(os.path.join(ROOT, "magcache_dist/cache/data/published_ratios.json")))["models"]
REFERENCE = os.path.join(ROOT, "..", "shared", "reference", "magcache_ratios.json")  # beside the checkout
SETTINGS = {"wan2.2-t2v-a14b": (12.0, 0.875, "t2v"), "wan2.2-i2v-a14b": (5.0, 0.900, "i2v")}


def release_high_noise_steps(n, shift, boundary):
    """The release's get_timesteps (sigma_max 1.0, sigma_min 0.01, int64 timesteps) and its count."""
    sig = np.linspace(1.0, 0.01, n + 1)[:-1]
    sig = (shift * sig / (1 + (shift - 1) * sig)).astype(np.float32)  # concatenated with sigma_last as float32
    t = torch.from_numpy(sig * 1000).to(torch.int64)
    return int((t >= 1000 * boundary).sum().item())


def _interp(src, n):
    if n == 1:
        return np.array([src[-1]])
    return src[np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)]


class ReleaseState:
    """The class attributes init_magcache sets (shared by both experts)."""

    def __init__(self, raw, n, split_steps, mode, thresh, k, r):
        self.cnt = torch.tensor(0)
        self.num_steps, self.split_step, self.mode = n * 2, split_steps * 2, mode
        self.thresh, self.K, self.retention_ratio = thresh, k, r
        self.acc_err, self.acc_steps, self.acc_ratio = [0.0, 0.0], [0, 0], [1.0, 1.0]
        self.residual = [None, None]
        ratios = np.array(raw)  # already holds the two leading 1.0 (the release prepends [1.0]*2)
        if len(ratios) != n * 2:
            ratios = np.stack([_interp(ratios[0::2], n), _interp(ratios[1::2], n)], 1).reshape(-1)
        self.mag_ratios = ratios


def release_call(st: ReleaseState) -> bool:
    """One forward of the patched model (either expert): True when the block stack is skipped."""
    use = True
    if st.mode == "i2v":
        if st.cnt < int(st.split_step + (st.num_steps - st.split_step) * st.retention_ratio):
            use = False
    else:
        if st.cnt < int(st.split_step * st.retention_ratio) or (
                st.cnt <= ((st.num_steps - st.split_step) * st.retention_ratio + st.split_step)
                and st.cnt >= st.split_step):
            use = False
    b = int(st.cnt % 2)
    skip = False
    if use:
        st.acc_ratio[b] = st.acc_ratio[b] * st.mag_ratios[st.cnt]
        st.acc_steps[b] += 1
        st.acc_err[b] += np.abs(1 - st.acc_ratio[b])
        # the release would add a None residual (and fail) when a first call is not retained: we compute instead
        if st.acc_err[b] < st.thresh and st.acc_steps[b] <= st.K and st.residual[b] is not None:
            skip = True
        else:
            st.acc_err[b], st.acc_steps[b], st.acc_ratio[b] = 0, 0, 1.0
    st.residual[b] = "residual"
    st.cnt += 1
    return skip


def release_schedule(preset, n, thresh, k, r, split_steps=None):
    """Skipped steps per branch of the release's T2V/I2V loop (cond then uncond each step, both experts)."""
    shift, boundary, mode = SETTINGS[preset]
    if split_steps is None:
        split_steps = release_high_noise_steps(n, shift, boundary)
    st = ReleaseState(PUBLISHED[preset]["mag_ratios"], n, split_steps, mode, thresh, k, r)
    skipped = {"cond": [], "uncond": []}
    for step in range(n):
        for branch in ("cond", "uncond"):  # the release's generate: model(cond) then model(null) per step
            if release_call(st):
                skipped[branch].append(step)
    return skipped


def ours(preset, n, thresh, k, r, switch=None, branch_sync="official"):
    p = get_preset(preset)
    switch = preset_switch_step(preset, n) if switch is None else switch
    pol = build_magcache(preset, None, MagCacheConfig(thresh, k, r), n, p.table.branches, branch_sync=branch_sync,
                         switch_step=switch)
    return skip_schedule(pol, n, p.table.branches)


SETS = ((0.06, 2, 0.4), (0.06, 2, 0.1), (0.06, 2, 0.2), (0.12, 3, 0.2), (0.24, 6, 0.0), (0.03, 1, 0.25),
        (0.5, 10, 0.35), (0.1, 4, 0.5), (0.08, 2, 0.75))
STEPS = (40, 50, 30, 20, 41, 39, 60, 25, 11, 14, 10, 3, 2)


def test_preset_arrays_are_the_published_ones():
    ref = json.load(open(REFERENCE))["models"] if os.path.isfile(REFERENCE) else None
    for name in ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b"):
        entry = PUBLISHED[name]
        assert len(entry["mag_ratios"]) == 80 and entry["mag_ratios"][:2] == [1.0, 1.0]
        if ref is not None:
            assert entry["mag_ratios"] == ref[name]["mag_ratios"]
    for name in ("wan2.2-ti2v-5b-t2v", "wan2.2-ti2v-5b-i2v"):
        assert len(PUBLISHED[name]["mag_ratios"]) == 100
    # the switch shows as the low pair at the 40-step switch: T2V step 26 (~0.65), I2V step 15 (~0.91)
    t2v = get_preset("wan2.2-t2v-a14b").table.ratios
    assert min(t2v["cond"]) == t2v["cond"][26] < 0.66 and min(t2v["uncond"]) == t2v["uncond"][26]
    i2v = get_preset("wan2.2-i2v-a14b").table.ratios
    assert 0.90 < i2v["cond"][15] < 0.92 and all(v > 0.98 for v in i2v["cond"][1:15])
    assert preset_switch_step("wan2.2-t2v-a14b", 40) == 26 and preset_switch_step("wan2.2-i2v-a14b", 40) == 15
    d = get_preset("wan2.2-t2v-a14b").defaults
    assert (d["thresh"], d["K"], d["retention"], d["shift"], d["boundary"]) == (0.06, 2, 0.4, 12.0, 0.875)
    d = get_preset("wan2.2-i2v-a14b").defaults
    assert (d["thresh"], d["K"], d["retention"], d["shift"], d["boundary"]) == (0.06, 2, 0.1, 5.0, 0.9)


def test_published_settings_exact():
    """The published settings at 40 steps: the schedules and the computed share, which matches the README's
    timings (T2V 27m09s -> 18m10s = 1.49x for 80/52 = 1.54x calls; I2V 26m43s -> 20m05s = 1.33x for 80/59)."""
    out = ours("wan2.2-t2v-a14b", 40, 0.06, 2, 0.4)
    want = [10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 32, 34, 36]
    assert out["skipped_steps"] == {"cond": want, "uncond": want} == release_schedule("wan2.2-t2v-a14b", 40, 0.06, 2,
                                                                                      0.4)
    assert out["computed_calls"] == 52
    out = ours("wan2.2-i2v-a14b", 40, 0.06, 2, 0.1)
    assert out["skipped_steps"] == {"cond": [18, 19, 21, 22, 24, 25, 27, 29, 31, 33],
                                    "uncond": [17, 18, 20, 21, 23, 24, 26, 27, 29, 31, 33]}
    assert out["skipped_steps"] == release_schedule("wan2.2-i2v-a14b", 40, 0.06, 2, 0.1)
    assert out["computed_calls"] == 59


@pytest.mark.parametrize("preset", ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"])
def test_matches_release_over_grid(preset):
    """Exact over thresholds, K, retention and step counts. At each step count the release's split is its own
    grid's; ours is the sampler's. Where they agree the schedules must be equal; where they differ ours must
    equal the release's loop given the sampler's split, and ours given the release's split the release."""
    shift, boundary, _ = SETTINGS[preset]
    differing = 0
    for n in STEPS:
        rel_split = release_high_noise_steps(n, shift, boundary)
        our_split = expert_switch_step(n, shift, boundary)
        assert our_split == preset_switch_step(preset, n)
        assert rel_split == expert_switch_step(n, shift, boundary, grid="magcache")
        differing += rel_split != our_split
        for t, k, r in SETS:
            case = (n, t, k, r)
            assert ours(preset, n, t, k, r)["skipped_steps"] == release_schedule(preset, n, t, k, r, our_split), case
            got = ours(preset, n, t, k, r, switch=rel_split)["skipped_steps"]
            assert got == release_schedule(preset, n, t, k, r), case
    assert differing >= 2  # the grid includes step counts where the two grids disagree (T2V: 11, 39, 41; I2V: 14, 39)


def test_switch_window_float32_bound():
    """The release compares its int64 counter with a float bound, i.e. in float32: a bound a hair under an
    integer in float64 still admits that integer."""
    rule = RULES["wan2.2-t2v"]
    calls = 100
    assert 100 * 0.29 + 0 < 29 and torch.tensor(29) <= 100 * 0.29 + 0  # 28.999999999999996, 29.0 in float32
    assert rule.retained_call(29, calls, 0, 0.29) and not rule.retained_call(30, calls, 0, 0.29)
    for r in np.linspace(0.0, 0.95, 96):
        for split in (0, 2, 26, 52, 80):
            for c in range(calls):
                want = c < int(split * r) or (bool(torch.tensor(c) <= ((calls - split) * r + split)) and c >= split)
                assert rule.retained_call(c, calls, split, float(r)) == want, (c, split, r)


def test_joint_retains_every_step_the_release_retains_a_call_of():
    out = ours("wan2.2-t2v-a14b", 40, 0.06, 2, 0.4, branch_sync="joint")
    cond, uncond = out["skipped_steps"]["cond"], out["skipped_steps"]["uncond"]
    assert cond == uncond
    retained = set(range(0, 10)) | set(range(26, 32))  # calls 0..19 and 52..63
    assert not retained & set(cond) and set(cond) <= set(range(40))
    official = ours("wan2.2-t2v-a14b", 40, 0.06, 2, 0.4)["skipped_steps"]["cond"]
    assert set(cond) <= set(official) | set(range(32, 40))
    # I2V at R=0.1: calls < int(30 + 50*0.1) = 35 -> steps 0..17 hold a retained call (step 17: cond only)
    out = ours("wan2.2-i2v-a14b", 40, 0.06, 2, 0.1, branch_sync="joint")
    assert min(out["skipped_steps"]["cond"]) >= 18 and out["skipped_steps"]["cond"] == out["skipped_steps"]["uncond"]
    pol = build_magcache("wan2.2-i2v-a14b", None, MagCacheConfig(0.06, 2, 0.1), 40, ["cond", "uncond"],
                         branch_sync="joint", switch_step=15)
    assert (pol.retention_calls, pol.retention_steps) == (35, 18)
    assert pol.describe()["switch_step"] == 15


def test_ti2v_rule_is_wan_head_retention():
    """TI2V-5B: the release's init_magcache(model, ratios, args) fails (split_steps=None * 2); the forward's branch
    for a missing split retains int(2*N*R) calls, Wan2.1's rule, which is what its presets use."""
    with pytest.raises(TypeError):
        None * 2  # what the release's init_magcache evaluates for TI2V (split_steps defaults to None)
    for name in ("wan2.2-ti2v-5b-t2v", "wan2.2-ti2v-5b-i2v"):
        p = get_preset(name)
        assert p.rule is RULES["wan"] and (p.defaults["thresh"], p.defaults["K"], p.defaults["retention"],
                                            p.defaults["num_steps"]) == (0.06, 2, 0.2, 50)
        raw = np.array(PUBLISHED[name]["mag_ratios"])
        for n, (t, k, r) in ((50, (0.06, 2, 0.2)), (30, (0.12, 3, 0.2)), (51, (0.06, 2, 0.1))):
            acc, err, steps, skipped = [1.0, 1.0], [0.0, 0.0], [0, 0], {"cond": [], "uncond": []}
            ratios = raw if n == 50 else np.stack([_interp(raw[0::2], n), _interp(raw[1::2], n)], 1).reshape(-1)
            for cnt in range(2 * n):
                b = cnt % 2
                if cnt < int(2 * n * r):
                    continue
                acc[b] *= ratios[cnt]
                steps[b] += 1
                err[b] += abs(1 - acc[b])
                if err[b] < t and steps[b] <= k and cnt >= 2:
                    skipped[("cond", "uncond")[b]].append(cnt // 2)
                    continue
                acc[b], err[b], steps[b] = 1.0, 0.0, 0
            assert ours(name, n, t, k, r)["skipped_steps"] == skipped, (name, n)


def test_switch_grids():
    from magcache_dist.sampling.schedulers import FlowScheduler

    for n in (40, 39, 41, 11, 14, 50):
        for shift, boundary in ((12.0, 0.875), (5.0, 0.9)):
            ts = FlowScheduler("unipc", n, shift).timesteps.numpy()
            assert np.array_equal(ts, wan_timesteps(n, shift))
            assert expert_switch_step(n, shift, boundary) == int((ts >= boundary * 1000).sum())
    assert expert_switch_step(11, 12.0, 0.875, "magcache") == 8 and expert_switch_step(11, 12.0, 0.875) == 7
    with pytest.raises(InternalError, match="grid"):  # a caller's mistake, not the user's
        wan_timesteps(10, 5.0, "other")


def test_switch_rules_need_a_switch_step():
    for bad in (None, -1, 41, True, 2.5):
        with pytest.raises(ValueError, match="expert switch"):
            build_magcache("wan2.2-t2v-a14b", None, MagCacheConfig(0.06, 2, 0.4), 40, ["cond", "uncond"],
                           switch_step=bad)
    # a Wan2.1 preset ignores it
    pol = build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(), 50, ["cond", "uncond"], switch_step=None)
    assert "switch_step" not in pol.describe()


def test_plan_command_wan22():
    out = plan_json("--preset", "wan2.2-t2v-a14b", "--steps", "40", "--thresh", "0.06", "--K", "2",
                    "--retention", "0.4")
    assert out["computed_calls"] == 52
    moved = plan_json("--preset", "wan2.2-t2v-a14b", "--steps", "40", "--thresh", "0.06", "--K", "2",
                      "--retention", "0.4", "--switch-step", "20")
    assert moved["skipped_steps"] == ours("wan2.2-t2v-a14b", 40, 0.06, 2, 0.4, switch=20)["skipped_steps"]
    code, _, err = plan_command("--preset", "wan2.2-t2v-a14b", "--steps", "40", "--thresh", "0.06", "--K", "2",
                                "--retention", "0.4", "--switch-step", "41")
    assert code == 2 and "expert switch" in err
