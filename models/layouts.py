"""Key-layout conversion between an official checkpoint layout and the diffusers layout of the same model.

A layout is a list of rules. Each rule maps one official key template to one or more diffusers key templates:
``{i}`` matches a block index, ``{p}`` a parameter name (weight or bias). Kinds:
- "same": one tensor renamed;
- "swap": renamed and its two halves exchanged (shift/scale order of AdaLN heads; its own inverse);
- "split": a fused official tensor (e.g. qkv) cut along dim 0 into equal parts, or into three hidden-size parts
  and the rest ("split_qkv_rest", fused attention + MLP input of single-stream blocks).
Every key must match exactly one rule (strict: an unknown key is an error naming it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    official: str
    diffusers: tuple[str, ...]
    kind: str = "same"  # same | swap | split | split_qkv_rest


def _regex(template: str) -> re.Pattern:
    pat = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{pat}$")


def _fill(template: str, groups: dict) -> str:
    return template.replace("{i}", groups.get("i") or "").replace("{p}", groups.get("p") or "")


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def official_to_diffusers(sd: dict, rules: list[Rule], hidden: int, where: str) -> dict:
    """Official-layout tensors -> diffusers-layout tensors (``hidden``: model width, for split_qkv_rest)."""
    compiled = [(_regex(r.official), r) for r in rules]
    out = {}
    for key, t in sd.items():
        hits = [(m, r) for rx, r in compiled if (m := rx.match(key))]
        if len(hits) != 1:
            raise ValueError(f"{where}: checkpoint key {key!r} is not part of the official layout "
                             f"({len(hits)} rules match); check model.name")
        m, r = hits[0]
        g = m.groupdict()
        names = [_fill(d, g) for d in r.diffusers]
        if r.kind == "same":
            parts = [t]
        elif r.kind == "swap":
            parts = [_swap(t)]
        elif r.kind == "split":
            parts = list(t.chunk(len(names), dim=0))
        else:  # split_qkv_rest
            parts = list(torch.split(t, [hidden, hidden, hidden, t.shape[0] - 3 * hidden], dim=0))
        out.update(zip(names, parts))
    return out


def diffusers_to_official(sd: dict, rules: list[Rule]) -> dict:
    """Inverse of official_to_diffusers (fused tensors are concatenated back)."""
    out, used = {}, set()
    for r in rules:
        first = _regex(r.diffusers[0])
        for key in sd:
            m = first.match(key)
            if not m:
                continue
            g = m.groupdict()
            names = [_fill(d, g) for d in r.diffusers]
            parts = [sd[n] for n in names]
            used.update(names)
            t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            out[_fill(r.official, g)] = _swap(t) if r.kind == "swap" else t
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"diffusers keys without an official name: {left[:6]}")
    return out


def is_official(keys, marker: str) -> bool:
    return any(k.startswith(marker) for k in keys)
