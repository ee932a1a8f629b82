"""A Wan2.1 DiT checkpoint of a published size with random weights, for measuring loading and memory at real size
without downloading anything (benchmarks/load_memory.py).

    python -m tools.make_wan_checkpoint OUT_DIR --model wan2.1-t2v-1.3b --layout official --dtype float32

Writes the DiT only, as the layout names it: ``official``: OUT_DIR/diffusion_pytorch_model.safetensors +
config.json; ``diffusers``: OUT_DIR/transformer/diffusion_pytorch_model.safetensors + transformer/config.json.
Tensors are generated one at a time (seeded, small normal noise; norm weights 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

from models.loading import official_to_diffusers_key
from models.wan import get_config
from models.wan_i2v import build_wan_model


def make(out: str, model: str, layout: str, dtype: str, seed: int = 0) -> str:
    cfg = get_config(model)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_wan_model(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    sd = {}
    for k, shape in shapes.items():
        t = torch.ones(shape, dtype=dt) if ("norm" in k and k.endswith("weight")) else \
            (0.02 * torch.randn(shape, generator=g)).to(dt)
        sd[k if layout == "official" else official_to_diffusers_key(k)] = t
    folder = out if layout == "official" else os.path.join(out, "transformer")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    save_file(sd, path)
    if layout == "official":
        meta = dict(model_type="i2v" if cfg.image_dim else "t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                    num_heads=cfg.num_heads, num_layers=cfg.num_layers, in_dim=cfg.in_dim, out_dim=cfg.out_dim,
                    text_len=cfg.text_len)
    else:
        meta = dict(_class_name="WanTransformer3DModel", num_attention_heads=cfg.num_heads,
                    attention_head_dim=cfg.dim // cfg.num_heads, num_layers=cfg.num_layers, in_channels=cfg.in_dim,
                    out_channels=cfg.out_dim, ffn_dim=cfg.ffn_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(meta, f)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--layout", choices=("official", "diffusers"), default="official")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    print(make(args.out, args.model, args.layout, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
