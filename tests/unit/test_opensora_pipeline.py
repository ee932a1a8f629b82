"""Open-Sora 1.2's published pipeline (issue 18): the hand-written temporal VAE and the VideoAutoencoderPipeline
(models/opensora_vae.py) against the published architecture and arithmetic, the RFlow grid against the published
formulas, and an end-to-end job on the tiny checkpoint folder (tests/support/opensora_tiny.py)."""
import json
import math
import os
import weakref

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.families import opensora as family_mod
from magcache_dist.families.base import make_family
from magcache_dist.parallel import solo_context
from magcache_dist.sampling.schedulers import FlowScheduler
from models.opensora_vae import OpenSoraVAE, OpenSoraVAEConfig, TemporalVAE, TemporalVAEConfig, depth_to_time
from tests.support.opensora_tiny import build_vae, pipeline_overrides

FACTS = os.path.join(os.path.dirname(__file__), "..", "data", "opensora_vae_v1_2.json")
TINY_T = TemporalVAEConfig(filters=8, num_res_blocks=1, num_groups=4)


@pytest.fixture(scope="module")
def temporal():
    torch.manual_seed(0)
    return TemporalVAE(TINY_T).eval()


@pytest.fixture(scope="module")
def vae():
    return build_vae(seed=5)


# ---- the temporal VAE ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_temporal_vae_frame_counts_and_shapes(temporal):
    for n in (1, 2, 3, 4, 5, 8, 9, 17):
        x = torch.randn(1, 4, n, 5, 3)
        mean, logvar = temporal.encode(x)
        assert mean.shape == logvar.shape == (1, 4, math.ceil(n / 4), 5, 3), n
        assert temporal.decode(mean, num_frames=n).shape == (1, 4, n, 5, 3), n


@torch.no_grad()
def test_temporal_vae_convolutions_are_causal_and_pads_zeros_in_front(temporal):
    """The convolution graph is causal in time: latent frame k sees frames <= 4k + 3, decoded frame j sees latent
    frames <= j // 4. (The published VAE as a whole is not: its GroupNorms pool over every frame of a chunk, so the
    wiring is checked with them replaced by identities.)"""
    import copy

    convs = copy.deepcopy(temporal)
    for name, m in list(convs.named_modules()):
        if isinstance(m, torch.nn.GroupNorm):
            parent, _, leaf = name.rpartition(".")
            setattr(convs.get_submodule(parent), leaf, torch.nn.Identity())
    x = torch.randn(1, 4, 12, 4, 4)
    y = x.clone()
    y[:, :, 8:] += 1.0  # change only the last 4 frames: latent frames 0, 1 see frames <= 7
    mx, my = convs.encode(x)[0], convs.encode(y)[0]
    assert torch.equal(mx[:, :, :2], my[:, :, :2]) and not torch.allclose(mx[:, :, 2], my[:, :, 2])
    z = torch.randn(1, 4, 3, 4, 4)
    w = z.clone()
    w[:, :, 2] += 1.0  # a change in latent frame 2 reaches decoded frames >= 8 only
    dz, dw = convs.decode(z, 12), convs.decode(w, 12)
    assert torch.equal(dz[:, :, :8], dw[:, :, :8]) and not torch.allclose(dz[:, :, 8:], dw[:, :, 8:])
    # n frames are encoded as 4 * ceil(n / 4) frames, zero-padded in front; decoding drops those frames again
    x5 = torch.randn(1, 4, 5, 4, 4)
    padded = torch.cat([torch.zeros(1, 4, 3, 4, 4), x5], dim=2)
    assert torch.equal(temporal.encode(x5)[0], temporal.encode(padded)[0])
    z2 = temporal.encode(x5)[0]
    assert torch.equal(temporal.decode(z2, 5), temporal.decode(z2, 8)[:, :, 3:])


def test_depth_to_time_is_the_published_rearrange():
    from einops import rearrange

    x = torch.randn(2, 6 * 2, 3, 4, 5)
    want = rearrange(x, "B (C ts hs ws) T H W -> B C (T ts) (H hs) (W ws)", ts=2, hs=1, ws=1)  # vae_temporal.py
    assert torch.equal(depth_to_time(x, 2), want)


