"""The whole job's phase formulas (magcache_dist/planner/phases.py) with real numbers: the weight read of ranks that
share a node's storage, the mp4 writer, the decode's per-call term and the encoder's FLOPs. Their constants are
measured by magcache_dist.planner.measure (the cpu profile) or documented assumptions (h100, h200); the check
against measured jobs is benchmarks/planner_check_real.py --phases."""
import json

import pytest

from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.planner import plan_job
from magcache_dist.planner.phases import decode_seconds, read_seconds, write_seconds
from magcache_dist.planner.profiles import PROFILE_DIR, load_profile


def _profile(tmp_path, name="box", **figures):
    with open(f"{PROFILE_DIR}/cpu.json") as f:
        obj = json.load(f)
    obj.update(name=name, **figures)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(obj))
    return load_profile(str(path))


def test_two_readers_of_one_file_share_the_storage_read(tmp_path):
    """Storage 1 GB/s, copies out of the page cache 0.5 GB/s: one rank reading a 1 GB file takes 1 + 2 s; two ranks
    of a node reading that same file take as long (the page cache serves the second) unless the node's copies
    together are slower than 2 x 0.5 GB/s, two reading different 1 GB files wait on 2 GB of storage reads (4 s
    each)."""
    prof = _profile(tmp_path, storage_bandwidth=1e9, host_read_bandwidth=0.5e9)
    assert read_seconds(1e9, 1e9, prof) == pytest.approx(3.0)  # one reader
    assert read_seconds(1e9, 1e9, prof) == pytest.approx(3.0)  # two readers, one file: 1e9 distinct bytes
    assert read_seconds(1e9, 2e9, prof) == pytest.approx(4.0)  # two readers, two files
    assert read_seconds(1e9, 0, prof) == pytest.approx(2.0)  # warm: the page cache alone
    assert read_seconds(1e9, 1e9, prof, device_bytes=1e9) == pytest.approx(3.0)  # a CPU: no copy to a device
    # the node's ranks copy at once: 2 ranks on a node whose copies total 0.6 GB/s get 0.3 GB/s each
    shared = _profile(tmp_path, name="shared", storage_bandwidth=1e9, host_read_bandwidth=0.5e9,
                      node_host_read_bandwidth=0.6e9)
    assert read_seconds(1e9, 1e9, shared, node_ranks=1) == pytest.approx(3.0)
    assert read_seconds(1e9, 1e9, shared, node_ranks=2) == pytest.approx(1 + 1 / 0.3)
    gpu = _profile(tmp_path, name="gpu", device_type="cuda", storage_bandwidth=1e9, host_read_bandwidth=0.5e9,
                   host_link_bandwidth=10e9)
    assert read_seconds(1e9, 1e9, gpu, device_bytes=0.5e9) == pytest.approx(3.05)


def test_write_of_a_720p_video_and_the_cpu_profile_figures(tmp_path):
    """81 x 720 x 1280 = 74,649,600 pixels: on h100 (assumed 0.1 s + 25e6 pixels/s) 3.086 s; on a profile with
    figures this machine measured (0.0532 s, 3.731e6 pixels/s: libx264 CPU time on random frames) 20.06 s."""
    h100 = load_profile("h100")
    assert write_seconds(h100, 81, 720, 1280) == pytest.approx(0.1 + 74_649_600 / 25e6)
    assert write_seconds(h100, 81, 720, 1280) == pytest.approx(3.0860, abs=1e-4)
    box = _profile(tmp_path, write_start_s=0.0532, write_pixels_per_s=3.731e6, write_fork_s_per_byte=0.045e-9)
    assert write_seconds(box, 81, 720, 1280) == pytest.approx(20.0605, abs=1e-3)
    # the fork that starts ffmpeg copies the page tables of what the process holds: a CPU job's 6.2 GB (the fp32
    # 1.3B DiT and the VAE) add 0.279 s to a 5 x 48 x 48 video's 0.0563 s
    assert write_seconds(box, 5, 48, 48, host_bytes=6.2e9) == pytest.approx(0.0532 + 11520 / 3.731e6 + 0.279)
    cpu = load_profile("cpu")  # measured by measure.py: every job-phase figure is there
    for key in ("storage_bandwidth", "host_read_bandwidth", "write_start_s", "write_pixels_per_s",
                "write_fork_s_per_byte", "vae_pass_s"):
        assert cpu.extra[key] > 0, key


