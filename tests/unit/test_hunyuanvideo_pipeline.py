"""HunyuanVideo's full pipeline (model.name=tiny-hunyuanvideo: LLaMA + CLIP text, HunyuanVideo VAE, at toy size)
against diffusers' HunyuanVideoPipeline on the same tiny folder, and end to end through run_job.

Faithfulness: the prompt embeddings (LLaMA features, mask, CLIP pooled) equal diffusers' ``encode_prompt`` bit
for bit; from the same initial latents, 8 Euler steps without cache and the VAE decode equal diffusers' video
within 1e-4 in fp32 (measured: latents 1.2e-5, decoded video 3.5e-6 of a [0, 1] range; the adapter's joint
attention concatenates text before image instead of after, and our Euler step runs in float64 on a float64 sigma
grid, diffusers' in float32). The sigma grid itself is diffusers' (shifted linear, shift 7 from the folder)."""
import gc
import os
import weakref

import pytest
import torch

from magcache_dist.cache import skip_schedule
from magcache_dist.cache.factory import build_cache
from magcache_dist.config import load_config
from magcache_dist.families import hunyuanvideo as hy
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from magcache_dist.sampling.loop import sample
from tests.support.hunyuan_tiny import PROMPT, pipeline_overrides

NAME = "tiny-hunyuanvideo"


@pytest.fixture(scope="module")
def folder(pipeline_folder):
    return pipeline_folder(NAME)


@pytest.fixture(scope="module")
def diffusers_pipe(folder):
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    crop = hy.template_crop_start(pipe.tokenizer)
    return pipe, {"template": hy.PROMPT_TEMPLATE, "crop_start": crop}


def _job(folder, tmp_path, *extra):
    return validate_job(load_config(None, pipeline_overrides(NAME, folder, str(tmp_path), *extra)), 1)


def test_template_and_constants_are_diffusers_and_the_crop_removes_the_system_part(diffusers_pipe):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    pipe, template = diffusers_pipe
    assert hy.PROMPT_TEMPLATE == DEFAULT_PROMPT_TEMPLATE["template"]
    assert hy.PUBLISHED_CROP_START["hunyuanvideo"] == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95
    ids = pipe.tokenizer(hy.PROMPT_TEMPLATE.format(PROMPT))["input_ids"]
    first = pipe.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert ids[template["crop_start"]: template["crop_start"] + len(first)] == first  # the prompt starts the crop


def test_prompt_embeddings_equal_diffusers_encode_prompt(folder, diffusers_pipe, tmp_path):
    pipe, template = diffusers_pipe
    with torch.no_grad():
        embeds, pooled, mask = pipe.encode_prompt(PROMPT, prompt_template=template, device="cpu",
                                                  max_sequence_length=256)
    job = _job(folder, tmp_path)
    cond = job.family.encode(hy.HunyuanEncoders(folder, "cpu"), PROMPT, "", ["cond"])["cond"]
    assert cond.text.shape == embeds.shape == (1, 256, 32) and cond.pooled.shape == pooled.shape == (1, 24)
    assert torch.equal(cond.mask, mask.long()) and 1 < int(mask.sum()) < 256
    assert torch.equal(cond.text, embeds) and torch.equal(cond.pooled, pooled)
    assert cond.guidance == 6.0


def test_decoded_video_equals_diffusers_from_the_same_latents(folder, diffusers_pipe, tmp_path):
    pipe, template = diffusers_pipe
    job = _job(folder, tmp_path, "cache.mode=off")
    family = job.family
    model, encoders = family.build("cpu")
    conds = family.encode(encoders, PROMPT, "", job.scfg.branches)
    noise = family.make_noise(0)
    assert noise.shape == (1, 4, 3, 6, 6)
    ours = sample(model, noise, conds, job.scfg, build_cache(job.cache))
    video = family.decode(ours.latents, model)  # [1, 3, 9, 48, 48] in [-1, 1]

    final = {}

    def keep(p, i, t, kw):
        final["latents"] = kw["latents"]
        return {}

    with torch.no_grad():
        ref = pipe(prompt=PROMPT, height=48, width=48, num_frames=9, num_inference_steps=8, guidance_scale=6.0,
                   latents=noise.clone(), output_type="pt", prompt_template=template, max_sequence_length=256,
                   callback_on_step_end=keep).frames  # [1, F, 3, H, W] in [0, 1]
    lat_diff = (ours.latents - final["latents"]).abs().max().item()
    vid_diff = ((video / 2 + 0.5).clamp(0, 1) - ref.permute(0, 2, 1, 3, 4)).abs().max().item()
    print(f"latents max|diff| {lat_diff:.2e}, decoded video max|diff| {vid_diff:.2e}")
    assert ref.shape == (1, 9, 3, 48, 48) and float(ref.std()) > 1e-3
    assert lat_diff < 1e-4 and vid_diff < 1e-4
    # the sigma grid is diffusers' (FlowMatchEulerDiscreteScheduler, shift 7 from the folder): same timesteps
    pipe.scheduler.set_timesteps(sigmas=list(torch.linspace(1, 0, 9)[:-1].tolist()))
    assert torch.allclose(pipe.scheduler.sigmas[:-1].double(), torch.tensor(job.scfg.sigmas, dtype=torch.float64),
                          atol=1e-6)


