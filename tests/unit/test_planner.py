"""Dry-run planner: exact shapes and token counts, kernel counts in sync with the model, every family planned, and
the generate.py dry run (no weights, no process group). Its communication bytes against what the SP code sends:
tests/sim/test_planner_comm.py."""
import json
import os

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from magcache_dist.cache import MagCacheConfig, build_magcache, skip_schedule
from magcache_dist.config import load_config
from magcache_dist.families.base import make_family
from magcache_dist.planner import cost, plan_job
from magcache_dist.random_weights import tiny_model
from models.wan import WanModel, get_config
from tests.support.helpers import ODD_VIDEO

WAN14B = ["model.name=wan2.1-t2v-14b", "model.dtype=bfloat16", "video.frames=81", "video.height=720",
          "video.width=1280", "sampler.num_steps=50", "cache.magcache.preset=wan2.1-t2v-14b",
          "cache.magcache.thresh=0.24", "cache.magcache.K=6",
          "cache.magcache.retention=0.2", "parallel.ulysses_degree=8", "planner.device=h100"]


def test_wan14b_720p_on_8_ranks():
    p = plan_job(load_config(None, WAN14B))
    r = p["per_rank"]
    assert p["latent_shape"] == [16, 21, 90, 160] and r["latent_grid_patches"] == [21, 45, 80]
    assert r["tokens"] == 75_600 and r["tokens_per_rank"] == 9_450 and r["padding_tokens"] == 0
    with torch.device("meta"):
        assert p["params"] == sum(t.numel() for t in WanModel(get_config("wan2.1-t2v-14b")).parameters())
    assert 14.0e9 < p["params"] < 14.5e9
    assert r["memory_bytes"]["weights"] == 2 * p["params"]
    expect = skip_schedule(build_magcache("wan2.1-t2v-14b", None, MagCacheConfig(0.24, 6, 0.2), 50, ["cond", "uncond"],
                                 branch_sync="joint"), 50, ["cond", "uncond"])  # the job default
    assert p["skip_schedule"] == expect and r["calls"]["computed"] == expect["computed_calls"]
    # Ulysses 8: 4 all-to-alls per block, each 9450 tokens x 5120 x 2 bytes x 7/8 leave the rank; 40 blocks
    assert r["comm_per_block"]["ulysses_bytes_per_block"] == 4 * 9450 * 5120 * 2 * 7 // 8
    assert r["comm_bytes_total"]["ulysses"] == expect["computed_calls"] * 40 * 4 * 9450 * 5120 * 2 * 7 // 8
    # attention FLOPs per computed call: 4 * chunk * L * D per block (+ cross-attention with 512 text tokens)
    assert r["flops_per_computed_call"]["attention"] == 40 * (4 * 9450 * 75600 * 5120 + 4 * 9450 * 512 * 5120)
    t = r["time_s"]
    assert t["sampling"] < t["sampling_without_cache"] and r["fits_in_memory"]


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_kernel_counts_match_the_model():
    m = tiny_model(0)
    x, t, c = torch.randn(1, 3, 5, 20, 28), torch.tensor([500.0]), torch.randn(1, 6, 32)
    with torch.no_grad():
        with _Count() as k:
            tokens, ctx = m.embed(x, t, c)
        assert k.n == cost.KERNELS_EMBED
        with _Count() as k:
            m.blocks[0](tokens, ctx)
        assert k.n == cost.KERNELS_PER_BLOCK
        with _Count() as k:
            m.unpatchify(m.forward_head(tokens, ctx), ctx.grid)
        assert k.n == cost.KERNELS_HEAD


def test_generate_dry_run_writes_the_plan_without_weights_or_process_group(tmp_path, monkeypatch, capsys):
    from magcache_dist.launcher import main as generate

    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("dry run created a process group"))
    monkeypatch.setattr("models.loading.read_tensors", lambda *a, **k: pytest.fail("dry run read weights"))
    monkeypatch.setenv("RANK", "0")  # planned for 8 ranks from a single process (a launcher sets both)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert generate.main([*WAN14B, "dry_run=true", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "75,600 tokens; 9,450 per rank" in out and "estimated sampling time" in out
    p = json.loads((tmp_path / "plan.json").read_text())
    assert p["per_rank"]["tokens_per_rank"] == 9450 and p["device"]["name"] == "h100"
    assert os.listdir(tmp_path) == ["plan.json"]


