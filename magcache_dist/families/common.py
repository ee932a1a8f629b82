"""Pieces several families share: the tiny families' checkpoint reading (DiT weights in the official or diffusers
layout plus the tiny text encoder under ``text_encoder.*``), prompt encoding, the checks and defaults of the
tiny FLUX / HunyuanVideo / Open-Sora families, and the cost figures of the Wan architecture."""
from __future__ import annotations

import torch

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families.base import DTYPES, CostFigures, ModelFamily, meta_param_count
from models.layouts import Rule, is_official, official_to_diffusers
from models.loading import load_state_dict_strict, read_tensors
from models.tiny_text import TinyTextEncoder
from models.wan import WanConfig, WanModel

TEXT_ENCODER_PREFIX = "text_encoder."
# parameters of the released text encoders several families load (the planner's encode phase)
T5_XXL_ENCODER_PARAMS = 4_762_310_656  # T5 v1.1 XXL, encoder only (FLUX.1 text_encoder_2, Open-Sora 1.2)
CLIP_L_TEXT_PARAMS = 123_060_480  # CLIP ViT-L/14 text model (FLUX.1, HunyuanVideo text_encoder_2)


def split_text_encoder(sd: dict) -> tuple[dict, dict]:
    """(DiT tensors, text-encoder tensors without their prefix) of a tiny-family checkpoint."""
    text = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIX)}
    return {k: v for k, v in sd.items() if not k.startswith(TEXT_ENCODER_PREFIX)}, text


def load_dit_and_text(ckpt: str, model, text, convert_dit=None) -> None:
    """``model.ckpt`` -> the DiT (top-level keys, through ``convert_dit(sd, where)`` if given) and the tiny text
    encoder (keys under ``text_encoder.``), both loaded strictly."""
    where = f"model.ckpt={ckpt!r}"
    dit_sd, text_sd = split_text_encoder(read_tensors(resolve_path(ckpt)))
    load_state_dict_strict(model, convert_dit(dit_sd, where) if convert_dit else dit_sd, where)
    if not text_sd:
        raise InputError(f"{where} has no '{TEXT_ENCODER_PREFIX}*' weights for the text encoder")
    load_state_dict_strict(text, text_sd, f"{where} (text encoder)")


def encode_texts(text_encoder, prompt: str, negative: str, branches) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {"cond": text_encoder.encode([prompt])}
        if "uncond" in branches:
            out["uncond"] = text_encoder.encode([negative])
    return out


def encode_prompt(encoder: TinyTextEncoder, prompt: str, pad_to: int) -> tuple[torch.Tensor, int]:
    """Prompt -> ([1, pad_to, C] features zero-padded at the end, number of real tokens >= 1)."""
    with torch.no_grad():
        feats = encoder.encode([prompt])  # [1, T, C]
    n = feats.shape[1]
    if n == 0:  # no known word: one zero token stands for the prompt (keeps pooling and attention defined)
        feats, n = torch.zeros(1, 1, feats.shape[2]), 1
    return torch.nn.functional.pad(feats, (0, 0, 0, max(pad_to - n, 0))), n


def pooled(feats: torch.Tensor, n: int) -> torch.Tensor:
    """Where CLIP's pooled prompt vector stands: the mean of the real token features, [1, C]."""
    return feats[:, :n].mean(1)


def wan_cost_figures(mcfg: WanConfig) -> CostFigures:
    """The Wan DiT (the embedded models share its architecture): cross-attention over ``text_len`` tokens."""
    return CostFigures(params=meta_param_count(lambda: WanModel(mcfg)), dim=mcfg.dim, ffn_dim=mcfg.ffn_dim,
                       num_heads=mcfg.num_heads, num_layers=mcfg.num_layers, patch_size=tuple(mcfg.patch_size),
                       in_channels=mcfg.in_dim, out_channels=mcfg.out_dim, text_tokens=mcfg.text_len,
                       text_dim=mcfg.text_dim, prepared_text=True)


class PipelineFamily(ModelFamily):
    """A family whose models run the full pipeline read from a checkpoint folder (FLUX.1, HunyuanVideo, Open-Sora:
    their text encoders, DiT and VAE from ``ckpt_dir``; the published sizes and the tests' ``tiny-*`` folders) and
    that also has an embedded pixel-space size (the registry's embedded names: ``model.ckpt`` with a tiny text
    encoder, no VAE)."""

    family = ""
    cfg_mode = "distilled"
    rule = "wan"

    def cache_rule(self) -> str:
        return self.rule

    @property
    def pixel(self) -> bool:
        """The embedded pixel-space sizes (a tiny text encoder and the DiT in ``model.ckpt``, no VAE); the other
        names run the full pipeline from ``ckpt_dir`` (text encoders, DiT, VAE)."""
        return self.spec.embedded

    def validate(self) -> None:
        if self.pixel:
            self.check_ckpt_exists()
        self.validate_common()
        if not self.pixel:
            self.validate_pipeline()

    def validate_pipeline(self) -> None:
        """The full pipeline's checks (ckpt_dir, its components against the config, geometry): every family
        defines them."""
        raise NotImplementedError

    def validate_common(self) -> None:
        """Checks every size of the family shares (cache mode, parallel layout, solver)."""
        cfg, name = self.cfg, self.name
        if cfg.cache.mode == "teacache":
            raise InputError(f"cache.mode=teacache is wired for the Wan family only; use cache.mode=magcache for "
                             f"{name}")
        p = cfg.parallel
        if p.backend != "native" and p.ulysses_degree * p.ring_degree > 1:
            raise InputError(f"parallel.backend={p.backend!r}: {self.family}'s attention seams have native sequence "
                             f"parallelism only; use parallel.backend=native")
        if p.cfg_degree > 1:
            raise InputError(f"parallel.cfg_degree={p.cfg_degree}: {self.family} makes one call per step ("
                             f"{'batched' if self.cfg_mode == 'batched' else 'guidance-distilled'}); use "
                             f"parallel.ulysses_degree / ring_degree instead")
        if cfg.sampler.solver != "euler":
            raise InputError(f"sampler.solver={cfg.sampler.solver!r}: {self.family} samples with Euler on its own "
                             f"sigma grid; set sampler.solver=euler")
        self.check_geometry()

    def load_pixel_weights(self, model, text, official_rules: list[Rule] | None, marker: str = "",
                           hidden: int = 0) -> None:
        """model.ckpt -> DiT (official layout converted when ``official_rules`` is given) + tiny text encoder."""
        def convert(dit, where):
            if official_rules is not None and is_official(dit, marker):
                return official_to_diffusers(dit, official_rules, hidden, where)
            return dit

        load_dit_and_text(self.cfg.model.ckpt, model, text, convert)

    def finish(self, model, text, device):
        model = model.to(device=device)
        if DTYPES[self.cfg.model.dtype] != torch.float32:
            model = model.to(dtype=DTYPES[self.cfg.model.dtype])
        model = model.eval()
        return model, text.to(device).eval()

    def decode(self, latents, model=None):
        return latents.clamp(-1, 1)  # pixel space
