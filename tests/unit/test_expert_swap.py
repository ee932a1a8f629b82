"""Wan2.2 A14B's expert trade without FSDP (families/expert_swap.py, families/wan22.py PlacedExperts) on a tiny
two-expert model on the CPU, through the real sampler: the order of the copies, every block resident (its
parameters in a device slot, its copy waited for) when it runs, exactly one expert's blocks in the slots at every
block, and latents bit-identical to the synchronous trade and to no offload, with the step before the switch (and
the last step) computed or skipped."""
from __future__ import annotations

import copy

import pytest
import torch

from magcache_dist.cache.base import CachePolicy, Decision
from magcache_dist.families.expert_swap import SyncCopier, ThreadCopier
from magcache_dist.families.wan22 import PlacedExperts
from magcache_dist.random_weights import randomize
from magcache_dist.sampling.grids import expert_switch_step
from magcache_dist.sampling.loop import SamplerConfig, sample
from models.wan import get_config
from models.wan_i2v import build_wan_model

STEPS, SHIFT, BOUNDARY, LAYERS = 8, 12.0, 0.875, 4
SWITCH = expert_switch_step(STEPS, SHIFT, BOUNDARY)


class Schedule(CachePolicy):
    """Skips exactly the (step, branch) calls in ``skips`` (reusing the branch's residual, as MagCache does);
    ``planned``: what it announces before sampling (``planned_skips``; None: nothing)."""
    name, branch_sync = "schedule", "official"

    def __init__(self, skips=(), planned=None):
        self.skips, self.planned = set(skips), planned

    def planned_skips(self, num_steps, branches):
        if self.planned is None:
            return None
        return {b: [k for k, c in self.planned if c == b] for b in branches}

    def propose(self, state, step, branch, probe=None):
        return Decision(compute=(step, branch) not in self.skips, reason="schedule")


class LazyCopier(SyncCopier):
    """A side stream that copies only when the compute waits for a copy (``lazy``) or at once: a block run
    without waiting reads its slot's old weights; every copy is logged in ``events``."""

    def __init__(self, events: list, lazy: bool):
        self.events, self.lazy, self.queue, self.issued = events, lazy, [], 0

    def trade(self, spare, slot, incoming, after):
        token = self.issued
        self.issued += 1
        self.events.append(("copy", token))
        self.queue.append((token, list(spare), list(slot), list(incoming)))
        if not self.lazy:
            self.wait(token)
        return token

    def wait(self, token):
        while self.queue and self.queue[0][0] <= token:
            _, spare, slot, incoming = self.queue.pop(0)
            SyncCopier.trade(self, spare, slot, incoming, None)

    def done(self, token):
        return not self.queue or self.queue[0][0] > token

    def sync(self):
        self.wait(self.issued)


def experts():
    cfg = get_config("tiny-wan22-t2v", num_layers=LAYERS)
    return [randomize(build_wan_model(cfg), seed).eval() for seed in (3, 13)]


def watch(model: PlacedExperts, events: list):
    """Hooks that log each block run and check it is resident: its parameters are slot tensors, and exactly
    one expert's blocks are in the slots."""
    slots = {p.data_ptr() for b in model.high.blocks for p in b.parameters()}

    def check(name, i):
        def hook(module, args):
            events.append(("run", name, i))
            assert all(p.data_ptr() in slots for p in module.parameters()), (name, i)
            on = [p.data_ptr() for n in ("high", "low") for b in getattr(model, n).blocks for p in b.parameters()
                  if p.data_ptr() in slots]
            assert sorted(on) == sorted(slots)  # one expert's blocks: each slot bound once, no more
        return hook

    for name in ("high", "low"):
        for i, block in enumerate(getattr(model, name).blocks):
            block.register_forward_pre_hook(check(name, i))


def run(model, skips=(), videos=2, planned=None):
    g = torch.Generator().manual_seed(0)
    scfg = SamplerConfig(num_steps=STEPS, shift=SHIFT, guidance=4.0, guidance_2=3.0, switch_step=SWITCH)
    texts = {b: torch.randn(1, 7, 32, generator=g) for b in ("cond", "uncond")}
    out = []
    for _ in range(videos):  # a prompt list: the next video starts on the high-noise expert
        noise = torch.randn(1, 16, 2, 4, 4, generator=g)
        out.append(sample(model, noise, texts, scfg, Schedule(skips, planned)).latents)
    return out


def build(high, low, copier=None, prefetch=True, offload=True):
    return PlacedExperts(copy.deepcopy(high), copy.deepcopy(low), BOUNDARY * 1000, device="cpu",
                         offload_to="cpu" if offload else None, copier=copier, prefetch=prefetch)


