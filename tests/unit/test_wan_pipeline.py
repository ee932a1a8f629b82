"""Wan2.1 pipelines from local checkpoints, single process, on tiny random models in both published layouts.

- the I2V DiT has the official keys (1303 for 14B) and equals diffusers' WanTransformer3DModel (I2V) forward;
- each converted component equals an independent reference: umT5 and CLIP against Wan's formulas evaluated on
  the official-layout tensors, the VAE key map against the published conversion's key pairs;
- T2V and I2V run end to end through run_job; the official and diffusers layouts of the same weights give
  bit-identical latents; the I2V conditioning y = [first-frame mask | normalised VAE latents of the image];
  umT5 is freed after encoding; MagCache skips exactly the plan's steps;
- bad input (missing files, another size or head count, geometry): the bad-input catalogue.
"""
import gc
import json
import math
import os
import weakref

import pytest
import torch
import torch.nn.functional as F

from magcache_dist.cache import skip_schedule
from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.families.wan import WanFamily, i2v_geometry
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from models import wan_components
from models.loading import load_state_dict_strict, official_to_diffusers_key, read_tensors
from models.wan import get_config
from models.wan_i2v import I2VCondition, WanI2VModel
from tests.support import ROOT
from tests.support.wan_tiny import CLIP_SIZE, T5_SIZE, vae_diffusers_to_official_key, wan_overrides


