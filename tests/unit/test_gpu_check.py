"""The prepared GPU check (scripts/gpu_check.py) at toy size on the CPU, so that it still runs when a GPU is lent:
every step completes and the JSON holds what the operator reads (on a CPU-only machine the real run says
"skipped: no CUDA" and exits 0)."""
import json

import pytest

from scripts import gpu_check


@pytest.mark.timeout(600)  # the compile step compiles the toy model's blocks with inductor (about a minute)
def test_every_step_runs_at_toy_size(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--small", "--allow-cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    steps = ("env", "sdpa", "load", "sample", "vae", "decode", "compile", "ring", "ti2v", "switch", "xfuser",
             "profile")
    assert all(res[k]["ok"] for k in steps), res
    t = res["ti2v"]
    assert t["off"]["computed"] == t["off"]["calls"] == 12 and t["magcache"]["computed"] <= 12
    assert t["vae_decode"]["shape"] == [1, 3, 5, 64, 64]
    sw = res["switch"]
    assert [(m["away"], m["brought"], m["during"]) for m in sw["trades"]] == \
        [("high", "low", 2), ("low", "high", 0), ("high", "low", 0), ("low", "high", 0), ("high", "low", 0)]
    assert [m["at_use"] for m in sw["trades"]] == [0, 2, 2, 2, 2]
    assert sw["outputs_equal"] == dict(prefetched=True, streamed=True, synchronous=True)
    d = res["decode"]  # the tiles dealt over ranks reproduce diffusers' tiled decode (fp32, CPU: bit for bit)
    assert d["tiles"] == 9 and d["max_abs_diff"] == 0.0 and d["decode_s_on_ranks"]["8"] <= d["decode_s_on_ranks"]["1"]
    b = d["bands"]["ranks"]  # the whole decode in row bands with halo exchange: diffusers' whole decode within 1e-4
    assert all(b[n]["max_abs_diff"] <= 1e-4 and b[n]["rank0_band_s"] > 0 for n in ("2", "3"))
    assert b["3"]["band_latent_rows"] == [3, 2, 2] and b["3"]["band_shape"] == [1, 3, 5, 24, 72]
    assert res["profile"]["measured"]["peak_flops"]["float32"] > 0
    sh = res["load"]["shared"]  # 2 ranks sharing the read: bit-equal, each about half of the file
    assert sh["equal"] and all(0.4 < f < 0.6 for f in sh["read_fraction"]), sh
    assert json.loads((tmp_path / "gpu_profile.json").read_text())["name"] == "gpu-measured"
    s = res["sample"]
    assert s["off"]["computed"] == s["off"]["calls"] == 12 and s["magcache"]["computed"] < 12
    assert s["call_ratio"] == s["magcache"]["computed"] / 12 and s["wall_ratio"] > 0
    assert set(res["vae"]) >= {"whole", "tiled"} and res["vae"]["whole"]["shape"] == res["vae"]["tiled"]["shape"]
    assert res["sdpa"]["flash"]["ok"]  # the CPU flash kernel; on a GPU also the memory-efficient one
    c = res["compile"]  # compiled blocks vs eager: compiled once, nothing more at another timestep, within the bound
    assert c["report"]["compiled"] and c["frames_compiled_first_call"] > 0 and c["frames_compiled_later"] == 0
    assert c["no_recompile"] and c["within_bound"] and c["max_abs_diff_vs_eager"] > 0 < c["bf16_vs_fp32_gap"]
    r = res["ring"]  # ring through the fused-block path (the CPU's kernel here) vs Ulysses
    assert r["ulysses_equals_single_kernel"] and r["within_bound"] and r["error_ring_fused"] > 0
    assert r["ring2_fused_s"] > 0 and r["ring2_math_s"] > 0 and r["error_ring_math"] <= r["error_single_kernel"]


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "skipped: no CUDA"
