"""FLUX.1-dev / -schnell, HunyuanVideo and Open-Sora 1.2 on the shared sampler, cache and parallel code.

- the adapters around diffusers' FLUX and HunyuanVideo transformers equal diffusers' own forward;
- the official key layouts convert exactly like diffusers' single-file converters (published sizes), and tiny
  checkpoints round-trip in both layouts;
- end-to-end generation: the skipped steps equal the schedule command's, for each family (under sequence parallelism:
  tests/sim/test_families_sp.py).
"""
import warnings
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from magcache_dist.families.base import make_family
from magcache_dist.sampling.grids import flux_mu, flux_sigmas, opensora_shift, shifted_sigmas
from tests.support.families import FAMILY_JOBS, family_config, max_diff, random_family_model, save_family_checkpoint
from tests.support.helpers import plan_json

TOL = 1e-4
FAMILIES = list(FAMILY_JOBS)
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


# ---- models -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["flux.1-dev-tiny", "flux.1-schnell-tiny", "hunyuanvideo-tiny"])
def test_adapter_equals_diffusers_forward(name):
    from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel

    from models.flux import flux_config, pack, unpack
    from models.hunyuan_video import hunyuan_config

    ours, _ = random_family_model(name, seed=1)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([700.0])
    with torch.no_grad():
        if name.startswith("flux"):
            cfg = flux_config(name)
            ref = FluxTransformer2DModel(**cfg).eval()
            x, text, pooled = torch.randn(1, 3, 1, 12, 20, generator=g), torch.randn(1, 5, 32, generator=g), \
                torch.randn(1, 32, generator=g)
            got = ours.denoise(x, t, SimpleNamespace(text=text, pooled=pooled, guidance=3.5))
            rows, cols = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
            ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
            extra = dict(guidance=torch.tensor([3.5])) if cfg["guidance_embeds"] else {}
            ref.load_state_dict(ours.state_dict())
            want = unpack(ref(hidden_states=pack(x), encoder_hidden_states=text, pooled_projections=pooled,
                              timestep=t / 1000, img_ids=ids, txt_ids=torch.zeros(5, 3), return_dict=False,
                              **extra)[0], (1, 6, 10))
        else:
            ref = HunyuanVideoTransformer3DModel(**hunyuan_config(name)).eval()
            ref.load_state_dict(ours.state_dict())
            x, text, pooled = torch.randn(1, 3, 3, 12, 20, generator=g), torch.randn(1, 8, 32, generator=g), \
                torch.randn(1, 32, generator=g)
            mask = torch.tensor([[1] * 5 + [0] * 3])  # padded text, masked
            got = ours.denoise(x, t, SimpleNamespace(text=text, mask=mask, pooled=pooled, guidance=6.0))
            want = ref(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                       pooled_projections=pooled, guidance=torch.tensor([6000.0]), return_dict=False)[0]
    assert got.shape == want.shape and got.abs().mean() > 0.1
    assert max_diff(got, want) < 1e-5
    # the seam is a submodule, visible in repr, without weights
    assert "(attn_op): LocalJointAttention()" in repr(ours)
    assert not any("attn_op" in k for k in ours.state_dict())


