"""diffusers' own MagCache hook (``diffusers.hooks.apply_mag_cache``) on our Wan block, as a benchmark comparator.

No copy of its logic: the hook is attached to a copy of the model's ``blocks`` through diffusers' own block
registry, and it decides by itself inside ``forward_blocks`` whether to run or skip. Our sampler sees a policy that
always "computes"; before each call the policy sets diffusers' cache context to the branch name (what diffusers'
pipelines do with ``transformer.cache_context("cond")``), so each CFG branch keeps its own hook state, and after the
call it reads the hook's ``should_compute`` into the decision log, so computed calls are counted as the hook ran
them.

diffusers' MagCacheConfig takes one ratio array for all contexts; we give it the conditional branch's calibrated
ratios (resampled by diffusers itself when the step count differs). Its rule: retention ``int(R*N + 0.5)`` steps
per context, skip while ``error <= threshold`` and at most ``max_skip_steps`` in a row.
"""
from __future__ import annotations

import copy

from diffusers.hooks import MagCacheConfig as DiffusersMagCacheConfig
from diffusers.hooks import apply_mag_cache
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

from magcache_dist.cache.base import CachePolicy, Decision
from models.wan import WanBlock

TransformerBlockRegistry.register(WanBlock, TransformerBlockMetadata(return_hidden_states_index=0,
                                                                      hidden_states_argument_name="x"))


class DiffusersMagCache(CachePolicy):
    """Runs ``model`` (a hooked copy: ``self.model``) with diffusers' MagCache deciding per call."""
    name = "diffusers-magcache"

    def __init__(self, model, ratios: list[float], thresh: float, K: int, retention: float, num_steps: int):
        self.model = copy.deepcopy(model)
        apply_mag_cache(self.model, DiffusersMagCacheConfig(threshold=thresh, max_skip_steps=K,
                                                            retention_ratio=retention, num_inference_steps=num_steps,
                                                            mag_ratios=list(ratios)))
        head = HookRegistry.check_if_exists_or_initialize(self.model.blocks[0])
        self.state_manager = head.get_hook("mag_cache_leader_block_hook").state_manager

    def propose(self, state, step, branch, probe=None) -> Decision:
        _set_cache_context(self.model, CacheContext(branch))
        return Decision(True, reason="diffusers-hook")

    def store(self, state, step, branch, block_in, block_out, valid=None) -> None:
        computed = self.state_manager.get_state().should_compute
        state.decisions[-1].update(compute=computed, reason="diffusers-compute" if computed else "diffusers-skip")
        _set_cache_context(self.model, None)
