"""Online MagCache and calibrate-on-demand in real processes (gloo on loopback, 2 ranks, under a timeout).

175 tokens (odd: rank 1 holds a padded shard). Calibration under SP=2 (ring) equals the single-process table
within 1e-5 relative and is stored; ``auto`` on 2 ranks then reuses it without recalibrating; online decisions
on every rank equal the single-process online decisions.
"""
import json

import torch

from magcache_dist.cache import RatioTable
from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.helpers import job_overrides


def _decisions(report, rank=0):
    return [(d["step"], d["branch"], d["compute"], d["reason"]) for d in report["ranks"][rank]["decisions"]]


def test_online_and_store_on_two_processes(tiny_ckpt, tmp_path):
    solo_online = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo_online"),
                                                          "cache.mode=online", "cache.magcache.thresh=0.4")), solo_context())
    solo_cal = run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / "solo_cal"), "cache.mode=calibrate")),
                       solo_context())
    store = tmp_path / "store"
    jobs = [
        ("cal_r2", job_overrides(tiny_ckpt, str(tmp_path / "cal_r2"), "cache.mode=calibrate", "parallel.ring_degree=2",
                                 f"cache.calibration.store_dir={store}")),
        ("auto_u2", job_overrides(tiny_ckpt, str(tmp_path / "auto_u2"), "cache.mode=auto", "parallel.ulysses_degree=2",
                                  f"cache.calibration.store_dir={store}")),
        ("online_u2", job_overrides(tiny_ckpt, str(tmp_path / "online_u2"), "cache.mode=online", "cache.magcache.thresh=0.4",
                                    "parallel.ulysses_degree=2")),
        ("online_r2", job_overrides(tiny_ckpt, str(tmp_path / "online_r2"), "cache.mode=online", "cache.magcache.thresh=0.4",
                                    "parallel.ring_degree=2")),
    ]
    spawn(2, jobs, str(tmp_path), timeout=150)
    for name, _ in jobs:
        for rank in range(2):
            status = json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())["status"]
            assert status == "ok", (name, rank, status)

    # calibration under SP=2 equals SP=1 (ratios, std, cosine distance), and went into the store
    cal = json.loads((tmp_path / "cal_r2" / "report.json").read_text())
    sp2, sp1 = RatioTable.load(cal["ratios_used"]["stored"]), RatioTable.load(solo_cal["ratios_used"]["written"])
    assert sp2.meta["ring_degree"] == 2 and sp2.meta["weights"] == sp1.meta["weights"]
    for b in ("cond", "uncond"):
        for field in ("ratios", "std", "cos_dist"):
            a, s = torch.tensor(getattr(sp2, field)[b][1:]), torch.tensor(getattr(sp1, field)[b][1:])
            assert ((a - s).abs() <= 1e-5 * s.abs()).all(), (b, field)

    # auto on 2 ranks reuses the stored table (no recalibration: it skips)
    auto = json.loads((tmp_path / "auto_u2" / "report.json").read_text())
    assert auto["ratios_used"]["lookup"] == "exact" and auto["ratios_used"]["file"] == cal["ratios_used"]["stored"]
    assert auto["computed_calls"] < auto["total_calls"] and auto["decisions_identical_across_ranks"]
    assert len(json.loads((store / "index.json").read_text())["entries"]) == 1

    # online: every rank's decisions equal the single-process ones
    ref = _decisions(solo_online)
    assert any(not c for _, _, c, _ in ref) and any(r == "threshold" for *_, r in ref)
    for name in ("online_u2", "online_r2"):
        rep = json.loads((tmp_path / name / "report.json").read_text())
        assert rep["cache"]["policy"] == "online" and rep["decisions_identical_across_ranks"]
        for rank in range(2):
            assert _decisions(rep, rank) == ref, (name, rank)
        # joint (the default): one all-reduce per step for both branches
        assert rep["branch_sync"] == "joint" and rep["steps_identical_across_branches"]
        assert all(r["consensus_reductions"] == len(r["decisions"]) // 2 == 8 for r in rep["ranks"])
        lat = torch.load(tmp_path / name / "latents.pt", weights_only=True)
        assert (lat - torch.load(tmp_path / "solo_online" / "latents.pt", weights_only=True)).abs().max() < 1e-4
