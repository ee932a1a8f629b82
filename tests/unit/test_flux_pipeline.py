"""FLUX.1 from a diffusers-layout folder (tiny random components, tests/support/flux_tiny.py), single process.

- the whole pipeline equals diffusers' ``FluxPipeline`` on the same folder and the same initial latents, dev
  (guidance embedded, sigmas shifted by the token count) and schnell (no guidance, no shift): final latents and
  decoded image within 5e-5 in fp32;
- BFL's official single-file transformer (``model.ckpt``, fused qkv keys) gives latents bit-identical to the
  folder's transformer/ (converted tensor by tensor while streaming);
- a prompt list encodes with CLIP and T5 loaded once, and each video equals its single-prompt job;
- MagCache skips exactly the plan's steps; the output is image.png;
- the dry-run plans of the shipped 1024x1024 configs.
"""
import json
import os

import numpy as np
import pytest
import torch

from magcache_dist.cache import skip_schedule
from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from models.flux import FLUX_OFFICIAL, pack
from models.layouts import diffusers_to_official
from tests.support import ROOT
from tests.support.flux_tiny import STEPS, pipeline_overrides

PROMPT = "a red car on the road"


def _job(name, folder, out, *extra):
    return validate_job(load_config(None, pipeline_overrides(name, folder, str(out), f"prompt={PROMPT}", *extra)), 1)


