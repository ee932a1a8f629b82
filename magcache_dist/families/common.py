"""Pieces the tiny (pixel-space, tiny-text-encoder) families share: checks before any collective, checkpoint
reading (DiT weights in the official or diffusers layout plus ``text_encoder.*``), prompt encoding."""
from __future__ import annotations

import os

import torch

from magcache_dist.config import JobConfig, resolve_path
from magcache_dist.pipeline import DTYPES, TEXT_ENCODER_PREFIX, ModelFamily
from models.layouts import Rule, is_official, official_to_diffusers
from models.loading import load_state_dict_strict, read_tensors
from models.tiny_text import TinyTextEncoder


class TinyFamily(ModelFamily):
    """Base of the families here. ``tiny_names``: runnable sizes; the others (published sizes) have model
    definitions and weight loading but no text encoder / VAE wired in yet."""

    family = ""
    tiny_names: tuple = ()
    cfg_mode = "distilled"
    presets: dict = {}  # model name -> default MagCache preset
    rule = "wan"

    def default_preset(self, name: str) -> str | None:
        return self.presets.get(name)

    def cache_rule(self, name: str) -> str:
        return self.rule

    def validate(self, cfg: JobConfig) -> None:
        name = cfg.model.name
        if name not in self.tiny_names:
            raise ValueError(f"model.name={name!r}: the {self.family} model, its weight loading and MagCache preset "
                             f"are here, but its text encoder and VAE are not wired into a pipeline yet; use one of "
                             f"{list(self.tiny_names)}")
        if cfg.model.ckpt is not None and not os.path.exists(resolve_path(cfg.model.ckpt)):
            raise ValueError(f"model.ckpt={cfg.model.ckpt!r} does not exist (relative paths are taken from the "
                             f"project root); set model.ckpt=null for seeded random weights")
        if cfg.cache.mode == "teacache":
            raise ValueError(f"cache.mode=teacache is wired for the Wan family only; use cache.mode=magcache for "
                             f"{name}")
        p = cfg.parallel
        if p.backend != "native" and p.ulysses_degree * p.ring_degree > 1:
            raise ValueError(f"parallel.backend={p.backend!r}: {self.family}'s attention seams have native sequence "
                             f"parallelism only; use parallel.backend=native")
        if p.cfg_degree > 1:
            raise ValueError(f"parallel.cfg_degree={p.cfg_degree}: {self.family} makes one call per step ("
                             f"{'batched' if self.cfg_mode == 'batched' else 'guidance-distilled'}); use "
                             f"parallel.ulysses_degree / ring_degree instead")
        if cfg.sampler.solver != "euler":
            raise ValueError(f"sampler.solver={cfg.sampler.solver!r}: {self.family} samples with Euler on its own "
                             f"sigma grid; set sampler.solver=euler")

    def check_geometry(self, cfg: JobConfig, frames_multiple: int, spatial_multiple: int, one_frame: bool = False):
        v = cfg.video
        if one_frame and v.frames != 1:
            raise ValueError(f"video.frames={v.frames}: {cfg.model.name} is an image model; set video.frames=1")
        for key, val, m in (("video.frames", v.frames, frames_multiple), ("video.height", v.height, spatial_multiple),
                            ("video.width", v.width, spatial_multiple)):
            if val < 1 or val % m:
                raise ValueError(f"{key}={val} must be a positive multiple of {m} for model {cfg.model.name}")

    def load_weights(self, cfg: JobConfig, model, text, official_rules: list[Rule] | None, marker: str = "",
                     hidden: int = 0) -> None:
        """model.ckpt -> DiT (official layout converted when ``official_rules`` is given) + tiny text encoder."""
        where = f"model.ckpt={cfg.model.ckpt!r}"
        sd = read_tensors(resolve_path(cfg.model.ckpt))
        text_sd = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        dit = {k: v for k, v in sd.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        if official_rules is not None and is_official(dit, marker):
            dit = official_to_diffusers(dit, official_rules, hidden, where)
        load_state_dict_strict(model, dit, where)
        if not text_sd:
            raise ValueError(f"{where} has no '{TEXT_ENCODER_PREFIX}*' weights for the text encoder")
        load_state_dict_strict(text, text_sd, f"{where} (text encoder)")

    def finish(self, cfg: JobConfig, model, text, device):
        model = model.to(device=device)
        if DTYPES[cfg.model.dtype] != torch.float32:
            model = model.to(dtype=DTYPES[cfg.model.dtype])
        model = model.eval()
        return model, text.to(device).eval()

    def decode(self, latents):
        return latents.clamp(-1, 1)  # pixel space


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
