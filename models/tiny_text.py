"""A tiny text encoder for the embedded demo models: word vocabulary, embeddings, transformer layers.

It stands where umT5-XXL stands for Wan2.1: prompts -> [B, T, text_dim] token features (T = real tokens; the
DiT zero-pads to text_len). The empty prompt encodes to zero tokens, i.e. an all-zero context.

With ``broadcast`` a projection of the caption's mean feature is added to every real token, so each token the
DiT's cross-attention looks at carries the whole caption. Without it, a jointly trained encoder spreads only what
the DiT learns to use first (the colour) and leaves the shape and direction on their own token, which the
cross-attention of a small, briefly trained DiT then never learns to find (docs/tiny_model.md).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

VOCAB = ("<pad> <unk> a an the and of on in to with is are "
         "red green blue yellow white orange purple cyan magenta black gray pink "
         "circle square triangle ball box dot ring star bar "
         "small big large tiny "
         "moves moving move left right up down bounces bouncing grows growing shrinks shrinking spins "
         "stays still static slowly quickly fast slow across from center corner top bottom "
         "one two three background dark light").split()


class WordTokenizer:
    def __init__(self, vocab=VOCAB, max_len: int = 16):
        self.vocab, self.max_len = list(vocab), max_len
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __call__(self, prompt: str) -> list[int]:
        words = re.findall(r"[a-z]+", prompt.lower())
        return [self.index.get(w, 1) for w in words][: self.max_len]

    def batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self(p) for p in prompts]
        n = max(1, max(len(i) for i in ids))
        out = torch.zeros(len(ids), n, dtype=torch.long)
        for r, row in enumerate(ids):
            out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out, torch.tensor([len(i) for i in ids])


# Text encoder shape per embedded model (the others keep the one-layer default).
TEXT_ENCODER_ARGS = {"tiny-video": dict(layers=2, broadcast=True)}


class TinyTextEncoder(nn.Module):
    def __init__(self, text_dim: int = 64, max_len: int = 16, vocab_size: int = len(VOCAB), layers: int = 1,
                 broadcast: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers={layers} must be >= 1")
        self.tokenizer = WordTokenizer(max_len=max_len)
        self.embed = nn.Embedding(vocab_size, text_dim)
        self.pos = nn.Parameter(torch.zeros(max_len, text_dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(text_dim, nhead=4, dim_feedforward=2 * text_dim, dropout=0.0,
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.pool = nn.Linear(text_dim, text_dim) if broadcast else None
        nn.init.normal_(self.embed.weight, std=0.5)
        nn.init.normal_(self.pos, std=0.1)

    @classmethod
    def for_model(cls, name: str) -> "TinyTextEncoder":
        """The encoder a Wan config of models/wan.py is trained with: its text_dim and text_len, plus the
        per-model shape of ``TEXT_ENCODER_ARGS``."""
        from models.wan import get_config

        cfg = get_config(name)
        return cls(text_dim=cfg.text_dim, max_len=cfg.text_len, **TEXT_ENCODER_ARGS.get(name, {}))

    def forward(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T, text_dim], zero at padded positions."""
        pad = torch.arange(ids.shape[1])[None, :] >= lens[:, None]  # [B, T]
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        key_mask = pad if bool(pad.any()) else None
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=key_mask)
        if self.pool is not None:
            real = (~pad).float()[..., None]  # [B, T, 1]
            mean = (h * real).sum(1) / real.sum(1).clamp(min=1.0)  # [B, text_dim]: the caption as a whole
            h = h + self.pool(mean)[:, None]
        return h.masked_fill(pad[..., None], 0.0)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        ids, lens = self.tokenizer.batch(prompts)
        if int(lens.max()) == 0:
            return torch.zeros(len(prompts), 0, self.embed.embedding_dim)
        return self.forward(ids, lens)[:, : int(lens.max())]