def test_i2v_dit_official_keys_and_diffusers_equality():
    with torch.device("meta"):
        sd = WanI2VModel(get_config("wan2.1-i2v-14b-720p")).state_dict()
    assert len(sd) == 1303
    for k in ("img_emb.proj.0.weight", "img_emb.proj.4.bias", "blocks.39.cross_attn.k_img.weight",
              "blocks.0.cross_attn.v_img.bias", "blocks.7.cross_attn.norm_k_img.weight"):
        assert k in sd
    assert sd["patch_embedding.weight"].shape == (5120, 36, 1, 2, 2)

    from diffusers import WanTransformer3DModel

    cfg = get_config("tiny-wan-i2v", text_len=512)  # diffusers hard-codes 512 text tokens in its I2V attention
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                                num_layers=cfg.num_layers, cross_attn_norm=True, eps=cfg.eps,
                                image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(ref.named_parameters()):
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    ours = WanI2VModel(cfg).eval()
    load_state_dict_strict(ours, dict(ref.state_dict()), "diffusers")  # diffusers names -> official
    assert set(official_to_diffusers_key(k) for k in ours.state_dict()) == set(ref.state_dict())
    x, y = torch.randn(1, 16, 3, 8, 6, generator=g), torch.randn(1, 20, 3, 8, 6, generator=g)
    text, clip = torch.randn(1, 5, cfg.text_dim, generator=g), torch.randn(1, 17, cfg.image_dim, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        a = ours(x, t, I2VCondition(text, clip, y))
        b = ref(torch.cat([x, y], 1), t.long(), F.pad(text, (0, 0, 0, cfg.text_len - 5)),
                encoder_hidden_states_image=clip, return_dict=False)[0]
    assert (a - b).abs().max() < 1e-4 * b.abs().max()


def _wan_t5_reference(sd, ids, mask, heads, buckets=32, max_dist=128):
    """Wan's umT5 encoder written from its formulas: RMS norms, unscaled attention with a per-layer bidirectional
    relative-position bias (T5 buckets), gated-GELU(tanh) FFN ``fc2(fc1(x) * gelu(gate(x)))``."""
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    b, n = ids.shape
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half = buckets // 2
    exact = half // 2
    dist = rel.abs()
    large = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(dist < exact, dist, large.clamp(max=half - 1))
    x = sd["token_embedding.weight"][ids]
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = ((h @ sd[p + f"attn.{c}.weight"].T).view(b, n, heads, -1) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # [1, N, L, L]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        att = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)
        x = x + torch.einsum("bnij,bjnc->binc", att, v).reshape(b, n, -1) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def test_umt5_official_layout_equals_wan_formula(wan_ckpts):
    path = os.path.join(wan_ckpts["t2v"]["official"], "models_t5_umt5-xxl-enc-bf16.pth")
    model = wan_components.load_umt5(path, "official")
    sd = read_tensors(path)
    ids = torch.tensor([[5, 9, 17, 30, 1, 0, 0, 0], [3, 1, 0, 0, 0, 0, 0, 0]])
    mask = (torch.arange(8)[None] < torch.tensor([[5], [2]])).long()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    want = _wan_t5_reference(sd, ids, mask, T5_SIZE["num_heads"])
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4 * want[real].abs().max()


def _open_clip_reference(sd, pixels, heads):
    """Wan's CLIP vision tower (open-clip ViT, pre-norm, exact GELU) up to the penultimate block (use_31_block)."""
    w = sd["visual.patch_embedding.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)  # [B, P, D]
    x = torch.cat([sd["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], 1) + sd["visual.pos_embedding"]
    d = x.shape[-1]
    x = F.layer_norm(x, (d,), sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"], 1e-5)
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("visual.transformer."))
    for i in range(layers - 1):
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, k, v = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"]).view(
            x.shape[0], x.shape[1], 3, heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(a.transpose(1, 2).flatten(2), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        h = F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


def test_clip_official_layout_equals_open_clip_formula(wan_ckpts):
    path = os.path.join(wan_ckpts["i2v"]["official"], "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    model = wan_components.load_clip_vision(path, "official")
    assert model.config.image_size == CLIP_SIZE["image_size"] and model.config.num_attention_heads == 2
    sd = read_tensors(path)
    image = torch.rand(2, 3, 40, 70) * 2 - 1
    with torch.no_grad():
        got = wan_components.clip_features(model, image)
    size = CLIP_SIZE["image_size"]
    pixels = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False) * 0.5 + 0.5
    pixels = (pixels - torch.tensor(wan_components.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        wan_components.CLIP_STD).view(1, 3, 1, 1)
    want = _open_clip_reference(sd, pixels, heads=2)
    assert got.shape == (2, (size // 14) ** 2 + 1, CLIP_SIZE["hidden_size"])
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def test_vae_key_map_follows_the_published_conversion(wan_ckpts):
    pairs = {  # official Wan2.1_VAE.pth key -> diffusers AutoencoderKLWan key (diffusers' conversion script)
        "encoder.conv1.weight": "encoder.conv_in.weight", "conv1.bias": "quant_conv.bias",
        "conv2.weight": "post_quant_conv.weight", "decoder.head.0.gamma": "decoder.norm_out.gamma",
        "decoder.head.2.bias": "decoder.conv_out.bias",
        "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
        "encoder.middle.2.residual.3.gamma": "encoder.mid_block.resnets.1.norm2.gamma",
        "decoder.middle.0.residual.6.bias": "decoder.mid_block.resnets.0.conv2.bias",
        "encoder.downsamples.3.shortcut.weight": "encoder.down_blocks.3.conv_shortcut.weight",
        "encoder.downsamples.5.time_conv.bias": "encoder.down_blocks.5.time_conv.bias",
        "decoder.upsamples.1.residual.2.weight": "decoder.up_blocks.0.resnets.1.conv1.weight",
        "decoder.upsamples.3.resample.1.weight": "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
        "decoder.upsamples.7.time_conv.weight": "decoder.up_blocks.1.upsamplers.0.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.upsamples.11.resample.1.bias": "decoder.up_blocks.2.upsamplers.0.resample.1.bias",
        "decoder.upsamples.14.residual.0.gamma": "decoder.up_blocks.3.resnets.2.norm1.gamma",
    }
    for official, diffusers in pairs.items():
        assert wan_components.vae_official_to_diffusers_key(official) == diffusers
    src = wan_ckpts["t2v"]["comps"]["vae"]
    for k in src.state_dict():
        assert wan_components.vae_official_to_diffusers_key(vae_diffusers_to_official_key(k)) == k
    vae = wan_components.load_wan_vae(os.path.join(wan_ckpts["t2v"]["official"], "Wan2.1_VAE.pth"), "official")
    z = torch.randn(1, 16, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, src.decode(z).sample)
    mean, std = wan_components.latent_stats(vae)
    assert std.flatten()[0].item() == pytest.approx(2.8184) and mean.flatten()[7].item() == pytest.approx(1.5508)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_end_to_end_both_layouts_give_identical_latents(task, wan_ckpts, tmp_path, monkeypatch):
    image = wan_ckpts["image"] if task == "i2v" else None
    freed = []
    load_umt5 = wan_components.load_umt5

    def tracking_load(*a, **k):
        m = load_umt5(*a, **k)
        freed.append(weakref.ref(m))
        return m

    monkeypatch.setattr(wan_components, "load_umt5", tracking_load)
    latents = {}
    for layout in ("official", "diffusers"):
        out = tmp_path / layout
        video = "save_video=true" if layout == "official" else "save_video=false"  # the mp4 write costs seconds
        cfg = load_config(None, wan_overrides(task, wan_ckpts[task][layout], str(out), video, image=image))
        report = run_job(cfg, solo_context())
        gc.collect()
        assert freed[-1]() is None  # the text encoder ran once and was freed
        latents[layout] = torch.load(out / "latents.pt", weights_only=True)
        job = validate_job(cfg, 1)
        expect = skip_schedule(job.policy, job.scfg.num_steps, job.scfg.branches)
        assert report["skipped_steps"] == expect["skipped_steps"] and report["computed_calls"] < report["total_calls"]
        files = ["frames.png", "latents.pt", "report.json", "video.mp4"] if layout == "official" else \
            ["latents.pt", "report.json"]
        assert sorted(os.listdir(out)) == files
        assert json.loads((out / "report.json").read_text())["config"]["ckpt_dir"] == wan_ckpts[task][layout]
    assert torch.equal(latents["official"], latents["diffusers"])
    # T2V: 9 x 48 x 48 px -> 16 x 3 x 6 x 6; I2V: the 40 x 56 image's aspect within 48*48 px -> 4 x 6 latents
    assert latents["official"].shape == ((1, 16, 3, 6, 6) if task == "t2v" else (1, 16, 3, 4, 6))
    assert torch.isfinite(latents["official"]).all()


def test_i2v_conditioning_is_mask_plus_normalised_image_latents(wan_ckpts, tmp_path):
    cfg = load_config(None, wan_overrides("i2v", wan_ckpts["i2v"]["official"], str(tmp_path), "sampler.guidance=1.0",
                                          image=wan_ckpts["image"]))
    family = WanFamily(cfg)
    _, encoders = family.build("cpu")
    conds = family.encode(encoders, cfg.prompt, "", ["cond"])
    assert list(conds) == ["cond"]
    y = conds["cond"].y
    assert y.shape == (1, 20, 3, 4, 6)
    assert (y[:, :4, 0] == 1).all() and (y[:, :4, 1:] == 0).all()
    from magcache_dist.families.wan import load_image

    img = F.interpolate(load_image(wan_ckpts["image"]), size=(32, 48), mode="bicubic")
    video = torch.cat([img[:, :, None], torch.zeros(1, 3, 8, 32, 48)], dim=2)
    with torch.no_grad():
        mu = wan_ckpts["i2v"]["comps"]["vae"].encode(video).latent_dist.mode()
    mean, std = wan_components.latent_stats(wan_ckpts["i2v"]["comps"]["vae"])
    assert (y[:, 4:] - (mu - mean) / std).abs().max() < 1e-5
    assert conds["cond"].clip_fea.shape == (1, 17, CLIP_SIZE["hidden_size"])
    assert i2v_geometry((720, 1280), 720 * 1280, (1, 2, 2)) == (90, 160)  # 720P keeps 1280x720
    # Wan floors sqrt(area * aspect) = 479.99999999999994 for an 832x480 image: 464 px rows, as the official code
    assert i2v_geometry((480, 832), 480 * 832, (1, 2, 2)) == (58, 104)


def test_tiled_vae_decode_matches_full_decode(wan_ckpts, tmp_path):
    cfg = load_config(None, wan_overrides("t2v", wan_ckpts["t2v"]["official"], str(tmp_path), "video.height=96",
                                          "video.width=96"))
    z = torch.randn(1, 16, 2, 12, 12, generator=torch.Generator().manual_seed(3)) * 0.5
    ref = WanFamily(cfg).decode(z)
    tiled_cfg = load_config(None, wan_overrides("t2v", wan_ckpts["t2v"]["official"], str(tmp_path), "vae.tiling=true",
                                                "vae.tile_height=64", "vae.tile_width=64", "vae.tile_stride_height=32",
                                                "vae.tile_stride_width=32"))
    out = WanFamily(tiled_cfg).decode(z)
    assert out.shape == ref.shape == (1, 3, 5, 96, 96)
    # overlapping 64 px tiles, blended: not the same computation as the full decode, but the same picture
    # (random weights see far beyond a tile, so the agreement is loose; trained VAEs are much closer)
    corr = torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1].item()
    print(f"tiled vs full VAE decode: correlation {corr:.3f}, mean abs diff {(out - ref).abs().mean():.4f}")
    assert (out - ref).abs().max() > 0 and corr > 0.8


@pytest.mark.parametrize("name,model,steps,shift,preset,K,thresh,frames,hw,par", [
    ("wan2.1-t2v-1.3b-480p", "wan2.1-t2v-1.3b", 50, 5.0, "wan2.1-t2v-1.3b", 2, 0.12, 81, (480, 832), (4, 2, 1)),
    ("wan2.1-t2v-14b-720p", "wan2.1-t2v-14b", 50, 5.0, "wan2.1-t2v-14b", 6, 0.24, 81, (720, 1280), (8, 1, 1)),
    ("wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-480p", 40, 3.0, "wan2.1-i2v-14b-480p", 6, 0.24, 81, (480, 832), (8, 1, 1)),
    ("wan2.1-i2v-14b-720p", "wan2.1-i2v-14b-720p", 40, 5.0, "wan2.1-i2v-14b-720p", 6, 0.24, 81, (720, 1280), (8, 1, 1)),
])
def test_shipped_configs_carry_the_published_defaults(name, model, steps, shift, preset, K, thresh, frames, hw, par):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    s = make_family(cfg).cfg.sampler  # what the job runs with (keys the file leaves unset: the family's defaults)
    assert (cfg.model.name, cfg.model.dtype, cfg.sampler.num_steps, s.shift, s.guidance, s.solver) == \
        (model, "auto", steps, shift, 5.0, "unipc")  # bf16 on GPUs, fp32 on a CPU
    assert (cfg.cache.mode, cfg.cache.magcache.preset, cfg.cache.magcache.thresh, cfg.cache.magcache.K,
            cfg.cache.magcache.retention) == \
        ("magcache", preset, thresh, K, 0.2)
    assert (cfg.video.frames, cfg.video.height, cfg.video.width, cfg.video.fps) == (frames, *hw, 16)
    assert (cfg.parallel.ulysses_degree, cfg.parallel.ring_degree, cfg.parallel.cfg_degree) == par
    from magcache_dist.parallel.dims import ParallelDims

    ParallelDims(*par).validate(8, get_config(model).num_heads, 2)  # the 8-GPU layout fits the model's heads
    with pytest.raises(ValueError, match="ckpt_dir is not set"):
        validate_job(cfg, 8)  # everything else validates; the user passes ckpt_dir=...
    on_this_machine = "bfloat16" if torch.cuda.is_available() else "float32"
    resolved = make_family(cfg).cfg  # the job's: the config as written keeps "auto"
    assert (resolved.model.dtype, resolved.text_encoder.dtype) == (on_this_machine, on_this_machine)
    assert cfg.model.dtype == "auto"


def test_diffusers_scheduler_shift_is_the_default(wan_ckpts, tmp_path):
    """A diffusers folder's scheduler/scheduler_config.json flow_shift becomes sampler.shift unless the job sets it."""
    import shutil

    root = tmp_path / "d"
    shutil.copytree(wan_ckpts["t2v"]["diffusers"], root)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "UniPCMultistepScheduler",
                                                                          "flow_shift": 3.0}))
    cfg = load_config(None, wan_overrides("t2v", str(root), str(tmp_path / "o")))
    scfg = validate_job(cfg, 1).scfg
    assert cfg.sampler.shift is None and scfg.shift == 3.0  # unset: the folder's, not the general default 5.0
    cfg = load_config(None, wan_overrides("t2v", str(root), str(tmp_path / "o"), "sampler.shift=7"))
    assert validate_job(cfg, 1).scfg.shift == 7.0  # given: kept (a bad flow_shift: the bad-input catalogue)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_prompt_list_loads_umt5_once_and_equals_single_prompt_jobs(task, wan_ckpts, tmp_path, monkeypatch):
    """A Wan prompt list encodes every prompt with one umT5 load (I2V: the shared image with one CLIP load) and
    each of its videos equals the single-prompt job's, bit for bit."""
    image = wan_ckpts["image"] if task == "i2v" else None
    loads, clip_loads = [], []
    load_umt5, load_clip = wan_components.load_umt5, wan_components.load_clip_vision
    monkeypatch.setattr(wan_components, "load_umt5", lambda *a, **k: loads.append(1) or load_umt5(*a, **k))
    monkeypatch.setattr(wan_components, "load_clip_vision", lambda *a, **k: clip_loads.append(1) or load_clip(*a, **k))
    prompts = tmp_path / "p.jsonl"
    lines = [{"prompt": "a red car moves on the road"}, {"prompt": "a dog runs", "seed": 4}]
    prompts.write_text("".join(json.dumps(e) + "\n" for e in lines))
    base = wan_overrides(task, wan_ckpts[task]["official"], str(tmp_path / "list"), "save_video=false",
                         f"prompts_file={prompts}", image=image)
    cfg = load_config(None, [o for o in base if not o.startswith("prompt=")])  # the list names the prompts
    summary = run_job(cfg, solo_context())
    assert summary["videos_done"] == 2 and len(loads) == 1 and len(clip_loads) == (1 if task == "i2v" else 0)
    for e, v in zip(lines, summary["videos"]):
        single = tmp_path / f"single-{v['index']}"
        run_job(load_config(None, wan_overrides(task, wan_ckpts[task]["official"], str(single), "save_video=false",
                                                f"prompt={e['prompt']}", f"seed={e.get('seed', 0)}", image=image)),
                solo_context())
        assert torch.equal(torch.load(single / "latents.pt", weights_only=True),
                           torch.load(tmp_path / "list" / v["dir"] / "latents.pt", weights_only=True)), v["name"]
