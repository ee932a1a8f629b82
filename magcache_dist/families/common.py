"""Pieces the tiny (pixel-space, tiny-text-encoder) families share: checks before any collective, checkpoint
reading (DiT weights in the official or diffusers layout plus ``text_encoder.*``), prompt encoding."""
from __future__ import annotations

import torch

from magcache_dist.config import JobConfig
from magcache_dist.pipeline import DTYPES, ModelFamily, load_dit_and_text
from models.layouts import Rule, is_official, official_to_diffusers
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
        self.check_ckpt_exists(cfg)
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

    def load_weights(self, cfg: JobConfig, model, text, official_rules: list[Rule] | None, marker: str = "",
                     hidden: int = 0) -> None:
        """model.ckpt -> DiT (official layout converted when ``official_rules`` is given) + tiny text encoder."""
        def convert(dit, where):
            if official_rules is not None and is_official(dit, marker):
                return official_to_diffusers(dit, official_rules, hidden, where)
            return dit

        load_dit_and_text(cfg, model, text, convert)

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
