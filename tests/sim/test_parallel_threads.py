"""Sequence parallelism with simulated ranks (threads in this process, real tensors exchanged): sharding,
Ulysses / ring / USP attention, CFG parallel and the skip consensus, against the single-process run."""
import pytest
import torch

from magcache_dist.cache import MagCacheConfig, build_magcache, skip_schedule
from magcache_dist.cache.calibrate import CalibrationPolicy
from magcache_dist.parallel import (
    ParallelDims,
    SkipDisagreement,
    apply_sequence_parallel,
    build_thread_contexts,
    solo_context,
)
from magcache_dist.parallel.apply import build_sp_attention
from magcache_dist.parallel.threads import run_threads
from magcache_dist.random_weights import odd_inputs, tiny_model
from magcache_dist.sampling import SamplerConfig, sample
from models.attention import LocalAttention
from tests.support.helpers import run_sampling

STEPS = 8
CFG = SamplerConfig(num_steps=STEPS)
TOL = 1e-4  # max abs difference allowed between SP and single-process latents (fp32)


def _policy(thresh=0.12, branches=None):
    return build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(thresh, 2, 0.2), STEPS, branches or CFG.branches)


def _run(dims):
    return run_sampling(dims, CFG, lambda par: _policy())


@pytest.fixture(scope="module")
def reference():
    return _run(None)[0]


def test_attention_ops_equal_local_attention_on_uneven_lengths():
    g = torch.Generator().manual_seed(0)
    length = 37
    q, k, v = (torch.randn(2, length, 4, 8, generator=g) for _ in range(3))
    ref = LocalAttention()(q, k, v, torch.tensor([length, length]))
    for dims in (ParallelDims(2, 1), ParallelDims(4, 1), ParallelDims(1, 2), ParallelDims(1, 3), ParallelDims(1, 4),
                 ParallelDims(2, 2)):
        def shard_and_attend(par):
            chunk = -(-length // par.sp.size)
            def pad(t):
                return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, chunk * par.sp.size - length))

            lo, hi = par.sp.rank * chunk, (par.sp.rank + 1) * chunk
            out = build_sp_attention(par)(pad(q)[:, lo:hi], pad(k)[:, lo:hi], pad(v)[:, lo:hi],
                                          torch.tensor([length, length]))
            return torch.cat(par.sp.all_gather(out), dim=1)[:, :length]
        for out in run_threads(shard_and_attend, build_thread_contexts(dims)):
            assert (out - ref).abs().max() < 1e-5, dims


