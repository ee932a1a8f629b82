"""The rule tables of models/layouts.py, one per family and component, on tiny real checkpoints:

- official -> library -> official gives the same tensors back (dropped keys excepted), and the library keys are
  those of the library model the checkpoint was made from;
- an unknown key is a ValueError naming the key and the file;
- every rule of every table is used by some key of a tiny checkpoint (no dead rules);
- the engine's placeholders (named patterns, affine indices) and its checks on the rules themselves.
"""
import pytest
import torch

from magcache_dist.random_weights import randomize
from models import wan_components as wc
from models.flux import FLUX_CONFIGS, FLUX_OFFICIAL, FluxDiT
from models.hunyuan_video import HUNYUAN_CONFIGS, HUNYUAN_OFFICIAL, HunyuanVideoDiT
from models.layouts import Rule, diffusers_to_official, matching_rules, official_to_diffusers, rename_key
from models.loading import WAN_DIT_RULES, official_to_diffusers_key
from models.wan import get_config
from models.wan_i2v import build_wan_model
from tests.support.wan_tiny import (
    build_clip,
    build_t5,
    build_vae,
    clip_hf_to_official,
    t5_hf_to_official,
    vae_diffusers_to_official_key,
)

TABLES = ["wan_dit", "umt5", "wan_vae", "clip", "flux", "hunyuanvideo"]
WHERE = "ckpt/model.pth"


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _case(name: str):
    """(rules, hidden, [(official state dict, library state dict or None)], official keys the table drops)."""
    if name == "wan_dit":  # our DiT has the official names
        sds = [_state(randomize(build_wan_model(get_config(n)), 1)) for n in ("tiny-wan-t2v", "tiny-wan-i2v")]
        return WAN_DIT_RULES, 0, [(sd, None) for sd in sds], set()
    if name == "umt5":
        lib = _state(build_t5(1))
        return wc.UMT5_RULES, 0, [(t5_hf_to_official(lib), lib)], set()
    if name == "wan_vae":
        lib = _state(build_vae(2))
        return wc.WAN_VAE_RULES, 0, [({vae_diffusers_to_official_key(k): v for k, v in lib.items()}, lib)], set()
    if name == "clip":
        model = build_clip(3)
        lib = {k.removeprefix("vision_model."): v for k, v in _state(model).items() if not k.endswith("position_ids")}
        return wc.CLIP_RULES, 0, [(clip_hf_to_official(model), lib)], {"visual.head", "log_scale",
                                                                        "textual.token_embedding.weight"}
    if name == "flux":
        out = []
        for n in ("flux.1-dev-tiny", "flux.1-schnell-tiny"):
            lib = _state(randomize(FluxDiT(**FLUX_CONFIGS[n]), 4))
            out.append((diffusers_to_official(lib, FLUX_OFFICIAL), lib))
        cfg = FLUX_CONFIGS["flux.1-dev-tiny"]
        return FLUX_OFFICIAL, cfg["num_attention_heads"] * cfg["attention_head_dim"], out, set()
    cfg = HUNYUAN_CONFIGS["hunyuanvideo-tiny"]
    lib = _state(randomize(HunyuanVideoDiT(**cfg), 5))
    return (HUNYUAN_OFFICIAL, cfg["num_attention_heads"] * cfg["attention_head_dim"],
            [(diffusers_to_official(lib, HUNYUAN_OFFICIAL), lib)], set())


@pytest.fixture(scope="module")
def cases():
    return {name: _case(name) for name in TABLES}


@pytest.mark.parametrize("name", TABLES)
def test_round_trip(name, cases):
    rules, hidden, sds, dropped = cases[name]
    for official, lib in sds:
        conv = official_to_diffusers(official, rules, hidden, WHERE)
        if lib is not None:
            assert set(conv) == set(lib)
            assert all(torch.equal(conv[k], lib[k]) and conv[k].shape == lib[k].shape for k in lib)
        back = diffusers_to_official(conv, rules)
        assert set(back) == set(official) - dropped
        assert all(torch.equal(back[k], official[k]) and back[k].shape == official[k].shape for k in back)


@pytest.mark.parametrize("name", TABLES)
def test_unknown_key_is_named(name, cases):
    rules, hidden, sds, _ = cases[name]
    official = sds[0][0]
    with pytest.raises(ValueError, match=r"ckpt/model\.pth: checkpoint key 'bogus\.layer\.weight'"):
        official_to_diffusers({**official, "bogus.layer.weight": torch.zeros(2)}, rules, hidden, WHERE)
    conv = official_to_diffusers(official, rules, hidden, WHERE)
    with pytest.raises(ValueError, match="bogus.layer.weight"):
        diffusers_to_official({**conv, "bogus.layer.weight": torch.zeros(2)}, rules)


