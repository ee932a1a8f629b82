"""cache.branch_sync=joint: one skip decision per step for every CFG branch, agreed over the whole job.

Exact schedules (hand-computed and against the schedule command), the official rule unchanged beside it, and
simulated ranks (threads: SP 2, ring 3, CFG 2, CFG 2 x Ulysses 2 on 175 tokens, divisible by none of the degrees)
giving the single-process latents within 1e-4 and identical decisions on every rank and in both branches, for
calibrated MagCache, online MagCache and TeaCache.
"""

import pytest

from magcache_dist.cache import MagCacheConfig, MagCachePolicy, RatioTable, build_magcache, skip_schedule
from magcache_dist.cache.online import build_online
from magcache_dist.cache.presets import get_rule
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import ParallelDims, SkipDisagreement, apply_sequence_parallel, build_thread_contexts
from magcache_dist.parallel.threads import run_threads
from magcache_dist.random_weights import odd_inputs, tiny_model
from magcache_dist.sampling import SamplerConfig, sample
from magcache_dist.sampling.schedulers import FlowScheduler
from tests.support.helpers import plan_json, run_sampling

STEPS = 8
CFG = SamplerConfig(num_steps=STEPS)
TOL = 1e-4
BRANCHES = ["cond", "uncond"]
# the tests' job (wan2.1-t2v-1.3b at 8 steps, 0.12 / K2 / retention 0.2): official desyncs, joint does not
OFFICIAL = {"cond": [2, 3, 5, 6], "uncond": [1, 2, 4, 5]}
JOINT = [2, 3, 5, 6]


def magcache(sync, thresh=0.12, k=2, r=0.2, steps=STEPS):
    return build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(thresh, k, r), steps, BRANCHES, branch_sync=sync)


def skips_by_branch(decisions):
    return {b: [d["step"] for d in decisions if d["branch"] == b and not d["compute"]] for b in BRANCHES}


def test_plan_official_unchanged_and_joint_one_schedule():
    assert skip_schedule(magcache("official"), STEPS, BRANCHES)["skipped_steps"] == OFFICIAL
    assert skip_schedule(magcache("joint"), STEPS, BRANCHES)["skipped_steps"] == {"cond": JOINT, "uncond": JOINT}


def test_joint_retention_is_counted_in_steps_rounded_up():
    # official Wan: int(2*N*R) calls; joint: every step holding a retained call, ceil(calls / 2)
    for steps, r, calls, joint_steps in ((20, 0.2, 8, 4), (30, 0.25, 15, 8), (8, 0.2, 3, 2), (50, 0.2, 20, 10)):
        pol = magcache("joint", r=r, steps=steps)
        assert (pol.retention_calls, pol.retention_steps) == (calls, joint_steps)
        skipped = skip_schedule(pol, steps, BRANCHES)["skipped_steps"]
        assert min(skipped["cond"]) >= joint_steps
    flux = build_magcache("flux.1-dev", None, MagCacheConfig(0.24, 5, 0.1), 28, ["cond"], branch_sync="joint")
    assert flux.retention_steps == flux.retention_calls == 3  # one call per step: the same as official
    assert skip_schedule(flux, 28, ["cond"])["skipped_steps"] == skip_schedule(
        build_magcache("flux.1-dev", None, MagCacheConfig(0.24, 5, 0.1), 28, ["cond"]), 28, ["cond"])["skipped_steps"]


def test_joint_skips_only_when_every_branch_may_skip():
    # cond never changes magnitude; uncond drops 10% at step 2: joint computes step 2 for both branches
    table = RatioTable(6, {"cond": [1.0] * 6, "uncond": [1.0, 1.0, 0.9, 1.0, 1.0, 1.0]})
    rule = get_rule("wan")
    official = MagCachePolicy(table, rule, MagCacheConfig(0.05, 3, 0.0), 6, BRANCHES)
    joint = MagCachePolicy(table, rule, MagCacheConfig(0.05, 3, 0.0), 6, BRANCHES, branch_sync="joint")
    assert skip_schedule(official, 6, BRANCHES)["skipped_steps"] == {"cond": [1, 2, 3, 5], "uncond": [1, 3, 4, 5]}
    assert skip_schedule(joint, 6, BRANCHES)["skipped_steps"] == {"cond": [1, 3, 4, 5], "uncond": [1, 3, 4, 5]}
    state = joint.new_state(BRANCHES)
    plan_log = []
    for step in range(6):  # the reasons in the log: cond computes step 2 because of uncond's error
        from magcache_dist.cache.base import joint_decisions, joint_key
        props = {b: joint.propose(state, step, b) for b in BRANCHES}
        for b, d in joint_decisions(joint, props, joint_key(joint, props)).items():
            joint.commit(state, step, b, d)
            state[b].has_residual = True
            plan_log.append((step, b, d.reason))
    assert (2, "cond", "joint") in plan_log and (2, "uncond", "threshold") in plan_log