@torch.no_grad()
def test_encode_is_deterministic_and_samples_with_a_generator(vae):
    x = torch.rand(1, 3, 5, 32, 16) * 2 - 1
    a, b = vae.encode(x), vae.encode(x)
    assert torch.equal(a, b)
    s1 = vae.encode(x, generator=torch.Generator().manual_seed(3))
    s2 = vae.encode(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and not torch.allclose(s1, a)


# ---- the pipeline: chunking, frame arithmetic, normalisation ---------------------------------------------------
def published_latent_frames(n: int, micro: int = 17, factor: int = 4) -> int:
    """VideoAutoencoderPipeline.get_latent_size (vae.py, v1.2.0) with VAE_Temporal.get_latent_size, transcribed."""
    def temporal(size):
        pad = 0 if size % factor == 0 else factor - size % factor
        return (size + pad) // factor

    out = temporal(micro) * (n // micro)
    if n % micro > 0:
        out += temporal(n % micro)
    return out


def test_latent_frames_equal_the_published_arithmetic():
    cfg = OpenSoraVAEConfig()
    assert cfg.micro_z_frame_size == 5
    assert [cfg.latent_frames(n) for n in range(1, 120)] == [published_latent_frames(n) for n in range(1, 120)]
    assert cfg.latent_frames(51) == 15 and cfg.latent_frames(102) == 30


@torch.no_grad()
def test_pipeline_round_trip_shapes_chunks_and_normalisation(vae):
    for n in (1, 17, 20):
        x = torch.rand(1, 3, n, 32, 16) * 2 - 1
        z = vae.encode(x)
        assert z.shape == (1, 4, vae.cfg.latent_frames(n), 4, 2), n
        assert vae.decode(z, num_frames=n).shape == (1, 3, n, 32, 16), n
    # chunks of 17 frames are encoded and decoded independently (5 latent frames each)
    x = torch.rand(1, 3, 34, 32, 16) * 2 - 1
    z = vae.encode(x)
    assert torch.allclose(z, torch.cat([vae.encode(x[:, :, :17]), vae.encode(x[:, :, 17:])], dim=2), atol=1e-6)
    video = vae.decode(z, 34)
    assert torch.allclose(video, torch.cat([vae.decode(z[:, :, :5], 17), vae.decode(z[:, :, 5:], 17)], dim=2),
                          atol=1e-6)
    # the latents are ((temporal latent) - shift) / scale
    raw = vae.temporal_vae.encode(vae.spatial_vae.module.encode(x[0, :, :17].transpose(0, 1)).latent_dist.mean
                                  .transpose(0, 1)[None] * 0.18215)[0]
    assert torch.allclose(z[:, :, :5] * vae.scale + vae.shift, raw, atol=1e-5)
    with pytest.raises(ValueError, match="do not decode into num_frames=30"):
        vae.decode(z, 30)


def test_full_size_vae_keys_and_shapes_equal_the_published_checkpoint():
    facts = json.load(open(FACTS))
    want = {f"temporal_vae.{k}": tuple(v) for k, v in facts["temporal_vae"]["single"].items()}
    for prefix, count, cin, cout in facts["temporal_vae"]["res_blocks"][1:]:
        for j in range(count):
            i = cin if j == 0 else cout
            p = f"temporal_vae.{prefix}.{j}."
            want.update({p + "norm1.weight": (i,), p + "norm1.bias": (i,), p + "conv1.conv.weight": (cout, i, 3, 3, 3),
                         p + "norm2.weight": (cout,), p + "norm2.bias": (cout,),
                         p + "conv2.conv.weight": (cout, cout, 3, 3, 3)})
            if i != cout:
                want[p + "conv3.conv.weight"] = (cout, i, 1, 1, 1)
    from diffusers import AutoencoderKL

    cfg = OpenSoraVAEConfig()
    with torch.device("meta"):
        model = OpenSoraVAE(cfg)
        sdxl = AutoencoderKL(**facts["spatial_vae_module_config"], down_block_types=["DownEncoderBlock2D"] * 4,
                             up_block_types=["UpDecoderBlock2D"] * 4)
    want.update({f"spatial_vae.module.{k}": tuple(v.shape) for k, v in sdxl.state_dict().items()})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) ^ set(want)) == [] and got == want
    assert sum(math.prod(s) for k, s in got.items() if k.startswith("temporal_vae.")) == 309_687_144
    # the scale / shift buffers: in the published state_dict, read by the loader (see the end-to-end test)
    p = facts["pipeline"]
    assert (cfg.micro_frame_size, cfg.micro_batch_size, cfg.shift, cfg.scale) == (
        p["micro_frame_size"], p["micro_batch_size"], tuple(p["shift"]), tuple(p["scale"]))
    assert tuple(model.scale.shape) == tuple(facts["buffers"]["scale"]) and cfg.spatial_stride == 8


