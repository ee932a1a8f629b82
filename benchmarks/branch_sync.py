"""Joint vs official branch synchronisation of MagCache, against diffusers' own MagCache hook and TeaCache.

    python -m benchmarks.branch_sync                  # ~10 min on 2 shared cores (8 pairs, 2 scenarios)
    python -m benchmarks.branch_sync --table-only     # reprint / replot from the JSON

Same fixed (prompt, seed) pairs and metrics as benchmarks/quality.py (PSNR and SSIM of the decoded video against
the full run of the pair, shipped tiny-video model). Two scenarios: 20 steps with retention 0.2 and 30 steps with
retention 0.25 (where Wan's official rule, which counts cond and uncond calls together, makes the two CFG branches
skip different steps), each over a grid of (thresh, K). Methods at every setting: MagCache ``official`` (the
released per-branch rule), MagCache ``joint`` (one decision per step for both branches), diffusers' MagCache hook
(``diffusers_hook.py``: the library's code on our block, fed the conditional ratios), and TeaCache (per-branch and
joint) over a threshold grid.

Comparison at equal computed calls: each method's Pareto front (the best PSNR it reaches at that many calls or
fewer) is interpolated linearly in call reduction. Per setting, the other method's point (official's, diffusers')
is compared with joint's front at the same call reduction: what joint gives for the calls that setting spends
(None outside joint's range). At 2x / 2.5x / 3x the fronts are compared with each other.

Writes benchmarks/results/branch_sync.json, benchmarks/results/branch_sync.png and a table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from benchmarks._common import ROOT, build_job, write_readme_block
from benchmarks.quality import PAIRS
from magcache_dist.auto import sigma_grid
from magcache_dist.cache import MagCacheConfig, MagCachePolicy, NoCache, RatioTable, build_magcache, get_preset
from magcache_dist.cache.store import interpolate_by_sigma
from magcache_dist.cache.teacache import build_teacache
from magcache_dist.eval.metrics import PSNR_CAP, psnr, ssim
from magcache_dist.io.atomic import atomic_write_text

SCENARIOS = [
    dict(name="20 steps, retention 0.2", steps=20, retention=0.2,
         grid=[(0.06, 2), (0.12, 2), (0.12, 4), (0.24, 4), (0.24, 6), (0.5, 8)]),
    dict(name="30 steps, retention 0.25", steps=30, retention=0.25,
         grid=[(t, k) for t in (0.06, 0.12, 0.24, 0.5) for k in (2, 4, 6)]),
]
TEACACHE = [0.05, 0.1, 0.2, 0.4, 0.8]
TARGET_REDUCTIONS = (2.0, 2.5, 3.0)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BEGIN, END = "<!-- branch-sync-table:begin -->", "<!-- branch-sync-table:end -->"
MAGCACHE_METHODS = ("joint", "joint-sigma", "official", "diffusers")


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto front of (call reduction, psnr): points no other point beats in both, sorted by reduction."""
    pts = sorted(points, key=lambda p: (-p[0], -p[1]))
    out, best = [], -np.inf
    for x, y in pts:  # from the largest reduction down: keep a point only if it beats every faster one
        if y > best:
            out.append((x, y))
            best = y
    return sorted(out)


def at(points: list[tuple[float, float]], x: float):
    """The front's PSNR at call reduction x: linear between front points; below the front's smallest reduction
    (more calls allowed) the best the method does with fewer calls, i.e. the front's first point; None above its
    largest reduction."""
    f = front(points)
    if not f or x > f[-1][0] + 1e-9:
        return None
    if x <= f[0][0] + 1e-9:
        return f[0][1]
    for (x0, y0), (x1, y1) in zip(f, f[1:]):
        if x0 - 1e-9 <= x <= x1 + 1e-9:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def sigma_resampled(table: RatioTable, job) -> RatioTable:
    """The preset's ratios moved to the job's step count along sigma (what cache.mode=auto does when only the
    step count differs), instead of the published nearest-step resampling."""
    src = sigma_grid(table.num_steps, job.scfg.shift, job.scfg.solver)
    dst = sigma_grid(job.scfg.num_steps, job.scfg.shift, job.scfg.solver)
    return RatioTable(job.scfg.num_steps, {b: interpolate_by_sigma(v, src, dst) for b, v in table.ratios.items()},
                      meta=dict(table.meta, interpolated_from=table.num_steps))


