"""magcache-tune (magcache_dist/tune.py) on the embedded tiny-video model at a small geometry (6 steps, 2 x 32 x 32):
the chosen setting is the fewest-calls one whose mean PSNR reaches the target, checked against every candidate of
the grid sampled on the same prompts; the search samples fewer videos than that; tuned.yaml loads and runs with the
chosen schedule. The search logic alone (probe = brute force whenever quality is monotone) runs on synthetic scores."""
import json
import os
import random
import sys
import types

import pytest

from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from magcache_dist.tune import METRICS, Candidate, Runner, Search, Setting, main, parser, plot, prepare, tune

PROMPTS = ["a big red circle moves right", "a small blue square moves up", "a yellow triangle grows"]
SMALL = ["sampler.num_steps=6", "video.frames=2", "video.height=32", "video.width=32", "progress=false"]
GRID = ["--thresh", "0.04,0.32", "--K", "1,4", "--retention", "0.2,0.4", "--branch-sync", "joint"]


def _args(prompts, out, target, *extra):
    return parser().parse_args(["--config", "configs/default.yaml", "--prompts", str(prompts), "--out", str(out),
                                "--target-psnr", str(target), "--held-out", "1", *GRID, *extra, *SMALL])


@pytest.fixture(scope="module")
def exhaustive(tmp_path_factory):
    """Every candidate of the grid sampled and scored on every prompt (the plain grid search)."""
    d = tmp_path_factory.mktemp("tune")
    prompts = d / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    setup = prepare(_args(prompts, d / "grid", 20))
    runner = Runner(setup, solo_context(), "cpu")
    runner.references()
    for c in setup.candidates:
        runner.sample(c, setup.tune + setup.held_out, "search")
    means = {c.id: c.mean(setup.tune)["psnr"] for c in setup.candidates}
    return dict(dir=d, prompts=prompts, setup=setup, means=means, calls={c.id: c.calls for c in setup.candidates})


def _fewest(ex, target):
    ok = [i for i, m in ex["means"].items() if m >= target]
    return min(ex["calls"][i] for i in ok) if ok else None


def test_grid_is_planned_without_running(exhaustive):
    setup = exhaustive["setup"]
    assert setup.settings_total == 8 and len(setup.tune) == 2 and len(setup.held_out) == 1
    assert [c.calls for c in setup.candidates] == sorted(c.calls for c in setup.candidates)
    assert sum(len(c.settings) for c in setup.candidates) == 8  # every setting in exactly one candidate
    for c in setup.candidates:  # the sampled videos computed exactly the planned calls
        for name in setup.tune:
            with open(os.path.join(exhaustive["dir"], "grid", "candidates", c.id, name, "report.json")) as f:
                assert json.load(f)["computed_calls"] == c.calls


def test_scores_are_the_eval_clis(exhaustive, tmp_path):
    """The tuner's PSNR of a candidate is what `python -m magcache_dist.eval` reports for the same folders."""
    from magcache_dist.eval.cli import main as eval_main

    setup, c = exhaustive["setup"], exhaustive["setup"].candidates[0]
    root = os.path.join(exhaustive["dir"], "grid")
    out = tmp_path / "eval.json"
    eval_main(["--reference", os.path.join(root, "reference"), "--candidate", os.path.join(root, "candidates", c.id),
               "--out", str(out), "--no-lpips"])
    rows = {r["name"]: r for r in json.loads(out.read_text())["candidates"][0]["rows"]}
    for name in setup.tune:
        assert rows[name]["psnr"] == pytest.approx(c.metrics[name]["psnr"], abs=1e-9)


