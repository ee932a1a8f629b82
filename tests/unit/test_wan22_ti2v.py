"""Wan2.2 TI2V-5B, text-to-video, on a tiny random diffusers folder (one DiT, the 48-channel Wan2.2 VAE), fp32:
latents and decoded video equal diffusers' ``WanPipeline(expand_timesteps=True)`` within 1e-4 given the same
initial latents; MagCache uses the release's TI2V arrays with Wan2.1's rule. The official layout:
tests/unit/test_wan22_ti2v_official.py."""
import os

import numpy as np
import torch

from magcache_dist.cache import skip_schedule
from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.wan22_tiny import ti2v_overrides


def test_ti2v_t2v_faithful_to_diffusers(ti2v_ckpt, tmp_path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = ti2v_ckpt["diffusers"]
    cfg = load_config(None, ti2v_overrides(folder, str(tmp_path / "off"), "cache.mode=off", "save_video=false"))
    run_job(cfg, solo_context())
    ours = torch.load(tmp_path / "off" / "latents.pt", weights_only=True)
    job = validate_job(cfg, 1)
    assert ours.shape == (1, 48, 3, 4, 4) and job.family.latent_shape() == (48, 3, 4, 4)
    noise = job.family.make_noise(cfg.seed)
    pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
                       text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                       vae=AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae")),
                       scheduler=UniPCMultistepScheduler.from_pretrained(os.path.join(folder, "scheduler")),
                       transformer=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")),
                       expand_timesteps=True)
    orig = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda n, device=None, **kw: orig(
        sigmas=np.linspace(1 - 1 / 1000, 0, n + 1)[:-1], device=device)  # Wan's grid, as ours
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, height=64, width=64, num_frames=9,
                num_inference_steps=8, guidance_scale=5.0, max_sequence_length=24)
    with torch.no_grad():
        ref = pipe(latents=noise.clone(), output_type="latent", **args).frames
        video = pipe(latents=noise.clone(), output_type="pt", **args).frames  # [1, F, 3, H, W] in [0, 1]
    assert (ref - ours).abs().max() < 1e-4, (ref - ours).abs().max()
    with torch.no_grad():
        mine = (job.family.decode(ours) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert mine.shape == video.shape == (1, 9, 3, 64, 64)
    assert (mine - video).abs().max() < 1e-4, (mine - video).abs().max()


def test_ti2v_image_mode_faithful_to_diffusers(ti2v_ckpt, tmp_path, monkeypatch):
    """Text+image: the first latent frame is the image's latents at timestep 0 (a timestep per token); equal to
    diffusers' WanImageToVideoPipeline(expand_timesteps=True) within 1e-4 (latents after the first frame, which the
    pipeline overwrites with the image's, and the decoded video)."""
    import types

    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from diffusers.pipelines.wan import pipeline_wan_i2v
    from PIL import Image
    from transformers import AutoTokenizer, UMT5EncoderModel

    from tests.support.wan_tiny import save_image

    monkeypatch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    image = save_image(str(tmp_path / "first.png"), h=64, w=64)
    folder = ti2v_ckpt["diffusers"]
    cfg = load_config(None, ti2v_overrides(folder, str(tmp_path / "off"), "cache.mode=off", "save_video=false",
                                           f"image={image}"))
    run_job(cfg, solo_context())
    ours = torch.load(tmp_path / "off" / "latents.pt", weights_only=True)
    job = validate_job(cfg, 1)
    assert job.cache.preset is None and job.family.default_preset() == "wan2.2-ti2v-5b-i2v"
    noise = job.family.make_noise(cfg.seed)
    pipe = WanImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
        text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
        vae=AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae")),
        scheduler=UniPCMultistepScheduler.from_pretrained(os.path.join(folder, "scheduler")),
        transformer=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")),
        image_encoder=None, image_processor=None, expand_timesteps=True)
    orig = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda n, device=None, **kw: orig(
        sigmas=np.linspace(1 - 1 / 1000, 0, n + 1)[:-1], device=device)
    pipe.set_progress_bar_config(disable=True)
    args = dict(image=Image.open(image).convert("RGB"), prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                height=64, width=64, num_frames=9, num_inference_steps=8, guidance_scale=5.0, max_sequence_length=24)
    with torch.no_grad():
        ref = pipe(latents=noise.clone(), output_type="latent", **args).frames
        video = pipe(latents=noise.clone(), output_type="pt", **args).frames
    assert (ref[:, :, 1:] - ours[:, :, 1:]).abs().max() < 1e-4, (ref[:, :, 1:] - ours[:, :, 1:]).abs().max()
    with torch.no_grad():
        mine = (job.family.decode(ours) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert (mine - video).abs().max() < 1e-4, (mine - video).abs().max()
    # without the image (text only) the same noise gives another video
    t2v = load_config(None, ti2v_overrides(folder, str(tmp_path / "t2v"), "cache.mode=off", "save_video=false"))
    run_job(t2v, solo_context())
    assert (torch.load(tmp_path / "t2v" / "latents.pt", weights_only=True) - ours).abs().max() > 1e-2


def test_ti2v_magcache_uses_the_release_arrays_with_wan21_rule(ti2v_ckpt, tmp_path):
    cfg = load_config(None, ti2v_overrides(ti2v_ckpt["diffusers"], str(tmp_path), "save_video=false",
                                           "cache.branch_sync=official"))
    report = run_job(cfg, solo_context())
    job = validate_job(cfg, 1)
    assert job.policy.describe()["source"] == "preset:wan2.2-ti2v-5b-t2v" and job.policy.rule.name == "wan"
    assert job.cache.switch_step is None
    assert report["skipped_steps"] == skip_schedule(job.policy, 8, ["cond", "uncond"])["skipped_steps"]


def test_shipped_ti2v_config_carries_the_published_settings():
    from tests.support import ROOT

    cfg = load_config(os.path.join(ROOT, "configs", "wan2.2-ti2v-5b-720p.yaml"))
    s, m = cfg.sampler, cfg.cache.magcache
    assert (cfg.model.name, s.num_steps, s.shift, s.guidance, s.solver) == ("wan2.2-ti2v-5b", 50, 5.0, 5.0, "unipc")
    assert (m.preset, m.thresh, m.K, m.retention) == (None, 0.06, 2, 0.2)  # the family's: text only or with image
    from magcache_dist.families.wan22 import Wan22TI2VFamily

    assert Wan22TI2VFamily(cfg).default_preset() == "wan2.2-ti2v-5b-t2v"
    assert (cfg.video.frames, cfg.video.height, cfg.video.width, cfg.video.fps) == (121, 704, 1280, 24)
    assert cfg.parallel.ulysses_degree == 8
    import pytest

    with pytest.raises(ValueError, match="ckpt_dir is not set"):
        validate_job(cfg, 8)