def methods_for(job, sc: dict, ratios_cond: list[float]):
    """[(method, params, policy factory)] for one scenario."""
    n, branches, r = sc["steps"], job.scfg.branches, sc["retention"]
    preset = get_preset("tiny-video")
    resampled = sigma_resampled(preset.table, job) if n != preset.table.num_steps else None
    out = []
    for t, k in sc["grid"]:
        for sync in ("official", "joint"):
            out.append((sync, dict(thresh=t, K=k), lambda t=t, k=k, s=sync: build_magcache(
                "tiny-video", None, MagCacheConfig(t, k, r), n, branches, branch_sync=s)))
        if resampled is not None:
            out.append(("joint-sigma", dict(thresh=t, K=k), lambda t=t, k=k: MagCachePolicy(
                resampled, preset.rule, MagCacheConfig(t, k, r), n, branches, branch_sync="joint")))
        from benchmarks.diffusers_hook import DiffusersMagCache  # imports diffusers' hooks only when the benchmark runs

        out.append(("diffusers", dict(thresh=t, K=k),
                    lambda t=t, k=k: DiffusersMagCache(job.model, ratios_cond, t, k, r, n)))
    for t in TEACACHE:
        for sync in ("official", "joint"):
            out.append((f"teacache-{sync}", dict(thresh=t), lambda t=t, s=sync: build_teacache(
                job.cfg.model.name, t, n, branch_sync=s)))
    return out


def desync(decisions: list[dict]) -> bool:
    """Did the two CFG branches skip different steps?"""
    sk = {}
    for d in decisions:
        if not d["compute"]:
            sk.setdefault(d["branch"], set()).add(d["step"])
    return sk.get("cond", set()) != sk.get("uncond", set())


def run_scenario(sc: dict, pairs, args) -> list[dict]:
    job = build_job([f"sampler.num_steps={sc['steps']}"] + args.overrides)
    ratios_cond = get_preset("tiny-video").table.ratios["cond"]
    methods = methods_for(job, sc, ratios_cond)
    runs = []
    t0 = time.perf_counter()
    for prompt, seed in pairs:
        ref, res_ref, wall_ref = job.run(NoCache(), prompt, seed)
        runs.append(dict(scenario=sc["name"], method="full", prompt=prompt, seed=seed,
                         computed_calls=len(res_ref.decisions),
                         total_calls=len(res_ref.decisions), psnr=PSNR_CAP, ssim=1.0, wall_s=wall_ref, desync=False))
        for method, params, make in methods:
            policy = make()
            video, res, wall = job.run(policy, prompt, seed, model=getattr(policy, "model", None))
            runs.append(dict(scenario=sc["name"], method=method, **params, prompt=prompt, seed=seed,
                             computed_calls=sum(1 for d in res.decisions if d["compute"]),
                             total_calls=len(res.decisions), psnr=psnr(video, ref), ssim=ssim(video, ref),
                             wall_s=wall, desync=desync(res.decisions)))
        print(f"[{sc['name']}] {prompt!r} seed {seed}: done ({time.perf_counter() - t0:.0f}s)", flush=True)
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["method"], r.get("thresh"), r.get("K")), []).append(r)
    out = []
    for (scenario, method, thresh, k), rs in groups.items():
        comp, tot = float(np.mean([r["computed_calls"] for r in rs])), float(np.mean([r["total_calls"] for r in rs]))
        out.append(dict(scenario=scenario, method=method, thresh=thresh, K=k, computed_calls=comp, total_calls=tot,
                        call_reduction=tot / comp, psnr=float(np.mean([r["psnr"] for r in rs])),
                        psnr_min=float(min(r["psnr"] for r in rs)), ssim=float(np.mean([r["ssim"] for r in rs])),
                        desync_share=float(np.mean([r["desync"] for r in rs])), num_pairs=len(rs)))
    return out