def test_plan_command_branch_sync():
    def run(*extra):
        return plan_json("--preset", "wan2.1-t2v-1.3b", "--steps", "8", "--thresh", "0.12", "--K", "2",
                         "--retention", "0.2", *extra)
    assert run()["skipped_steps"] == OFFICIAL and run()["branch_sync"] == "official"  # default: official
    joint = run("--branch-sync", "joint")
    assert joint["branch_sync"] == "joint" and joint["skipped_steps"] == {"cond": JOINT, "uncond": JOINT}
    assert joint["computed_calls"] == 2 * (STEPS - len(JOINT))


def test_bad_branch_sync_is_rejected_naming_the_key(tmp_path):
    cfg = load_config(None, ["cache.branch_sync=both", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="cache.branch_sync='both'"):
        validate_job(cfg, 1)


# ---- simulated ranks ------------------------------------------------------------------------------------------
SIGMAS = FlowScheduler("unipc", STEPS, CFG.shift).sigmas


def policies(par=None):
    """Each rank's joint policy of each kind (the sampler's cache state reduces over the rank's SP group)."""
    return {
        "magcache": magcache("joint"),
        "online": build_online(MagCacheConfig(0.4, 2, 0.2), STEPS, BRANCHES, SIGMAS, branch_sync="joint"),
        "teacache": build_teacache("tiny", 0.3, STEPS, coefficients=[1.0, 0.0], branch_sync="joint"),
    }


@pytest.fixture(scope="module")
def solo():
    return {kind: run_sampling(None, CFG, lambda par, k=kind: policies()[k])[0] for kind in policies()}


def assert_one_decision_per_step(decisions):
    by_step = {}
    for d in decisions:
        by_step.setdefault(d["step"], set()).add(d["compute"])
    assert all(len(v) == 1 for v in by_step.values()), by_step


@pytest.mark.parametrize("kind", ["magcache", "online", "teacache"])
def test_solo_joint_runs_skip_both_branches_together(kind, solo):
    latents, decisions = solo[kind]
    assert_one_decision_per_step(decisions)
    sk = skips_by_branch(decisions)
    assert sk["cond"] == sk["uncond"] and sk["cond"], sk  # it really skips
    if kind == "magcache":
        assert sk["cond"] == JOINT
    if kind == "magcache":  # the same settings desync under the official rule (the reason joint exists)
        _, off = run_sampling(None, CFG, lambda par: magcache("official"))[0]
        assert skips_by_branch(off) == OFFICIAL


LAYOUTS = [ParallelDims(2, 1), ParallelDims(1, 3), ParallelDims(1, 1, 2), ParallelDims(2, 1, 2)]


@pytest.mark.parametrize("dims", LAYOUTS, ids=lambda d: f"u{d.ulysses_degree}r{d.ring_degree}c{d.cfg_degree}")
@pytest.mark.parametrize("kind", ["magcache", "online", "teacache"])
def test_joint_decisions_identical_on_every_rank_and_equal_single_process(kind, dims, solo):
    ref_latents, ref_decisions = solo[kind]
    ref_steps = [(d["step"], d["compute"]) for d in ref_decisions if d["branch"] == "cond"]
    for rank, (latents, decisions) in enumerate(run_sampling(dims, CFG, lambda par: policies(par)[kind])):
        assert (latents - ref_latents).abs().max() < TOL, rank
        assert_one_decision_per_step(decisions)
        mine = BRANCHES[rank // dims.sp_degree: rank // dims.sp_degree + 1] if dims.cfg_degree == 2 else BRANCHES
        for b in mine:  # each half's log of its own branch equals the single-process log of the step decisions
            assert [(d["step"], d["compute"]) for d in decisions if d["branch"] == b] == ref_steps, (rank, b)


def test_cfg_parallel_halves_keep_identical_decision_logs():
    logs = run_sampling(ParallelDims(2, 1, 2), CFG, lambda par: policies(par)["online"])
    steps = [[(d["step"], d["compute"], d["reason"] == "skip", d["joint_key"]) for d in dec] for _, dec in logs]
    assert steps[0] == steps[1] == steps[2] == steps[3]  # cond half (ranks 0, 1) and uncond half (2, 3)
    assert {d["branch"] for d in logs[0][1]} == {"cond"} and {d["branch"] for d in logs[2][1]} == {"uncond"}


def test_ranks_with_different_settings_fail_together_instead_of_hanging():
    noise, texts = odd_inputs()
    outcomes = {}

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        pol = magcache("joint", thresh=0.12 if par.rank != 3 else 0.24)  # rank 3 started with another config
        try:
            sample(model, noise, texts, CFG, pol, par)
        except SkipDisagreement as e:
            outcomes[par.rank] = str(e).split("this rank")[0]
        return None

    run_threads(one, build_thread_contexts(ParallelDims(2, 1, 2), timeout=30))
    assert set(outcomes) == {0, 1, 2, 3} and len(set(outcomes.values())) == 1
    assert "different cache settings" in outcomes[0]