def _fake(sd_meta):
    """Small stand-ins with the real first dimension (what the converters split on)."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape[0], *(1,) * min(v.ndim - 1, 1), generator=g) for k, v in sd_meta.items()}


@pytest.mark.parametrize("family", ["flux", "hunyuanvideo"])
def test_official_layout_equals_diffusers_converter_at_published_size(family):
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_hunyuan_video_transformer_to_diffusers,
    )

    from models.flux import FLUX_CONFIGS, FLUX_OFFICIAL, FluxDiT
    from models.hunyuan_video import HUNYUAN_CONFIGS, HUNYUAN_OFFICIAL, HunyuanVideoDiT
    from models.layouts import diffusers_to_official, official_to_diffusers

    if family == "flux":
        cls, config, rules, convert = FluxDiT, FLUX_CONFIGS["flux.1-dev"], FLUX_OFFICIAL, \
            convert_flux_transformer_checkpoint_to_diffusers
        expect = ["double_blocks.18.img_attn.qkv.weight", "double_blocks.0.txt_attn.norm.key_norm.scale",
                  "single_blocks.37.linear1.weight", "guidance_in.out_layer.bias",
                  "final_layer.adaLN_modulation.1.weight"]
    else:
        cls, config, rules, convert = HunyuanVideoDiT, HUNYUAN_CONFIGS["hunyuanvideo"], HUNYUAN_OFFICIAL, \
            convert_hunyuan_video_transformer_to_diffusers
        expect = ["double_blocks.19.img_attn_qkv.weight", "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.bias",
                  "single_blocks.39.linear1.weight", "txt_in.c_embedder.linear_2.weight", "final_layer.linear.bias"]
    with torch.device("meta"):
        meta = cls(**config).state_dict()
    fake = _fake(meta)
    official = diffusers_to_official(fake, rules)
    assert all(k in official for k in expect)
    theirs = convert({k: v.clone() for k, v in official.items()})
    ours = official_to_diffusers(official, rules, hidden=3072, where="test")
    assert set(theirs) == set(fake) == set(ours)
    assert all(torch.equal(theirs[k], fake[k]) and torch.equal(ours[k], fake[k]) for k in fake)


@pytest.mark.parametrize("name,layout", [("flux.1-dev-tiny", "official"), ("flux.1-schnell-tiny", "diffusers"),
                                         ("hunyuanvideo-tiny", "official"), ("hunyuanvideo-tiny", "diffusers"),
                                         ("opensora-1.2-tiny", "official")])
def test_checkpoint_round_trip(name, layout, tmp_path):
    path = str(tmp_path / "m.safetensors")
    src, text = save_family_checkpoint(path, name, seed=5, layout=layout)
    cfg = family_config(name, str(tmp_path / "o"), ckpt=path)
    model, enc = make_family(cfg).build("cpu")
    for a, b in ((src, model), (text, enc)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    bad = load_file(path)
    bad.pop(sorted(k for k in bad if not k.startswith("text_encoder."))[0])  # one DiT weight missing
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="model.ckpt=.*(missing keys|not part of the official layout)"):
        make_family(family_config(name, str(tmp_path / "o"), ckpt=str(tmp_path / "bad.safetensors"))).build("cpu")


def test_opensora_published_size_keys():
    from models.opensora import STDiT3, opensora_config

    with torch.device("meta"):
        sd = STDiT3(opensora_config("opensora-1.2")).state_dict()
    assert abs(sum(v.numel() for v in sd.values()) / 1e9 - 1.2089) < 1e-3  # STDiT3-XL/2, ~1.1B + embedders
    for k in ("x_embedder.proj.weight", "t_embedder.mlp.2.bias", "fps_embedder.mlp.0.weight", "t_block.1.weight",
              "y_embedder.y_embedding", "y_embedder.y_proj.fc2.weight", "rope.freqs",
              "spatial_blocks.27.attn.qkv.weight", "temporal_blocks.0.attn.q_norm.weight",
              "temporal_blocks.3.cross_attn.kv_linear.bias", "spatial_blocks.0.scale_shift_table",
              "final_layer.scale_shift_table", "final_layer.linear.weight"):
        assert k in sd, k
    assert sd["y_embedder.y_embedding"].shape == (300, 4096) and sd["final_layer.linear.weight"].shape == (32, 1152)


# ---- attention under sequence parallelism --------------------------------------------------------------------


# ---- samplers and plans --------------------------------------------------------------------------------------

def test_family_sigma_grids():
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    s = flux_sigmas(4, 4096)
    e = 2.718281828459045 ** 1.15
    assert s == pytest.approx((1.0, e / (e + 1 / 0.75 - 1), e / (e + 1), e / (e + 3)))
    assert flux_sigmas(4, 4096, shift=False) == pytest.approx((1.0, 0.75, 0.5, 0.25))
    assert shifted_sigmas(2, 7.0) == pytest.approx((1.0, 3.5 / 4.0))
    assert opensora_shift(720, 1280, 102) == pytest.approx(1.875 * 30 ** 0.5)  # sqrt(HW/512^2) * sqrt(102//17*5)
    assert opensora_shift(512, 512, 1) == 1.0


def _plan(preset, steps, thresh, k, r):
    return plan_json("--preset", preset, "--steps", str(steps), "--thresh", str(thresh), "--K", str(k),
                     "--retention", str(r))


def test_schnell_preset_is_a_calibration_with_its_rule():
    from magcache_dist.cache import get_preset

    p = get_preset("flux.1-schnell-tiny")
    assert p.rule.name == "flux-schnell" and p.table.meta["rule"] == "flux-schnell" and p.table.num_steps == 4
    g = p.table.ratios["cond"]
    assert g[0] == 1.0 and all(0.85 < x < 1.15 for x in g[1:])
    # by hand: retention int(4*0.25+0.5)=1 call; step 1 |1-g1| <= 0.12 -> skip; step 2: 2 skips > K=1 -> compute;
    # step 3 |1-g3| <= 0.12 -> skip
    assert abs(1 - g[1]) <= 0.12 and abs(1 - g[3]) <= 0.12
    assert _plan("flux.1-schnell-tiny", 4, 0.12, 1, 0.25)["skipped_steps"] == {"cond": [1, 3]}


# ---- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_follows_the_plan(name, family_solo_runs):
    report = family_solo_runs[name]["report"]
    c = report["config"]
    plan = _plan(c["cache"]["magcache"]["preset"], c["sampler"]["num_steps"], c["cache"]["magcache"]["thresh"],
                 c["cache"]["magcache"]["K"],
                 c["cache"]["magcache"]["retention"])
    assert report["skipped_steps"] == plan["skipped_steps"] and plan["skipped_steps"]["cond"]
    assert report["total_calls"] == c["sampler"]["num_steps"]  # one call per step (distilled or batched CFG)
    assert report["cache"]["rule"] == {"flux.1-dev-tiny": "flux", "flux.1-schnell-tiny": "flux-schnell",
                                       "hunyuanvideo-tiny": "hunyuanvideo", "opensora-1.2-tiny": "opensora"}[name]
    lat = family_solo_runs[name]["latents"]
    assert torch.isfinite(lat).all() and lat.abs().mean() > 0.05
