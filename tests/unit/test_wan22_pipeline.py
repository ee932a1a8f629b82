"""Wan2.2 A14B (two experts) end to end on tiny random folders in both layouts, single process, fp32.

- faithful: the same initial latents through diffusers' ``WanPipeline`` (``transformer_2``, ``boundary_ratio``,
  ``guidance_scale_2``) and ``WanImageToVideoPipeline`` give our latents and decoded video within 1e-4; the official
  and diffusers layouts of the same weights give identical latents;
- the experts switch at the sampler's step (t >= boundary x 1000), each with its guidance; MagCache skips exactly the
  plan's steps with one state over both experts;
- the planner and the dry run know both experts.
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
from magcache_dist.sampling.grids import expert_switch_step
from models.wan_experts import WanExperts
from tests.support.wan22_tiny import BOUNDARY, SHIFT, wan22_overrides

GUIDANCE = (4.0, 3.0)


def diffusers_pipeline(task: str, folder: str, boundary: float | None):
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import AutoTokenizer, UMT5EncoderModel

    parts = dict(tokenizer=AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
                 text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                 vae=AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae")),
                 scheduler=UniPCMultistepScheduler.from_pretrained(os.path.join(folder, "scheduler")),
                 transformer=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")),
                 transformer_2=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer_2")),
                 boundary_ratio=boundary)
    pipe = WanImageToVideoPipeline(image_encoder=None, image_processor=None, **parts) if task == "i2v" else \
        WanPipeline(**parts)
    # Wan's own grid (sigmas from 1 - 1/1000, as Wan2.2 and our scheduler sample), not diffusers' default 1.0 start
    orig = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda n, device=None, **kw: orig(
        sigmas=np.linspace(1 - 1 / 1000, 0, n + 1)[:-1], device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, cfg, noise, image, output_type, guidance_2=GUIDANCE[1]):
    from PIL import Image

    args = dict(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, height=cfg.video.height,
                width=cfg.video.width, num_frames=cfg.video.frames, num_inference_steps=cfg.sampler.num_steps,
                guidance_scale=GUIDANCE[0], guidance_scale_2=guidance_2, latents=noise.clone(),
                output_type=output_type, max_sequence_length=24)
    if image is not None:
        args["image"] = Image.open(image).convert("RGB")
    with torch.no_grad():
        return pipe(**args).frames


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_faithful_to_diffusers_pipelines(task, wan22_ckpts, tmp_path, monkeypatch):
    import types

    from diffusers.pipelines.wan import pipeline_wan_i2v

    # the I2V pipeline's prompt cleaning calls ftfy without checking it is installed (the T2V pipeline checks);
    # ftfy.fix_text leaves these ASCII prompts as they are, as our cleaning does
    monkeypatch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    image = wan22_ckpts["image"] if task == "i2v" else None
    latents = {}
    for layout in ("official", "diffusers"):
        cfg = load_config(None, wan22_overrides(task, wan22_ckpts[task][layout], str(tmp_path / layout),
                                                "cache.mode=off", "save_video=false", image=image))
        run_job(cfg, solo_context())
        latents[layout] = torch.load(tmp_path / layout / "latents.pt", weights_only=True)
    assert torch.equal(latents["official"], latents["diffusers"])
    ours = latents["diffusers"]
    job = validate_job(cfg, 1)
    assert job.scfg.switch_step == expert_switch_step(8, SHIFT[task], BOUNDARY[task]) == (6 if task == "t2v" else 3)
    noise = job.family.make_noise(cfg.seed)
    pipe = diffusers_pipeline(task, wan22_ckpts[task]["diffusers"], BOUNDARY[task])
    ref = run_diffusers(pipe, cfg, noise, image, "latent")
    assert ref.shape == ours.shape == (1, 16, 3, 6, 6)
    assert (ref - ours).abs().max() < 1e-4, (ref - ours).abs().max()
    # decoded: diffusers' pt video is (x + 1) / 2 in [0, 1], [B, F, C, H, W]
    video = run_diffusers(pipe, cfg, noise, image, "pt")
    with torch.no_grad():
        mine = job.family.decode(ours)  # [1, 3, F, H, W] in [-1, 1]
    mine = (mine * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    assert mine.shape == video.shape == (1, 9, 3, 48, 48)
    assert (mine - video).abs().max() < 1e-4, (mine - video).abs().max()
    # the low-noise expert matters: diffusers without a boundary (the high-noise expert every step) differs
    alone = run_diffusers(diffusers_pipeline(task, wan22_ckpts[task]["diffusers"], None), cfg, noise, image, "latent",
                          guidance_2=None)
    assert (alone - ours).abs().max() > 1e-2


def test_experts_switch_at_the_sampler_step_and_share_one_cache(wan22_ckpts, tmp_path, monkeypatch):
    calls = []
    embed = WanExperts.embed

    def logging_embed(self, x, t, context):
        tokens, ctx = embed(self, x, t, context)
        calls.append((float(t[0]), ctx.expert))
        return tokens, ctx

    monkeypatch.setattr(WanExperts, "embed", logging_embed)
    cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["official"], str(tmp_path), "save_video=false",
                                            "sampler.num_steps=12", "cache.magcache.thresh=0.3",
                                            "cache.magcache.retention=0.25"))
    report = run_job(cfg, solo_context())
    job = validate_job(cfg, 1)
    switch = expert_switch_step(12, SHIFT["t2v"], BOUNDARY["t2v"])
    assert job.policy.switch_step == switch == job.scfg.switch_step and 0 < switch < 12
    expect = skip_schedule(job.policy, 12, ["cond", "uncond"])
    assert report["skipped_steps"] == expect["skipped_steps"] and report["computed_calls"] < 24
    # every call (computed or skipped) embeds once: 2 per step, the high-noise expert before the switch step
    steps = [calls[2 * i][1] for i in range(12)]
    assert steps == ["high"] * switch + ["low"] * (12 - switch)
    assert all(t >= 875 for t, e in calls if e == "high") and all(t < 875 for t, e in calls if e == "low")
    assert job.policy.describe()["rule"] == "wan2.2-t2v" and report["cache"]["switch_step"] == switch


def test_per_expert_guidance(wan22_ckpts, tmp_path):
    out = {}
    for g2 in ("3.0", "null"):
        cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["official"], str(tmp_path / g2),
                                                "cache.mode=off", "save_video=false", f"sampler.guidance_2={g2}"))
        job = validate_job(cfg, 1)
        assert [job.scfg.guidance_at(i) for i in (0, 5, 6, 7)] == ([4.0, 4.0, 3.0, 3.0] if g2 == "3.0" else [4.0] * 4)
        run_job(cfg, solo_context())
        out[g2] = torch.load(tmp_path / g2 / "latents.pt", weights_only=True)
    assert (out["3.0"] - out["null"]).abs().max() > 1e-3


def test_dry_run_plans_both_experts(wan22_ckpts):
    from magcache_dist.planner import format_plan, plan_job
    from tests.support import ROOT

    cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["diffusers"], "/tmp/unused"))
    job = validate_job(cfg, 1)
    p = plan_job(cfg, job)
    fig = job.family.cost_figures()
    assert fig.experts == 2 and p["experts"]["count"] == 2 and p["experts"]["switch_step"] == 6
    assert p["experts"]["resident"] == 2 and p["params"] == 2 * fig.params  # tiny: both fit
    assert p["experts"]["guidance"] == [4.0, 3.0]
    # real size, planned: fp32 on an 80 GB H100 cannot hold both 14B experts (2.2 x 57 GB): one stays on the host;
    # bf16 (28.6 GB each) keeps both; FSDP over 8 ranks holds an eighth of both
    # one resident: that expert plus the other's embeddings and head (40 blocks of 351,394,304 parameters each)
    for extra, resident, weights in ((["model.dtype=float32", "parallel.fsdp=false"], 1,
                                      4 * (2 * fig_a14b() - 40 * 351_394_304)),
                                     (["parallel.fsdp=false"], 2, 2 * 2 * fig_a14b()),
                                     ([], 2, 2 * (2 * fig_a14b() / 8 + fig_a14b() // 40))):  # + the block gathered
        cfg = load_config(os.path.join(ROOT, "configs", "wan2.2-t2v-a14b-720p.yaml"), ["planner.device=h100", *extra])
        p = plan_job(cfg)
        assert p["experts"]["resident"] == resident and p["experts"]["switch_step"] == 26
        assert abs(p["per_rank"]["memory_bytes"]["weights"] - weights) <= 8, (extra, p["per_rank"]["memory_bytes"])
        assert ("both resident" if resident == 2 else "one resident") in format_plan(p)
        sw = p["experts"]["switch"]
        assert sw["mode"] == ("both resident" if resident == 2 else "one resident")
        if resident == 1:  # 2 x 40 blocks of 1.41 GB over the host link, during step 24 (the preset skips 25)
            assert sw["trade_bytes"] == 2 * 40 * 4 * 351_394_304 and sw["switch"]["prefetched"]
            assert 0 <= sw["switch"]["exposed_s"] <= sw["trade_s"] and "prefetched during" in format_plan(p)


def fig_a14b() -> int:
    from magcache_dist.families.common import wan_cost_figures
    from models.wan import get_config

    return wan_cost_figures(get_config("wan2.2-t2v-a14b")).params


def test_calibrate_auto_online_over_both_experts(wan22_ckpts, tmp_path):
    """calibrate records every step of both experts into one table (rule wan2.2-t2v); auto calibrates once, stores,
    then skips with the stored table and the switch windows; online runs with the same rule and switch step."""
    from magcache_dist.cache import RatioTable

    base = ["save_video=false", "sampler.num_steps=12", "cache.magcache.thresh=0.3", "cache.magcache.retention=0.25"]
    switch = expert_switch_step(12, SHIFT["t2v"], BOUNDARY["t2v"])
    folder = wan22_ckpts["t2v"]["official"]
    cal = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / "cal"), *base, "cache.mode=calibrate"))
    report = run_job(cal, solo_context())
    assert report["computed_calls"] == report["total_calls"] == 24
    table = RatioTable.load(str(tmp_path / "cal" / "ratios.json"))
    assert table.num_steps == 12 and table.meta["rule"] == "wan2.2-t2v" and sorted(table.branches) == ["cond", "uncond"]
    # the step after the switch compares the low-noise expert's residual with the high-noise expert's: recorded too
    assert all(v > 0 for b in table.branches for v in table.ratios[b]) and table.ratios["cond"][switch] != 1.0
    store = str(tmp_path / "store")
    runs = []
    for i in range(2):
        cfg = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / f"auto{i}"), *base, "cache.mode=auto",
                                                f"cache.calibration.store_dir={store}"))
        runs.append(run_job(cfg, solo_context()))
    assert runs[0]["computed_calls"] == 24 and runs[0]["ratios_used"]["lookup"] == "calibrate"
    assert runs[1]["ratios_used"]["lookup"] == "exact" and runs[1]["cache"]["switch_step"] == switch
    assert runs[1]["skipped_steps"] == runs[1]["schedule"]["skipped_steps"] and runs[1]["computed_calls"] < 24
    assert runs[1]["ratios_used"]["key"]["model"] == f"tiny-wan22-t2v [switch at step {switch}, guidance_2 3.0]"
    # another low-noise guidance is another key: calibrated anew, not reused
    other = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / "auto2"), *base, "cache.mode=auto",
                                              f"cache.calibration.store_dir={store}", "sampler.guidance_2=2.0"))
    assert run_job(other, solo_context())["ratios_used"]["lookup"] == "calibrate"
    on = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / "online"), *base, "cache.mode=online"))
    report = run_job(on, solo_context())
    assert report["cache"]["rule"] == "wan2.2-t2v" and report["cache"]["switch_step"] == switch


@pytest.mark.parametrize("name,task,res,shift,guidance,retention", [
    ("wan2.2-t2v-a14b-480p", "t2v", (480, 832), 12.0, (4.0, 3.0), 0.4),
    ("wan2.2-t2v-a14b-720p", "t2v", (720, 1280), 12.0, (4.0, 3.0), 0.4),
    ("wan2.2-i2v-a14b-480p", "i2v", (480, 832), 5.0, (3.5, 3.5), 0.1),
    ("wan2.2-i2v-a14b-720p", "i2v", (720, 1280), 5.0, (3.5, 3.5), 0.1),
])
def test_shipped_configs_carry_the_published_settings(name, task, res, shift, guidance, retention):
    from tests.support import ROOT

    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    s, m = cfg.sampler, cfg.cache.magcache
    assert (cfg.model.name, s.num_steps, s.shift, s.guidance, s.guidance_2, s.solver) == \
        (f"wan2.2-{task}-a14b", 40, shift, *guidance, "unipc")
    assert (cfg.cache.mode, m.preset, m.thresh, m.K, m.retention) == \
        ("magcache", f"wan2.2-{task}-a14b", 0.06, 2, retention)
    assert (cfg.video.frames, cfg.video.height, cfg.video.width, cfg.video.fps) == (81, *res, 16)
    assert (cfg.parallel.ulysses_degree, cfg.parallel.fsdp) == (8, True)
    with pytest.raises(ValueError, match="ckpt_dir is not set"):
        validate_job(cfg, 8)


def test_offloaded_expert_trades_places_at_the_switch(wan22_ckpts, tmp_path, monkeypatch):
    """Without FSDP on a device that cannot hold both experts, the low-noise expert waits in host memory and the
    two trade places block by block at the switch (families/expert_swap.py; the order and the overlap are
    tests/unit/test_expert_swap.py's): every low-noise call finds its expert in the slots; the video is the same."""
    from magcache_dist.families import wan22

    cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["official"], str(tmp_path / "ref"),
                                            "save_video=false"))
    run_job(cfg, solo_context())
    ref = torch.load(tmp_path / "ref" / "latents.pt", weights_only=True)

    built = []
    monkeypatch.setattr(wan22, "experts_fit", lambda device, nbytes: False)  # as on a small GPU
    build = wan22.Wan22Family.build

    def tracking_build(self, device, weights=True):
        model, enc = build(self, device, weights)
        built.append(model)
        return model, enc

    monkeypatch.setattr(wan22.Wan22Family, "build", tracking_build)
    blocks = WanExperts.forward_blocks
    calls = []

    def logging_blocks(self, tokens, ctx):  # a computed call, its slots placed: whose blocks are in them
        calls.append((self.swap.resident_blocks()[ctx.expert], ctx.expert))
        return blocks(self, tokens, ctx)

    monkeypatch.setattr(WanExperts, "forward_blocks", logging_blocks)
    cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["official"], str(tmp_path / "off"),
                                            "save_video=false"))
    run_job(cfg, solo_context())
    model = built[0]
    layers = model.cfg.num_layers
    assert model._offload_to == "cpu" and model.swap is not None
    assert [(m["away"], m["brought"]) for m in model.moves][:1] == [("high", "low")]  # once, at the switch
    assert all(m["during"] + m["at_use"] == layers for m in model.moves)
    assert model.moves[0]["during"] == layers  # during the high-noise expert's last computed call (announced)
    assert calls[:2] == [(layers, "high")] * 2 and calls[-1] == (layers, "low")
    assert calls == sorted(calls, key=lambda c: c[1]) and all(n == layers for n, _ in calls)
    assert torch.equal(torch.load(tmp_path / "off" / "latents.pt", weights_only=True), ref)
    report = json.loads((tmp_path / "off" / "report.json").read_text())["experts"]
    assert report["offloaded"] and report["trades"] == model.moves  # one video: every trade is its own