def test_apply_swaps_the_op_and_keeps_the_state_dict():
    par = build_thread_contexts(ParallelDims(2, 2))[0]
    m = tiny_model(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    apply_sequence_parallel(m, par)
    text = repr(m)
    assert ("(attn_op): UlyssesAttention(" in text and "ulysses_degree=2" in text
            and "RingAttention(ring_degree=2)" in text)
    assert m.blocks[0].cross_attn.attn_op.__class__.__name__ == "LocalAttention"  # text attention stays local
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("dims", [ParallelDims(2, 1), ParallelDims(4, 1), ParallelDims(1, 2), ParallelDims(1, 4),
                                  ParallelDims(2, 2), ParallelDims(1, 3), ParallelDims(1, 1, 2), ParallelDims(2, 1, 2)],
                         ids=lambda d: f"u{d.ulysses_degree}r{d.ring_degree}c{d.cfg_degree}")
def test_sp_output_and_decisions_equal_single_process(dims, reference):
    ref_latents, ref_decisions = reference
    expect = skip_schedule(_policy(), STEPS, CFG.branches)["skipped_steps"]
    assert sum(map(len, expect.values())) > 0  # the run really skips
    for rank, (latents, decisions) in enumerate(_run(dims)):
        assert (latents - ref_latents).abs().max() < TOL, rank
        mine = {b for b in CFG.branches if any(d["branch"] == b for d in decisions)}
        assert mine == ({CFG.branches[rank // dims.sp_degree]} if dims.cfg_degree == 2 else set(CFG.branches))
        for b in mine:
            assert [d["step"] for d in decisions if d["branch"] == b and not d["compute"]] == expect[b]
            assert [d for d in decisions if d["branch"] == b] == [d for d in ref_decisions if d["branch"] == b]


def test_divergent_rank_raises_a_clear_error_on_every_rank():
    noise, texts = odd_inputs()
    outcomes = {}

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        thresh = 0.12 if par.rank != 1 else 0.0  # rank 1 was started with another config
        try:
            sample(model, noise, texts, CFG, _policy(thresh), par)
        except SkipDisagreement as e:
            outcomes[par.rank] = str(e)
        return None

    run_threads(one, build_thread_contexts(ParallelDims(2, 1), timeout=30))
    assert set(outcomes) == {0, 1}
    assert all("ranks disagree on the cache decision at step" in m for m in outcomes.values())
    assert len({m.split("(this rank")[0] for m in outcomes.values()}) == 1  # the same verdict everywhere


@pytest.mark.parametrize("dims", [ParallelDims(2, 1), ParallelDims(1, 4)], ids=["u2", "r4"])
def test_calibration_is_identical_across_degrees(dims):
    noise, texts = odd_inputs()

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        pol = CalibrationPolicy(STEPS)  # the sampler's cache state sums over the SP group
        res = sample(model, noise, texts, CFG, pol, par)
        return pol.table(res.state)

    solo = one(solo_context())
    tables = run_threads(one, build_thread_contexts(dims))
    for t in tables:
        for b in CFG.branches:
            for field in ("ratios", "std", "cos_dist"):
                a, s = torch.tensor(getattr(t, field)[b]), torch.tensor(getattr(solo, field)[b])
                assert ((a - s).abs() <= 1e-5 * s.abs().clamp_min(1e-3)).all(), (b, field)
            assert t.ratios[b] == tables[0].ratios[b]  # bit-identical on every rank


def test_dims_validation_messages():
    with pytest.raises(ValueError, match="parallel.cfg_degree=4 must be 1 or 2"):
        ParallelDims(1, 1, 4)
    with pytest.raises(ValueError, match="parallel.ring_degree=0"):
        ParallelDims(1, 0)
    d = ParallelDims(8, 1)
    with pytest.raises(ValueError, match="ulysses_degree=8 does not divide num_heads=12; use a divisor of 12"):
        d.validate(8, 12, 2)
    with pytest.raises(ValueError, match="does not match WORLD_SIZE=4"):
        d.validate(4, 40, 2)
    d.validate(8, 40, 2)
    assert ParallelDims(2, 2, 2).group_ranks()["ulysses"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert ParallelDims(2, 2, 2).group_ranks()["ring"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert ParallelDims(2, 2, 2).group_ranks()["cfg_group"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_block_attention_with_lse_matches_the_math_on_masked_and_dead_blocks():
    from magcache_dist.parallel.attention import attention_with_lse

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 50, 4, 8, generator=g) for _ in range(3))

    def math(k_lens, off):
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        s = qh @ kh.transpose(-1, -2) * 8 ** -0.5
        valid = torch.arange(off, off + 50)[None, :] < k_lens[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        lse = torch.logsumexp(s, -1)
        return (torch.exp(s - lse[..., None]).nan_to_num(0) @ vh).transpose(1, 2), lse

    # all valid; partly padded; padded for one batch item only and wholly padding for the other; all padding
    for k_lens, off in ((torch.tensor([50, 50]), 0), (torch.tensor([30, 30]), 0), (torch.tensor([30, 60]), 40),
                        (torch.tensor([10, 10]), 20)):
        out, lse = attention_with_lse(q, k, v, k_lens, off)
        ref, ref_lse = math(k_lens, off)
        assert (out - ref).abs().max() < 1e-5
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
        assert (lse - ref_lse).nan_to_num(0).abs().max() < 1e-5


def test_run_job_calibration_under_cfg_parallel_keeps_both_branches(tiny_ckpt, tmp_path):
    from magcache_dist.cache import RatioTable
    from magcache_dist.run import run_job
    from tests.support.helpers import job_config

    run_job(job_config(tiny_ckpt, str(tmp_path / "solo"), "cache.mode=calibrate"), solo_context())
    cfgs = [job_config(tiny_ckpt, str(tmp_path / "cfg2"), "cache.mode=calibrate", "parallel.cfg_degree=2",
                       "parallel.ulysses_degree=2") for _ in range(4)]
    contexts = build_thread_contexts(ParallelDims(2, 1, 2))
    run_threads(lambda par: run_job(cfgs[par.rank], par), contexts)
    solo = RatioTable.load(str(tmp_path / "solo" / "ratios.json"))
    split = RatioTable.load(str(tmp_path / "cfg2" / "ratios.json"))
    assert split.branches == ["cond", "uncond"]
    for b in ("cond", "uncond"):
        a, s = torch.tensor(split.ratios[b]), torch.tensor(solo.ratios[b])
        assert ((a - s).abs() <= 1e-5 * s.abs()).all(), b