# ---- sampling: the published RFlow scheduler ---------------------------------------------------------------------
def published_rflow(num_steps, height, width, num_frames, dtype):
    """opensora/schedulers/rf/__init__.py RFLOW.sample + rectified_flow.timestep_transform (v1.2.0), transcribed:
    the model_kwargs tensors are in the model's dtype (scripts/inference.py prepare_multi_resolution_info)."""
    mk = dict(height=torch.tensor([height], dtype=dtype), width=torch.tensor([width], dtype=dtype),
              num_frames=torch.tensor([num_frames], dtype=dtype))

    def timestep_transform(t, base_resolution=512 * 512, base_num_frames=1, scale=1.0, num_timesteps=1000):
        t = t / num_timesteps
        ratio_space = (mk["height"] * mk["width"] / base_resolution).sqrt()
        frames = torch.ones_like(mk["num_frames"]) if mk["num_frames"][0] == 1 else mk["num_frames"] // 17 * 5
        ratio = ratio_space * (frames / base_num_frames).sqrt() * scale
        return ratio * t / (1 + (ratio - 1) * t) * num_timesteps

    timesteps = [torch.tensor([(1.0 - i / num_steps) * 1000]) for i in range(num_steps)]
    return [timestep_transform(t) for t in timesteps]


@pytest.mark.parametrize("geometry,dtype", [((51, 720, 1280), "bfloat16"), ((51, 480, 848), "float32"),
                                            ((1, 512, 512), "bfloat16"), ((102, 480, 848), "bfloat16")])
def test_rflow_grid_and_steps_equal_the_published_scheduler(geometry, dtype):
    frames, h, w = geometry
    cfg = load_config(None, ["model.name=opensora-1.2", f"model.dtype={dtype}", "sampler.num_steps=30",
                             "sampler.solver=euler", f"video.frames={frames}", f"video.height={h}", f"video.width={w}",
                             "ckpt_dir=/nonexistent"])
    scfg = make_family(cfg).sampler_config()
    pub = published_rflow(30, h, w, frames, getattr(torch, dtype))
    sched = FlowScheduler("euler", 30, scfg.shift, sigmas=scfg.sigmas)
    assert scfg.cfg_mode == "batched"
    assert torch.allclose(sched.timesteps, torch.cat(pub), atol=1e-4, rtol=0)  # what the model sees
    # Euler: the release adds v_os * dt with v_os = x0 - noise (the model's output), dt = (t_i - t_{i+1}) / 1000
    # (the last step to 0); ours steps sigma with v = noise - x0 (unpatchify flips the sign)
    g = torch.Generator().manual_seed(0)
    z_pub = z_ours = torch.randn(1, 4, 3, 4, 4, generator=g)
    for i in range(30):
        v_os = torch.randn(z_pub.shape, generator=g)
        dt = (pub[i] - pub[i + 1] if i < 29 else pub[i]) / 1000
        z_pub = z_pub + v_os * dt
        z_ours = sched.step(-v_os, i, z_ours)
    assert torch.allclose(z_ours, z_pub, atol=1e-5)


def test_rflow_ratio_is_rounded_like_the_release_in_bfloat16():
    # 720 x 1280 x 51: sqrt(921600 / 512^2) = 1.875 exactly, sqrt(15) = 3.873 -> bf16 3.875, product 7.2656 -> 7.25
    t = 29 / 30  # the second timestep: t' = r t / (1 + (r - 1) t)  ->  r = t' (1 - t) / (t (1 - t'))
    r = lambda ts: ts[1] / 1000 * (1 - t) / (t * (1 - ts[1] / 1000))  # noqa: E731
    bf = family_mod.rflow_timesteps(30, 720, 1280, 51, torch.bfloat16)
    fp = family_mod.rflow_timesteps(30, 720, 1280, 51, torch.float32)
    assert r(bf) == pytest.approx(7.25, rel=1e-5) and r(fp) == pytest.approx(1.875 * math.sqrt(15), rel=1e-5)


