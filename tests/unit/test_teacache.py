"""TeaCache's decision rule on known inputs, its probe on a real block, and the sampler/pipeline wiring."""
from types import SimpleNamespace

import pytest
import torch

from magcache_dist.cache import NoCache
from magcache_dist.cache.teacache import TeaCacheConfig, TeaCachePolicy, modulated_input, polyval
from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.random_weights import tiny_model
from magcache_dist.sampling import SamplerConfig, sample

D = 8


def identity_probe(value: float):
    """A probe whose modulated input is exactly ``value`` everywhere: zero modulation and norm1 = identity."""
    block = SimpleNamespace(modulation=torch.zeros(1, 6, D), norm1=lambda x: x)
    model = SimpleNamespace(first_block=lambda ctx: block)
    ctx = SimpleNamespace(e0=torch.zeros(1, 6, D))
    return model, torch.full((1, 4, D), float(value)), ctx


def run_rule(policy, values_by_branch, num_steps):
    """Drive propose/commit like the sampler (residual kept after each computed call); return skipped steps."""
    branches = list(values_by_branch)
    state = policy.new_state(branches)
    skipped = {b: [] for b in branches}
    errors = {b: [] for b in branches}
    for step in range(num_steps):
        for b in branches:
            d = policy.propose(state, step, b, probe=identity_probe(values_by_branch[b][step]))
            policy.commit(state, step, b, d)
            errors[b].append(d.error)
            if d.compute:
                state[b].has_residual = True
            else:
                skipped[b].append(step)
    return skipped, errors, state


def teacache(thresh, coefficients=(1.0, 0.0), num_steps=10, branches=("cond",)):
    return TeaCachePolicy(TeaCacheConfig(thresh=thresh, coefficients=list(coefficients)), num_steps)


def test_polyval_highest_degree_first():
    assert polyval([2.0, -1.0, 3.0], 2.0) == 2 * 4 - 2 + 3
    assert polyval([5.0], 7.0) == 5.0


def test_first_and_last_steps_always_computed():
    """A constant input (rel-L1 0) would skip forever; only the first and last steps are computed."""
    n = 8
    skipped, _, _ = run_rule(teacache(thresh=1e9, num_steps=n), {"cond": [1.0] * n}, n)
    assert skipped["cond"] == list(range(1, n - 1))


def test_threshold_accumulates_rescaled_change():
    """Input grows 10% per step -> rel-L1 0.1 per step; identity polynomial, thresh 0.25: skip, skip, compute."""
    n = 10
    values = [1.1 ** s for s in range(n)]
    skipped, errors, _ = run_rule(teacache(thresh=0.25, num_steps=n), {"cond": values}, n)
    assert skipped["cond"] == [1, 2, 4, 5, 7, 8]
    assert errors["cond"][1:4] == pytest.approx([0.1, 0.2, 0.3])
    # the polynomial rescales the change: doubling it halves the run of skips
    skipped2, errors2, _ = run_rule(teacache(thresh=0.25, coefficients=(2.0, 0.0), num_steps=n), {"cond": values}, n)
    assert skipped2["cond"] == [1, 3, 5, 7]
    assert errors2["cond"][1:3] == pytest.approx([0.2, 0.4])
    # threshold 0: never skips
    skipped0, _, _ = run_rule(teacache(thresh=0.0, num_steps=n), {"cond": values}, n)
    assert skipped0["cond"] == []


def test_branches_keep_separate_state():
    """cond is constant (always skippable), uncond changes fast (always computed): neither affects the other."""
    n = 8
    values = {"cond": [1.0] * n, "uncond": [2.0 ** s for s in range(n)]}
    skipped, _, state = run_rule(teacache(thresh=0.5, num_steps=n, branches=("cond", "uncond")), values, n)
    assert skipped == {"cond": list(range(1, n - 1)), "uncond": []}
    alone, _, _ = run_rule(teacache(thresh=0.5, num_steps=n), {"cond": values["cond"]}, n)
    assert alone["cond"] == skipped["cond"]
    assert state["cond"].extra["prev_mod"] is not state["uncond"].extra["prev_mod"]


