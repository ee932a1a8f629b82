"""Multi-process (gloo, loopback) sequence parallelism for the joint text+image and factorised families, under a
timeout: 2 processes, HunyuanVideo with ring attention (text whole on both ranks, padded image keys masked) and
Open-Sora with Ulysses, each equal to the single-process run within 1e-4 with the plan's skips on every rank."""
import json

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.families import family_overrides, save_family_checkpoint

JOBS = {"hunyuan_r2": ("hunyuanvideo-tiny", ["parallel.ring_degree=2"]),
        "opensora_u2": ("opensora-1.2-tiny", ["parallel.ulysses_degree=2"])}


@pytest.mark.timeout(240)
def test_families_on_two_processes_equal_single_process(tmp_path):
    ckpts, refs = {}, {}
    for name in {n for n, _ in JOBS.values()}:
        ckpts[name] = str(tmp_path / f"{name}.safetensors")
        save_family_checkpoint(ckpts[name], name, seed=4)
        report = run_job(load_config(None, family_overrides(name, str(tmp_path / f"ref-{name}"), ckpt=ckpts[name])),
                         solo_context())
        refs[name] = (report, torch.load(tmp_path / f"ref-{name}" / "latents.pt", weights_only=True))
    jobs = [(job, family_overrides(name, str(tmp_path / job), *extra, ckpt=ckpts[name]))
            for job, (name, extra) in JOBS.items()]
    spawn(2, jobs, str(tmp_path), timeout=200)
    for job, (name, _) in JOBS.items():
        for rank in (0, 1):
            assert json.loads((tmp_path / f"{job}.rank{rank}.json").read_text())["status"] == "ok", (job, rank)
        report = json.loads((tmp_path / job / "report.json").read_text())
        ref_report, ref_latents = refs[name]
        assert report["world_size"] == 2 and report["decisions_identical_across_ranks"]
        assert report["skipped_steps"] == ref_report["skipped_steps"] and ref_report["skipped_steps"]["cond"]
        latents = torch.load(tmp_path / job / "latents.pt", weights_only=True)
        assert (latents - ref_latents).abs().max() < 1e-4, job