@pytest.mark.parametrize("name", ["tiny-flux-dev", "tiny-flux-schnell"])
def test_pipeline_equals_diffusers_flux_pipeline(name, pipeline_folder, tmp_path):
    from diffusers import FluxPipeline

    folder = pipeline_folder(name)
    job = _job(name, folder, tmp_path / "ours", "cache.mode=off")
    report = run_job(job, solo_context())
    ours = torch.load(tmp_path / "ours" / "latents.pt", weights_only=True)  # [1, 4, 1, 6, 10]
    image = job.family.decode(ours)  # [1, 3, 1, 48, 80] in [-1, 1]

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    noise = job.family.make_noise(job.cfg.seed)
    steps = job.scfg.num_steps
    args = dict(prompt=PROMPT, height=48, width=80, num_inference_steps=steps, latents=pack(noise),
                max_sequence_length=32, guidance_scale=job.cfg.sampler.guidance)
    with torch.no_grad():
        ref_latents = pipe(**args, output_type="latent").images  # packed [1, 15, 16]
        ref_image = pipe(**args, output_type="pt").images  # [1, 3, 48, 80] in [0, 1]
    # the same sigma grid: diffusers' scheduler after set_timesteps vs ours
    from magcache_dist.sampling.schedulers import FlowScheduler

    ours_sigmas = FlowScheduler("euler", steps, 1.0, sigmas=job.scfg.sigmas).sigmas.float()
    assert torch.allclose(ours_sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    assert report["computed_calls"] == steps
    # measured 1.5e-5 (dev) and 2.6e-6 (schnell) on latents of magnitude ~5: float32 rounding (diffusers steps
    # in float32, we step in float64; t / 1000 * 1000); another prompt moves them by > 1
    assert (pack(ours) - ref_latents).abs().max() < 5e-5
    assert ((image[:, :, 0] + 1) / 2 - ref_image).abs().max() < 5e-5
    assert ref_latents.abs().max() > 1


def test_official_single_file_equals_folder(pipeline_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    name = "tiny-flux-dev"
    folder = pipeline_folder(name)
    sd = load_file(os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
    official = diffusers_to_official(sd, FLUX_OFFICIAL)
    assert "double_blocks.0.img_attn.qkv.weight" in official and "single_blocks.1.linear1.weight" in official
    save_file({k: v.contiguous() for k, v in official.items()}, str(tmp_path / "flux1-dev.safetensors"))
    run_job(_job(name, folder, tmp_path / "folder"), solo_context())
    run_job(_job(name, folder, tmp_path / "single", f"model.ckpt={tmp_path}/flux1-dev.safetensors"), solo_context())
    a, b = (torch.load(tmp_path / d / "latents.pt", weights_only=True) for d in ("folder", "single"))
    assert torch.equal(a, b)


def test_magcache_skips_the_plan_and_writes_an_image(pipeline_folder, tmp_path):
    name = "tiny-flux-dev"
    job = _job(name, pipeline_folder(name), tmp_path / "out", "save_video=true")
    report = run_job(job, solo_context())
    expected = skip_schedule(job.policy, STEPS, ["cond"])["skipped_steps"]
    assert report["skipped_steps"] == expected and expected["cond"]
    assert report["outputs"]["image"].endswith("image.png") and report["outputs"]["video"] is None
    from PIL import Image

    with Image.open(tmp_path / "out" / "image.png") as im:
        assert im.size == (80, 48)
        assert np.asarray(im).std() > 1  # not a flat image
    assert not (tmp_path / "out" / "video.mp4").exists()


def test_prompt_list_loads_encoders_once_and_equals_single_jobs(pipeline_folder, tmp_path, monkeypatch):
    from transformers import CLIPTextModel, T5EncoderModel

    name = "tiny-flux-dev"
    folder = pipeline_folder(name)
    loads = []
    for cls in (CLIPTextModel, T5EncoderModel):
        orig = cls.from_pretrained.__func__

        def counted(klass, *a, _orig=orig, **k):
            loads.append(klass.__name__)
            return _orig(klass, *a, **k)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(counted))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car on the road\na blue boat on the river\n")
    cfg = load_config(None, [o for o in pipeline_overrides(name, folder, str(tmp_path / "list"))
                             if not o.startswith("prompt=")] + [f"prompts_file={prompts}"])
    summary = run_job(cfg, solo_context())
    assert sorted(loads) == ["CLIPTextModel", "T5EncoderModel"]
    assert [v["status"] for v in summary["videos"]] == ["done", "done"]
    single = tmp_path / "single"
    run_job(_job(name, folder, single, "prompt=a blue boat on the river"), solo_context())
    second = summary["videos"][1]["dir"]
    assert torch.equal(torch.load(tmp_path / "list" / second / "latents.pt", weights_only=True),
                       torch.load(single / "latents.pt", weights_only=True))


@pytest.mark.parametrize("config,computed,world", [("flux.1-dev-1024.yaml", 9, 8), ("flux.1-schnell-1024.yaml", 4, 8)])
def test_shipped_configs_plan(config, computed, world, tmp_path):
    from magcache_dist.planner import plan_job

    cfg = load_config(os.path.join(ROOT, "configs", config), [f"output_dir={tmp_path}", "planner.device=h100"])
    p = plan_job(cfg)
    assert p["params"] > 11.8e9 and p["latent_shape"] == [16, 1, 128, 128]
    assert p["per_rank"]["tokens"] == 4096 and p["parallel"]["world_size"] == world
    assert p["skip_schedule"]["computed_calls"] == computed
    assert p["per_rank"]["fits_in_memory"]
    # while encoding every rank holds T5-XXL's encoder (bf16), the larger of the two, and no DiT yet (read after)
    phases = p["per_rank"]["phase_memory_bytes"]
    assert phases["encode_peak"] == 2 * 4_762_310_656 < p["per_rank"]["memory_bytes"]["total"]
    assert p["gpus_needed"]["ranks"] == 1  # 33 GB at the peak: one 80 GB GPU holds it (8 make it fast)
    host = plan_job(load_config(os.path.join(ROOT, "configs", config), [f"output_dir={tmp_path}", "planner.device=h100",
                                                                        "text_encoder.device=cpu"]))
    assert host["per_rank"]["phase_memory_bytes"]["encode_peak"] == 0
    json.dumps(p, default=str)


def test_eval_compares_image_outputs(pipeline_folder, tmp_path):
    """An image model's job folders (image.png + report.json) evaluate like video jobs: one frame each."""
    from magcache_dist.eval import cli

    name = "tiny-flux-dev"
    folder = pipeline_folder(name)
    run_job(_job(name, folder, tmp_path / "full", "save_video=true", "cache.mode=off"), solo_context())
    run_job(_job(name, folder, tmp_path / "mag", "save_video=true"), solo_context())
    assert cli.main(["--reference", str(tmp_path / "full"), "--candidate", str(tmp_path / "mag")]) == 0
    res = json.load(open(tmp_path / "mag" / "eval.json"))
    row = res["candidates"][0]["rows"][0]
    assert row["frames"] == 1 and (row["height"], row["width"]) == (48, 80)
    assert 5 < row["psnr"] < 100 and row["computed_calls"] == 2 and row["total_calls"] == 8
