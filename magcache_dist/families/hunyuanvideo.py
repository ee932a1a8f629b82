"""HunyuanVideo T2V (guidance-distilled: one call per step, embedded guidance 6.0, Euler on the shift-7 grid) on
the shared sampler, cache and parallel code."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from magcache_dist.config import JobConfig
from magcache_dist.families.common import TinyFamily, encode_prompt, pooled
from magcache_dist.pipeline import register_family, seeded_noise
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.hunyuan_video import (HUNYUAN_CONFIGS, HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, HunyuanVideoDiT,
                                  hunyuan_config)
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16  # the published model pads LLaVA features to 256 tokens with an attention mask


@dataclass
class HunyuanCond:
    text: torch.Tensor  # [1, T, text_embed_dim], zero-padded
    mask: torch.Tensor  # [1, T] 1 for real tokens (first), 0 for padding
    pooled: torch.Tensor  # [1, pooled_projection_dim]
    guidance: float  # embedded guidance


class HunyuanVideoFamily(TinyFamily):
    family = "HunyuanVideo"
    tiny_names = ("hunyuanvideo-tiny",)
    presets = {"hunyuanvideo-tiny": "hunyuanvideo-t2v-544p", "hunyuanvideo": "hunyuanvideo-t2v-720p"}
    rule = "hunyuanvideo"

    def num_heads(self, cfg: JobConfig) -> int:
        return hunyuan_config(cfg.model.name)["num_attention_heads"]

    def validate(self, cfg: JobConfig) -> None:
        super().validate(cfg)
        mcfg = hunyuan_config(cfg.model.name)
        self.check_geometry(cfg, mcfg["patch_size_t"], mcfg["patch_size"])

    def sampler_config(self, cfg: JobConfig) -> SamplerConfig:
        s = cfg.sampler
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=shifted_sigmas(s.num_steps, s.shift))

    def build(self, cfg: JobConfig, device):
        mcfg = hunyuan_config(cfg.model.name)
        torch.manual_seed(cfg.model.init_seed)
        model = HunyuanVideoDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["text_embed_dim"], max_len=TINY_TEXT_LEN)
        if cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_weights(cfg, model, text, HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, hidden)
        return self.finish(cfg, model, text, device)

    def encode(self, encoder, cfg, prompt, negative, branches):
        feats, n = encode_prompt(encoder, prompt, TINY_TEXT_LEN)
        mask = (torch.arange(feats.shape[1]) < n).long()[None]
        return {"cond": HunyuanCond(feats, mask, pooled(feats, n), float(cfg.sampler.guidance))}

    def make_noise(self, cfg, seed):
        v = cfg.video
        return seeded_noise((1, hunyuan_config(cfg.model.name)["in_channels"], v.frames, v.height, v.width), seed)


register_family(sorted(HUNYUAN_CONFIGS), HunyuanVideoFamily())
