"""Wan2.2 A14B (two experts) under Ulysses and ring attention with simulated ranks (threads): the tiny job equals
the single process within 1e-4, with the same skip schedule across the expert switch and identical decisions on
every rank (the release's own scripts turn MagCache off under sequence parallelism)."""
import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import ParallelDims, build_thread_contexts, solo_context
from magcache_dist.parallel.threads import run_threads
from magcache_dist.run import run_job
from magcache_dist.sampling.grids import expert_switch_step
from tests.support.wan22_tiny import wan22_overrides

BASE = ["save_video=false", "sampler.num_steps=12", "cache.magcache.thresh=0.3", "cache.magcache.retention=0.25"]


@pytest.mark.parametrize("layout,sync",
                         [("parallel.ulysses_degree=2", "official"), ("parallel.ring_degree=2", "joint")],
                         ids=["ulysses2-official", "ring2-joint"])
def test_sp2_equals_single_process(layout, sync, wan22_ckpts, tmp_path):
    folder = wan22_ckpts["t2v"]["official"]
    solo = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / "solo"), *BASE, f"cache.branch_sync={sync}"))
    ref = run_job(solo, solo_context())
    cfg = load_config(None, wan22_overrides("t2v", folder, str(tmp_path / "sp"), *BASE, layout,
                                            f"cache.branch_sync={sync}"))
    dims = ParallelDims(cfg.parallel.ulysses_degree, cfg.parallel.ring_degree, 1)
    reports = run_threads(lambda par: run_job(cfg, par), build_thread_contexts(dims, timeout=120), timeout=300)
    report = reports[0]
    assert reports[1] is None and report["world_size"] == 2 and report["decisions_identical_across_ranks"]
    assert report["skipped_steps"] == ref["skipped_steps"] and report["computed_calls"] < 24
    assert report["cache"]["switch_step"] == ref["cache"]["switch_step"] == expert_switch_step(12, 12.0, 0.875) == 8
    a = torch.load(tmp_path / "sp" / "latents.pt", weights_only=True)
    b = torch.load(tmp_path / "solo" / "latents.pt", weights_only=True)
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["parallel.ulysses_degree=2", "parallel.ring_degree=2"], ids=["ulysses2", "ring2"])
def test_ti2v_image_mode_sp2_equals_single_process(layout, ti2v_ckpt, tmp_path, monkeypatch):
    """TI2V-5B with an image: a timestep per token (0 on the image's frame), sharded with the tokens (12 tokens)."""
    import threading

    from models import wan_components
    from tests.support.wan22_tiny import ti2v_overrides
    from tests.support.wan_tiny import save_image

    lock = threading.Lock()  # transformers' / diffusers' from_pretrained are not safe in two threads at once
    for name in ("load_umt5", "load_wan_vae"):
        def locked(*a, _f=getattr(wan_components, name), **k):
            with lock:
                return _f(*a, **k)
        monkeypatch.setattr(wan_components, name, locked)

    image = save_image(str(tmp_path / "first.png"), h=64, w=64)
    video = "ulysses" in layout  # the decode over 2 ranks (row bands) also starts from the image's latent frame
    base = [f"save_video={str(video).lower()}", f"image={image}", "cache.magcache.thresh=0.3"]
    ref = run_job(load_config(None, ti2v_overrides(ti2v_ckpt["diffusers"], str(tmp_path / "solo"), *base)),
                  solo_context())
    cfg = load_config(None, ti2v_overrides(ti2v_ckpt["diffusers"], str(tmp_path / "sp"), *base, layout))
    dims = ParallelDims(cfg.parallel.ulysses_degree, cfg.parallel.ring_degree, 1)
    reports = run_threads(lambda par: run_job(cfg, par), build_thread_contexts(dims, timeout=120), timeout=300)
    assert reports[0]["decisions_identical_across_ranks"] and reports[0]["skipped_steps"] == ref["skipped_steps"]
    a = torch.load(tmp_path / "sp" / "latents.pt", weights_only=True)
    b = torch.load(tmp_path / "solo" / "latents.pt", weights_only=True)
    assert (a - b).abs().max() < 1e-4
    if video:
        from magcache_dist.io.video import read_frames

        assert reports[0]["decode"]["split"] == "patches" and reports[0]["decode"]["ranks"] == 2
        sp, solo = (read_frames(str(tmp_path / d / "video.mp4")).astype(int) for d in ("sp", "solo"))
        d = abs(sp - solo)  # the mp4 encoder turns differences of ~1e-6 into a few levels here and there; without
        assert sp.shape == solo.shape and d.mean() < 0.25 and d.max() <= 8, (d.mean(), d.max())  # the image: 27
