"""Wan DiT: official key names, checkpoint round trips in both layouts, equality with diffusers' Wan model."""
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from magcache_dist.random_weights import tiny_model
from models.loading import load_state_dict_strict, official_to_diffusers_key, read_tensors
from models.wan import WanModel, get_config


@pytest.mark.parametrize("name,keys,params", [("wan2.1-t2v-1.3b", 825, 1.419e9), ("wan2.1-t2v-14b", 1095, 14.29e9)])
def test_published_sizes_have_official_keys(name, keys, params):
    with torch.device("meta"):
        sd = WanModel(get_config(name)).state_dict()
    assert len(sd) == keys
    assert abs(sum(v.numel() for v in sd.values()) - params) / params < 1e-3
    for k in ("patch_embedding.weight", "text_embedding.2.bias", "time_projection.1.weight", "blocks.0.modulation",
              "blocks.3.self_attn.norm_q.weight", "blocks.3.cross_attn.o.weight", "blocks.3.norm3.weight",
              "blocks.3.ffn.2.bias", "head.modulation", "head.head.weight"):
        assert k in sd
    assert sd["blocks.0.modulation"].shape == (1, 6, get_config(name).dim)


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, cfg.in_dim, 5, 16, 20, generator=g), torch.tensor([700.0]),
            torch.randn(1, 7, cfg.text_dim, generator=g))


def test_official_layout_round_trips(tmp_path):
    src = tiny_model(3)
    x, t, c = _inputs(src.cfg)
    ref = src(x, t, c)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    # single file
    save_file(sd, str(tmp_path / "single.safetensors"))
    # sharded with an index json, as the official release ships the 14B model
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    os.makedirs(tmp_path / "sharded")
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / "sharded" / fname))
    (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    torch.save(sd, str(tmp_path / "model.pth"))
    for path in (tmp_path / "single.safetensors", tmp_path / "sharded", tmp_path / "model.pth"):
        dst = WanModel(get_config("tiny")).eval()
        load_state_dict_strict(dst, read_tensors(str(path)), str(path))
        assert torch.equal(dst(x, t, c), ref), path


def test_diffusers_layout_loads_and_matches_diffusers_forward(tmp_path):
    warnings.filterwarnings("ignore")
    from diffusers import WanTransformer3DModel

    cfg = get_config("tiny")
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                                num_layers=cfg.num_layers, cross_attn_norm=True, eps=cfg.eps).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(ref.named_parameters()):
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "diffusers.safetensors"))
    ours = WanModel(cfg).eval()
    load_state_dict_strict(ours, read_tensors(str(tmp_path / "diffusers.safetensors")), "diffusers")
    x, t, c = _inputs(cfg)
    c = torch.nn.functional.pad(c, (0, 0, 0, cfg.text_len - c.shape[1]))  # Wan pads text to text_len
    with torch.no_grad():
        a = ours(x, t, c)
        b = ref(x, t.long(), c, return_dict=False)[0]
    assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item())
    # and the key map is a bijection on the tiny model
    assert len({official_to_diffusers_key(k) for k in ours.state_dict()}) == len(ours.state_dict())
    assert set(official_to_diffusers_key(k) for k in ours.state_dict()) == set(ref.state_dict())


def test_missing_key_and_corrupt_file_errors(tmp_path):
    sd = {k: v.contiguous() for k, v in tiny_model(0).state_dict().items()}
    del sd["blocks.1.ffn.0.weight"]
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.1\.ffn\.0\.weight'\]"):
        load_state_dict_strict(WanModel(get_config("tiny")), read_tensors(str(tmp_path / "m.safetensors")), "ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_tensors(str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not exist"):
        read_tensors(str(tmp_path / "nope.safetensors"))
    other = {k: v.contiguous() for k, v in WanModel(get_config("tiny", dim=32, ffn_dim=64)).state_dict().items()}
    save_file(other, str(tmp_path / "o.safetensors"))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_state_dict_strict(WanModel(get_config("tiny")), read_tensors(str(tmp_path / "o.safetensors")), "ckpt")


def test_key_padding_mask_equals_unpadded_attention():
    """Padded tokens masked as keys leave the real tokens' outputs unchanged (what SP relies on)."""
    m = tiny_model(1)
    x, t, c = _inputs(m.cfg)
    tokens, ctx = m.embed(x, t, c)
    full = m.forward_blocks(tokens, ctx)
    pad = 3
    tokens_p = torch.nn.functional.pad(tokens, (0, 0, 0, pad))
    import dataclasses
    ctx_p = dataclasses.replace(ctx, freqs=torch.cat([ctx.freqs, ctx.freqs[:pad]]))
    out = m.forward_blocks(tokens_p, ctx_p)[:, : tokens.shape[1]]
    assert (out - full).abs().max() < 1e-5