@pytest.mark.parametrize("overrides", [["model.name=tiny-video", "cache.magcache.preset=wan2.1-t2v-1.3b"],
                                       ["model.name=tiny", "cache.magcache.preset=wan2.1-t2v-1.3b", *ODD_VIDEO]])
def test_planned_tokens_equal_the_tokens_the_model_sees(overrides):
    cfg = load_config(None, overrides)
    noise = make_family(cfg).make_noise(0)
    with torch.device("meta"):
        model = WanModel(get_config(cfg.model.name))
    grid = [n // p for n, p in zip(noise.shape[2:], model.cfg.patch_size)]
    p = plan_job(cfg)
    assert p["latent_shape"] == list(noise.shape[1:]) and p["per_rank"]["latent_grid_patches"] == grid


@pytest.mark.parametrize("name,extra,params_b", [
    ("flux.1-dev", ["video.frames=1", "video.height=1024", "video.width=1024", "sampler.solver=euler",
                    "sampler.num_steps=28", "cache.magcache.preset=flux.1-dev"], (11.5, 12.2)),
    ("flux.1-schnell", ["video.frames=1", "video.height=1024", "video.width=1024", "sampler.solver=euler",
                        "sampler.num_steps=4", "sampler.guidance=1", "cache.mode=off"], (11.5, 12.2)),
    ("hunyuanvideo", ["video.frames=33", "video.height=720", "video.width=1280", "sampler.solver=euler",
                      "sampler.num_steps=50", "cache.magcache.preset=hunyuanvideo-t2v-720p"], (12.5, 13.2)),
    ("opensora-1.2", ["video.frames=30", "video.height=720", "video.width=1280", "sampler.solver=euler",
                      "sampler.num_steps=30", "cache.magcache.preset=opensora-1.2"], (1.0, 1.3)),
    ("wan2.1-t2v-1.3b", ["video.frames=81", "video.height=480", "video.width=832",
                         "cache.magcache.preset=wan2.1-t2v-1.3b"], (1.3, 1.6)),
])
def test_every_family_has_a_dry_run_plan(name, extra, params_b, tmp_path):
    """The planner works for all five released families: their own latent shape, token count and parameters."""
    cfg = load_config(None, [f"model.name={name}", f"output_dir={tmp_path}", "model.dtype=bfloat16",
                             "parallel.ulysses_degree=4", "planner.device=h100", *extra])
    p = plan_job(cfg)
    assert params_b[0] <= p["params"] / 1e9 <= params_b[1], p["params"]
    c, f, h, w = p["latent_shape"]
    fam = make_family(cfg)
    assert (c, f, h, w) == fam.latent_shape()
    pf, ph, pw = fam.cost_figures().patch_size
    assert p["per_rank"]["tokens"] == (f // pf) * (h // ph) * (w // pw)
    r = p["per_rank"]
    assert r["time_s"]["sampling"] > 0 and r["memory_bytes"]["weights"] == p["params"] * 2
    if cfg.cache.mode == "magcache":
        assert p["skip_schedule"]["computed_calls"] < p["skip_schedule"]["total_calls"]
        assert r["time_s"]["speedup"] > 1


def test_measured_profile_is_written_and_planned_with(tmp_path):
    """python -m magcache_dist.planner.measure writes a profile (per-dtype efficiencies) that planner.device takes."""
    from magcache_dist.config import load_config
    from magcache_dist.planner import plan_job
    from magcache_dist.planner.measure import main as measure_main
    from magcache_dist.planner.profiles import load_profile

    path = tmp_path / "box.json"
    assert measure_main(["--out", str(path), "--tokens", "32", "--dim", "64", "--ffn", "128", "--no-link",
                         "--read-mb", "8", "--readers", "1", "--skip-vae"]) == 0
    prof = load_profile(str(path))
    assert set(prof.peak_flops) == {"float32", "bfloat16"} and all(v > 1e6 for v in prof.peak_flops.values())
    assert prof.gemm_efficiency == 1.0 and prof.efficiency("attention", "bfloat16") > 0  # may exceed 1 (vs GEMMs)
    assert set(prof.extra["gemm_half_rows"]) == set(prof.extra["elementwise_bandwidth"]) == {"float32", "bfloat16"}
    assert 0 < prof.gemm_rate("float32", 4) <= prof.gemm_rate("float32", 4096) <= prof.peak("float32")
    assert prof.link_bandwidth == load_profile("cpu").link_bandwidth  # --no-link keeps the base profile's
    assert prof.device_type == "cpu" and load_profile("h100").device_type == "cuda"
    # the job phases' figures: the weight read and the writer measured, the VAE's per-call cost kept (--skip-vae)
    assert all(prof.extra[k] > 0 for k in ("storage_bandwidth", "host_read_bandwidth", "write_start_s",
                                            "write_pixels_per_s"))
    assert prof.extra["vae_pass_s"] == load_profile("cpu").extra["vae_pass_s"]
    cfg = load_config(None, ["model.name=wan2.1-t2v-1.3b", "video.frames=5", "video.height=48", "video.width=48",
                             f"planner.device={path}", "model.dtype=bfloat16", "output_dir=/tmp/unused"])
    assert plan_job(cfg)["per_rank"]["time_s"]["sampling"] > 0


def test_ring_attention_is_costed_on_the_block_path_that_runs(tmp_path):
    """Ulysses 4 x ring 2 (the README's 8-GPU layout): on a CUDA profile the ring's blocks run the fused kernel in
    the model dtype (the attention rate, as Ulysses' local call) plus the fp32 merges; on the CPU profile the CPU's
    fused kernel on fp32 upcasts; on any other device the fp32 math path (GEMM rate, score matrix traffic)."""
    from magcache_dist.planner.profiles import load_profile

    usp = [o for o in WAN14B if not o.startswith("parallel.")] + ["parallel.ulysses_degree=4", "parallel.ring_degree=2"]
    p = plan_job(load_config(None, usp))
    r, h100 = p["per_rank"], load_profile("h100")
    assert r["ring_attention"]["path"] == "fused" and cost.ring_path(h100) == "fused"
    chunk, d = r["tokens_per_rank"], 5120
    ring_flops = 4 * chunk * 75_600 * d  # self-attention: all of it goes around the ring
    merges = 2 * cost.RING_MERGE_PASSES * 4 * chunk * (d // 4) * 4
    per_block = ring_flops / (989.4e12 * 0.40) + merges / h100.memory_bandwidth
    assert r["ring_attention"]["seconds_per_computed_call"] == pytest.approx(40 * per_block, rel=1e-12)
    # Ulysses 8 makes the same attention FLOPs at the same rate: the ring layout differs by the merges and its comm
    u8 = plan_job(load_config(None, WAN14B))["per_rank"]
    assert u8["ring_attention"] is None
    extra = r["time_s"]["blocks_compute_per_call"] - u8["time_s"]["blocks_compute_per_call"]
    assert extra == pytest.approx(40 * merges / h100.memory_bandwidth, rel=1e-6)
    assert r["memory_bytes"]["activations"]["ring_scores"] == 2 * 2 * 4 * chunk * (d // 4) * 4  # no score matrix

    # the CPU profile: the fp32 kernel's rate whatever the model dtype, and the upcasts of q, k, v
    cpu_plan = plan_job(load_config(None, [o.replace("planner.device=h100", "planner.device=cpu") for o in usp]))
    assert cpu_plan["per_rank"]["ring_attention"]["path"] == "cpu_fp32"
    cpu = load_profile("cpu")
    rate32 = cpu.peak("float32") * cpu.efficiency("attention", "float32")
    traffic = merges + 2 * 3 * 4 * chunk * (d // 4) * (2 + 4)
    assert cpu_plan["per_rank"]["ring_attention"]["seconds_per_computed_call"] == pytest.approx(
        40 * (ring_flops / rate32 + traffic / cpu.elementwise_bandwidth("float32")), rel=1e-12)

    # another device type: fp32 matrix products, slower than the fused kernel on the same figures
    other = json.loads(open(os.path.join(os.path.dirname(cost.__file__), "profiles", "h100.json")).read())
    other.update(name="other", device_type="xpu")
    (tmp_path / "other.json").write_text(json.dumps(other))
    m = plan_job(load_config(None, [o.replace("planner.device=h100", f"planner.device={tmp_path}/other.json")
                                    for o in usp]))["per_rank"]
    assert m["ring_attention"]["path"] == "math"
    assert m["ring_attention"]["seconds_per_computed_call"] > 3 * r["ring_attention"]["seconds_per_computed_call"]
    assert m["memory_bytes"]["activations"]["ring_scores"] > r["memory_bytes"]["activations"]["ring_scores"]


def test_whole_job_phases_fsdp_and_the_goal_figures(tmp_path):
    """Issue 26, item 5: every phase in the plan, FSDP weights about 1/N per rank, the encode peak no higher than
    sampling's, and the 8-GPU Wan2.1-14B 720P figures on the h100 profile."""
    from magcache_dist.config import load_config
    from magcache_dist.planner import format_plan, plan_job

    base = [f"output_dir={tmp_path}", "planner.device=h100"]
    cfg = load_config("configs/wan2.1-t2v-14b-720p.yaml", base)
    p = plan_job(cfg)
    job = p["job"]
    assert list(job["phases"]) == ["load", "encode", "sample", "decode", "write"]
    ph = job["phases"]
    assert ph["sample"]["s"] == p["per_rank"]["time_s"]["sampling"]
    w = p["per_rank"]["memory_bytes"]["weights"]
    # h100: the node's drive reads the file once at 2 GB/s; each of the 8 ranks copies its 1/8 row block out of the
    # page cache at 3 GB/s and to its GPU at 25 GB/s, and the group all-gathers the other 7/8 at 450 GB/s x 0.7
    assert w == p["params"] * 2  # bf16
    assert ph["load"]["read_bytes"] == w / 8 and ph["load"]["read_shared_by"] == 8
    assert ph["load"]["node_read_bytes"] == w and ph["load"]["gather_s"] == pytest.approx(w * 7 / 8 / (450e9 * 0.7))
    assert ph["load"]["s"] == pytest.approx(w / 2.0e9 + w / 8 / 3.0e9 + w / 8 / 25e9 + w * 7 / 8 / (450e9 * 0.7))
    alone = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", base + ["parallel.shared_load=false"]))
    al = alone["job"]["phases"]["load"]  # every rank copies the whole file and puts all of it on its GPU
    assert al["read_bytes"] == w and al["read_shared_by"] == 1 and al["gather_s"] == 0
    assert al["s"] == pytest.approx(w / 2.0e9 + w / 3.0e9 + w / 25e9)
    assert ph["encode"]["peak_bytes"] <= ph["sample"]["peak_bytes"]  # umT5 alone: the DiT is read after encoding
    d = ph["decode"]  # the shipped whole decode: 8 row bands with halo exchange, within 1/6 of one rank's
    assert d["ranks"] == 8 and d["split"] == "patches" and d["bands"] == 8 and d["dit_on_device"]
    assert d["compute_s"] <= d["whole_single_rank_s"] / 6
    assert job["per_video"]["first_s"] == pytest.approx(sum(x["s"] for x in ph.values()))
    assert "phases per rank" in format_plan(p)
    t = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", base + ["vae.split=tiles"]))["job"]["phases"]
    assert t["decode"]["tiles"] == 28 and t["decode"]["rounds"] == 4
    # tiles sized for 8 ranks (one round): decode within 1/6 of the single-rank whole decode
    tiles = ["vae.tile_height=392", "vae.tile_width=352", "vae.tile_stride_height=360", "vae.tile_stride_width=320",
             "vae.split=tiles"]
    d8 = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", base + tiles))["job"]["phases"]["decode"]
    assert d8["rounds"] == 1 and d8["compute_s"] <= d8["whole_single_rank_s"] / 6
    # a prompt list: load and encode once per group
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(8)) + "\n")
    many = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", base + [f"prompts_file={prompts}"]))["job"]
    assert many["prompt_list"]["videos"] == 8 and many["per_video"]["amortised_over_sampling"] <= 1.3
    # parallel.fsdp: the weights per rank fall to about 1/8 (plus one gathered block); each rank reads only its rows
    # (models/loading.py local_rows), the node's 8 ranks together the whole file once
    f = plan_job(load_config("configs/wan2.1-t2v-14b-720p.yaml", base + ["parallel.fsdp=true"]))
    wf = f["per_rank"]["memory_bytes"]["weights"]
    assert w / 8 < wf < w / 8 + w / 30
    fl = f["job"]["phases"]["load"]
    assert fl["read_bytes"] == wf and fl["node_read_bytes"] == w and fl["node_ranks"] == 8
    assert fl["s"] == pytest.approx(w / 2.0e9 + wf / 3.0e9 + wf / 25e9)


def test_memory_preflight_advice_changes_its_verdict(tiny_ckpt, tmp_path, monkeypatch):
    """The preflight's advice 'parallel.fsdp=true' really lowers the estimate: a job refused for lack of memory
    passes with it."""
    import magcache_dist.planner.preflight as pf
    from magcache_dist.job import validate_job
    from magcache_dist.planner import plan_job
    from tests.support.helpers import job_config

    big = ["video.frames=17", "video.height=64", "video.width=64", "parallel.ulysses_degree=2"]
    plain = validate_job(job_config(tiny_ckpt, str(tmp_path / "a"), *big), 2)
    sharded = validate_job(job_config(tiny_ckpt, str(tmp_path / "b"), *big, "parallel.fsdp=true"), 2)
    need = plan_job(plain.cfg, plain)["per_rank"]["memory_bytes"]["total"]
    need_fsdp = plan_job(sharded.cfg, sharded)["per_rank"]["memory_bytes"]["total"]
    assert need_fsdp < need
    monkeypatch.setattr(pf, "available_memory", lambda local_rank=0: ((need + need_fsdp) // 2, "test", True))
    with pytest.raises(ValueError, match="parallel.fsdp=true"):
        pf.memory_preflight(plain, 2)
    assert pf.memory_preflight(sharded, 2)["checked"]


def test_host_preflight_counts_the_pinned_expert_of_every_rank_on_the_node():
    """Wan2.2 A14B without FSDP in fp32 on h100s: one expert per GPU, the other's 40 blocks (+ one spare) pinned in
    host memory on each of the node's 8 ranks; the preflight refuses a node without that much host memory and names
    parallel.fsdp=true, which pins nothing."""
    from magcache_dist.planner.preflight import host_preflight

    base = ["planner.device=h100", "model.dtype=float32", "parallel.fsdp=false"]
    plan = plan_job(load_config("configs/wan2.2-t2v-a14b-720p.yaml", base))
    assert plan["experts"]["resident"] == 1 and plan["experts"]["switch"]["mode"] == "one resident"
    per_rank = plan["experts"]["switch"]["host_bytes"]
    assert per_rank == 41 * 351_394_304 * 4  # the 14B block's parameters in fp32: 57.6 GB
    assert host_preflight(plan, 8, 8 * per_rank)["needed_bytes"] == 8 * per_rank
    with pytest.raises(ValueError, match=r"x 8 ranks on this node = 461\.\d\d GB.*parallel\.fsdp=true"):
        host_preflight(plan, 8, 8 * per_rank - 1)
    sharded = plan_job(load_config("configs/wan2.2-t2v-a14b-720p.yaml", base[:2]))  # the shipped fsdp=true
    assert host_preflight(sharded, 8, 0) is None


def test_a_converted_checkpoint_is_planned_as_read_whole(tmp_path):
    """BFL's single-file FLUX.1 transformer is converted as it loads, so every rank reads all of it
    (models/loading.py shares only a read without conversion); the diffusers folder's is shared on GPUs."""
    from magcache_dist.config import load_config
    from magcache_dist.planner import plan_job

    base = [f"output_dir={tmp_path}", "planner.device=h100"]
    shared = plan_job(load_config("configs/flux.1-dev-1024.yaml", base))["job"]["phases"]["load"]
    whole = plan_job(load_config("configs/flux.1-dev-1024.yaml",
                                 base + ["model.ckpt=/nowhere/flux1-dev.safetensors"]))["job"]["phases"]["load"]
    assert shared["read_shared_by"] == 8 and shared["read_bytes"] * 8 == whole["read_bytes"]
    assert whole["read_shared_by"] == 1 and whole["gather_s"] == 0 and whole["s"] > shared["s"]
