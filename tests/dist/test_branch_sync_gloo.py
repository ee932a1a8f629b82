"""branch_sync=joint in real processes (gloo on loopback, under a timeout), 175 tokens (divisible by no degree).

Every rank of SP 2 (ring), CFG 2 and CFG 2 x Ulysses 2 takes the schedule command's joint schedule, both CFG halves
log identical step decisions, and the final latents equal the single-process joint run within 1e-4; online
MagCache and TeaCache under CFG parallel likewise equal their single-process joint runs.
"""
import json
import os
import subprocess
import sys

import torch

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.dist_worker import spawn
from tests.support.helpers import job_overrides, plan_json
from tests.support import ROOT
TOL = 1e-4
KINDS = {
    "magcache": ["cache.branch_sync=joint"],
    "online": ["cache.branch_sync=joint", "cache.mode=online", "cache.magcache.thresh=0.4"],
    "teacache": ["cache.branch_sync=joint", "cache.mode=teacache", "cache.teacache.thresh=0.3",
                 "cache.teacache.coefficients=[1.0,0.0]"],
}
JOBS = {  # name: (world, kind, layout)
    "r2": (2, "magcache", ["parallel.ring_degree=2"]),
    "cfg2": (2, "magcache", ["parallel.cfg_degree=2"]),
    "online_cfg2": (2, "online", ["parallel.cfg_degree=2"]),
    "teacache_cfg2": (2, "teacache", ["parallel.cfg_degree=2"]),
    "cfg2_u2": (4, "magcache", ["parallel.cfg_degree=2", "parallel.ulysses_degree=2"]),
}


def _steps(decisions, branch=None):
    return [(d["step"], d["compute"]) for d in decisions if branch is None or d["branch"] == branch]


def test_joint_decisions_on_processes_equal_plan_and_single_process(tiny_ckpt, tmp_path):
    solo = {k: run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / f"solo_{k}"), *extra)),
                       solo_context()) for k, extra in KINDS.items()}
    for world in (2, 4):
        jobs = [(name, job_overrides(tiny_ckpt, str(tmp_path / name), *KINDS[kind], *layout))
                for name, (w, kind, layout) in JOBS.items() if w == world]
        spawn(world, jobs, str(tmp_path), timeout=240)

    expect = plan_json("--preset", "wan2.1-t2v-1.3b", "--steps", "8", "--thresh", "0.12", "--K", "2",
                       "--retention", "0.2", "--branch-sync", "joint")["skipped_steps"]
    assert expect["cond"] == expect["uncond"] == [2, 3, 5, 6]
    assert solo["magcache"]["skipped_steps"] == expect and solo["magcache"]["branch_sync"] == "joint"

    for name, (world, kind, _) in JOBS.items():
        for rank in range(world):
            status = json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())["status"]
            assert status == "ok", (name, rank, status)
        rep = json.loads((tmp_path / name / "report.json").read_text())
        assert rep["branch_sync"] == "joint" and rep["cache"]["branch_sync"] == "joint"
        assert rep["decisions_identical_across_ranks"] and rep["steps_identical_across_branches"], name
        assert rep["skipped_steps"] == solo[kind]["skipped_steps"], name
        assert rep["skipped_steps"]["cond"] == rep["skipped_steps"]["uncond"] != []
        ref = _steps(solo[kind]["ranks"][0]["decisions"], "cond")
        for r in rep["ranks"]:  # every rank, whichever branch it runs, logs the same step decisions
            assert _steps(r["decisions"]) in (ref, [s for s in ref for _ in range(2)]), (name, r["rank"])
        if kind == "magcache":
            assert rep["skipped_steps"] == expect
        lat = torch.load(tmp_path / name / "latents.pt", weights_only=True)
        ref_lat = torch.load(tmp_path / f"solo_{kind}" / "latents.pt", weights_only=True)
        assert (lat - ref_lat).abs().max() < TOL, name
