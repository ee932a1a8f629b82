"""FLUX.1-dev (guidance-distilled: one call per step with the guidance as an input) and FLUX.1-schnell
(timestep-distilled, no guidance input, 4 steps) on the shared sampler, cache and parallel code."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from magcache_dist.families.base import CostFigures, meta_param_count
from magcache_dist.families.common import TinyFamily, encode_prompt, pooled
from magcache_dist.sampling.grids import flux_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.flux import FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, FluxDiT, flux_config
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16
T5_TOKENS = {"flux.1-dev": 512, "flux.1-schnell": 256}  # max_sequence_length of the published pipelines


@dataclass
class FluxCond:
    text: torch.Tensor  # [1, T, joint_attention_dim] (T5 features in the published model)
    pooled: torch.Tensor  # [1, pooled_projection_dim] (CLIP's pooled vector in the published model)
    guidance: float  # embedded guidance (dev); unused by schnell

    def to(self, device):
        return FluxCond(self.text.to(device), self.pooled.to(device), self.guidance)


class FluxFamily(TinyFamily):
    names = ("flux.1-dev", "flux.1-dev-tiny", "flux.1-schnell", "flux.1-schnell-tiny", "tiny-flux-dev", "tiny-flux-schnell")
    family = "FLUX.1"
    tiny_names = ("flux.1-dev-tiny", "flux.1-schnell-tiny")
    presets = {"flux.1-dev-tiny": "flux.1-dev", "flux.1-dev": "flux.1-dev",
               "flux.1-schnell-tiny": "flux.1-schnell-tiny"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = flux_config(self.name)

    def cache_rule(self) -> str:
        return "flux" if "dev" in self.name else "flux-schnell"

    def num_heads(self) -> int:
        return self.mcfg["num_attention_heads"]

    def validate(self) -> None:
        super().validate()
        if "schnell" in self.name and self.cfg.sampler.guidance != 1.0:
            raise ValueError(f"sampler.guidance={self.cfg.sampler.guidance}: FLUX.1-schnell takes no guidance; set "
                             f"sampler.guidance=1")

    def check_geometry(self) -> None:
        self.check_multiples(1, 2, one_frame=True)

    def latent_shape(self):
        v = self.cfg.video
        return self.mcfg["in_channels"] // 4, 1, v.height, v.width

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        dim = m["num_attention_heads"] * m["attention_head_dim"]
        # double-stream and single-stream blocks both cost ~24*D^2 FLOPs per token (qkv+out and a 4x MLP)
        return CostFigures(params=meta_param_count(lambda: FluxDiT(**m)), dim=dim, ffn_dim=4 * dim,
                           num_heads=m["num_attention_heads"], num_layers=m["num_layers"] + m["num_single_layers"],
                           patch_size=(1, 2, 2), in_channels=m["in_channels"] // 4, out_channels=m["in_channels"] // 4,
                           text_tokens=T5_TOKENS.get(self.name, TINY_TEXT_LEN), text_mode="joint")

    def sampler_config(self) -> SamplerConfig:
        s, v = self.cfg.sampler, self.cfg.video
        sigmas = flux_sigmas(s.num_steps, (v.height // 2) * (v.width // 2), shift="dev" in self.name)
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=sigmas)

    def build(self, device, weights=True):
        mcfg = self.mcfg
        torch.manual_seed(self.cfg.model.init_seed)
        model = FluxDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["joint_attention_dim"], max_len=TINY_TEXT_LEN)
        if self.cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_weights(model, text, FLUX_OFFICIAL, FLUX_OFFICIAL_MARKER, hidden)
        return self.finish(model, text, device)

    def encode(self, encoder, prompt, negative, branches):
        feats, n = encode_prompt(encoder, prompt, 0)  # FLUX's T5 has no text mask: the real tokens only
        return {"cond": FluxCond(feats, pooled(feats, n), float(self.cfg.sampler.guidance))}