CASES = {
    "all computed": (),
    "step before the switch skipped": [(SWITCH - 1, "cond"), (SWITCH - 1, "uncond")],
    "its last call skipped": [(SWITCH - 1, "uncond")],
    "last step skipped": [(STEPS - 1, "cond"), (STEPS - 1, "uncond")],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("lazy", [True, False])
def test_prefetched_trade_is_exact_and_in_order(case, lazy):
    skips = CASES[case]
    high, low = experts()
    ref = run(build(high, low, offload=False), skips)
    sync = build(high, low, prefetch=False)
    assert all(torch.equal(a, b) for a, b in zip(run(sync, skips), ref))
    assert [(m["away"], m["brought"], m["during"], m["at_use"]) for m in sync.moves] == \
        [("high", "low", 0, LAYERS), ("low", "high", 0, LAYERS), ("high", "low", 0, LAYERS)]  # host waits

    events = []
    model = build(high, low, copier=LazyCopier(events, lazy))
    model._ensure()
    watch(model, events)
    out = run(model, skips)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))  # bit-identical to no offload

    before_switch = (SWITCH - 1, "uncond") not in skips  # the high-noise expert's last call computed
    last = (STEPS - 1, "uncond") not in skips
    expect = [("high", "low", LAYERS if before_switch else 0), ("low", "high", LAYERS if last else 0)] * 2
    expect = expect if last else expect[:3]  # no trade back after the last video when its last call is skipped
    assert [(m["away"], m["brought"], m["during"]) for m in model.moves] == expect
    assert all(m["during"] + m["at_use"] == LAYERS for m in model.moves)

    # the copies: slot by slot in block order; replayed with the runs, every block runs in a slot last given to
    # its expert; traded during the last call, block i's copy comes right after block i's run
    log = model.swap.log
    assert [entry[0] for entry in log] == list(range(LAYERS)) * len(expect)
    owner = ["high"] * LAYERS
    for e in events:
        if e[0] == "copy":
            i, away, brought = log[e[1]]
            assert owner[i] == away
            owner[i] = brought
        else:
            assert owner[e[2]] == e[1], e
    if before_switch:
        first = events.index(("copy", 0))
        assert events[first - 1] == ("run", "high", 0) and events[first + 1] == ("run", "high", 1)


def test_thread_copier_overlaps_and_is_exact():
    high, low = experts()
    ref = run(build(high, low, offload=False), videos=1)
    copier = ThreadCopier()
    try:
        model = build(high, low, copier=copier)
        assert torch.equal(run(model, videos=1)[0], ref[0])
        assert [(m["during"], m["at_use"]) for m in model.moves] == [(LAYERS, 0), (LAYERS, 0)]
    finally:
        copier.close()


@pytest.mark.parametrize("right", [True, False])
def test_announced_skips_move_the_trade_to_the_last_computed_call(right):
    """MagCache announces its schedule (``planned_skips``): with the step before the switch skipped, the trade runs
    during the high-noise expert's last computed call (the step before it), and a skipped call trades nothing. An
    announcement that proves wrong (that step computed after all) costs a trade back, never a wrong output."""
    skips = [(SWITCH - 1, "cond"), (SWITCH - 1, "uncond")]
    high, low = experts()
    ref = run(build(high, low, offload=False), skips if right else ())
    events = []
    model = build(high, low, copier=LazyCopier(events, lazy=True))
    out = run(model, skips if right else (), planned=skips)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    moves = [(m["away"], m["brought"], m["during"], m["at_use"]) for m in model.moves]
    if right:
        assert moves == [("high", "low", LAYERS, 0), ("low", "high", LAYERS, 0)] * 2
    else:  # step SWITCH - 1 computes on slots already traded: both its calls wait for high's blocks again
        assert moves == [("high", "low", LAYERS, 0), ("low", "high", 0, LAYERS), ("high", "low", 0, LAYERS),
                         ("low", "high", LAYERS, 0)] * 2


def test_planned_skips_are_the_planner_schedule():
    from magcache_dist.cache.magcache import MagCacheConfig, build_magcache, skip_schedule

    policy = build_magcache("wan2.2-t2v-a14b", None, MagCacheConfig(thresh=0.06, K=2, retention=0.4), 40,
                            ["cond", "uncond"], switch_step=26)
    planned = policy.planned_skips(40, ["cond", "uncond"])
    assert planned == skip_schedule(policy, 40, ["cond", "uncond"])["skipped_steps"]
    assert 25 in planned["cond"] and 24 not in planned["cond"]  # the published T2V setting skips step 25
    assert Schedule().planned_skips(40, ["cond"]) is None


def test_planner_pipeline_and_block_size():
    """planner/switch.py: a Wan block's parameters as the real module counts them, and the per-block pipeline: block
    i's copy waits for block i's last run (prefetched) or for nothing (streamed), the incoming call's block i for
    block i's copy."""
    import dataclasses

    from magcache_dist.families.common import wan_cost_figures
    from magcache_dist.planner.switch import block_params, pipeline_exposed, resident_params
    from models.wan import WanBlock

    cfg = get_config("wan2.2-t2v-a14b")
    fig = dataclasses.replace(wan_cost_figures(cfg), experts=2)  # as Wan22Family.cost_figures
    with torch.device("meta"):
        assert block_params(fig) == sum(p.numel() for p in WanBlock(cfg).parameters()) == 351_394_304
    assert resident_params(fig, 1) == 2 * fig.params - 40 * 351_394_304 and resident_params(fig, 2) == 2 * fig.params
    # copies faster than blocks: nothing exposed when prefetched, the first block's copy when streamed
    assert pipeline_exposed(4, 1.0, 2.0, prefetch=True) == 0.0
    assert pipeline_exposed(4, 1.0, 2.0, prefetch=False) == 1.0
    # copies 3x the blocks: copies end at 4, 7, 10, 13 (prefetched, the incoming call from 4) -> waits 0 + 2 + 2 + 2;
    # streamed: copies end at 3, 6, 9, 12, the call from 0 -> waits 3 + 2 + 2 + 2
    assert pipeline_exposed(4, 3.0, 1.0, prefetch=True) == 6.0
    assert pipeline_exposed(4, 3.0, 1.0, prefetch=False) == 9.0
    assert pipeline_exposed(4, 3.0, 1.0, prefetch=True, gap_s=2.0) == 4.0
