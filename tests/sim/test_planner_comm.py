"""The dry-run planner's communication bytes equal, byte for byte, what the sequence-parallel code sends on every
simulated rank (Ulysses, ring, USP, ring 3, CFG 2 x Ulysses 2; 175 tokens, divisible by none of the degrees)."""
import pytest
import torch
from diffusers import UniPCMultistepScheduler  # noqa: F401 - diffusers' lazy import is not thread-safe: load it once

from magcache_dist.cache import MagCacheConfig, build_magcache
from magcache_dist.config import load_config
from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts
from magcache_dist.parallel.threads import run_threads
from magcache_dist.planner import plan_job
from magcache_dist.random_weights import tiny_model
from magcache_dist.sampling import SamplerConfig, sample
from tests.support.helpers import ODD_VIDEO


def _measured_bytes(dims, steps=6):
    cfg = SamplerConfig(num_steps=steps)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 3, 5, 20, 28, generator=g)
    texts = {"cond": torch.randn(1, 6, 32, generator=g), "uncond": torch.zeros(1, 0, 32)}

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        policy = build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(0.12, 2, 0.2), steps, cfg.branches)
        sample(model, noise, texts, cfg, policy, par)
        return {k: c.bytes_sent for k, c in par.comms().items()}

    return run_threads(one, build_thread_contexts(dims, timeout=120))


@pytest.mark.parametrize("layout", [(2, 1, 1), (1, 2, 1), (2, 2, 1), (1, 3, 1), (2, 1, 2)],
                         ids=["ulysses2", "ring2", "usp2x2", "ring3", "cfg2-ulysses2"])
def test_planned_bytes_equal_the_bytes_the_sp_code_sends(layout):
    u, r, c = layout
    measured = _measured_bytes(ParallelDims(u, r, c))
    p = plan_job(load_config(None, ["model.name=tiny", *ODD_VIDEO, "sampler.num_steps=6",
                                    "cache.magcache.preset=wan2.1-t2v-1.3b",
                                    f"parallel.ulysses_degree={u}", f"parallel.ring_degree={r}",
                                    f"parallel.cfg_degree={c}"]))
    want = p["per_rank"]["comm_bytes_total"]
    assert p["per_rank"]["tokens"] == 175 and p["per_rank"]["padding_tokens"] == -175 % (u * r)
    for rank_bytes in measured:  # every rank sends exactly what the planner says
        assert rank_bytes["ulysses"] == want["ulysses"] and rank_bytes["ring"] == want["ring"]
        assert rank_bytes["sp"] == want["sp"] and rank_bytes["cfg_group"] == want["cfg"], (rank_bytes, want)
