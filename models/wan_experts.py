"""Wan2.2 A14B's two experts as one denoiser: the high-noise expert for timesteps >= the boundary, the low-noise
expert below it (Wan-Video/Wan2.2 ``_prepare_model_for_timestep``; diffusers' ``transformer`` / ``transformer_2``).

The experts have one architecture and separate weights. The sampler sees one model with the usual seams: ``embed``
picks the expert from the call's timestep and records it in the block context, so ``forward_blocks`` and
``forward_head`` run the same expert; ``prepare_condition`` prepares each expert's text embedding and
cross-attention keys / values. Nothing here places weights on devices, distributes or caches: ``select`` is the
seam where a family brings the chosen expert to its device (magcache_dist/families/wan22.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

EXPERTS = ("high", "low")


@dataclass
class ExpertConditions:
    """A branch's conditioning prepared once per expert."""
    high: object
    low: object


class WanExperts(nn.Module):
    def __init__(self, high: nn.Module, low: nn.Module, boundary_t: float):
        super().__init__()
        if high.cfg != low.cfg:
            raise ValueError("the two experts must have one architecture")
        self.high, self.low = high, low
        self.cfg = high.cfg
        self.boundary_t = float(boundary_t)  # boundary_ratio * num_train_timesteps

    def expert_name(self, t: torch.Tensor) -> str:
        """The expert of timestep ``t`` ([B], one value per generation step)."""
        return "high" if float(t.flatten()[0]) >= self.boundary_t else "low"

    def select(self, name: str) -> nn.Module:
        """The expert ``name`` (a family overrides this to bring it onto its device first)."""
        return getattr(self, name)

    def expert_models(self) -> list[nn.Module]:
        return [self.high, self.low]

    def prepare_condition(self, context) -> ExpertConditions:
        return ExpertConditions(self.high.prepare_condition(context), self.low.prepare_condition(context))

    def embed(self, x: torch.Tensor, t: torch.Tensor, context):
        name = self.expert_name(t)
        if isinstance(context, ExpertConditions):
            context = getattr(context, name)
        tokens, ctx = self.select(name).embed(x, t, context)
        return tokens, dataclasses.replace(ctx, expert=name)

    def first_block(self, ctx) -> nn.Module:
        return getattr(self, ctx.expert).first_block(ctx)

    def forward_blocks(self, tokens: torch.Tensor, ctx) -> torch.Tensor:
        return getattr(self, ctx.expert).forward_blocks(tokens, ctx)

    def forward_head(self, tokens: torch.Tensor, ctx) -> torch.Tensor:
        return getattr(self, ctx.expert).forward_head(tokens, ctx)

    def unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        return self.high.unpatchify(out, grid)

    def forward(self, x, t, context):
        tokens, ctx = self.embed(x, t, context)
        return self.unpatchify(self.forward_head(self.forward_blocks(tokens, ctx), ctx), ctx.grid)
