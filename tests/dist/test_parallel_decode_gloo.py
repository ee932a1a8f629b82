"""The decode phase on 2 gloo processes (magcache_dist/decode.py): each family's tiny VAE (Wan2.1, HunyuanVideo,
FLUX.1, Open-Sora 1.2: the real classes at toy size, random weights) decodes fixed latents over the two ranks.
HunyuanVideo, FLUX.1 and Open-Sora deal their tiles: rank 0's video is bit-equal to the single-process decode in the
tiled mode (vae.tiling=true). The Wan VAE's whole decode (vae.tiling=false) runs in row bands with halo exchange
(point-to-point gloo sends): within 1e-4 of the single-process whole decode (its tiled route is the same dealing,
tested bit-equal on simulated ranks in tests/sim/test_parallel_decode.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from tests.support.decode_worker import fixed_latents
from tests.support.pipelines import pipeline_overrides

TILES = ["vae.tile_height=32", "vae.tile_width=32", "vae.tile_stride_height=24", "vae.tile_stride_width=24"]
FLUX_TILES = ["vae.tile_height=32", "vae.tile_stride_height=16"]  # square tiles: 48 x 80 px -> 2 x 4 tiles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(pipeline_folder, wan_ckpts, tmp_path_factory):
    from tests.support.wan_tiny import wan_overrides

    out = str(tmp_path_factory.mktemp("decode-out"))
    return {
        "wan-bands": wan_overrides("t2v", wan_ckpts["t2v"]["diffusers"], out, "vae.tiling=false"),
        "hunyuanvideo": pipeline_overrides("tiny-hunyuanvideo", pipeline_folder("tiny-hunyuanvideo"), out, *TILES),
        "flux": pipeline_overrides("tiny-flux-dev", pipeline_folder("tiny-flux-dev"), out, "save_video=true",
                                   *FLUX_TILES),
        "opensora": pipeline_overrides("tiny-opensora", pipeline_folder("tiny-opensora"), out, "save_video=true"),
    }


@pytest.mark.timeout(420)
def test_decode_on_two_gloo_ranks_equals_single_process_tiled_decode(jobs, tmp_path):
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps([[name, [*o, "save_video=true"]] for name, o in jobs.items()]))
    port, root = _free_port(), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.decode_worker", str(r), "2", str(port),
                               str(tmp_path), str(spec)], cwd=root, env=env) for r in range(2)]
    try:
        codes = [p.wait(timeout=360) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    for name, overrides in jobs.items():
        bands = name == "wan-bands"
        cfg = load_config(None, [*overrides, "save_video=true", f"vae.tiling={str(not bands).lower()}"])
        family = make_family(cfg)
        ref = family.decode(fixed_latents(family))
        got = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        if bands:  # the whole decode in row bands with halo exchange: fp32 rounding apart, the one-rank whole decode
            assert got["info"]["split"] == "patches" and got["info"]["mode"] == "whole", got["info"]
            assert got["info"]["bands"] == [3, 3] and got["video"].shape == ref.shape
            assert (got["video"] - ref).abs().max() <= 1e-4 and ref.abs().max() > 0.1
            continue
        assert got["info"]["mode"] == "tiled" and got["info"]["ranks"] == 2, (name, got["info"])
        assert got["info"]["tiles"] >= 2, (name, got["info"])
        assert got["video"].shape == ref.shape and torch.equal(got["video"], ref), name
