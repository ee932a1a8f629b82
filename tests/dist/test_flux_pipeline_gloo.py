"""FLUX.1 full pipelines (tiny diffusers folders: CLIP, T5, VAE, transformer) on 2 gloo processes, under a timeout:
dev with Ulysses 2 (also with parallel.fsdp: each rank streams only its shards of the transformer) and schnell with
ring 2 (15 image tokens: one padded, masked), each equal to the single-process job within 1e-4, with the same skipped
steps on every rank."""
import json

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.flux_tiny import pipeline_overrides

JOBS = {"flux_dev_u2": ("tiny-flux-dev", ["parallel.ulysses_degree=2"]),
        "flux_dev_u2_fsdp": ("tiny-flux-dev", ["parallel.ulysses_degree=2", "parallel.fsdp=true"]),
        "flux_schnell_r2": ("tiny-flux-schnell", ["parallel.ring_degree=2"])}


@pytest.mark.timeout(240)
def test_flux_pipelines_on_two_processes_equal_single_process(pipeline_folder, tmp_path):
    refs = {}
    for name in {n for n, _ in JOBS.values()}:
        out = tmp_path / f"ref-{name}"
        report = run_job(load_config(None, pipeline_overrides(name, pipeline_folder(name), str(out))), solo_context())
        refs[name] = (report, torch.load(out / "latents.pt", weights_only=True))
    jobs = [(job, pipeline_overrides(name, pipeline_folder(name), str(tmp_path / job), *extra))
            for job, (name, extra) in JOBS.items()]
    spawn(2, jobs, str(tmp_path), timeout=200)
    for job, (name, _) in JOBS.items():
        for rank in (0, 1):
            assert json.loads((tmp_path / f"{job}.rank{rank}.json").read_text())["status"] == "ok", (job, rank)
        report = json.loads((tmp_path / job / "report.json").read_text())
        ref_report, ref_latents = refs[name]
        assert report["world_size"] == 2 and report["decisions_identical_across_ranks"]
        assert report["skipped_steps"] == ref_report["skipped_steps"]
        latents = torch.load(tmp_path / job / "latents.pt", weights_only=True)
        assert (latents - ref_latents).abs().max() < 1e-4, job
        if "fsdp" in job:  # half the block weights per rank
            sizes = [r["param_bytes"] for r in report["ranks"]]
            assert sizes[0] == sizes[1] < 0.75 * ref_report["ranks"][0]["param_bytes"]
    assert refs["tiny-flux-dev"][0]["skipped_steps"]["cond"]  # the dev job skips (MagCache), schnell computes all
