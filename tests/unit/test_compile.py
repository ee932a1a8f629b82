"""model.compile=true (issue 26, item 4): the DiT's blocks compiled with torch.compile (CPU inductor) from outside
the model. A MagCache job compiles during its first computed call and never again: not from one step to the next,
not for a skipped step, not for a second generation. Dynamo's frame counter (``counters["frames"]["total"]``: one
per frame it converts, i.e. every compilation and recompilation) is read after every step.

Compiled vs eager, fp32, tiny model, 6 steps of MagCache (guidance 5): final latents within 1e-5 of eager (measured
7.9e-6 solo, 7.9e-6 Ulysses 2, 8.3e-6 ring 2, on latents of magnitude ~8); asserted: 1e-4.
"""
import json

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from magcache_dist.cache import MagCacheConfig, build_magcache
from magcache_dist.compile import compile_blocks, compile_report
from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_thread_contexts, solo_context
from magcache_dist.parallel.threads import run_threads
from magcache_dist.random_weights import odd_inputs, tiny_model
from magcache_dist.sampling import SamplerConfig, sample

STEPS = 6
TOL = 1e-4
# the MagCache schedule of this setting (cond, uncond per step): the skips are what the test is about
SCHEDULE = [True, True, False, False, False, False, False, False, True, True, False, False]


def _policy(cfg):
    return build_magcache("wan2.1-t2v-1.3b", None, MagCacheConfig(0.3, 3, 0.2), STEPS, cfg.branches,
                          branch_sync="joint")


def _job(par, compiled: bool):
    """One generation: latents, decisions, and dynamo's frame count after each step."""
    noise, texts = odd_inputs()
    cfg = SamplerConfig(num_steps=STEPS)
    model = apply_sequence_parallel(tiny_model(0), par)
    if compiled:
        assert compile_blocks(model) == len(model.blocks)
    frames = []
    res = sample(model, noise, texts, cfg, _policy(cfg), par,
                 on_step=lambda i, *_: frames.append(counters["frames"]["total"]))
    return res.latents, [d["compute"] for d in res.decisions], frames, model


def test_a_magcache_job_compiles_once_and_matches_eager():
    torch._dynamo.reset()
    counters.clear()
    eager, decisions, _, _ = _job(solo_context(), False)
    assert decisions == SCHEDULE
    assert counters["frames"]["total"] == 0
    got, decisions, frames, model = _job(solo_context(), True)
    assert decisions == SCHEDULE
    assert frames[0] > 0 and frames == [frames[0]] * STEPS, frames  # compiled in step 0, never again
    assert counters["stats"]["unique_graphs"] > 0
    assert (got - eager).abs().max() <= TOL
    assert compile_report(model) == dict(compiled=True, blocks=len(model.blocks), eager_attention_ops=[])
    # a second generation (new model, same shapes): nothing compiles
    before = counters["frames"]["total"]
    again, _, frames, _ = _job(solo_context(), True)
    assert frames == [before] * STEPS and torch.equal(again, got)


@pytest.mark.timeout(600)
def test_compiled_blocks_under_ulysses_and_ring_compile_once():
    """The SP ops run eagerly between the compiled parts of a block (no collective is traced); Ulysses 2 x ring 2
    on simulated ranks: one compilation, outputs equal eager within TOL, every rank the same latents."""
    dims = ParallelDims(2, 2)
    eager = run_threads(lambda par: _job(par, False)[0], build_thread_contexts(dims))[0]
    out = run_threads(lambda par: _job(par, True), build_thread_contexts(dims))
    for latents, decisions, frames, model in out:
        assert decisions == SCHEDULE
        assert frames == [frames[0]] * STEPS, frames
        assert (latents - eager).abs().max() <= TOL
        assert torch.equal(latents, out[0][0])
        assert compile_report(model)["eager_attention_ops"] == ["UlyssesAttention"]


def test_compile_blocks_is_idempotent_and_refuses_a_model_without_blocks():
    model = tiny_model(0)
    compile_blocks(model)
    fns = [b.forward for b in model.blocks]
    compile_blocks(model)
    assert [b.forward for b in model.blocks] == fns
    assert set(model.state_dict()) == set(tiny_model(0).state_dict())  # no _orig_mod: the weights' names stand
    assert compile_report(tiny_model(0)) == dict(compiled=False, blocks=0, eager_attention_ops=[])
    with pytest.raises(ValueError, match="model.compile=true: Linear has no block list"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_report_says_whether_the_job_compiled(tiny_ckpt, tmp_path):
    from magcache_dist.run import run_job
    from tests.support.helpers import job_config

    for flag in ("false", "true"):
        out = tmp_path / flag
        report = run_job(job_config(tiny_ckpt, str(out), f"model.compile={flag}", "sampler.num_steps=3",
                                    "save_video=false"), solo_context())
        assert report["compile"]["compiled"] is (flag == "true")
        assert json.loads((out / "report.json").read_text())["compile"] == report["compile"]
