"""The prepared GPU check (scripts/gpu_check.py) at toy size on the CPU, so that it still runs when a GPU is lent:
every step completes and the JSON holds what the operator reads (on a CPU-only machine the real run says
"skipped: no CUDA" and exits 0)."""
import json

from scripts import gpu_check


def test_every_step_runs_at_toy_size(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--small", "--allow-cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert all(res[k]["ok"] for k in ("env", "sdpa", "load", "sample", "vae", "decode", "xfuser", "profile")), res
    d = res["decode"]  # the tiles dealt over ranks reproduce diffusers' tiled decode (fp32, CPU: bit for bit)
    assert d["tiles"] == 9 and d["max_abs_diff"] == 0.0 and d["decode_s_on_ranks"]["8"] <= d["decode_s_on_ranks"]["1"]
    assert res["profile"]["measured"]["peak_flops"]["float32"] > 0
    assert json.loads((tmp_path / "gpu_profile.json").read_text())["name"] == "gpu-measured"
    s = res["sample"]
    assert s["off"]["computed"] == s["off"]["calls"] == 12 and s["magcache"]["computed"] < 12
    assert s["call_ratio"] == s["magcache"]["computed"] / 12 and s["wall_ratio"] > 0
    assert set(res["vae"]) >= {"whole", "tiled"} and res["vae"]["whole"]["shape"] == res["vae"]["tiled"]["shape"]
    assert res["sdpa"]["flash"]["ok"]  # the CPU flash kernel; on a GPU also the memory-efficient one


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "skipped: no CUDA"
