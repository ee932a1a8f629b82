"""``model.compile=true``: the DiT's transformer blocks compiled with torch.compile, from outside the model.

Applied after parallelization (sequence-parallel ops, FSDP), so the compiled code sees the model that runs:
- every block of the model's block stacks (the children of its top-level ModuleLists: ``blocks``,
  ``transformer_blocks`` / ``single_transformer_blocks``, ``spatial_blocks`` / ``temporal_blocks``) has its
  ``forward`` replaced by ``torch.compile`` of it (regional compilation: blocks of one class share their compiled
  code, hooks such as FSDP's all-gathers stay outside it). Parameters, buffers and the state_dict are unchanged.
- the sequence-parallel attention ops (every ``attn_op`` that is not one of models/'s local ops: Ulysses, ring,
  USP, the joint and factorised SP seams, the deepspeed / xfuser backends) run eagerly inside the compiled block
  (``torch.compiler.disable``: a graph break on either side), so no collective is traced.
- the cache (its decisions, the residual add of a skipped call), the embedding, the head and the sampler stay
  eager: a skipped step never reaches compiled code, and the step index / timestep reach the blocks only as
  tensors (the modulation), so neither causes a recompilation.

A MagCache job compiles during its first computed call and never again (tests/unit/test_compile.py counts dynamo's
frame compilations per step). ``compile_report`` is what report.json records.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from magcache_dist.parallel.fsdp import block_units

LOCAL_OP_PACKAGE = "models."  # attention ops defined by the models themselves (traceable: SDPA and masks only)


def _eager_ops(model: nn.Module) -> list[nn.Module]:
    """The attention ops swapped in from outside the model (they communicate): each distinct instance once."""
    ops = {}
    for module in model.modules():
        op = getattr(module, "attn_op", None)
        if isinstance(op, nn.Module) and not type(op).__module__.startswith(LOCAL_OP_PACKAGE):
            ops[id(op)] = op
    return list(ops.values())


def compile_blocks(model: nn.Module, mode: str | None = None) -> int:
    """In place: compile every block's forward (see the module docstring); returns the number of blocks. A block
    compiled already is left as it is, so calling this twice compiles nothing twice."""
    units = block_units(model)
    if not units:
        raise ValueError(f"model.compile=true: {type(model).__name__} has no block list to compile")
    for op in _eager_ops(model):
        if not getattr(op.forward, "_magcache_eager", False):
            op.forward = torch.compiler.disable(op.forward)
            op.forward._magcache_eager = True
    for block in units:
        if not getattr(block.forward, "_magcache_compiled", False):
            fn = torch.compile(block.forward, mode=mode)
            fn._magcache_compiled = True
            block.forward = fn
    return len(units)


def compile_report(model: nn.Module) -> dict:
    """Whether the blocks run compiled: {compiled, blocks, eager_attention_ops}. ``compiled`` is true only when
    every block is."""
    units = block_units(model) if isinstance(model, nn.Module) else []
    done = sum(1 for b in units if getattr(b.forward, "_magcache_compiled", False))
    eager = [type(op).__name__ for op in _eager_ops(model) if getattr(op.forward, "_magcache_eager", False)]
    return dict(compiled=bool(units) and done == len(units), blocks=done, eager_attention_ops=sorted(set(eager)))