def test_end_to_end_magcache_skips_the_plan_and_frees_the_text_encoders(folder, tmp_path, monkeypatch):
    loaded = []
    for fn in ("load_llama", "load_clip_text", "load_vae"):
        real = getattr(hy, fn)

        def tracking(*a, _real=real, **k):
            m = _real(*a, **k)
            loaded.append(weakref.ref(m))
            return m

        monkeypatch.setattr(hy, fn, tracking)

    cfg = load_config(None, pipeline_overrides(NAME, folder, str(tmp_path), "save_video=true"))
    report = run_job(cfg, solo_context())
    gc.collect()
    assert len(loaded) == 3 and all(r() is None for r in loaded)  # LLaMA, CLIP, VAE: each run once and freed
    job = validate_job(cfg, 1)
    expect = skip_schedule(job.policy, job.scfg.num_steps, job.scfg.branches)
    assert report["skipped_steps"] == expect["skipped_steps"] and expect["skipped_steps"]["cond"]
    assert report["computed_calls"] < report["total_calls"] == 8
    assert sorted(os.listdir(tmp_path)) == ["frames.png", "latents.pt", "report.json", "video.mp4"]
    latents = torch.load(tmp_path / "latents.pt", weights_only=True)
    assert latents.shape == (1, 4, 3, 6, 6) and torch.isfinite(latents).all()


def test_folder_defaults_and_tiled_decode(folder, tmp_path):
    # not set by the job: Euler, embedded guidance 6.0, the folder scheduler's shift (7.0)
    cfg = load_config(None, [o for o in pipeline_overrides(NAME, folder, str(tmp_path))
                             if not o.startswith(("sampler.solver", "sampler.shift", "sampler.guidance"))])
    job = validate_job(cfg, 1)
    s = job.cfg.sampler  # resolved in the job; the config as written keeps them unset
    assert (s.solver, s.shift, s.guidance) == ("euler", 7.0, 6.0) and cfg.sampler.shift is None
    assert job.scfg.cfg_mode == "distilled" and job.scfg.branches == ["cond"]
    latents = torch.randn(1, 4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    plain = job.family.decode(latents)
    tiled_job = _job(folder, tmp_path, "vae.tiling=true", "vae.tile_height=32", "vae.tile_width=32",
                     "vae.tile_stride_height=16", "vae.tile_stride_width=16")
    tiled = tiled_job.family.decode(latents)
    assert tiled.shape == plain.shape == (1, 3, 9, 48, 48) and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, plain)  # decoded in overlapping tiles (blended seams)


@pytest.mark.parametrize("config,world,memory_gb", [("hunyuanvideo-720p", 8, 80), ("hunyuanvideo-544p", 8, 80)])
def test_dry_run_plans_the_published_configs(config, world, memory_gb, tmp_path):
    from magcache_dist.planner import format_plan, plan_job

    cfg = load_config(os.path.join("configs", f"{config}.yaml"), [f"output_dir={tmp_path}", "planner.device=h100"])
    p = plan_job(cfg)
    assert p["parallel"]["world_size"] == world and p["params"] > 12e9
    assert p["skip_schedule"]["computed_calls"] < p["skip_schedule"]["total_calls"] == 50
    assert 0 < p["per_rank"]["memory_bytes"]["total"] < memory_gb * 1e9
    phases = p["per_rank"]["phase_memory_bytes"]  # LLaMA (7.5B, bf16) alone while encoding: the DiT comes after
    assert phases["encode_peak"] == 2 * hy.PUBLISHED_ENCODER_PARAMS["LLaMA text encoder"]
    assert phases["encode_peak"] <= p["per_rank"]["memory_bytes"]["total"]
    assert 1 <= p["gpus_needed"]["ranks"] <= world
    text = format_plan(p)
    assert "memory per rank" in text and f"on {world} x" in text and "needs: " in text
