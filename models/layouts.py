"""Key-layout conversion between an official checkpoint layout and the diffusers / transformers layout of the
same model: one rule-table engine for every family (FLUX, HunyuanVideo, the Wan DiT, umT5, the Wan VAE, CLIP).

A layout is a list of rules. Each rule maps one official key template to zero or more library key templates.
Placeholders in templates:
- ``{p}``: ``weight`` or ``bias``; ``{s}``: any non-empty rest of the key;
- ``{name}``: any other name is a decimal index (``{i}``, ``{j}`` ...);
- ``{name:regex}``: a field with its own pattern, e.g. ``{c:q|k|v}``; the pattern holds in both templates;
- ``{A*x}``, ``{A*x+B}``, ``{A*x+y}`` (A, B integers): an index computed from the index fields x (and y) of the
  other template, e.g. official ``upsamples.{4*l+r}`` <-> ``up_blocks.{l}.resnets.{r:0|1|2}``. Matching such a
  key solves for x (and y = remainder); values outside the fields' patterns do not match.
Kinds (what happens to the tensor, official -> library):
- "same": renamed;
- "swap": renamed and its two halves exchanged (shift/scale order of AdaLN heads; its own inverse);
- "split": a fused tensor (e.g. qkv) cut along dim 0 into equal parts;
- "split_qkv_rest": cut into three hidden-size parts and the rest (fused attention + MLP input);
- "tie": one tensor stored under every library name (tied embeddings);
- "squeeze": leading size-1 dims removed (the inverse restores rank ``ndim``);
- "drop": no library name (parts of the file the model does not use).
Every key must match exactly one rule (strict: an unknown key is an error naming it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

KINDS = ("same", "swap", "split", "split_qkv_rest", "tie", "squeeze", "drop")
_PATTERNS = {"p": "weight|bias", "s": ".+"}  # any other field name: a decimal index
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_AFFINE = re.compile(r"^(\d+)\*([A-Za-z_]\w*)(?:\+(?:([A-Za-z_]\w*)|(\d+)))?$")
_NAMED = re.compile(r"^([A-Za-z_]\w*)(?::(.+))?$")


@dataclass(frozen=True)
class Rule:
    official: str
    diffusers: tuple[str, ...] = ()
    kind: str = "same"  # one of KINDS
    ndim: int = 0  # "squeeze": rank of the official tensor


class _Template:
    """One parsed key template: segments (text, field or affine index), its regex and the fields it binds."""

    def __init__(self, text: str, patterns: dict):
        self.text, self.patterns, self.segments = text, patterns, []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            self.segments.append(("text", text[pos:m.start()]))
            a = _AFFINE.match(m.group(1))
            if a:
                self.segments.append(("affine", int(a.group(1)), a.group(2), a.group(3), int(a.group(4) or 0)))
            else:
                self.segments.append(("field", _NAMED.match(m.group(1)).group(1)))
            pos = m.end()
        self.segments.append(("text", text[pos:]))
        rx, self.fields, n_affine = "", set(), 0
        for seg in self.segments:
            if seg[0] == "text":
                rx += re.escape(seg[1])
            elif seg[0] == "field":
                rx += f"(?P={seg[1]})" if seg[1] in self.fields else f"(?P<{seg[1]}>{patterns[seg[1]]})"
                self.fields.add(seg[1])
            else:
                rx += rf"(?P<_a{n_affine}>\d+)"
                n_affine += 1
                self.fields.update(f for f in seg[2:4] if f)
        self.regex = re.compile(rx)

    def match(self, key: str) -> dict | None:
        m = self.regex.fullmatch(key)
        if not m:
            return None
        g = {k: v for k, v in m.groupdict().items() if not k.startswith("_a")}
        affine = [seg for seg in self.segments if seg[0] == "affine"]
        for i, (_, mul, x, y, const) in enumerate(affine):
            n = int(m.group(f"_a{i}"))
            if y:
                vals = {x: n // mul, y: n % mul}
            elif n < const or (n - const) % mul:
                return None
            else:
                vals = {x: (n - const) // mul}
            for name, v in vals.items():
                v = str(v)
                if g.get(name, v) != v or not re.fullmatch(self.patterns[name], v):
                    return None
                g[name] = v
        return g

    def fill(self, g: dict) -> str:
        out = []
        for seg in self.segments:
            if seg[0] == "text":
                out.append(seg[1])
            elif seg[0] == "field":
                out.append(g[seg[1]])
            else:
                _, mul, x, y, const = seg
                out.append(str(mul * int(g[x]) + (int(g[y]) if y else const)))
        return "".join(out)


@lru_cache(maxsize=None)
def _compile(rule: Rule) -> tuple[_Template, tuple[_Template, ...]]:
    if rule.kind not in KINDS:
        raise ValueError(f"rule {rule.official!r}: unknown kind {rule.kind!r} (one of {KINDS})")
    if (rule.kind == "drop") != (not rule.diffusers):
        raise ValueError(f"rule {rule.official!r}: kind 'drop' and only it has no library names")
    patterns = dict(_PATTERNS)
    for body in (b for t in (rule.official, *rule.diffusers) for b in _PLACEHOLDER.findall(t)):
        a, named = _AFFINE.match(body), _NAMED.match(body)
        if a:  # the index fields of an affine index
            patterns.update({n: patterns.get(n, r"\d+") for n in a.group(2, 3) if n})
        elif named:
            name, own = named.groups()
            patterns[name] = own or patterns.get(name, r"\d+")
        else:
            raise ValueError(f"rule {rule.official!r}: bad placeholder {{{body}}}")
    off = _Template(rule.official, patterns)
    lib = tuple(_Template(d, patterns) for d in rule.diffusers)
    for t in lib:
        if not t.fields <= off.fields:
            raise ValueError(f"rule {rule.official!r}: {t.text!r} uses fields the official template lacks")
    if lib and not off.fields <= lib[0].fields:
        raise ValueError(f"rule {rule.official!r}: {lib[0].text!r} lacks fields of the official template")
    return off, lib


def matching_rules(key: str, rules) -> list[tuple[Rule, dict]]:
    """(rule, fields) of every rule whose official template matches ``key``."""
    hits = []
    for r in rules:
        g = _compile(r)[0].match(key)
        if g is not None:
            hits.append((r, g))
    return hits


def _one_rule(key: str, rules, where: str, hint: str) -> tuple[Rule, dict]:
    hits = matching_rules(key, rules)
    if len(hits) != 1:
        raise ValueError(f"{where}: checkpoint key {key!r} is not part of the official layout "
                         f"({len(hits)} rules match){'; ' + hint if hint else ''}")
    return hits[0]


def rename_key(key: str, rules, where: str, hint: str = "") -> tuple[str, ...]:
    """Library names of one official key (empty for a dropped key); strict like official_to_diffusers."""
    r, g = _one_rule(key, rules, where, hint)
    return tuple(t.fill(g) for t in _compile(r)[1])


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _squeeze(t: torch.Tensor) -> torch.Tensor:
    lead = 0
    while lead < t.ndim - 1 and t.shape[lead] == 1:
        lead += 1
    return t.reshape(t.shape[lead:])


def official_to_diffusers(sd: dict, rules, hidden: int, where: str, hint: str = "check model.name") -> dict:
    """Official-layout tensors -> library-layout tensors (``hidden``: model width, for split_qkv_rest)."""
    out = {}
    for key, t in sd.items():
        r, g = _one_rule(key, rules, where, hint)
        names = [d.fill(g) for d in _compile(r)[1]]
        if r.kind == "same":
            parts = [t]
        elif r.kind == "swap":
            parts = [_swap(t)]
        elif r.kind == "split":
            parts = list(t.chunk(len(names), dim=0))
        elif r.kind == "split_qkv_rest":
            parts = list(torch.split(t, [hidden, hidden, hidden, t.shape[0] - 3 * hidden], dim=0))
        elif r.kind == "tie":
            parts = [t] * len(names)
        elif r.kind == "squeeze":
            parts = [_squeeze(t)]
        else:  # drop
            parts = []
        out.update(zip(names, parts))
    return out


def diffusers_to_official(sd: dict, rules) -> dict:
    """Inverse of official_to_diffusers (fused tensors concatenated back; dropped keys do not come back)."""
    out, used = {}, set()
    for r in rules:
        if r.kind == "drop":
            continue
        off, lib = _compile(r)
        for key in sd:
            g = lib[0].match(key)
            if g is None:
                continue
            names = [d.fill(g) for d in lib]
            missing = [n for n in names if n not in sd]
            if missing:
                raise ValueError(f"diffusers key {key!r} comes without {missing} (rule {r.official!r})")
            parts = [sd[n] for n in names]
            used.update(names)
            if r.kind in ("split", "split_qkv_rest"):
                t = torch.cat(parts, dim=0)
            elif r.kind == "swap":
                t = _swap(parts[0])
            elif r.kind == "squeeze":
                t = parts[0].reshape((1,) * (r.ndim - parts[0].ndim) + tuple(parts[0].shape))
            else:  # same, tie
                t = parts[0]
            out[off.fill(g)] = t
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"diffusers keys without an official name: {left[:6]}")
    return out


def is_official(keys, marker: str) -> bool:
    return any(k.startswith(marker) for k in keys)
