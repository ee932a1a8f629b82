"""The VAE decode dealt over simulated ranks (threads, real tensors): for every family's VAE (tiny, random
weights) the decode on 1, 2 and 3 ranks equals the VAE's own single-rank decode of the same mode, bit for bit
(fp32: same tiles, same arithmetic per tile, same blending order)."""
import copy

import pytest
import torch

from magcache_dist.parallel.threads import run_on_comms
from magcache_dist.parallel.vae import ChunkTiles, HunyuanTiles, KLTiles, WanTiles, decode_split


def split_over(make_td, size: int):
    """decode_split on ``size`` thread ranks, each with its own TiledDecode from ``make_td()`` (its own VAE: a
    decode keeps state on the module, as on real ranks); rank 0's result and the other ranks' (None expected)."""
    out = run_on_comms(lambda comm: decode_split(make_td(), comm), size, timeout=180)
    return out[0], out[1:]


def _check(make_td, reference, sizes=(1, 2, 3)):
    units = len(make_td().units)
    for size in sizes:
        got, others = split_over(make_td, size)
        assert got.shape == reference.shape
        assert torch.equal(got, reference), (size, (got - reference).abs().max())
        assert all(o is None for o in others)
    return units


def _wan_vae(tile=32, stride=24):
    from tests.support.wan_tiny import build_vae

    vae = build_vae(3)
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile, tile_sample_stride_height=stride,
                      tile_sample_stride_width=stride)
    return vae


def test_wan_vae_tiles_equal_its_tiled_decode():
    vae = _wan_vae()
    z = torch.randn(1, 16, 3, 7, 9, generator=torch.Generator().manual_seed(0))  # 56 x 72 px: 3 x 3 tiles
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert _check(lambda: WanTiles(copy.deepcopy(vae), z), ref) == 9


def test_wan_vae_below_one_tile_decodes_whole():
    vae = _wan_vae(tile=64, stride=48)
    z = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert _check(lambda: WanTiles(copy.deepcopy(vae), z), ref, sizes=(1, 2)) == 1


@pytest.mark.parametrize("frames", [3, 7])  # latent frames: 3 in one chunk; 7 in 3 chunks
def test_hunyuan_vae_tiles_equal_its_tiled_decode(frames):
    from diffusers import AutoencoderKLHunyuanVideo

    from tests.support.hunyuan_tiny import VAE_SIZE

    torch.manual_seed(4)
    vae = AutoencoderKLHunyuanVideo(**VAE_SIZE).eval()
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24)  # frames: chunks of 16 (4 latent + 1), stride 12 (3)
    z = torch.randn(1, 4, frames, 7, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = vae.decode(z).sample
    units = _check(lambda: HunyuanTiles(copy.deepcopy(vae), z), ref)
    assert units == 6 * (1 if frames == 3 else 3)  # 7 x 6 latents: 3 x 2 tiles per chunk


def test_flux_vae_tiles_equal_its_tiled_decode():
    from diffusers import AutoencoderKL

    from tests.support.flux_tiny import VAE_SIZE

    torch.manual_seed(5)
    vae = AutoencoderKL(**VAE_SIZE).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 32, 4, 0.25
    z = torch.randn(1, 4, 10, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert _check(lambda: KLTiles(copy.deepcopy(vae), z), ref) == 12  # 10 x 7 latents, stride 3: 4 x 3 tiles


def _chunks(vae, z, frames):
    return ChunkTiles(lambda i: vae.decode_chunk(z, i, frames), vae.num_chunks(z))


def test_opensora_vae_chunks_equal_its_decode():
    from tests.support.opensora_tiny import build_vae

    vae = build_vae()
    frames = 23
    z = torch.randn(1, 4, vae.cfg.latent_frames(frames), 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = vae.decode(z, num_frames=frames)
    assert _check(lambda: _chunks(copy.deepcopy(vae), z, frames), ref) == 2


def test_job_report_has_each_ranks_phases_and_the_decode(family_ckpts, tmp_path):
    """A 2-rank job (threads): both ranks decode (the pixel-space model's frames dealt over them), report.json lists
    each rank's phases with time and host peak (write on rank 0 only), what the decode did, and where it ran."""
    from magcache_dist.parallel import ParallelDims, build_thread_contexts
    from magcache_dist.parallel.threads import run_threads
    from magcache_dist.run import run_job
    from tests.support.families import family_config

    name = "hunyuanvideo-tiny"
    cfg = family_config(name, str(tmp_path / "u2"), "parallel.ulysses_degree=2", "save_video=true",
                        ckpt=family_ckpts[name])
    report = run_threads(lambda par: run_job(cfg, par), build_thread_contexts(ParallelDims(2, 1, 1), timeout=120),
                         timeout=300)[0]
    assert report["decode"]["mode"] == "tiled" and report["decode"]["ranks"] == 2 and report["decode"]["tiles"] == 2
    assert report["decode"]["dit_on_device"]  # a CPU job: nothing to move
    phases = [r["phases"] for r in report["ranks"]]
    assert list(phases[0])[:5] == ["load", "encode", "sample", "decode", "write"] and "write" not in phases[1]
    for p in phases:
        for k in ("load", "encode", "sample", "decode"):
            assert p[k]["s"] >= 0 and p[k]["host_peak_bytes"] > 0 and p[k]["device_peak_bytes"] is None
    assert report["phases_s"]["decode"] == phases[0]["decode"]["s"]
    env = report["environment"]
    assert set(env) == {"host", "device", "torch", "cuda", "git_commit"} and env["torch"] == torch.__version__