@pytest.mark.parametrize("search", ["exact", "probe"])
def test_chosen_is_the_fewest_calls_reaching_the_target(exhaustive, search):
    """For quality levels of the grid as targets: exact search chooses exactly the exhaustive answer; probe
    search chooses a passing candidate, and the exhaustive answer unless the grid contradicts its assumption."""
    ex = exhaustive
    levels = sorted(set(ex["means"].values()))
    for target in (levels[0], levels[len(levels) // 2], levels[-1]):  # the cheapest, a middle and the best level
        setup = prepare(_args(ex["prompts"], ex["dir"] / "grid", target, "--search", search))
        res = tune(setup, solo_context())  # reuses the grid's videos
        ch = res["chosen"]
        assert ch is not None and ex["means"][ch["id"]] >= target
        assert ch["tune_mean"]["psnr"] == pytest.approx(ex["means"][ch["id"]])
        if search == "exact" or not res["assumption"]["fell_back_to_exact"] and _monotone(ex):
            assert ch["calls"] == _fewest(ex, target), (search, target)
        else:
            assert ch["calls"] >= _fewest(ex, target)
        assert ch["held_out"]["prompts"] == setup.held_out and ch["held_out"]["mean"]["psnr"] is not None


def _monotone(ex) -> bool:
    cands = ex["setup"].candidates
    return not any(a.no_better_than(b) and ex["means"][a.id] > ex["means"][b.id]
                   for a in cands for b in cands if a is not b)


def test_pruning_skips_candidates_and_tuned_yaml_runs(exhaustive, tmp_path):
    """A fresh folder: only the sampled candidates' videos are made; tuned.yaml is a job config that runs the chosen
    schedule."""
    ex = exhaustive
    target = sorted(ex["means"].values())[len(ex["means"]) // 2]
    out = tmp_path / "fresh"
    rc = main(["--config", "configs/default.yaml", "--prompts", str(ex["prompts"]), "--out", str(out),
               "--target-psnr", str(target), "--held-out", "1", *GRID, *SMALL])
    assert rc == 0
    res = json.loads((out / "tune.json").read_text())
    cnt, n = res["counts"], len(res["candidates"])
    sampled = [c for c in res["candidates"] if c["sampled_order"] is not None]
    assert cnt["candidates_sampled"] == len(sampled) < n
    skipped = [c for c in res["candidates"] if c["status"] in ("pruned", "implied-fail")]
    assert skipped and all(not c["per_prompt"] for c in skipped)
    assert sorted(os.listdir(out / "candidates")) == sorted(c["id"] for c in sampled)  # nothing else was made
    assert cnt["videos_requested"]["search"] == sum(len(c["per_prompt"]) for c in sampled)
    assert cnt["videos_requested"]["search"] < cnt["exhaustive_search_videos"] == n * 2
    requested = cnt["videos_requested"]
    assert cnt["videos_sampled_this_run"] == requested["total"] == 3 + requested["search"] + 1  # refs, held-out
    assert res["chosen"]["calls"] >= _fewest(ex, target)
    md = (out / "tune.md").read_text()
    assert res["chosen"]["id"] in md and "## Every candidate" in md
    # the job config: loads, validates, and runs the chosen schedule
    cfg = load_config(str(out / "tuned.yaml"), [f"output_dir={tmp_path / 'run'}"])
    assert (cfg.cache.magcache.thresh, cfg.cache.magcache.K, cfg.cache.magcache.retention, cfg.cache.branch_sync) == \
        tuple(res["chosen"]["setting"][k] for k in ("thresh", "K", "retention", "branch_sync"))
    report = run_job(validate_job(cfg, 1), solo_context())
    assert report["computed_calls"] == res["chosen"]["calls"]
    assert report["skipped_steps"] == res["chosen"]["skipped_steps"]
    # a rerun reuses every video (references and candidates)
    assert main(["--config", "configs/default.yaml", "--prompts", str(ex["prompts"]), "--out", str(out),
                 "--target-psnr", str(target), "--held-out", "1", *GRID, *SMALL]) == 0
    again = json.loads((out / "tune.json").read_text())
    assert again["counts"]["videos_sampled_this_run"] == 0 and again["chosen"]["id"] == res["chosen"]["id"]


# -- the search alone, on synthetic monotone scores ----------------------------------------------------------------
class _Scores:
    """A stand-in for Runner whose quality rises with the calls a schedule computes (monotone in subsets), per
    prompt: sum of per-call weights; counts the videos asked for."""

    def __init__(self, weights: dict, offsets: dict):
        self.weights, self.offsets, self.videos = weights, offsets, 0

    def value(self, c: Candidate, name: str) -> float:
        return self.offsets[name] + sum(self.weights[x] for x in c.computed)

    def sample(self, c, names, kind):
        self.videos += len(names)
        c.metrics.update({n: dict(psnr=self.value(c, n), ssim=None, lpips=None) for n in names})


def _synthetic_plan(seed: int, search: str, target: float):
    rng = random.Random(seed)
    steps = 10
    cands = []
    for i in range(40):
        computed = frozenset((s, "cond") for s in range(steps) if s < 2 or rng.random() < 0.5)
        if any(c.computed == computed for c in cands):
            continue
        st = Setting("joint", round(0.01 * (i + 1), 2), 1 + i % 5, 0.2)
        cands.append(Candidate(st.name(), [st], len(computed), steps, {}, computed))
    cands.sort(key=lambda c: (c.calls, c.id))
    args = types.SimpleNamespace(search=search)
    setup = types.SimpleNamespace(args=args, candidates=cands, tune=["p0", "p1", "p2"], held_out=[],
                                 targets=dict(psnr=target), chunk=1)
    weights = {(s, "cond"): rng.uniform(0.5, 3.0) for s in range(steps)}
    return setup, _Scores(weights, dict(p0=0.0, p1=-4.0, p2=2.0))


@pytest.mark.parametrize("seed", range(6))
def test_probe_search_is_exact_when_quality_is_monotone(seed):
    """Parameter dominance is left out here (settings are arbitrary labels): only the subset-of-calls order, which
    the synthetic scores respect, so probe search must find the brute-force answer with fewer videos."""
    for target in (8.0, 12.0, 16.0):
        setup, scores = _synthetic_plan(seed, "probe", target)
        for c in setup.candidates:  # keep only the subset order
            c.settings = [Setting(f"s{id(c)}", 0.0, 1, 0.0)]
        best = Search(setup, scores).run()
        brute = [c for c in setup.candidates if sum(scores.value(c, n) for n in setup.tune) / 3 >= target]
        want = min(c.calls for c in brute) if brute else None
        assert (best.calls if best else None) == want, (seed, target)
        assert scores.videos < len(setup.candidates) * 3
        assert all(c.status != "open" for c in setup.candidates)
        assert not any(c.metrics for c in setup.candidates if c.status in ("pruned", "implied-fail"))


def test_exact_search_stops_a_candidate_that_cannot_reach_the_target():
    """With the metric's cap as the only bound (exact search), a candidate is abandoned once the prompts left could
    not lift its mean to the target even at the cap: here after one prompt with a target of 99 dB."""
    setup, scores = _synthetic_plan(0, "exact", 99.0)
    setup.tune = ["p1", "p0", "p2"]
    scores.offsets = dict(p0=0.0, p1=-150.0, p2=0.0)
    Search(setup, scores).run()
    first = setup.candidates[0]
    assert first.status == "fail" and "stopped after 1 of 3 prompts" in first.reason
    assert len(first.metrics) == 1 and METRICS["psnr"] == (True, 100.0)


def test_plot_without_matplotlib_is_skipped_and_said(tmp_path, monkeypatch):
    setup, scores = _synthetic_plan(1, "exact", 10.0)
    best = Search(setup, scores).run()
    pytest.importorskip("matplotlib")
    assert plot(setup, str(tmp_path / "a.png"), best) == "quality_vs_calls.png" and (tmp_path / "a.png").stat().st_size
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot(setup, str(tmp_path / "b.png"), best).startswith("no plot: matplotlib is not installed")
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "give a target"),
    (["--target-psnr", "25", "--held-out", "3"], "leave none to tune on"),
    (["--target-psnr", "25", "--K", "1.5"], "whole numbers"),
    (["--target-psnr", "25", "--retention", "0.2,1.5"], "--retention grid, setting t0.02-K1-r1.5"),
    (["--target-psnr", "25", "cache.mode=teacache"], "cache.mode='teacache'"),
    (["--target-psnr", "25", "output_dir=x"], "sets output_dir itself"),
    (["--target-psnr", "0"], "must be in (0, 100]"),
    (["--target-lpips", "0.1", "--lpips-backbone", "/nonexistent/alexnet.pth"], "--lpips-backbone"),
])
def test_bad_input_exits_2_naming_it(argv, message, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    rc = main(["--config", "configs/default.yaml", "--prompts", str(prompts), "--out", str(tmp_path / "o"), *argv])
    assert rc == 2 and message in capsys.readouterr().err


def test_auto_mode_tunes_on_the_stored_table(tmp_path):
    """cache.mode=auto: the setup comes from the store's table (one calibration run first); tuned.yaml keeps auto and
    the store, and runs the chosen schedule. Without a stored table the tuner refuses before making any video."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    store = tmp_path / "store"
    auto = ["cache.mode=auto", f"cache.calibration.store_dir={store}"]
    argv = ["--config", "configs/default.yaml", "--prompts", str(prompts), "--target-psnr", "10", "--held-out", "1",
            "--thresh", "0.04,0.32", "--K", "1", "--retention", "0.2", "--branch-sync", "joint", *SMALL, *auto]
    assert main([*argv, "--out", str(tmp_path / "none")]) == 2 and not os.path.exists(tmp_path / "none" / "reference")
    run_job(validate_job(load_config("configs/default.yaml", [*SMALL, "cache.mode=calibrate",
                                                              f"cache.calibration.store_dir={store}",
                                                              f"output_dir={tmp_path / 'cal'}"]), 1), solo_context())
    assert main([*argv, "--out", str(tmp_path / "t")]) == 0
    res = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert res["tuned_config"]["cache"]["mode"] == "auto"
    cfg = load_config(str(tmp_path / "t" / "tuned.yaml"), [f"output_dir={tmp_path / 'run'}"])
    assert cfg.cache.calibration.store_dir == str(store)
    report = run_job(validate_job(cfg, 1), solo_context())
    assert report["computed_calls"] == res["chosen"]["calls"] < report["total_calls"]
    assert report["ratios_used"]["lookup"] == "exact"


@pytest.mark.parametrize("config, extra", [
    ("configs/flux-schnell-tiny.yaml", []),  # an image model, no CFG branches, its own calibrated preset
    ("configs/hunyuanvideo-tiny.yaml", ["sampler.num_steps=8"]),  # the published 544p preset and its rule
    ("configs/opensora-tiny.yaml", ["sampler.num_steps=8", "video.frames=4"]),  # Open-Sora's rule (sqrt ratios)
])
def test_other_families_tune_and_run(config, extra, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "t"
    assert main(["--config", config, "--prompts", str(prompts), "--out", str(out), "--target-psnr", "12",
                 "--held-out", "1", "--thresh", "0.06,0.5", "--K", "1,4", "--retention", "0.2", *extra,
                 "progress=false"]) == 0
    res = json.loads((out / "tune.json").read_text())
    cfg = load_config(str(out / "tuned.yaml"), [f"output_dir={tmp_path / 'run'}", "progress=false"])
    report = run_job(validate_job(cfg, 1), solo_context())
    assert report["computed_calls"] == res["chosen"]["calls"]
    assert res["chosen"]["held_out"]["mean"]["psnr"] is not None
