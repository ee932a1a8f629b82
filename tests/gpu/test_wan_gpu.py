"""GPU smoke test (skipped without CUDA): the tiny Wan2.1 T2V / I2V pipelines in bf16 on one GPU, and under
torchrun with NCCL (Ulysses 2) when two GPUs are present; both stay close to the fp32 CPU run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support import ROOT
from tests.support.wan_tiny import wan_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_wan_bf16_on_gpu_and_nccl_sp2(task, wan_ckpts, tmp_path):
    image = wan_ckpts["image"] if task == "i2v" else None
    base = wan_overrides(task, wan_ckpts[task]["official"], str(tmp_path / "cpu"), "save_video=false", image=image)
    run_job(load_config(None, base), solo_context(), device="cpu")
    ref = torch.load(tmp_path / "cpu" / "latents.pt", weights_only=True)

    bf16 = ["model.dtype=bfloat16", "text_encoder.dtype=bfloat16", "save_video=true"]
    gpu = wan_overrides(task, wan_ckpts[task]["diffusers"], str(tmp_path / "gpu"), *bf16, image=image)
    report = run_job(load_config(None, gpu), solo_context(), device=torch.device("cuda:0"))
    out = torch.load(tmp_path / "gpu" / "latents.pt", weights_only=True)
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.1, _rel(out, ref)
    assert report["computed_calls"] < report["total_calls"] and (tmp_path / "gpu" / "video.mp4").exists()

    if torch.cuda.device_count() < 2:
        return
    nccl = wan_overrides(task, wan_ckpts[task]["official"], str(tmp_path / "nccl"), *bf16, "parallel.ulysses_degree=2",
                         "parallel.timeout_s=120", image=image)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(ROOT, "launch/generate.py"), *nccl], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    sp = torch.load(tmp_path / "nccl" / "latents.pt", weights_only=True)
    assert _rel(sp, out) < 0.05 and _rel(sp, ref) < 0.1
    assert json.loads((tmp_path / "nccl" / "report.json").read_text())["decisions_identical_across_ranks"]
