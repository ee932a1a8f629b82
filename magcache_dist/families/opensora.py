"""Open-Sora 1.2 (STDiT3, rectified flow, batched classifier-free guidance: one call per step on [cond; uncond]
rows, the unconditional rows using the learned null caption) on the shared sampler, cache and parallel code."""
from __future__ import annotations

import torch

from magcache_dist.config import JobConfig
from magcache_dist.families.common import TinyFamily, encode_prompt
from magcache_dist.pipeline import register_family, seeded_noise
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.opensora import OPENSORA_CONFIGS, OpenSoraCond, STDiT3, opensora_config
from models.tiny_text import TinyTextEncoder


class OpenSoraFamily(TinyFamily):
    family = "Open-Sora 1.2"
    tiny_names = ("opensora-1.2-tiny",)
    presets = {"opensora-1.2-tiny": "opensora-1.2", "opensora-1.2": "opensora-1.2"}
    rule = "opensora"
    cfg_mode = "batched"

    def num_heads(self, cfg: JobConfig) -> int:
        return opensora_config(cfg.model.name).num_heads

    def validate(self, cfg: JobConfig) -> None:
        super().validate(cfg)
        mcfg = opensora_config(cfg.model.name)
        pf, ph, pw = mcfg.patch_size
        if ph != pw:
            raise ValueError("Open-Sora patches must be square")
        self.check_geometry(cfg, pf, ph)
        if cfg.parallel.ring_degree > 1:
            raise ValueError(f"parallel.ring_degree={cfg.parallel.ring_degree}: Open-Sora's spatial/temporal "
                             f"attention needs whole frames per rank; use parallel.ulysses_degree")

    def sampler_config(self, cfg: JobConfig) -> SamplerConfig:
        s = cfg.sampler
        # the published model shifts by its resolution/length ratio (sampling.grids.opensora_shift); the tiny
        # pixel-space model takes sampler.shift
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="batched", sigmas=shifted_sigmas(s.num_steps, s.shift))

    def build(self, cfg: JobConfig, device):
        mcfg = opensora_config(cfg.model.name)
        torch.manual_seed(cfg.model.init_seed)
        model = STDiT3(mcfg)
        text = TinyTextEncoder(text_dim=mcfg.caption_channels, max_len=mcfg.model_max_length)
        if cfg.model.ckpt is not None:
            self.load_weights(cfg, model, text, None)  # the official layout is the model's own
        return self.finish(cfg, model, text, device)

    def encode(self, encoder, cfg, prompt, negative, branches):
        max_len = opensora_config(cfg.model.name).model_max_length
        y, n = encode_prompt(encoder, prompt, max_len)
        # Open-Sora's uncond rows: the null caption, with the conditional rows' text mask (or a negative prompt)
        neg, n_neg = encode_prompt(encoder, negative, max_len) if negative else (torch.zeros_like(y), n)
        return {"cond": OpenSoraCond(y=torch.cat([y, neg]), y_lens=torch.tensor([n, n_neg]),
                                     null=torch.tensor([False, not negative]), fps=float(cfg.video.fps))}

    def make_noise(self, cfg, seed):
        v = cfg.video
        return seeded_noise((1, opensora_config(cfg.model.name).in_channels, v.frames, v.height, v.width), seed)


register_family(sorted(OPENSORA_CONFIGS), OpenSoraFamily())
