"""The shipped tiny-video model (configs/default.yaml) under sequence parallelism with simulated ranks."""
import os

import pytest

from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.parallel.dims import solo_context
from tests.support import ROOT

DEFAULT = os.path.join(ROOT, "configs", "default.yaml")


@pytest.mark.parametrize("ulysses,ring", [(2, 1), (1, 2), (2, 2)])
def test_shipped_model_under_sequence_parallelism_equals_one_process(ulysses, ring):
    """The coordinate channels are appended before the tokens are sharded: the shipped model with its MagCache
    preset gives the single-process latents (fp32, max abs difference < 1e-4) and the same skips on every rank."""
    from magcache_dist.cache import MagCacheConfig, build_magcache
    from magcache_dist.families.common import encode_texts
    from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts
    from magcache_dist.parallel.threads import run_threads
    from magcache_dist.sampling import SamplerConfig, sample

    cfg = load_config(DEFAULT, ["video.frames=8"])
    family = make_family(cfg)
    scfg = SamplerConfig(num_steps=8, shift=cfg.sampler.shift, guidance=cfg.sampler.guidance,
                         solver=cfg.sampler.solver)
    noise = family.make_noise(0)
    model0, text = family.build("cpu")
    texts = encode_texts(text, cfg.prompt, "", scfg.branches)

    def one(par):
        model = family.build("cpu")[0] if par.sp.size > 1 else model0
        model = apply_sequence_parallel(model, par)
        policy = build_magcache("tiny-video", None, MagCacheConfig(0.24, 3, 0.2), 8, scfg.branches)
        res = sample(model, noise, texts, scfg, policy, par, guard=True)
        return res.latents, res.decisions

    ref, ref_decisions = one(solo_context())
    outs = run_threads(one, build_thread_contexts(ParallelDims(ulysses, ring), timeout=60))
    assert any(not d["compute"] for d in ref_decisions)  # the run really skips
    for latents, decisions in outs:
        assert decisions == ref_decisions
        assert (latents - ref).abs().max() < 1e-4
