"""model.compile=true in gloo processes (issue 26, item 4): the compiled blocks with the SP attention ops running
eagerly between their compiled parts (Ulysses 2, ring 2, and Ulysses 2 with FSDP-sharded blocks, whose gathers
stay outside the compiled code) give the single eager process's latents within 1e-4 (fp32, the tiny model, 175
tokens), and report.json says the job ran compiled."""
import json

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.helpers import job_overrides

TOL = 1e-4
LAYOUTS = {"u2": ["parallel.ulysses_degree=2"], "r2": ["parallel.ring_degree=2"],
           "u2_fsdp": ["parallel.ulysses_degree=2", "parallel.fsdp=true"]}


@pytest.mark.timeout(900)
def test_compiled_layouts_on_gloo_equal_the_eager_single_process(tiny_ckpt, tmp_path):
    run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo"))), solo_context())
    ref = torch.load(tmp_path / "solo" / "latents.pt", weights_only=True)
    jobs = [(name, job_overrides(tiny_ckpt, str(tmp_path / name), "model.compile=true", *extra))
            for name, extra in LAYOUTS.items()]
    spawn(2, jobs, str(tmp_path), timeout=800)
    for name in LAYOUTS:
        for rank in range(2):
            status = json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())["status"]
            assert status == "ok", (name, rank, status)
        diff = (torch.load(tmp_path / name / "latents.pt", weights_only=True) - ref).abs().max().item()
        assert diff < TOL, (name, diff)
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["compile"]["compiled"] and report["compile"]["blocks"] == 2, (name, report["compile"])
