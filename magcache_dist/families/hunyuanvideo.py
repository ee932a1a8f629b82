"""HunyuanVideo T2V (guidance-distilled: one call per step, embedded guidance 6.0, Euler on the shift-7 grid) on
the shared sampler, cache and parallel code."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from magcache_dist.families.base import CostFigures, meta_param_count
from magcache_dist.families.common import TinyFamily, encode_prompt, pooled
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.hunyuan_video import HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, HunyuanVideoDiT, hunyuan_config
from models.tiny_text import TinyTextEncoder

TINY_TEXT_LEN = 16
LLAMA_TOKENS = 256  # the published model pads its LLaVA features to 256 tokens with an attention mask


@dataclass
class HunyuanCond:
    text: torch.Tensor  # [1, T, text_embed_dim], zero-padded
    mask: torch.Tensor  # [1, T] 1 for real tokens (first), 0 for padding
    pooled: torch.Tensor  # [1, pooled_projection_dim]
    guidance: float  # embedded guidance


class HunyuanVideoFamily(TinyFamily):
    names = ("hunyuanvideo", "hunyuanvideo-tiny", "tiny-hunyuanvideo")
    family = "HunyuanVideo"
    tiny_names = ("hunyuanvideo-tiny",)
    presets = {"hunyuanvideo-tiny": "hunyuanvideo-t2v-544p", "hunyuanvideo": "hunyuanvideo-t2v-720p"}
    rule = "hunyuanvideo"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = hunyuan_config(self.name)

    def num_heads(self) -> int:
        return self.mcfg["num_attention_heads"]

    def check_geometry(self) -> None:
        self.check_multiples(self.mcfg["patch_size_t"], self.mcfg["patch_size"])

    def latent_shape(self):
        v = self.cfg.video
        return self.mcfg["in_channels"], v.frames, v.height, v.width

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        dim = m["num_attention_heads"] * m["attention_head_dim"]
        # double-stream and single-stream blocks both cost ~24*D^2 FLOPs per token (qkv+out and a 4x MLP)
        return CostFigures(params=meta_param_count(lambda: HunyuanVideoDiT(**m)), dim=dim, ffn_dim=4 * dim,
                           num_heads=m["num_attention_heads"], num_layers=m["num_layers"] + m["num_single_layers"],
                           patch_size=(m["patch_size_t"], m["patch_size"], m["patch_size"]),
                           in_channels=m["in_channels"], out_channels=m["out_channels"],
                           text_tokens=TINY_TEXT_LEN if self.name in self.tiny_names else LLAMA_TOKENS,
                           text_mode="joint")

    def sampler_config(self) -> SamplerConfig:
        s = self.cfg.sampler
        return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                             cfg_mode="distilled", sigmas=shifted_sigmas(s.num_steps, s.shift))

    def build(self, device, weights=True):
        mcfg = self.mcfg
        torch.manual_seed(self.cfg.model.init_seed)
        model = HunyuanVideoDiT(**mcfg)
        text = TinyTextEncoder(text_dim=mcfg["text_embed_dim"], max_len=TINY_TEXT_LEN)
        if self.cfg.model.ckpt is not None:
            hidden = mcfg["num_attention_heads"] * mcfg["attention_head_dim"]
            self.load_weights(model, text, HUNYUAN_OFFICIAL, HUNYUAN_OFFICIAL_MARKER, hidden)
        return self.finish(model, text, device)

    def encode(self, encoder, prompt, negative, branches):
        feats, n = encode_prompt(encoder, prompt, TINY_TEXT_LEN)
        mask = (torch.arange(feats.shape[1]) < n).long()[None]
        return {"cond": HunyuanCond(feats, mask, pooled(feats, n), float(self.cfg.sampler.guidance))}
