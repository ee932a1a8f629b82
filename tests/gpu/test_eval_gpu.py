"""The eval's metrics on CUDA (skipped without it): PSNR and SSIM of uint8 frames on the GPU equal the CPU's
(both float64), LPIPS on the GPU is close to the CPU's, and the command with --device cuda writes the CPU's
PSNR/SSIM numbers."""
import json

import pytest
import torch

from magcache_dist.eval import cli
from magcache_dist.eval.metrics import frame_psnr, frame_ssim
from tests.unit.test_eval import frames, id_job, noisy, video_pair

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_psnr_and_ssim_on_cuda_equal_the_cpu():
    x, y = video_pair(3, 720, 1280, seed=5)
    assert frame_psnr(x.cuda(), y.cuda()) == pytest.approx(frame_psnr(x, y), abs=1e-9)
    assert frame_ssim(x.cuda(), y.cuda()) == pytest.approx(frame_ssim(x, y), abs=1e-9)


def test_eval_command_on_cuda_writes_the_cpu_numbers(tmp_path):
    vids = [(f"v{i}", f"prompt {i}", i, frames(i)) for i in range(2)]
    ref = id_job(tmp_path / "ref", vids)
    cand = id_job(tmp_path / "cand", [(n, p, s, noisy(f, 6)) for n, p, s, f in vids])
    rows = {}
    for dev in ("cpu", "cuda"):
        out = str(tmp_path / dev / "e.json")
        assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--no-lpips", "--device", dev]) == 0
        rows[dev] = json.load(open(out))["candidates"][0]["rows"]
        assert json.load(open(out))["device"].startswith(dev)
    for a, b in zip(rows["cpu"], rows["cuda"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-9)