# ---- end to end on the tiny folder -------------------------------------------------------------------------------
def test_run_job_on_the_tiny_folder(pipeline_folder, tmp_path, monkeypatch):
    import transformers

    import magcache_dist.run as run_mod
    from magcache_dist.run import run_job

    folder = pipeline_folder("tiny-opensora")
    t5_refs, seen = [], {}
    real_load = transformers.T5EncoderModel.from_pretrained.__func__

    def load(cls, *a, **k):
        model = real_load(cls, *a, **k)
        t5_refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", classmethod(load))
    real_sample = run_mod.sample

    def sample(*a, **k):
        seen["t5_alive_at_sampling"] = [r() is not None for r in t5_refs]
        return real_sample(*a, **k)

    monkeypatch.setattr(run_mod, "sample", sample)
    real_decode = family_mod.OpenSoraFamily.decode

    def decode(self, latents, model=None):
        video = real_decode(self, latents, model)
        seen["video"] = tuple(video.shape), float(video.abs().max())
        return video

    monkeypatch.setattr(family_mod.OpenSoraFamily, "decode", decode)
    report = run_job(load_config(None, pipeline_overrides("tiny-opensora", folder, str(tmp_path / "out"))),
                     solo_context())
    assert seen["t5_alive_at_sampling"] == [False]  # T5 was loaded once and freed before sampling
    assert report["skipped_steps"] == report["schedule"]["skipped_steps"] and report["skipped_steps"]["cond"]
    assert report["computed_calls"] == 8 - len(report["skipped_steps"]["cond"])
    latents = torch.load(tmp_path / "out" / "latents.pt", weights_only=True)
    assert latents.shape == (1, 4, 7, 6, 6) and torch.isfinite(latents).all()  # 23 frames -> 5 + 2 latent frames
    assert seen["video"][0] == (1, 3, 23, 48, 48) and seen["video"][1] <= 1.0
    assert os.path.getsize(tmp_path / "out" / "video.mp4") > 0


def test_pipeline_family_figures_without_files():
    """The dry-run planner's inputs read no file: latent shape, heads, cost figures of the published size."""
    cfg = load_config(None, ["model.name=opensora-1.2", "video.frames=51", "video.height=720", "video.width=1280",
                             "sampler.solver=euler"])
    fam = make_family(cfg)
    fam.check_geometry()
    assert fam.latent_shape() == (4, 15, 90, 160) and fam.num_heads() == 16
    fig = fam.cost_figures()
    assert (fig.dim, fig.num_layers, fig.text_tokens, fig.text_dim) == (1152, 56, 300, 4096)


def test_release_style_vae_config_gives_the_published_vae(tmp_path):
    """vae/config.json as OpenSoraVAE_V1_2 (vae.py, v1.2.0) saves it: the 2D VAE named by its hub id (SDXL's VAE, built
    in), VAE_Temporal_SD without sizes -> exactly the published configuration."""
    path = tmp_path / "vae" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dict(
        architectures=["VideoAutoencoderPipeline"], model_type="VideoAutoencoderPipeline", cal_loss=False,
        freeze_vae_2d=False, micro_frame_size=17, scale=[3.85, 2.32, 2.33, 3.06], shift=[-0.10, 0.34, 0.27, 0.98],
        vae_2d=dict(type="VideoAutoencoderKL", from_pretrained="PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
                    subfolder="vae", micro_batch_size=4, local_files_only=False),
        vae_temporal=dict(type="VAE_Temporal_SD", from_pretrained=None))))
    files = family_mod.OpenSoraFiles(str(tmp_path), "", "", "", str(path), "", "")
    cfg = family_mod.vae_config(files)
    assert cfg == OpenSoraVAEConfig() and cfg.spatial_stride == 8 and cfg.latent_channels == 4