def compare(summary: list[dict]) -> dict:
    """The issue's comparisons, per scenario."""
    out = {}
    for sc in sorted({s["scenario"] for s in summary}):
        rows = [s for s in summary if s["scenario"] == sc]
        pts = {m: [(s["call_reduction"], s["psnr"]) for s in rows if s["method"] == m]
               for m in {s["method"] for s in rows}}
        pts["teacache"] = pts.get("teacache-official", []) + pts.get("teacache-joint", [])
        ssim = {m: [(s["call_reduction"], s["ssim"]) for s in rows if s["method"] == m]
                for m in {s["method"] for s in rows}}
        ssim["teacache"] = ssim.get("teacache-official", []) + ssim.get("teacache-joint", [])
        per_setting = []
        for s in rows:
            if s["method"] != "joint":
                continue
            off = next(o for o in rows if o["method"] == "official" and (o["thresh"], o["K"]) == (s["thresh"], s["K"]))
            dif = next(o for o in rows if o["method"] == "diffusers" and (o["thresh"], o["K"]) == (s["thresh"], s["K"]))
            joint_at_dif = at(pts["joint"], dif["call_reduction"])
            joint_at_off = at(pts["joint"], off["call_reduction"])
            per_setting.append(dict(
                thresh=s["thresh"], K=s["K"], joint_calls=s["computed_calls"], joint_psnr=round(s["psnr"], 3),
                official_calls=off["computed_calls"], official_psnr=round(off["psnr"], 3),
                official_desyncs=off["desync_share"] > 0,
                diffusers_calls=dif["computed_calls"], diffusers_psnr=round(dif["psnr"], 3),
                joint_minus_diffusers_db=None if joint_at_dif is None else round(joint_at_dif - dif["psnr"], 3),
                joint_minus_official_db=None if joint_at_off is None else round(joint_at_off - off["psnr"], 3)))
        desync_margins = [p["joint_minus_official_db"] for p in per_setting
                          if p["official_desyncs"] and p["joint_minus_official_db"] is not None]
        targets = []
        for x in TARGET_REDUCTIONS:
            mags = {m: at(pts[m], x) for m in MAGCACHE_METHODS if m in pts}
            tea = at(pts["teacache"], x)
            best = max((v for v in mags.values() if v is not None), default=None)
            targets.append(dict(call_reduction=x, **{f"{m}_psnr": None if v is None else round(v, 3)
                                                     for m, v in mags.items()},
                                teacache_psnr=None if tea is None else round(tea, 3),
                                ssim={m: None if at(ssim[m], x) is None else round(at(ssim[m], x), 4)
                                      for m in (*MAGCACHE_METHODS, "teacache") if m in ssim},
                                best_magcache_minus_teacache_db=None if best is None or tea is None
                                else round(best - tea, 3)))
        out[sc] = dict(per_setting=per_setting,
                       mean_joint_minus_official_where_official_desyncs_db=round(float(np.mean(desync_margins)), 3)
                       if desync_margins else None,
                       settings_where_official_desyncs=len(desync_margins),
                       min_joint_minus_diffusers_db=min((p["joint_minus_diffusers_db"] for p in per_setting
                                                         if p["joint_minus_diffusers_db"] is not None), default=None),
                       at_call_reduction=targets)
    return out


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [sc["name"] for sc in res["scenarios"]]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(7 * len(scenarios), 4.6))
    style = {"joint": ("tab:blue", "o"), "joint-sigma": ("tab:cyan", "P"), "official": ("tab:red", "s"),
             "diffusers": ("tab:green", "^"),
             "teacache-official": ("tab:orange", "v"), "teacache-joint": ("tab:purple", "D")}
    for ax, sc in zip(np.atleast_1d(axes), scenarios):
        rows = [s for s in res["summary"] if s["scenario"] == sc]
        for method, (colour, marker) in style.items():
            ms = [s for s in rows if s["method"] == method]
            if not ms:
                continue
            ax.scatter([s["computed_calls"] for s in ms], [s["psnr"] for s in ms], color=colour, marker=marker, s=22,
                       alpha=0.55)
            f = front([(s["call_reduction"], s["psnr"]) for s in ms])
            total = ms[0]["total_calls"]
            ax.plot([total / x for x, _ in f], [y for _, y in f], "-", color=colour, marker=marker, label=method)
        ax.set(xlabel="computed block-stack calls (mean over pairs)", ylabel="PSNR vs full run (dB)", title=sc)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res['model']}: {len(res['pairs'])} (prompt, seed) pairs; lines: each method's Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def table(res: dict) -> str:
    lines = [BEGIN, "", f"Model `{res['model']}`, {len(res['pairs'])} (prompt, seed) pairs, CFG "
             f"{res['guidance']}; PSNR/SSIM against the full run of each pair (identical videos count as "
             f"{res['psnr_cap']:.0f} dB). Front: each method's best PSNR at that call reduction or less.", ""]
    for sc, cmp in res["comparison"].items():
        lines += [f"**{sc}**", "",
                  "| thresh | K | joint calls | joint PSNR | official calls | official PSNR | official desyncs | "
                  "diffusers calls | diffusers PSNR | joint - diffusers front | joint front - official |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in cmp["per_setting"]:
            lines.append(f"| {p['thresh']} | {p['K']} | {p['joint_calls']:.0f} | {p['joint_psnr']:.2f} | "
                         f"{p['official_calls']:.0f} | {p['official_psnr']:.2f} | "
                         f"{'yes' if p['official_desyncs'] else 'no'} | "
                         f"{p['diffusers_calls']:.0f} | {p['diffusers_psnr']:.2f} | "
                         f"{_f(p['joint_minus_diffusers_db'], '{:+.2f}')} | "
                         f"{_f(p['joint_minus_official_db'], '{:+.2f}')} |")
        lines += ["", f"Where official desyncs ({cmp['settings_where_official_desyncs']} settings), joint's front is "
                  f"{_f(cmp['mean_joint_minus_official_where_official_desyncs_db'], '{:+.2f}')} dB above official "
                  f"on average at official's call count; joint minus diffusers' front, worst setting: "
                  f"{_f(cmp['min_joint_minus_diffusers_db'], '{:+.2f}')} dB.", "",
                  "| call reduction | joint | official | diffusers | TeaCache (best of both) | "
                  "best MagCache - TeaCache |",
                  "|---|---|---|---|---|---|"]
        for t in cmp["at_call_reduction"]:
            joint = _f(t['joint_psnr'])
            if "joint-sigma_psnr" in t:
                joint += f" (sigma-resampled ratios: {_f(t['joint-sigma_psnr'])})"
            lines.append(f"| {t['call_reduction']}x | {joint} | {_f(t['official_psnr'])} | "
                         f"{_f(t['diffusers_psnr'])} | {_f(t['teacache_psnr'])} | "
                         f"{_f(t['best_magcache_minus_teacache_db'], '{:+.2f}')} |")
        lines += ["", "SSIM (each method's SSIM front) at " + "; ".join(
            f"{t['call_reduction']}x: " + ", ".join(f"{m} {_f(v, '{:.3f}')}" for m, v in t["ssim"].items())
            for t in cmp["at_call_reduction"]) + ".", ""]
    lines += [f"Benchmark wall time: {res['benchmark_wall_s']:.0f} s.", "", END]
    return "\n".join(lines)


def write_readme(res: dict) -> None:
    write_readme_block(table(res), BEGIN, END, "## Joint vs official branch synchronisation (`branch_sync.py`)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(RESULTS, "branch_sync.json"), help="elsewhere: README untouched")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for the job")
    args = ap.parse_args(argv)
    if args.table_only:
        with open(args.out) as f:
            res = json.load(f)
        res["comparison"] = compare(res["summary"])
    else:
        torch.set_num_threads(args.threads)
        pairs = PAIRS[: args.pairs]
        t0 = time.perf_counter()
        runs = [r for sc in SCENARIOS for r in run_scenario(sc, pairs, args)]
        summary = summarize(runs)
        res = dict(model="tiny-video", guidance=5.0, psnr_cap=PSNR_CAP, threads=args.threads,
                   machine=platform.processor() or platform.machine(), pairs=[dict(prompt=p, seed=s) for p, s in pairs],
                   scenarios=SCENARIOS, summary=summary, comparison=compare(summary), runs=runs,
                   benchmark_wall_s=round(time.perf_counter() - t0, 1))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        atomic_write_text(args.out, json.dumps(res, indent=1))
    plot(res, os.path.splitext(args.out)[0] + ".png")
    if os.path.abspath(args.out) == os.path.join(RESULTS, "branch_sync.json"):
        write_readme(res)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
