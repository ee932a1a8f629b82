"""python -m magcache_dist.eval: the release's per-frame PSNR / SSIM with known answers, LPIPS through the lpips
package on a locally made AlexNet checkpoint (never a download), the folder layouts, the tables and the bad
inputs (exit 2 naming the argument)."""
import json
import math
import os
import re
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from magcache_dist.eval import cli
from magcache_dist.eval.metrics import PSNR_CAP, frame_psnr, frame_ssim, psnr, psnr_from_mse, ssim
from magcache_dist.eval.perceptual import ALEXNET_URL, ENV_BACKBONE, Lpips, default_backbone_path
from magcache_dist.io.video import read_mp4, write_mp4

# torchvision's AlexNet().features convolutions (index: weight shape), as in alexnet-owt-7be5be79.pth
ALEXNET_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
                 10: (256, 256, 3, 3)}


def frames(seed: int, n: int = 4, h: int = 48, w: int = 64) -> np.ndarray:
    """[n, h, w, 3] uint8: smooth gradients that move a little each frame (compress well, survive h264)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 4 + t * 8) % 256, (yy * 5) % 256, ((xx + yy) * 2 + seed * 40) % 256], -1)
                     for t in range(n)]).astype(np.uint8)


def noisy(f: np.ndarray, amp: int = 12) -> np.ndarray:
    return np.clip(f.astype(int) + np.random.default_rng(0).integers(-amp, amp + 1, f.shape), 0, 255).astype(np.uint8)


def prompt_job(root, videos) -> str:
    """A prompt-list job's output folder: videos = [(name, frames or None, status, computed_calls, sample_s)]."""
    os.makedirs(root)
    entries = []
    for i, (name, fr, status, calls, sample_s) in enumerate(videos):
        sub = os.path.join(root, name)
        os.makedirs(sub)
        if status == "done":
            write_mp4(os.path.join(sub, "video.mp4"), fr, 8)
            with open(os.path.join(sub, "report.json"), "w") as f:
                json.dump(dict(status="done", computed_calls=calls, total_calls=40, cache=dict(mode="magcache"),
                               phases_s=dict(sample=sample_s, total=sample_s + 1)), f)
        entries.append(dict(index=i, name=name, dir=name, prompt=name, seed=i, status=status, computed_calls=calls,
                            total_calls=40, sample_s=sample_s, total_s=None if sample_s is None else sample_s + 1))
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(dict(format="magcache-prompt-job/1", videos=entries), f)
    return str(root)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A random AlexNet state dict with torchvision's keys and shapes (classifier left out: LPIPS does not use it)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, shape in ALEXNET_CONVS.items():
        sd[f"features.{i}.weight"] = 0.05 * torch.randn(shape, generator=g)
        sd[f"features.{i}.bias"] = 0.01 * torch.randn(shape[0], generator=g)
    path = str(tmp_path_factory.mktemp("lpips") / "alexnet-random.pth")
    torch.save(sd, path)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No download can happen: torch hub's fetchers and urllib fail as without a network (URLError) and record
    what was asked; torch hub's cache is an empty folder. Returns the list of attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append((args, kwargs))
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(ENV_BACKBONE, raising=False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return attempts


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Reference and candidate prompt-list jobs: 'a' identical, 'b' noisy, 'c' failed in the reference, 'd' only
    in the candidate."""
    root = tmp_path_factory.mktemp("jobs")
    a, b = frames(0), frames(1)
    ref = prompt_job(root / "ref", [("a", a, "done", 40, 4.0), ("b", b, "done", 40, 4.0),
                                    ("c", None, "failed", None, None)])
    cand = prompt_job(root / "cand", [("a", a, "done", 20, 2.0), ("b", noisy(b), "done", 16, 1.6),
                                      ("d", a, "done", 20, 2.0)])
    # 'a': the very same file, so an identical decode whatever the encoder does
    shutil.copy(os.path.join(ref, "a", "video.mp4"), os.path.join(cand, "a", "video.mp4"))
    return ref, cand


# --- metrics: known answers ----------------------------------------------------------------------------------

def test_psnr_per_frame_matches_the_formula_and_differs_from_the_pooled_one():
    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    sign = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1).double()  # checkerboard of +-1
    y = x.clone()
    y[0] += 0.1 * sign  # MSE 0.01 -> 20 dB
    y[1] += 0.01 * sign  # MSE 1e-4 -> 40 dB
    assert frame_psnr(x, y) == pytest.approx([20.0, 40.0], abs=1e-9)
    assert frame_psnr(x, x) == [PSNR_CAP, PSNR_CAP]
    assert psnr_from_mse(1e-12) == PSNR_CAP  # capped like the release's 'MSE < 1e-10 -> 100'
    # the benchmarks' pooled PSNR ([C, F, H, W] in [-1, 1]): one MSE over the whole video, 10 log10(1 / 0.00505)
    to_bench = lambda t: (t * 2 - 1).permute(1, 0, 2, 3)  # noqa: E731
    assert psnr(to_bench(x), to_bench(y)) == pytest.approx(-10 * math.log10((0.01 + 1e-4) / 2), abs=1e-9)
    assert psnr(to_bench(x), to_bench(x)) == PSNR_CAP


def reference_frame_psnr(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> list[float]:
    """The eval's PSNR before it was made fast, kept as the reference: float64 MSE of each frame in [0, 1]."""
    return [psnr_from_mse(float(m)) for m in (x_FCHW.double() - y_FCHW.double()).pow(2).flatten(1).mean(1)]


def reference_frame_ssim(x_FCHW: torch.Tensor, y_FCHW: torch.Tensor, window: int = 11, sigma: float = 1.5):
    """The eval's SSIM before it was made fast, kept as the reference: the release's definition written directly,
    a 2-D Gaussian convolution (valid windows) in float64 per channel, mean of the map, then of the channels."""
    f, c, h, w = x_FCHW.shape
    r = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]
    x, y = x_FCHW.double().reshape(-1, 1, h, w), y_FCHW.double().reshape(-1, 1, h, w)
    mx, my = torch.nn.functional.conv2d(x, k), torch.nn.functional.conv2d(y, k)
    sxx = torch.nn.functional.conv2d(x * x, k) - mx ** 2
    syy = torch.nn.functional.conv2d(y * y, k) - my ** 2
    sxy = torch.nn.functional.conv2d(x * y, k) - mx * my
    s = ((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)) / ((mx ** 2 + my ** 2 + 1e-4) * (sxx + syy + 9e-4))
    return s.reshape(f, -1).mean(1).tolist()


