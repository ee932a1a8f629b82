"""Constant work once per generation: each branch's embedded text and every block's cross-attention keys / values
are computed once (``prepare_condition``) and reused by every call, computed or skipped, with exactly the outputs
of computing them at every call (T2V, I2V, the embedded model; whole generations with MagCache skipping)."""
import pytest
import torch

from magcache_dist.cache import MagCacheConfig, build_magcache
from magcache_dist.random_weights import odd_inputs, randomize, tiny_model
from magcache_dist.sampling import SamplerConfig, loop, sample
from models.wan import PreparedCondition, get_config
from models.wan_i2v import I2VCondition, build_wan_model


def _i2v_inputs(model, g):
    cfg = model.cfg
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    cond = I2VCondition(torch.randn(1, 5, cfg.text_dim, generator=g), torch.randn(1, 3, cfg.image_dim, generator=g),
                        torch.randn(1, 20, 2, 4, 6, generator=g))
    return x, cond


@pytest.mark.parametrize("name", ["tiny", "tiny-wan-t2v", "tiny-wan-i2v", "tiny-video"])
def test_prepared_condition_gives_exactly_the_same_output(name):
    g = torch.Generator().manual_seed(0)
    model = randomize(build_wan_model(get_config(name)), 1).eval()
    t = torch.tensor([700.0])
    if name == "tiny-wan-i2v":
        x, cond = _i2v_inputs(model, g)
    else:
        c = model.cfg
        x = torch.randn(1, c.in_dim - c.coord_channels, 5, 8, 8, generator=g) if name == "tiny-video" else \
            torch.randn(1, c.in_dim, 2, 4, 6, generator=g)
        cond = torch.randn(1, 5, c.text_dim, generator=g)
    with torch.no_grad():
        prepared = model.prepare_condition(cond)
        assert isinstance(prepared, PreparedCondition) and len(prepared.cross_kv) == len(model.blocks)
        assert torch.equal(model(x, t, cond), model(x, t, prepared))
        assert torch.equal(model(x, torch.tensor([10.0]), cond), model(x, torch.tensor([10.0]), prepared))


def test_a_generation_embeds_each_branch_once_and_equals_the_unprepared_one(monkeypatch):
    model = tiny_model(0)
    noise, texts = odd_inputs()
    cfg = SamplerConfig(num_steps=8)
    policy = build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(0.12, 2, 0.2), 8, cfg.branches)
    embeds = []
    hook = model.text_embedding.register_forward_hook(lambda *a: embeds.append(1))
    once = sample(model, noise, texts, cfg, policy)
    assert len(embeds) == 2  # cond and uncond, once each, for 16 calls
    assert any(not d["compute"] for d in once.decisions)  # the skipped calls embed nothing either
    monkeypatch.setattr(loop, "prepare_conditions", lambda model, texts, branches: texts)
    every = sample(model, noise, texts, cfg, policy)
    hook.remove()
    assert len(embeds) == 2 + 16  # the old way: every call
    assert torch.equal(once.latents, every.latents) and once.decisions == every.decisions
