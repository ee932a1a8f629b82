"""Online MagCache: magnitude measurements and predictor with known answers, and decisions under sequence
parallelism (simulated ranks, 175 tokens: divisible by neither 2, 3 nor 4) identical on every rank and equal to
the single-process decisions."""
import math

import pytest
import torch

from magcache_dist.auto import sigma_grid
from magcache_dist.cache import MagCacheConfig
from magcache_dist.cache.online import OnlineConfig, build_online, predict_slope
from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts
from magcache_dist.parallel.threads import run_threads
from magcache_dist.random_weights import odd_inputs, tiny_model
from magcache_dist.sampling import SamplerConfig, sample
from tests.support.helpers import run_sampling

STEPS = 10
CFG = SamplerConfig(num_steps=STEPS)
SIGMAS = sigma_grid(STEPS, CFG.shift)


def _policy(par, thresh=0.4, K=2, predictor="powerlaw"):
    return build_online(MagCacheConfig(thresh, K, 0.2), STEPS, CFG.branches, SIGMAS, online=OnlineConfig(predictor))


def _perturbed_state(policy, par, perturb: float):
    """This rank's cache state whose SP sum scales its ratio measurement by ``perturb`` (1: exact)."""
    def reduce_sum(t):
        t = t.clone()
        t[0] *= perturb  # perturb != 1: this rank measures slightly different ratios
        return par.sp.all_reduce(t, "sum")

    return policy.new_state(CFG.branches, reduce_sum=reduce_sum, reduce_max=lambda t: par.sp.all_reduce(t, "max"))


def _run(dims, **kw):
    return run_sampling(dims, CFG, lambda par: _policy(par, **kw))


@pytest.fixture(scope="module")
def reference():
    return _run(None)[0]