def test_ssim_known_answers_and_agreement_with_the_benchmarks_ssim():
    a, b = 0.5, 0.25  # flat frames: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    x, y = torch.full((2, 3, 20, 24), a), torch.full((2, 3, 20, 24), b)
    assert frame_ssim(x, y) == pytest.approx([(2 * a * b + 1e-4) / (a * a + b * b + 1e-4)] * 2, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 40, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert frame_ssim(x, x) == pytest.approx([1.0] * 5, abs=1e-12)
    per_frame = frame_ssim(x, y, rows=7)  # blocks of 7 rows: the last block is a partial one (22 = 3 x 7 + 1)
    assert 0 < min(per_frame) and max(per_frame) < 1
    assert per_frame == pytest.approx(reference_frame_ssim(x, y), abs=1e-12)
    # the benchmarks average the same maps over all frames and channels at once
    assert np.mean(per_frame) == pytest.approx(ssim((x * 2 - 1).permute(1, 0, 2, 3), (y * 2 - 1).permute(1, 0, 2, 3)),
                                               abs=1e-12)


def video_pair(f: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames [f, 3, h, w] like a decoded video (smooth, with a flat block where SSIM's variances cancel
    most) and a candidate with h264-like small errors, an identical frame and a saturated one."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = torch.stack([(xx * 3 + yy) % 256, (yy * 2) % 256, (xx + 2 * yy) % 256]).float()
    x = torch.stack([base + t * 7 + torch.randint(-20, 21, (3, h, w), generator=g) for t in range(f)])
    x[:, :, : h // 3, : w // 3] = 128
    x = x.clamp(0, 255).to(torch.uint8)
    y = (x.int() + torch.randint(-6, 7, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    y[:, :, : h // 3, : w // 3] = 129  # a flat block, shifted by one level
    y[0] = x[0]  # identical frame: PSNR capped, SSIM 1
    y[-1, 0] = 255
    return x, y


@pytest.mark.parametrize("shape", [(3, 40, 56), (2, 131, 77), (2, 180, 320)], ids=["small", "odd-size", "180p"])
def test_fast_psnr_and_ssim_equal_the_float64_reference_within_1e_6(shape):
    """The release's numbers: uint8 frames / 255 in float64 (the release divides its uint8 frames by 255.)."""
    x8, y8 = video_pair(*shape)
    x, y = x8.double() / 255, y8.double() / 255
    ref_psnr, ref_ssim = reference_frame_psnr(x, y), reference_frame_ssim(x, y)
    assert ref_psnr[0] == PSNR_CAP and ref_ssim[0] == pytest.approx(1.0, abs=1e-12)
    for a, b in ((x8, y8), (x, y)):  # uint8 (what the eval passes) and floats in [0, 1]
        assert frame_psnr(a, b) == pytest.approx(ref_psnr, abs=1e-9)
        assert frame_ssim(a, b) == pytest.approx(ref_ssim, abs=1e-9)
        assert frame_ssim(a, b, rows=16) == pytest.approx(ref_ssim, abs=1e-9)


# --- LPIPS ---------------------------------------------------------------------------------------------------

def test_lpips_is_zero_for_identical_frames_and_positive_otherwise(backbone):
    lp = Lpips(backbone, chunk=3)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 40, 48, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert lp.frames(x, x) == [0.0] * 4
    d = lp.frames(x, y)
    assert len(d) == 4 and min(d) > 0
    assert lp.describe()["net"] == "alex" and lp.describe()["backbone"] == backbone
    # the stand-in torchvision (where the real one cannot be imported) is gone again after the import
    assert "torchvision" not in sys.modules or hasattr(sys.modules["torchvision"], "__file__")


def test_lpips_rejects_a_checkpoint_that_is_not_alexnet(tmp_path):
    bad = str(tmp_path / "bad.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, bad)
    with pytest.raises(ValueError, match=r"bad.pth: 'features.0.weight' has shape \(64, 3, 5, 5\)"):
        Lpips(bad)


def test_the_eval_package_imports_lpips_torchvision_and_matplotlib_only_when_used():
    """Module-level imports of every magcache_dist/eval module (LPIPS and the plot import theirs inside)."""
    import ast

    import magcache_dist.eval as pkg

    folder = os.path.dirname(pkg.__file__)
    for fname in sorted(os.listdir(folder)):
        if fname.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, fname)).read())
            names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
            assert not [m for m in names if m.split(".")[0] in ("lpips", "torchvision", "matplotlib")], fname


# --- the command ---------------------------------------------------------------------------------------------

def test_prompt_jobs_table_with_calls_speedups_missing_and_skipped(jobs, backbone, capsys):
    ref, cand = jobs
    assert cli.main(["--reference", ref, "--candidate", cand, "--lpips-backbone", backbone, "--allow-partial"]) == 0
    res = json.load(open(os.path.join(cand, "eval.json")))
    c = res["candidates"][0]
    rows = {r["name"]: r for r in c["rows"]}
    assert list(rows) == ["a", "b"]
    a, b = rows["a"], rows["b"]
    assert (a["psnr"], a["ssim"], a["lpips"]) == (PSNR_CAP, 1.0, 0.0)
    # 'b': the release's formula on the decoded frames, frame by frame, then the mean
    x = read_mp4(os.path.join(ref, "b", "video.mp4")).astype(np.float64) / 255
    y = read_mp4(os.path.join(cand, "b", "video.mp4")).astype(np.float64) / 255
    expected = np.mean([10 * math.log10(1 / np.mean((x[i] - y[i]) ** 2)) for i in range(len(x))])
    assert b["psnr"] == pytest.approx(expected, abs=1e-6) and 20 < b["psnr"] < 60
    assert 0 < b["ssim"] < 1 and b["lpips"] > 0 and len(b["per_frame"]["lpips"]) == 4
    assert (b["computed_calls"], b["calls_ratio"], b["speedup_sample"]) == (16, 0.4, pytest.approx(2.5))
    assert b["speedup_total"] == pytest.approx(5.0 / 2.6)
    m = c["mean"]
    assert m["videos"] == 2 and m["psnr"] == pytest.approx((PSNR_CAP + b["psnr"]) / 2)
    assert m["calls_ratio"] == pytest.approx(36 / 80) and m["speedup_sample"] == pytest.approx(8.0 / 3.6)
    assert c["only_candidate"] == ["d"] and res["skipped_reference"] == {"c": "status 'failed'"}
    assert res["lpips"]["available"] and res["metrics"]["source"].startswith("Zehong-Ma/MagCache")
    out = capsys.readouterr().out
    md = open(os.path.join(cand, "eval.md")).read()
    assert "| a | 4 x 48x64 | 100.00 | 1.0000 | 0.0000 | 20/40 (ref 40) | 0.500 | 2.00x |" in out
    assert "| **mean** (2 videos) |" in md and "only in the candidate (not compared): d" in md
    assert "skipped in the reference: c (status 'failed')" in md


def test_missing_lpips_weights_offline_make_one_line_and_exit_0(jobs, tmp_path, capsys, offline):
    """No local backbone and no network: one download is tried (torchvision's URL, hash checked), fails, and LPIPS
    is reported as not computed; --offline does not even try."""
    ref, cand = jobs
    out = str(tmp_path / "e.json")
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial"]) == 0
    assert len(offline) == 1 and offline[0][0][0] == ALEXNET_URL and offline[0][1]["check_hash"] is True
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if ln.startswith("LPIPS: n/a")]
    assert len(lines) == 1 and "downloading" in lines[0] and "URLError" in lines[0]
    assert default_backbone_path() in lines[0] and "--lpips-backbone PATH" in lines[0]
    assert "metrics computed: psnr, ssim; not computed: lpips (LPIPS: n/a" in printed
    res = json.load(open(out))
    assert not res["lpips"]["available"] and all(r["lpips"] is None for r in res["candidates"][0]["rows"])
    assert res["metrics_computed"] == ["psnr", "ssim"] and list(res["metrics_not_computed"]) == ["lpips"]
    assert os.path.isfile(str(tmp_path / "e.md"))
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial", "--offline"]) == 0
    assert len(offline) == 1


def test_a_metric_asked_for_that_cannot_be_computed_exits_2_before_scoring(jobs, tmp_path, capsys, monkeypatch):
    ref, cand = jobs
    monkeypatch.setattr(cli, "score", lambda *a, **k: pytest.fail("scored"))
    out = str(tmp_path / "e.json")
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial",
                     "--metrics", "psnr,lpips", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --metrics psnr,lpips: LPIPS cannot be computed: LPIPS: n/a")
    assert not os.path.exists(out)


def test_lpips_weights_are_downloaded_the_torchvision_way_when_missing(jobs, backbone, tmp_path, monkeypatch):
    """Online: torch.hub.load_state_dict_from_url(torchvision's URL, check_hash=True) fills torch hub's cache,
    which is then used (the fake stands for the network: it copies the file where torch hub would put it)."""
    ref, cand = jobs
    calls = []

    def fetch(url, *args, **kwargs):
        calls.append((url, kwargs))
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(backbone, path)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    out = str(tmp_path / "e.json")
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial",
                     "--metrics", "lpips"]) == 0
    assert calls == [(ALEXNET_URL, dict(progress=False, check_hash=True, map_location="cpu", weights_only=True))]
    res = json.load(open(out))
    assert res["lpips"]["available"] and res["lpips"]["backbone"] == default_backbone_path()
    assert res["metrics_computed"] == ["lpips"] and res["candidates"][0]["rows"][0]["psnr"] is None
    assert "downloaded from" in res["lpips"]["note"]


def test_backbone_from_torch_hub_cache_and_env(jobs, backbone, tmp_path, monkeypatch):
    ref, cand = jobs
    os.makedirs(os.path.dirname(default_backbone_path()))
    shutil.copy(backbone, default_backbone_path())
    out = str(tmp_path / "hub.json")
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial"]) == 0
    assert json.load(open(out))["lpips"]["backbone"] == default_backbone_path()
    monkeypatch.setenv(ENV_BACKBONE, str(tmp_path / "nowhere.pth"))  # an explicit path must exist
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--allow-partial"]) == 2


def test_mp4_folders_several_candidates_summary_and_plot(tmp_path, capsys):
    ref, fast, slow = (tmp_path / n for n in ("ref", "fast", "slow"))
    for name, seed in (("p0", 0), ("p1", 1)):
        f = frames(seed)
        write_mp4(str(ref / f"{name}.mp4"), f, 8)
        write_mp4(str(slow / "sub" / f"{name}.mp4"), noisy(f, 4), 8)  # searched recursively
        write_mp4(str(fast / f"{name}.mp4"), noisy(f, 16), 8)
    argv = ["--reference", str(ref), "--candidate", str(slow), "--candidate", str(fast), "--label", "slow",
            "--label", "fast", "--no-lpips"]
    assert cli.main(argv) == 2  # several candidates: --out is needed (the reference is never written)
    assert "--out: 2 candidates need one --out FILE" in capsys.readouterr().err
    assert cli.main(argv + ["--out", str(tmp_path / "eval" / "eval.json")]) == 0
    assert sorted(os.listdir(ref)) == ["p0.mp4", "p1.mp4"]
    res = json.load(open(tmp_path / "eval" / "eval.json"))
    s = {x["label"]: x for x in res["summary"]}
    assert s["slow"]["psnr"] > s["fast"]["psnr"] and s["fast"]["calls_ratio"] is None
    out = capsys.readouterr().out
    assert "### Summary" in out and "| slow | 2 |" in out and "n/a | n/a | n/a |" in out
    assert "plot skipped: no calls or wall times" in out  # plain mp4 folders carry no reports


def test_job_folders_pair_whatever_their_names_and_plot(tmp_path, backbone):
    f = frames(2)
    for name, calls, t in (("full", 40, 4.0), ("mag-a", 20, 2.0), ("mag-b", 10, 1.0)):
        d = tmp_path / name
        write_mp4(str(d / "video.mp4"), f if name == "full" else noisy(f, calls // 5), 8)
        (d / "report.json").write_text(json.dumps(dict(status="done", computed_calls=calls, total_calls=40,
                                                       phases_s=dict(sample=t, total=t + 1))))
    assert cli.main(["--reference", str(tmp_path / "full"), "--candidate", str(tmp_path / "mag-a"),
                     "--candidate", str(tmp_path / "mag-b"), "--lpips-backbone", backbone,
                     "--out", str(tmp_path / "e" / "eval.json")]) == 0
    res = json.load(open(tmp_path / "e" / "eval.json"))
    assert [r["name"] for c in res["candidates"] for r in c["rows"]] == ["full", "full"]
    assert [x["speedup_sample"] for x in res["summary"]] == [2.0, 4.0]
    png = (tmp_path / "e" / cli.PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_video_of_another_shape_is_an_error_line_not_a_crash(tmp_path, capsys):
    write_mp4(str(tmp_path / "ref" / "p0.mp4"), frames(0), 8)
    write_mp4(str(tmp_path / "ref" / "p1.mp4"), frames(1), 8)
    write_mp4(str(tmp_path / "cand" / "p0.mp4"), frames(0, n=3), 8)
    write_mp4(str(tmp_path / "cand" / "p1.mp4"), frames(1), 8)
    assert cli.main(["--reference", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cand"), "--no-lpips"]) == 1
    out = capsys.readouterr().out
    assert "error, p0: the videos differ in shape: reference 4 frames of 48x64, candidate 3 frames of 48x64" in out
    assert "| **mean** (1 video) |" in out


def _bad_folders(tmp):
    write_mp4(str(tmp / "ref" / "p0.mp4"), frames(0, n=2), 8)
    write_mp4(str(tmp / "cand" / "p0.mp4"), frames(0, n=2), 8)
    write_mp4(str(tmp / "other" / "q0.mp4"), frames(0, n=2), 8)
    write_mp4(str(tmp / "dup" / "x" / "p0.mp4"), frames(0, n=2), 8)
    write_mp4(str(tmp / "dup" / "y" / "p0.mp4"), frames(0, n=2), 8)
    os.makedirs(tmp / "empty")


@pytest.mark.parametrize("argv,message", [
    (["--reference", "{tmp}/missing", "--candidate", "{tmp}/ref"], r"--reference \S+/missing: no such folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/empty"], r"--candidate \S+/empty: no videos to compare"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/other"],
     r"--candidate \S+/other: no video in common with --reference .*reference: p0; candidate: q0"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/dup"], r"--candidate: two videos are named 'p0': .*rename one"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--label", "a", "--label", "b"],
     r"--label: 2 label\(s\) for 1 --candidate folder\(s\)"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--lpips-backbone", "{tmp}/no.pth"],
     r"--lpips-backbone \S+/no.pth: no such file"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/ref"], r"--candidate \S+/ref: is the --reference folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/ref-link"], r"--candidate \S+/ref-link: is the --reference"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand/../ref/"], r"--candidate \S+: is the --reference"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--out", "{tmp}/ref/e.json"],
     r"--out \S+/ref/e.json: is inside the --reference folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--out", "{tmp}/ref-link/sub/e.json"],
     r"--out \S+: is inside the --reference folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--out", "{tmp}/empty"],
     r"--out \S+/empty: is a directory; give a file name, e.g. --out \S+/empty/eval.json"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--out", "{tmp}/ref/p0.mp4/e.json"],
     r"--out \S+: is inside the --reference folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--out", "{tmp}/afile/e.json"],
     r"--out \S+/afile/e.json: \S+/afile is a file, so the folder"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--metrics", "psnr,vmaf"],
     r"--metrics psnr,vmaf: unknown metric 'vmaf'"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--metrics", "lpips", "--no-lpips"],
     r"--no-lpips: contradicts --metrics"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--workers", "0"], r"--workers: must be at least 1"),
    (["--reference", "{tmp}/ref", "--candidate", "{tmp}/cand", "--device", "tpu"], r"--device tpu: "),
], ids=["missing-folder", "no-videos", "no-matching-names", "duplicate-names", "label-count", "missing-backbone",
        "same-folder", "same-folder-symlink", "same-folder-relative", "out-in-reference", "out-in-reference-symlink",
        "out-is-a-directory", "out-under-a-reference-file", "out-parent-is-a-file", "unknown-metric",
        "no-lpips-and-lpips", "workers-0", "bad-device"])
def test_bad_inputs_exit_2_naming_the_argument(tmp_path, capsys, monkeypatch, argv, message):
    _bad_folders(tmp_path)
    os.symlink(tmp_path / "ref", tmp_path / "ref-link")
    (tmp_path / "afile").write_text("x")
    before = sorted(os.listdir(tmp_path / "ref"))
    monkeypatch.setattr(cli, "score", lambda *a, **k: pytest.fail("scored"))
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert sorted(os.listdir(tmp_path / "ref")) == before  # nothing written into the reference


def test_without_the_lpips_package_one_line_says_how_to_install_it(jobs, tmp_path, monkeypatch, capsys):
    ref, cand = jobs
    monkeypatch.setattr(cli, "lpips_installed", lambda: False)
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", str(tmp_path / "e.json"),
                     "--allow-partial"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("LPIPS: n/a")]
    assert len(lines) == 1 and "pip install --no-deps lpips==0.1.4" in lines[0]


