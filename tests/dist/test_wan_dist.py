"""Wan2.1 T2V and I2V under sequence parallelism (2 gloo processes, timeout): the final latents equal the
single-process run within 1e-4 (fp32) for Ulysses 2, ring 2 and CFG-parallel, from both checkpoint layouts, and
every rank takes the same MagCache decisions as the single-process run (27 tokens for T2V: not divisible by 2);
with parallel.fsdp=true the DiT is sharded on the meta device and each rank streams in only its shards; with
parallel.shared_load=true each rank reads a row block of every tensor and the two all-gather (the same latents).
"""
from tests.support.dist_jobs import check_two_rank_jobs
from tests.support.wan_tiny import wan_overrides

TOL = 1e-4


def test_wan_t2v_and_i2v_sp2_equal_single_process(wan_ckpts, tmp_path):
    img = wan_ckpts["image"]
    jobs = {
        "t2v_u2_official": ("t2v", "official", ["parallel.ulysses_degree=2", "parallel.shared_load=true"]),
        "t2v_r2_diffusers": ("t2v", "diffusers", ["parallel.ring_degree=2"]),
        "i2v_u2_diffusers": ("i2v", "diffusers", ["parallel.ulysses_degree=2"]),
        "i2v_cfg2_official": ("i2v", "official", ["parallel.cfg_degree=2", "parallel.shared_load=true"]),
        # FSDP: the DiT stays on the meta device until sharded; each rank then reads only its shards
        "t2v_u2_fsdp_diffusers": ("t2v", "diffusers", ["parallel.ulysses_degree=2", "parallel.fsdp=true"]),
    }

    def overrides(task, layout, out, *extra):
        return wan_overrides(task, wan_ckpts[task][layout], out, "save_video=false", *extra,
                             image=img if task == "i2v" else None)

    full = {task: sum(p.numel() * 4 for p in wan_ckpts[task]["comps"]["dit"].parameters()) for task in ("t2v", "i2v")}
    check_two_rank_jobs(tmp_path, jobs, overrides, full, TOL)