# ---- measurement and predictor with known answers ---------------------------------------------------------------
def _feed(policy, magnitude, steps, compute_every=1):
    """Drive store() with residuals r_s = magnitude(sigma_s) * base (so every per-token ratio is exact)."""
    base = torch.randn(1, 9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = policy.new_state(["cond"])
    for s in range(0, steps, compute_every):
        policy.store(state, s, "cond", torch.zeros_like(base), magnitude(policy.sigmas[s]) * base)
    return state


def test_measured_ratio_over_a_gap_gives_the_exact_slope():
    k_true = 0.8
    pol = build_online(MagCacheConfig(), STEPS, ["cond"], SIGMAS)
    state = _feed(pol, lambda s: math.exp(k_true * s), 7, compute_every=3)  # computed at 0, 3, 6
    hist = state["cond"].extra["history"]
    assert [(h["from_step"], h["step"]) for h in hist] == [(0, 3), (3, 6)]
    for h in hist:
        assert h["ratio"] == pytest.approx(math.exp(k_true * (SIGMAS[h["step"]] - SIGMAS[h["from_step"]])), rel=1e-12)
        assert h["k"] == pytest.approx(k_true, rel=1e-9)
    # constant slope: both predictors give the exact next-step ratio
    for predictor in ("hold", "powerlaw"):
        pol.online = OnlineConfig(predictor)
        assert pol.gamma(state, 7, "cond") == pytest.approx(math.exp(k_true * (SIGMAS[7] - SIGMAS[6])), rel=1e-9)


def test_powerlaw_predictor_follows_the_falling_magnitude_law():
    # ||r|| = (sigma + c)^a: the per-step ratio falls sharply in the last steps of a shifted grid
    a, c = 0.75, 0.17
    n = 30
    sig = sigma_grid(n, 5.0)
    pol = build_online(MagCacheConfig(), n, ["cond"], sig)
    state = _feed(pol, lambda s: (s + c) ** a, n - 1)
    truth = ((sig[n - 1] + c) / (sig[n - 2] + c)) ** a
    hist = [(h["sigma_mid"], h["k"]) for h in state["cond"].extra["history"]]
    mid = 0.5 * (sig[n - 2] + sig[n - 1])
    power = math.exp(predict_slope(hist, mid, "powerlaw", 6) * (sig[n - 1] - sig[n - 2]))
    hold = math.exp(predict_slope(hist, mid, "hold", 6) * (sig[n - 1] - sig[n - 2]))
    assert truth < 0.9  # the last step really drops
    assert abs(math.log(power / truth)) < 2e-3  # the power-law fit extrapolates the drop
    assert abs(math.log(hold / truth)) > 5 * abs(math.log(power / truth))  # holding the slope does not


def test_predictor_falls_back_to_the_last_slope_when_the_law_does_not_hold():
    assert predict_slope([(0.9, 0.5)], 0.8, "powerlaw", 6) == 0.5  # one point
    assert predict_slope([(0.9, -0.2), (0.8, 0.1), (0.7, 0.3)], 0.6, "powerlaw", 6) == 0.3  # < 3 positive slopes
    assert predict_slope([(0.9, 1.0), (0.8, 0.9), (0.7, 0.8)], 0.6, "powerlaw", 6) == 0.8  # rising magnitude law


def test_no_measurement_means_compute_and_bad_config_names_the_key():
    pol = build_online(MagCacheConfig(0.12, 2, 0.0), STEPS, ["cond"], SIGMAS)
    state = pol.new_state(["cond"])
    assert pol.propose(state, 0, "cond").reason == "no-history"
    with pytest.raises(ValueError, match="cache.online.predictor='magic'"):
        OnlineConfig("magic")
    with pytest.raises(ValueError, match="cache.online.window=2"):
        OnlineConfig("powerlaw", 2)


def test_error_scalar_is_the_groups_so_ranks_agree_even_when_their_measurements_differ():
    """Rank 1 measures ratios 0.3% off; the all-reduced (error, ratio) still gives every rank one decision."""
    noise, texts = odd_inputs()

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        pol = _policy(par)
        state = _perturbed_state(pol, par, 1.003 if par.rank == 1 else 1.0)
        return sample(model, noise, texts, CFG, pol, par, guard=True, state=state).decisions

    decs = run_threads(one, build_thread_contexts(ParallelDims(2, 1), timeout=60))
    assert decs[0] == decs[1]


# ---- SP=1/2/4: identical on every rank, equal to single process --------------------------------------------------
@pytest.mark.parametrize("dims", [ParallelDims(2, 1), ParallelDims(4, 1), ParallelDims(1, 2), ParallelDims(1, 3),
                                  ParallelDims(2, 2), ParallelDims(2, 1, 2)],
                         ids=lambda d: f"u{d.ulysses_degree}r{d.ring_degree}c{d.cfg_degree}")
def test_online_decisions_identical_on_every_rank_and_equal_to_single_process(dims, reference):
    ref_latents, ref_decisions = reference
    reasons = {d["reason"] for d in ref_decisions}
    assert "skip" in reasons and reasons & {"threshold", "max-skips"}  # the run really decides both ways
    outs = _run(dims)
    for rank, (latents, decisions) in enumerate(outs):
        assert (latents - ref_latents).abs().max() < 1e-4, rank
        for b in {d["branch"] for d in decisions}:
            mine = [d for d in decisions if d["branch"] == b]
            ref = [d for d in ref_decisions if d["branch"] == b]
            assert [(d["step"], d["compute"], d["reason"]) for d in mine] == \
                   [(d["step"], d["compute"], d["reason"]) for d in ref], (rank, b)
            for d, r in zip(mine, ref):
                assert d["error"] == pytest.approx(r["error"], rel=1e-5, abs=1e-7)  # fp32 attention order
                assert d.get("measured_ratio", 1.0) == pytest.approx(r.get("measured_ratio", 1.0), rel=1e-5)
    # within one SP group every rank holds bit-identical decisions (errors and measurements included)
    sp = dims.sp_degree
    for g in range(dims.cfg_degree):
        group = [outs[r][1] for r in range(g * sp, (g + 1) * sp)]
        assert all(d == group[0] for d in group)


def test_error_is_magcaches_when_the_predictor_is_exact_and_widened_by_its_recent_miss():
    k_true = 0.8
    pol = build_online(MagCacheConfig(0.5, 3, 0.0), STEPS, ["cond"], SIGMAS)
    state = _feed(pol, lambda s: math.exp(k_true * s), 4)  # computed 0..3, exact law: no miss
    assert state["cond"].extra["misses"] == pytest.approx([0.0, 0.0], abs=1e-12)
    g = math.exp(k_true * (SIGMAS[4] - SIGMAS[3]))
    d = pol.propose(state, 4, "cond")
    assert not d.compute and d.error == pytest.approx(abs(1 - g), rel=1e-9)  # MagCache's |1 - ratio|
    # step 4 comes out 10% larger than the law: the miss is |log 1.1| per step (the latest; mean of 3 on request)
    base = torch.randn(1, 9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pol.store(state, 4, "cond", torch.zeros_like(base), 1.1 * math.exp(k_true * SIGMAS[4]) * base)
    m = math.log(1.1)
    assert pol.miss(state, "cond") == pytest.approx(m, rel=1e-9)
    pol.online = OnlineConfig(miss_window=3)
    assert pol.miss(state, "cond") == pytest.approx(m / 3, rel=1e-9)
    pol.online = OnlineConfig()
    d = pol.propose(state, 5, "cond")
    g5 = pol.gamma(state, 5, "cond")
    assert d.error == pytest.approx(max(abs(1 - g5 * math.exp(m)), abs(1 - g5 * math.exp(-m))), rel=1e-9)
    pol.online = OnlineConfig(margin=False)
    assert pol.propose(state, 5, "cond").error == pytest.approx(abs(1 - g5), rel=1e-9)