def test_experts_fit_rule(monkeypatch):
    from magcache_dist.families.wan22 import HEADROOM, experts_fit

    assert experts_fit("cpu", 10**12)  # nothing to offload to on a CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(HEADROOM * 1000), 2000))
    assert experts_fit(torch.device("cuda", 0), 1000) and not experts_fit(torch.device("cuda", 0), 1001)


def test_teacache_probes_the_expert_of_each_call(wan22_ckpts, tmp_path, monkeypatch):
    """TeaCache on A14B reads the modulated input of the expert that runs the call (WanExperts.first_block): the
    same skips and latents with the low-noise expert offloaded (its slots placed before the probe) as without."""
    from magcache_dist.families import wan22

    def run(name):
        cfg = load_config(None, wan22_overrides("t2v", wan22_ckpts["t2v"]["official"], str(tmp_path / name),
                                                "save_video=false", "sampler.num_steps=12", "cache.mode=teacache",
                                                "cache.teacache.thresh=0.5",
                                                "cache.teacache.coefficients=[0.0,0.0,0.0,1.0,0.0]"))
        report = run_job(cfg, solo_context())
        return report["skipped_steps"], torch.load(tmp_path / name / "latents.pt", weights_only=True)

    skips, ref = run("ref")
    assert any(skips.values()), skips  # the probe really skips some steps
    monkeypatch.setattr(wan22, "experts_fit", lambda device, nbytes: False)
    off_skips, off = run("off")
    assert off_skips == skips and torch.equal(off, ref)
