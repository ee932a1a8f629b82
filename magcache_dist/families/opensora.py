"""Open-Sora 1.2 (STDiT3, rectified flow, batched classifier-free guidance: one call per step on [cond; uncond]
rows, the unconditional rows using the learned null caption) on the shared sampler, cache and parallel code."""
from __future__ import annotations

import torch

from magcache_dist.families.base import CostFigures, meta_param_count
from magcache_dist.families.common import TinyFamily, encode_prompt
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.opensora import OpenSoraCond, STDiT3, opensora_config
from models.tiny_text import TinyTextEncoder


class OpenSoraFamily(TinyFamily):
    names = ("opensora-1.2", "opensora-1.2-tiny", "tiny-opensora")
    family = "Open-Sora 1.2"
    tiny_names = ("opensora-1.2-tiny",)
    presets = {"opensora-1.2-tiny": "opensora-1.2", "opensora-1.2": "opensora-1.2"}
    rule = "opensora"
    cfg_mode = "batched"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = opensora_config(self.name)

    def num_heads(self) -> int:
        return self.mcfg.num_heads

    def validate(self) -> None:
        super().validate()
        if self.cfg.parallel.ring_degree > 1:
            raise ValueError(f"parallel.ring_degree={self.cfg.parallel.ring_degree}: Open-Sora's spatial/temporal "
                             f"attention needs whole frames per rank; use parallel.ulysses_degree")

    def check_geometry(self) -> None:
        pf, ph, pw = self.mcfg.patch_size
        if ph != pw:
            raise ValueError("Open-Sora patches must be square")
        self.check_multiples(pf, ph)

    def latent_shape(self):
        v = self.cfg.video
        return self.mcfg.in_channels, v.frames, v.height, v.width

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        c, f, h, w = self.latent_shape()
        pf, ph, pw = m.patch_size
        # a spatial block (queries see their frame) then a temporal block (their position over time) per depth
        span = ((h // ph) * (w // pw) + f // pf) // 2
        return CostFigures(params=meta_param_count(lambda: STDiT3(m)), dim=m.hidden_size,
                           ffn_dim=int(m.hidden_size * m.mlp_ratio), num_heads=m.num_heads, num_layers=2 * m.depth,
                           patch_size=tuple(m.patch_size), in_channels=m.in_channels,
                           out_channels=m.out_channels, text_tokens=m.model_max_length, attention_span=span)

    def sampler_config(self) -> SamplerConfig:
        s = self.cfg.sampler
        # the published model shifts by its resolution/length ratio (sampling.grids.opensora_shift); the tiny
        # pixel-space model takes sampler.shift
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="batched", sigmas=shifted_sigmas(s.num_steps, s.shift))

    def build(self, device, weights=True):
        mcfg = self.mcfg
        torch.manual_seed(self.cfg.model.init_seed)
        model = STDiT3(mcfg)
        text = TinyTextEncoder(text_dim=mcfg.caption_channels, max_len=mcfg.model_max_length)
        if self.cfg.model.ckpt is not None:
            self.load_weights(model, text, None)  # the official layout is the model's own
        return self.finish(model, text, device)

    def encode(self, encoder, prompt, negative, branches):
        max_len = self.mcfg.model_max_length
        y, n = encode_prompt(encoder, prompt, max_len)
        # Open-Sora's uncond rows: the null caption, with the conditional rows' text mask (or a negative prompt)
        neg, n_neg = encode_prompt(encoder, negative, max_len) if negative else (torch.zeros_like(y), n)
        return {"cond": OpenSoraCond(y=torch.cat([y, neg]), y_lens=torch.tensor([n, n_neg]),
                                     null=torch.tensor([False, not negative]), fps=float(self.cfg.video.fps))}
