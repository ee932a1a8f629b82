"""HunyuanVideo's full pipeline (tiny-hunyuanvideo folder: LLaMA + CLIP text, the transformer, the HunyuanVideo VAE)
on 2 gloo processes, under a timeout: ring 2, Ulysses 2 and Ulysses 2 with parallel.fsdp (each rank streams only its
shards of the transformer) (27 image tokens: padded and masked; 256 text tokens whole on both ranks) each equal the
single-process run within 1e-4, with the plan's skips on every rank."""
import json

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.hunyuan_tiny import pipeline_overrides

NAME = "tiny-hunyuanvideo"
JOBS = {"hy_ring2": ["parallel.ring_degree=2"], "hy_ulysses2": ["parallel.ulysses_degree=2"],
        "hy_ulysses2_fsdp": ["parallel.ulysses_degree=2", "parallel.fsdp=true"]}


@pytest.mark.timeout(240)
def test_hunyuanvideo_pipeline_on_two_processes_equals_single_process(pipeline_folder, tmp_path):
    folder = pipeline_folder(NAME)
    ref_report = run_job(load_config(None, pipeline_overrides(NAME, folder, str(tmp_path / "ref"))), solo_context())
    ref = torch.load(tmp_path / "ref" / "latents.pt", weights_only=True)
    spawn(2, [(job, pipeline_overrides(NAME, folder, str(tmp_path / job), *extra)) for job, extra in JOBS.items()],
          str(tmp_path), timeout=200)
    for job in JOBS:
        for rank in (0, 1):
            assert json.loads((tmp_path / f"{job}.rank{rank}.json").read_text())["status"] == "ok", (job, rank)
        report = json.loads((tmp_path / job / "report.json").read_text())
        assert report["world_size"] == 2 and report["decisions_identical_across_ranks"]
        assert report["skipped_steps"] == ref_report["skipped_steps"] and ref_report["skipped_steps"]["cond"]
        latents = torch.load(tmp_path / job / "latents.pt", weights_only=True)
        diff = (latents - ref).abs().max().item()
        print(f"{job}: max|diff| vs single process {diff:.2e}")
        assert diff < 1e-4, job
        if "fsdp" in job:  # the block weights halved per rank
            sizes = [r["param_bytes"] for r in report["ranks"]]
            assert sizes[0] == sizes[1] < 0.75 * ref_report["ranks"][0]["param_bytes"]
