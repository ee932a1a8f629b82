"""Ring attention with a fused kernel in the model dtype (the CUDA path of issue 26, item 3) keeps the precision
policy's bounds (models/attention.py, tests/sim/test_precision.py), measured here with the CPU's fused bf16 flash
kernel (``cpu_block_kernel``: fp32 statistics and accumulation, output rounded to bf16, log-sum-exp fp32: the
arithmetic of CUDA's flash kernel) in place of CUDA's, on simulated ranks.

Each block's output is rounded to bf16 once before the fp32 merge, so ring no longer equals fp32 attention rounded
once (about 44% of the elements differ, as the single bf16 kernel does). Measured (3 seeds x r2 / r3 / u2r2):
- per op: |ring - exact| <= 1.77 x |single kernel - exact| (max abs over the output); bound asserted: 2x;
- per model call (tiny model, t = 999 / 500): |ring - solo| 0.035-0.047 against a bf16-vs-fp32 gap of 0.050-0.053
  (ratio at most 0.88; the policy's bound: 1.5x);
- final latents (4 steps, guidance 5): 0.211 against a gap of 0.208 (ratio 1.01; the policy's bound: 2x).
"""
import pytest
import torch

from magcache_dist.cache.base import NoCache
from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts, solo_context
from magcache_dist.parallel.apply import build_sp_attention
from magcache_dist.parallel.attention import RingAttention, cpu_block_kernel
from magcache_dist.parallel.joint import JointSPAttention
from magcache_dist.parallel.shard import Sharder
from magcache_dist.parallel.threads import run_threads
from magcache_dist.random_weights import odd_inputs, tiny_model
from magcache_dist.sampling import SamplerConfig, sample
from models.attention import LocalAttention, sdpa
from models.attention_joint import LocalJointAttention
from tests.sim.test_precision import RING, _exact, _qkv, _sharded, ids

BF16 = torch.bfloat16


def fused(module):
    """Every ring op of ``module`` computes its blocks with the CPU's fused kernel in the model dtype."""
    for m in module.modules():
        if isinstance(m, (RingAttention, JointSPAttention)):
            m.block_kernel = cpu_block_kernel
    return module


@pytest.mark.parametrize("dims", RING, ids=ids)
def test_fused_ring_attention_is_as_accurate_as_the_single_kernel(dims):
    q, k, v = _qkv(seed=1)
    lens = torch.tensor([37, 37])
    out = _sharded(dims, lambda par, *s: fused(build_sp_attention(par))(*s, lens), q, k, v)
    local, exact = LocalAttention()(q, k, v, lens), _exact(q, k, v)
    assert (out.double() - exact).abs().max() <= 2 * (local.double() - exact).abs().max()
    once = sdpa(q.float(), k.float(), v.float(), None).to(BF16)
    assert (out != once).float().mean() > 0.1  # the block outputs are rounded: this is not the fp32 path


def test_fused_ring_joint_attention_is_as_accurate_as_the_single_kernel():
    q, k, v = _qkv(length=30)
    tq, tk, tv = _qkv(length=7, seed=1)
    img_lens, txt_lens = torch.tensor([30, 30]), torch.tensor([7, 4])
    out = _sharded(ParallelDims(1, 2), lambda par, *s: fused(JointSPAttention(par.ulysses, par.ring))(
        *s, tq, tk, tv, img_lens, txt_lens)[0], q, k, v)
    local = LocalJointAttention()(q, k, v, tq, tk, tv, img_lens, txt_lens)[0]
    f64 = LocalJointAttention()(*(x.double() for x in (q, k, v, tq, tk, tv)), img_lens, txt_lens)[0]
    assert (out.double() - f64).abs().max() <= 2 * (local.double() - f64).abs().max()


def _call(dtype, dims=None):
    noise, texts = odd_inputs()

    def one(par):
        model = fused(apply_sequence_parallel(tiny_model(0).to(dtype), par))
        with torch.no_grad():
            tokens, ctx = model.embed(noise, torch.tensor([999.0]), texts["cond"])
            sharder = Sharder(par.sp)
            shard, ctx, _ = sharder.shard(tokens, ctx)
            return sharder.gather(model.forward_head(model.forward_blocks(shard, ctx), ctx), tokens.shape[1]).float()

    return one(solo_context()) if dims is None else run_threads(one, build_thread_contexts(dims))[0]


def test_fused_ring_model_call_within_the_policy_bound():
    solo = _call(BF16)
    gap = (solo - _call(torch.float32)).abs().max()
    for dims in RING:
        assert (_call(BF16, dims) - solo).abs().max() <= 1.5 * gap, ids(dims)


def test_fused_ring_final_latents_within_the_policy_bound():
    noise, texts = odd_inputs()
    cfg = SamplerConfig(num_steps=4)

    def final(dtype, dims=None):
        def one(par):
            return sample(fused(apply_sequence_parallel(tiny_model(0).to(dtype), par)), noise, texts, cfg, NoCache(),
                          par).latents
        return one(solo_context()) if dims is None else run_threads(one, build_thread_contexts(dims))[0]

    solo = final(BF16)
    gap = (solo - final(torch.float32)).abs().max()
    assert (final(BF16, ParallelDims(1, 2)) - solo).abs().max() <= 2 * gap