def test_an_unreadable_candidate_video_is_an_error_line(tmp_path, capsys):
    write_mp4(str(tmp_path / "ref" / "p0.mp4"), frames(0), 8)
    os.makedirs(tmp_path / "cand")
    (tmp_path / "cand" / "p0.mp4").write_bytes(b"not a video")
    assert cli.main(["--reference", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cand"), "--no-lpips"]) == 1
    assert re.search(r"error, p0: candidate \S+p0.mp4 cannot be read", capsys.readouterr().out)


# --- identity, JSON shapes, score cache, workers ----------------------------------------------------------------

def id_job(root, videos, with_id=True) -> str:
    """A prompt-list job whose folder names are not the identity: videos = [(folder name, prompt, seed, frames)];
    with_id: video_id in summary and reports (newer jobs); else only the report's config (older runs)."""
    os.makedirs(root)
    entries = []
    for i, (name, prompt, seed, fr) in enumerate(videos):
        write_mp4(os.path.join(root, name, "video.mp4"), fr, 8)
        vid = f"{prompt}|{seed}"
        report = dict(status="done", computed_calls=10, total_calls=20, phases_s=dict(sample=1.0, total=2.0),
                      config=dict(prompt=prompt, negative_prompt="", seed=seed, image=None))
        entry = dict(index=i, name=name, dir=name, prompt=prompt, seed=seed, status="done", computed_calls=10,
                     total_calls=20, sample_s=1.0, total_s=2.0)
        if with_id:
            report["video_id"] = entry["video_id"] = vid
        with open(os.path.join(root, name, "report.json"), "w") as f:
            json.dump(report, f)
        entries.append(entry)
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(dict(format="magcache-prompt-job/1", videos=entries), f)
    return str(root)


@pytest.mark.parametrize("with_id", [True, False], ids=["video_id", "report-config"])
def test_videos_are_matched_by_identity_not_by_name_or_position(tmp_path, capsys, with_id):
    """The candidate's folders are named by line number of another list order: pairs follow the prompt and seed."""
    a, b, c = frames(0), frames(1), frames(2)
    ref = id_job(tmp_path / "ref", [("0000-x", "a cat", 1, a), ("0001-y", "a dog", 2, b), ("0002-z", "a cow", 3, c)],
                 with_id)
    cand = id_job(tmp_path / "cand", [("0000-z", "a cow", 3, c), ("0001-x", "a cat", 1, a), ("0002-y", "a dog", 2, b)],
                  with_id)
    out = str(tmp_path / "e" / "e.json")
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--no-lpips"]) == 0
    c0 = json.load(open(out))["candidates"][0]
    assert c0["matched_by"] == ("video_id" if with_id else "config")
    assert [(r["name"], os.path.basename(os.path.dirname(r["candidate"]))) for r in c0["rows"]] == \
        [("0000-x", "0001-x"), ("0001-y", "0002-y"), ("0002-z", "0000-z")]
    assert all(r["psnr"] > 60 for r in c0["rows"])  # the same content on both sides (only the encoder's rounding)
    # one side loses a video: listed on each side, exit 2 before scoring, unless --allow-partial
    shutil.rmtree(os.path.join(cand, "0001-x"))
    s = json.load(open(os.path.join(cand, "summary.json")))
    s["videos"] = [v for v in s["videos"] if v["name"] != "0001-x"]
    json.dump(s, open(os.path.join(cand, "summary.json"), "w"))
    capsys.readouterr()
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert "does not match --reference" in err and "1 only in the reference: 0000-x" in err and "--allow-partial" in err
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--no-lpips", "--allow-partial"]) == 0
    c0 = json.load(open(out))["candidates"][0]
    assert [r["name"] for r in c0["rows"]] == ["0001-y", "0002-z"] and c0["only_reference"] == ["0000-x"]


def test_one_video_twice_in_a_folder_is_an_error(tmp_path, capsys):
    f = frames(0)
    ref = id_job(tmp_path / "ref", [("x", "a cat", 1, f), ("y", "a cat", 1, f)])
    cand = id_job(tmp_path / "cand", [("x", "a cat", 1, f)])
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", str(tmp_path / "e.json")]) == 2
    assert "the videos 'x' and 'y' are the same video (video_id: 'a cat|1')" in capsys.readouterr().err


def _edit(path, fn):
    obj = json.load(open(path))
    fn(obj)
    json.dump(obj, open(path, "w"))


BAD_JSON = [
    ("summary.json", lambda s: s.update(videos={"a": 1}), r"summary.json is not a prompt-list job summary"),
    ("summary.json", lambda s: s["videos"].__setitem__(0, "x"), r"summary.json: field 'videos\[0\]' is 'x'"),
    ("summary.json", lambda s: s["videos"][1].update(computed_calls="12"),
     r"summary.json: field 'videos\[1\].computed_calls' is '12' \(a JSON str\), expected an integer or null"),
    ("summary.json", lambda s: s["videos"][0].update(status=1), r"field 'videos\[0\].status' is 1"),
    ("summary.json", lambda s: s["videos"][0].update(name=None, dir=None), r"field 'videos\[0\].name' is missing"),
    ("summary.json", lambda s: s["videos"][0].update(dir="../elsewhere"), r"field 'videos\[0\].dir' is '../elsewhere'"),
    ("summary.json", lambda s: s["videos"][0].update(video_id=7), r"field 'videos\[0\].video_id' is 7"),
    ("summary.json", lambda s: s["videos"][0].update(sample_s=[1]), r"field 'videos\[0\].sample_s' is \[1\]"),
    ("x/report.json", lambda r: r.update(phases_s=[1, 2]), r"x/report.json: field 'phases_s' is \[1, 2\]"),
    ("x/report.json", lambda r: r["phases_s"].update(sample="1s"), r"field 'phases_s.sample' is '1s'"),
    ("x/report.json", lambda r: r["config"].update(seed="1"), r"field 'config.seed' is '1'"),
    ("x/report.json", lambda r: r.update(total_calls=True), r"field 'total_calls' is True \(a JSON bool\)"),
    ("x/report.json", lambda r: r.update(video_id="other"), r"says 'other'; the folder holds another video"),
]


@pytest.mark.parametrize("file,edit,message", BAD_JSON, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_JSON)])
def test_json_of_an_unexpected_shape_exits_2_naming_file_and_field(tmp_path, capsys, monkeypatch, file, edit,
                                                                   message):
    f = frames(0, n=2)
    ref = id_job(tmp_path / "ref", [("x", "a cat", 1, f), ("y", "a dog", 2, f)])
    cand = id_job(tmp_path / "cand", [("x", "a cat", 1, f), ("y", "a dog", 2, f)])
    _edit(os.path.join(cand, file), edit)
    monkeypatch.setattr(cli, "score", lambda *a, **k: pytest.fail("scored"))
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --candidate: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_a_report_that_is_not_an_object_exits_2(tmp_path, capsys):
    f = frames(0, n=2)
    write_mp4(str(tmp_path / "ref" / "video.mp4"), f, 8)
    (tmp_path / "ref" / "report.json").write_text("[1, 2]")
    write_mp4(str(tmp_path / "cand" / "p.mp4"), f, 8)
    assert cli.main(["--reference", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cand")]) == 2
    assert re.search(r"--reference: \S+/ref/report.json holds a JSON list, not an object", capsys.readouterr().err)


def test_scores_are_cached_per_pair_and_recomputed_when_a_video_changes(tmp_path, capsys, backbone):
    """A second run reads every pair from the score cache (same numbers); a candidate video that changes is scored
    again, alone; a metric not cached before (LPIPS) is computed alone; --no-cache recomputes all."""
    vids = [(f"v{i}", f"prompt {i}", i, frames(i)) for i in range(3)]
    ref = id_job(tmp_path / "ref", vids)
    cand = id_job(tmp_path / "cand", [(n, p, s, noisy(f, 6)) for n, p, s, f in vids])
    out = str(tmp_path / "e" / "e.json")
    argv = ["--reference", ref, "--candidate", cand, "--out", out]
    assert cli.main(argv + ["--no-lpips"]) == 0
    first = json.load(open(out))["candidates"][0]["rows"]
    assert not any(r["cached"] for r in first) and "0 of 3 pair(s) from the score cache" in capsys.readouterr().out
    assert cli.main(argv + ["--no-lpips"]) == 0
    second = json.load(open(out))["candidates"][0]["rows"]
    assert all(r["cached"] for r in second) and "3 of 3 pair(s)" in capsys.readouterr().out
    assert [(r["psnr"], r["ssim"]) for r in second] == [(r["psnr"], r["ssim"]) for r in first]
    write_mp4(os.path.join(cand, "v1", "video.mp4"), noisy(frames(1), 20), 8)  # the candidate's v1 changes
    assert cli.main(argv + ["--no-lpips"]) == 0
    third = {r["name"]: r for r in json.load(open(out))["candidates"][0]["rows"]}
    assert [third[n]["cached"] for n in ("v0", "v1", "v2")] == [True, False, True]
    assert third["v1"]["psnr"] < first[1]["psnr"] and third["v0"]["psnr"] == first[0]["psnr"]
    assert cli.main(argv + ["--lpips-backbone", backbone]) == 0  # LPIPS was never cached: computed for all
    rows = json.load(open(out))["candidates"][0]["rows"]
    assert not any(r["cached"] for r in rows) and all(r["lpips"] > 0 for r in rows)
    assert [r["psnr"] for r in rows] == [third[n]["psnr"] for n in ("v0", "v1", "v2")]
    assert cli.main(argv + ["--lpips-backbone", backbone]) == 0
    assert all(r["cached"] for r in json.load(open(out))["candidates"][0]["rows"])
    assert cli.main(argv + ["--lpips-backbone", backbone, "--no-cache"]) == 0
    assert not any(r["cached"] for r in json.load(open(out))["candidates"][0]["rows"])
    cache = os.path.join(os.path.dirname(out), ".eval-cache")
    entries = sorted(os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs)
    assert len(entries) == 4  # 3 pairs + v1's earlier candidate
    for e in entries:  # a cut-short entry is scored again (and rewritten), not an error
        open(e, "w").write('{"format": "magcache-eval-sc')
    assert cli.main(argv + ["--lpips-backbone", backbone]) == 0
    assert not any(r["cached"] for r in json.load(open(out))["candidates"][0]["rows"])
    assert cli.main(argv + ["--lpips-backbone", backbone]) == 0
    assert all(r["cached"] for r in json.load(open(out))["candidates"][0]["rows"])


def test_workers_give_the_same_numbers_as_one_process(tmp_path):
    vids = [(f"v{i}", f"prompt {i}", i, frames(i)) for i in range(4)]
    ref = id_job(tmp_path / "ref", vids)
    cand = id_job(tmp_path / "cand", [(n, p, s, noisy(f, 6)) for n, p, s, f in vids])
    res = []
    for workers in ("1", "2"):
        out = str(tmp_path / f"e{workers}" / "e.json")
        assert cli.main(["--reference", ref, "--candidate", cand, "--out", out, "--no-lpips", "--workers", workers,
                         "--batch-frames", "3"]) == 0
        res.append(json.load(open(out)))
    assert res[1]["workers"] == 2
    strip = lambda r: [{k: v for k, v in row.items() if k != "cached"} for row in r["candidates"][0]["rows"]]  # noqa
    assert strip(res[0]) == strip(res[1])


@pytest.mark.parametrize("env,message", [
    (dict(RANK="one", WORLD_SIZE="2"), r"\$RANK='one' is not an integer"),
    (dict(RANK="2", WORLD_SIZE="2"), r"\$RANK=2, \$WORLD_SIZE=2, \$LOCAL_RANK=0: need 0 <= RANK < WORLD_SIZE"),
], ids=["rank-not-a-number", "rank-out-of-range"])
def test_bad_rank_variables_exit_2(jobs, tmp_path, capsys, monkeypatch, env, message):
    ref, cand = jobs
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", str(tmp_path / "e.json")]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda_exits_2(jobs, tmp_path, capsys):
    ref, cand = jobs
    assert cli.main(["--reference", ref, "--candidate", cand, "--out", str(tmp_path / "e.json"), "--allow-partial",
                     "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available here; give --device cpu" in capsys.readouterr().err