def test_state_lives_in_the_cache_state_only():
    policy = teacache(thresh=0.25)
    before = dict(vars(policy))
    a, _, sa = run_rule(policy, {"cond": [1.1 ** s for s in range(10)]}, 10)
    assert vars(policy) == before
    assert policy.new_state(["cond"])["cond"].extra == {}  # a fresh state knows nothing of the last run
    b, _, _ = run_rule(policy, {"cond": [1.1 ** s for s in range(10)]}, 10)
    assert a == b


def test_propose_does_not_mutate_state():
    policy = teacache(thresh=0.25)
    state = policy.new_state(["cond"])
    d0 = policy.propose(state, 0, "cond", probe=identity_probe(1.0))
    assert state["cond"].extra == {} and d0.compute
    policy.commit(state, 0, "cond", d0)
    state["cond"].has_residual = True
    d1 = policy.propose(state, 1, "cond", probe=identity_probe(1.05))
    assert not d1.compute and float(state["cond"].extra["prev_mod"][0, 0, 0]) == 1.0 and state["cond"].acc_err == 0.0


def test_needs_probe_and_refuses_planning():
    policy = teacache(thresh=0.1)
    assert policy.needs_probe
    with pytest.raises(ValueError, match="probe"):
        policy.propose(policy.new_state(["cond"]), 1, "cond")


def test_config_validation():
    with pytest.raises(ValueError, match=r"cache\.teacache\.thresh=-1"):
        TeaCacheConfig(thresh=-1.0)
    with pytest.raises(ValueError, match="coefficients"):
        TeaCacheConfig(thresh=0.1, coefficients=[])


def test_modulated_input_is_what_the_first_block_sees():
    model = tiny_model(seed=3)
    x = torch.randn(1, 3, 4, 16, 16)
    tokens, ctx = model.embed(x, torch.tensor([700.0]), torch.randn(1, 5, model.cfg.text_dim))
    seen = {}

    def grab(module, args):
        seen["x"] = args[0]

    hook = model.blocks[0].self_attn.register_forward_pre_hook(grab)
    try:
        model.forward_blocks(tokens, ctx)
    finally:
        hook.remove()
    torch.testing.assert_close(modulated_input(model, tokens, ctx), seen["x"].float())


def test_sampler_with_teacache_on_a_tiny_model():
    """thresh 0 equals no cache exactly; a huge threshold computes only the first and last steps."""
    model = tiny_model(seed=1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 4, 16, 16, generator=g)
    texts = {"cond": torch.randn(1, 5, model.cfg.text_dim, generator=g),
             "uncond": torch.zeros(1, 0, model.cfg.text_dim)}
    scfg = SamplerConfig(num_steps=6, guidance=5.0, solver="euler")
    ref = sample(model, noise, texts, scfg, NoCache())
    zero = sample(model, noise, texts, scfg, teacache(0.0, num_steps=6, branches=("cond", "uncond")))
    torch.testing.assert_close(zero.latents, ref.latents, rtol=0, atol=0)
    big = sample(model, noise, texts, scfg, teacache(1e9, num_steps=6, branches=("cond", "uncond")))
    computed = sorted((d["step"], d["branch"]) for d in big.decisions if d["compute"])
    assert computed == [(0, "cond"), (0, "uncond"), (5, "cond"), (5, "uncond")]
    assert not torch.equal(big.latents, ref.latents)


def test_pipeline_builds_teacache(tmp_path):
    cfg = load_config(None, ["model.name=tiny", "cache.mode=teacache", "cache.teacache.thresh=0.2",
                             "cache.teacache.coefficients=[3.0,0.5]", f"output_dir={tmp_path}"])
    validate_job(cfg, 1)
    policy = validate_job(cfg, 1).policy
    assert isinstance(policy, TeaCachePolicy)
    assert policy.cfg.thresh == 0.2 and policy.cfg.coefficients == [3.0, 0.5]
    assert policy.describe()["policy"] == "teacache"
    with pytest.raises(ValueError, match=r"cache\.teacache\.thresh=-1"):
        validate_job(load_config(None, ["model.name=tiny", "cache.mode=teacache", "cache.teacache.thresh=-1",
                                        "cache.teacache.coefficients=[1.0,0.0]", f"output_dir={tmp_path}"]), 1)