def test_tiled_decode_adds_a_cost_per_decoder_call(tmp_path):
    """Wan2.1's VAE decodes each tile latent frame by latent frame: 5 x 48 x 48 in 32 px tiles (stride 24) is 4 tiles
    (32x32, 32x24, 24x32, 24x24 px: 3136 px a frame) x 2 latent frames = 8 decoder calls. At 8.7e6 FLOPs per pixel
    and 87e9 FLOP/s, 0.15 s a call: 3136 x 5 x 8.7e6 / 87e9 + 8 x 0.15 = 1.568 + 1.2 s on one rank; on 2 ranks, 2
    rounds (the larger tile of each: 32x32, then 24x32) of 2 calls each."""
    tiles = ["vae.tiling=true", "vae.tile_height=32", "vae.tile_width=32", "vae.tile_stride_height=24",
             "vae.tile_stride_width=24"]
    prof = _profile(tmp_path, peak_flops={"float32": 87e9, "bfloat16": 11e9}, gemm_half_rows={}, vae_pass_s=0.15)
    one = load_config(None, ["model.name=wan2.1-t2v-1.3b", "video.frames=5", "video.height=48", "video.width=48",
                             *tiles])
    fam = make_family(one)
    d1 = decode_seconds(one, fam, prof, 1)
    assert d1["tiles"] == 4 and d1["passes_per_tile"] == 2 and d1["rounds"] == 4
    assert d1["compute_s"] == pytest.approx(3136 * 5 * 8.7e6 / 87e9 + 8 * 0.15)
    d2 = decode_seconds(one, fam, prof, 2)
    assert d2["rounds"] == 2
    assert d2["compute_s"] == pytest.approx((32 * 32 + 24 * 32) * 5 * 8.7e6 / 87e9 + 2 * 2 * 0.15)
    assert d2["whole_single_rank_s"] == pytest.approx(48 * 48 * 5 * 8.7e6 / 87e9 + 2 * 0.15)


def test_encode_counts_the_matrix_products_not_the_embedding(tmp_path):
    """umT5-XXL: 5.68e9 parameters of which the 256384 x 4096 token embedding is a lookup; the rest is 24 layers x
    (4 x 4096^2 + 3 x 4096 x 10240) within 0.02%. The plan's encode compute: 2 x that x 512 tokens x 2 texts per
    prompt at the fp32 GEMM rate of 512 rows."""
    cfg = load_config(None, ["model.name=wan2.1-t2v-1.3b", "video.frames=5", "video.height=48", "video.width=48",
                             "planner.device=cpu", f"output_dir={tmp_path}"])
    fam = make_family(cfg)
    mm = fam.encoder_matmul_params()["umT5-XXL encoder"]
    assert mm == 5_680_000_000 - 256_384 * 4096
    assert mm == pytest.approx(24 * (4 * 4096 ** 2 + 3 * 4096 * 10240), rel=2e-4)
    enc = plan_job(cfg)["job"]["phases"]["encode"]
    rate = load_profile("cpu").gemm_rate("float32", 512)
    assert enc["s"] - enc["read_s"] == pytest.approx(2 * mm * 512 * 2 / rate)


def test_the_plan_write_counts_what_rank_0_holds_on_the_host(tmp_path):
    """On the cpu profile rank 0 holds the fp32 DiT and VAE in host memory when it writes; on h100 the 14B DiT stays
    on the GPU (nothing for the fork to copy) unless the decode moves it off."""
    cpu = plan_job(load_config(None, ["model.name=wan2.1-t2v-1.3b", "video.frames=5", "video.height=48",
                                      "video.width=48", "planner.device=cpu", f"output_dir={tmp_path}"]))
    w = cpu["job"]["phases"]["write"]
    assert w["host_bytes"] == cpu["per_rank"]["memory_bytes"]["weights"] + 127_000_000 * 4
    assert w["s"] == pytest.approx(write_seconds(load_profile("cpu"), 5, 48, 48, w["host_bytes"]))
    h = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", ["planner.device=h100", f"output_dir={tmp_path}"]))
    assert h["job"]["phases"]["decode"]["dit_on_device"] and h["job"]["phases"]["write"]["host_bytes"] == 0
