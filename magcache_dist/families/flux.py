"""FLUX.1-dev (guidance-distilled: one call per step with the guidance as an input) and FLUX.1-schnell
(timestep-distilled, no guidance input, 4 steps) on the shared sampler, cache and parallel code."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from magcache_dist.config import JobConfig
from magcache_dist.families.common import TinyFamily, encode_prompt, pooled
from magcache_dist.pipeline import register_family, seeded_noise
from magcache_dist.sampling.grids import flux_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.flux import FLUX_CONFIGS, FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, FluxDiT, flux_config
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16


@dataclass
class FluxCond:
    text: torch.Tensor  # [1, T, joint_attention_dim] (T5 features in the published model)
    pooled: torch.Tensor  # [1, pooled_projection_dim] (CLIP's pooled vector in the published model)
    guidance: float  # embedded guidance (dev); unused by schnell

    def to(self, device):
        return FluxCond(self.text.to(device), self.pooled.to(device), self.guidance)


class FluxFamily(TinyFamily):
    family = "FLUX.1"
    tiny_names = ("flux.1-dev-tiny", "flux.1-schnell-tiny")
    presets = {"flux.1-dev-tiny": "flux.1-dev", "flux.1-dev": "flux.1-dev",
               "flux.1-schnell-tiny": "flux.1-schnell-tiny"}

    def cache_rule(self, name: str) -> str:
        return "flux" if "dev" in name else "flux-schnell"

    def num_heads(self, cfg: JobConfig) -> int:
        return flux_config(cfg.model.name)["num_attention_heads"]

    def validate(self, cfg: JobConfig) -> None:
        super().validate(cfg)
        self.check_geometry(cfg, 1, 2, one_frame=True)
        if "schnell" in cfg.model.name and cfg.sampler.guidance != 1.0:
            raise ValueError(f"sampler.guidance={cfg.sampler.guidance}: FLUX.1-schnell takes no guidance; set "
                             f"sampler.guidance=1")

    def sampler_config(self, cfg: JobConfig) -> SamplerConfig:
        s, v = cfg.sampler, cfg.video
        sigmas = flux_sigmas(s.num_steps, (v.height // 2) * (v.width // 2), shift="dev" in cfg.model.name)
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=sigmas)

    def build(self, cfg: JobConfig, device):
        mcfg = flux_config(cfg.model.name)
        torch.manual_seed(cfg.model.init_seed)
        model = FluxDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["joint_attention_dim"], max_len=TINY_TEXT_LEN)
        if cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_weights(cfg, model, text, FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, hidden)
        return self.finish(cfg, model, text, device)

    def encode(self, encoder, cfg, prompt, negative, branches):
        feats, n = encode_prompt(encoder, prompt, 0)  # FLUX's T5 has no text mask: the real tokens only
        return {"cond": FluxCond(feats, pooled(feats, n), float(cfg.sampler.guidance))}

    def make_noise(self, cfg, seed):
        v = cfg.video
        return seeded_noise((1, flux_config(cfg.model.name)["in_channels"] // 4, 1, v.height, v.width), seed)


register_family(sorted(FLUX_CONFIGS), FluxFamily())
