"""Wan2.2 A14B (two experts) under 2 gloo processes (timeout): Ulysses 2 with parallel.fsdp=true (both experts'
blocks sharded on the meta device, each rank streams in only its shards) and CFG-parallel I2V equal the
single-process run within 1e-4 (fp32), with the same MagCache decisions across the expert switch on every rank.
"""
from tests.support.dist_jobs import check_two_rank_jobs
from tests.support.wan22_tiny import wan22_overrides

TOL = 1e-4


def test_wan22_fsdp_and_cfg_parallel_equal_single_process(wan22_ckpts, tmp_path):
    img = wan22_ckpts["image"]
    jobs = {
        "t2v_u2_fsdp_official": ("t2v", "official", ["parallel.ulysses_degree=2", "parallel.fsdp=true"]),
        "i2v_cfg2_diffusers": ("i2v", "diffusers", ["parallel.cfg_degree=2", "parallel.shared_load=true"]),
    }

    def overrides(task, layout, out, *extra):
        return wan22_overrides(task, wan22_ckpts[task][layout], out, "save_video=false", "sampler.num_steps=12",
                               "cache.magcache.thresh=0.3", "cache.magcache.retention=0.25", *extra,
                               image=img if task == "i2v" else None)

    full = {task: sum(p.numel() * 4 for m in (wan22_ckpts[task]["comps"]["high"], wan22_ckpts[task]["comps"]["low"])
                      for p in m.parameters()) for task in ("t2v", "i2v")}  # both experts' blocks
    check_two_rank_jobs(tmp_path, jobs, overrides, full, TOL)