@pytest.mark.parametrize("name", TABLES)
def test_every_rule_is_used(name, cases):
    rules, _, sds, _ = cases[name]
    used = set()
    for official, _ in sds:
        for key in official:
            hits = matching_rules(key, rules)
            assert len(hits) == 1, (key, [r.official for r, _ in hits])
            used.add(hits[0][0])
    assert [r.official for r in rules if r not in used] == []


def test_component_wrappers_use_the_tables(cases):
    _, _, [(t5, _)], _ = cases["umt5"]
    assert wc.t5_official_to_hf(t5, WHERE).keys() == official_to_diffusers(t5, wc.UMT5_RULES, 0, WHERE).keys()
    _, _, [(clip, lib)], _ = cases["clip"]
    assert set(wc.clip_official_to_hf(clip, "vision_model.", WHERE)) == {"vision_model." + k for k in lib}
    with pytest.raises(ValueError, match=r"ckpt/model\.pth: checkpoint key 'visual\.extra'"):
        wc.clip_official_to_hf({**clip, "visual.extra": torch.zeros(1)}, "", WHERE)
    _, _, [(vae, lib)], _ = cases["wan_vae"]
    assert {wc.vae_official_to_diffusers_key(k) for k in vae} == set(lib)
    for bad in ("decoder.upsamples.3.residual.0.gamma", "encoder.middle.3.residual.0.gamma", "vae.conv1.weight"):
        with pytest.raises(ValueError, match=bad.replace(".", r"\.")):  # upsampler slot / odd middle index / unknown
            wc.vae_official_to_diffusers_key(bad)
    # num_res_blocks=3: 5 flat entries per decoder level, the 5th is the upsampler
    assert wc.vae_official_to_diffusers_key("decoder.upsamples.8.residual.2.bias", num_res_blocks=3) == \
        "decoder.up_blocks.1.resnets.3.conv1.bias"
    assert wc.vae_official_to_diffusers_key("decoder.upsamples.9.time_conv.bias", num_res_blocks=3) == \
        "decoder.up_blocks.1.upsamplers.0.time_conv.bias"
    with pytest.raises(ValueError, match="blocks.0.self_attn.x.weight"):
        official_to_diffusers_key("blocks.0.self_attn.x.weight")


def test_placeholders():
    rules = [Rule("a.{4*l+r}.{c:x|y}.{p}", ("b.{l}.r{r:0|1}.{c}.{p}",)),
             Rule("a.{4*l+3}.up.{s}", ("b.{l}.up.{s}",)),
             Rule("m.{2*j}.w", ("n.{j}.w",)),
             Rule("t", ("u", "v"), "tie"),
             Rule("e", ("f",), "squeeze", ndim=3),
             Rule("junk.{s}", (), "drop")]
    assert rename_key("a.5.x.weight", rules, WHERE) == ("b.1.r1.x.weight",)
    assert rename_key("a.7.up.resample.1.bias", rules, WHERE) == ("b.1.up.resample.1.bias",)
    assert rename_key("m.4.w", rules, WHERE) == ("n.2.w",)
    assert rename_key("junk.any.thing", rules, WHERE) == ()
    for bad in ("a.6.x.weight", "a.5.z.weight", "a.5.x.gamma", "m.3.w", "a.4.up.x"):  # r=2, c, p, odd, slot
        with pytest.raises(ValueError, match=f"'{bad}'"):
            rename_key(bad, rules, WHERE)
    sd = {"a.4.y.bias": torch.ones(2), "a.3.up.q": torch.ones(1), "m.2.w": torch.ones(1), "t": torch.arange(3.0),
          "e": torch.arange(4.0).view(1, 1, 4), "junk.x": torch.ones(1)}
    conv = official_to_diffusers(sd, rules, 0, WHERE)
    assert set(conv) == {"b.1.r0.y.bias", "b.0.up.q", "n.1.w", "u", "v", "f"}
    assert conv["u"] is conv["v"] and conv["f"].shape == (4,)
    back = diffusers_to_official(conv, rules)
    assert set(back) == set(sd) - {"junk.x"} and back["e"].shape == (1, 1, 4)


@pytest.mark.parametrize("rule,msg", [(Rule("a.{i}", ("b",), "rename"), "unknown kind"),
                                      (Rule("a.{i}", ("b.{j}",)), "uses fields"),
                                      (Rule("a.{i}", ("b",)), "lacks fields"),
                                      (Rule("a", ()), "drop"),
                                      (Rule("a.{1x}", ("b",)), "bad placeholder")])
def test_bad_rules_are_refused(rule, msg):
    with pytest.raises(ValueError, match=msg):
        rename_key("a.1", [rule], WHERE)
