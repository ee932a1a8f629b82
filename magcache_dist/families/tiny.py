"""The embedded models (``tiny``, ``tiny-video``): the Wan2.1 DiT code at a tiny size with a tiny word encoder.

The 'VAE' is identity (``tiny``) or the fixed 2x pixel autoencoder of models/tiny_ae.py (``tiny-video``): noise is
drawn at the latent size."""
from __future__ import annotations

import torch

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families.base import DTYPES, CostFigures, ModelFamily
from magcache_dist.families.common import encode_texts, load_dit_and_text, split_text_encoder, wan_cost_figures
from models.loading import check_shapes, read_shapes
from models.tiny_ae import PixelAutoencoder
from models.tiny_text import TinyTextEncoder
from models.wan import get_config
from models.wan_i2v import build_wan_model

AE_STRIDE = {"tiny": 1, "tiny-video": 2}


class TinyVideoFamily(ModelFamily):

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = get_config(self.name)
        self.ae = PixelAutoencoder(AE_STRIDE[self.name])

    def num_heads(self) -> int:
        return self.mcfg.num_heads

    def validate(self) -> None:
        self.check_ckpt_exists()
        if self.cfg.model.ckpt is not None:  # headers only: a corrupt or foreign file fails here, before any collective
            self._check_checkpoint()
        self.check_geometry()

    def check_geometry(self) -> None:
        v, s = self.cfg.video, self.ae.stride
        pf, ph, pw = self.mcfg.patch_size
        for key, val, p in (("video.frames", v.frames, pf), ("video.height", v.height, ph * s),
                            ("video.width", v.width, pw * s)):
            if val < 1 or val % p:
                raise InputError(f"{key}={val} must be a positive multiple of the patch size {p} of model "
                                 f"{self.name}; use {key}={max(p, val // p * p)}")

    def _check_checkpoint(self) -> None:
        where = f"model.ckpt={self.cfg.model.ckpt!r}"
        dit_shapes, text_shapes = split_text_encoder(read_shapes(resolve_path(self.cfg.model.ckpt)))
        # built on the CPU, not the meta device: a few MB, and meta-tensor arithmetic in the init imports torch's
        # compiler stack (~1 s), which a rejected input should not pay
        check_shapes(build_wan_model(self.mcfg), dit_shapes, where)
        if not text_shapes:
            raise InputError(f"{where} has no 'text_encoder.*' weights for the text encoder")
        check_shapes(TinyTextEncoder.for_model(self.name), text_shapes, f"{where} (text encoder)")

    def latent_shape(self) -> tuple[int, int, int, int]:
        v, s = self.cfg.video, self.ae.stride
        return self.mcfg.out_dim, v.frames, v.height // s, v.width // s

    def cost_figures(self) -> CostFigures:
        return wan_cost_figures(self.mcfg)

    def build(self, device, weights=True):
        torch.manual_seed(self.cfg.model.init_seed)
        model = build_wan_model(self.mcfg)
        text = TinyTextEncoder.for_model(self.name)
        if self.cfg.model.ckpt is not None:
            load_dit_and_text(self.cfg.model.ckpt, model, text)
        model = model.to(device=device, dtype=DTYPES[self.cfg.model.dtype]).eval()
        return model, text.to(device).eval()

    def encode(self, encoder, prompt, negative, branches):
        return encode_texts(encoder, prompt, negative, branches)

    def decode(self, latents, model=None):
        return self.ae.decode(latents)
