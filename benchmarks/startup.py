"""How fast a bad input is rejected, and what the demo spends outside its phases, against `import torch`.

    .venv/bin/python -m benchmarks.startup [--repeats 5]

Each round runs, as fresh processes and in the same round so that machine load hits all alike: ``python -c "import
torch"`` (the floor any torch program pays), launch/generate.py with several bad inputs (each must exit 2), and the
default demo (start-up = wall time minus report.json's ``phases_s.total``, i.e. imports, argument parsing,
validation and interpreter exit). Medians over ``--repeats`` rounds. Target: rejection and demo start-up each
<= import torch + 1 s. Prints a table and writes benchmarks/results/startup.json.

The rejections include inputs that read files (``FILE_CASES``: a cut weight file, a git-lfs pointer, an empty
tokenizer folder, a cut image, a damaged resume pointer, ...), each checked from headers and small files before any
weights load. Each command's CPU time (user + system) is reported beside its wall time: on a machine shared with
other work the wall times of all rows grow with the load, the CPU times much less.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
GEN = [PY, os.path.join(ROOT, "launch", "generate.py"), "--config", os.path.join(ROOT, "configs", "default.yaml")]
BAD = {
    "unknown key": ["cache.bogus=1"],
    "non-finite number": ["sampler.shift=nan"],
    "ulysses degree does not divide heads (validation)": ["parallel.ulysses_degree=3"],
    "missing checkpoint (validation)": ["model.ckpt=/nonexistent.safetensors"],
}
# rejections that read files (issue 28): built under the round's temporary folder by ``file_cases``; each must be
# found from headers and small files, without loading a model
WAN = ["model.ckpt=null", "video.frames=5", "video.height=32", "video.width=32"]
FILE_CASES = {
    "cut DiT safetensors (header vs file size)": (["model.name=wan2.1-t2v-1.3b", "ckpt_dir={tmp}/wan-cut", *WAN],
                                                  "the file is cut short"),
    "umT5 weights a git-lfs pointer (component)": (["model.name=wan2.1-t2v-1.3b", "ckpt_dir={tmp}/wan-lfs", *WAN],
                                                   "is a git-lfs pointer file"),
    "empty tokenizer folder (component)": (["model.name=wan2.1-t2v-1.3b", "ckpt_dir={tmp}/wan-notok", *WAN],
                                           "is an empty folder"),
    "I2V image cut after its header (full decode)": (["model.name=wan2.1-i2v-14b-480p", "ckpt_dir={tmp}/wan-i2v",
                                                      "image={tmp}/cut.png", *WAN], "is not a readable image"),
    "Open-Sora frames without a schedule (geometry)": (["--config", os.path.join(ROOT, "configs",
                                                                                "opensora-1.2-720p.yaml"),
                                                       "video.frames=9"], "has no schedule for 2 to 16 frames"),
    "resume latest.json with a null field": (["checkpoint.dir={tmp}/ck", "resume=true"], "config=None"),
    "prompts file given as a JSON array": (["prompts_file={tmp}/prompts.txt"], "is one JSON array"),
    "binary ratio file": (["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/ratios.json"],
                          "it is not UTF-8 text"),
    "device profile number with units (dry run)": (["dry_run=true", "planner.device={tmp}/profile.json"],
                                                   "memory_capacity='80GB'"),
}


def file_cases(tmp: str) -> None:
    """The files FILE_CASES read: small Wan2.1 official-layout folders (one bad component each), a cut image, a
    resume pointer with a null field, a prompts file that is a JSON array, a binary ratio file, a device profile
    giving a number with its unit."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 11361920418\n"

    def put(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)

    def wan(name, t5=b"", tokenizer=True, cut_dit=False, clip=False):
        root = os.path.join(tmp, name)
        dit = os.path.join(root, "diffusion_pytorch_model.safetensors")
        os.makedirs(root, exist_ok=True)
        save_file({"w": torch.zeros(256, 256)}, dit)
        if cut_dit:
            with open(dit, "r+b") as f:
                f.truncate(os.path.getsize(dit) // 2)
        torch.save({"w": torch.zeros(4)}, os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"))
        if t5:
            put(os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"), t5)
        os.makedirs(os.path.join(root, "google", "umt5-xxl"), exist_ok=True)
        if tokenizer:
            put(os.path.join(root, "google", "umt5-xxl", "tokenizer.json"), json.dumps({"model": {"type": "Unigram"}}))
        torch.save({"w": torch.zeros(4)}, os.path.join(root, "Wan2.1_VAE.pth"))
        if clip:
            clip_file = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
            torch.save({"w": torch.zeros(4)}, os.path.join(root, clip_file))

    wan("wan-cut", cut_dit=True)
    wan("wan-lfs", t5=pointer)
    wan("wan-notok", tokenizer=False)
    wan("wan-i2v", clip=True)
    img = os.path.join(tmp, "cut.png")
    Image.effect_noise((256, 160), 64).convert("RGB").save(img)
    with open(img, "r+b") as f:
        f.truncate(os.path.getsize(img) // 2)
    put(os.path.join(tmp, "ck", "latest.json"), json.dumps({"format": "magcache-dist-checkpoint/1", "next_step": 4,
                                                            "world_size": 1, "config_hash": "x", "config": None}))
    put(os.path.join(tmp, "prompts.txt"), json.dumps(["a red circle moves right", "a blue square moves up"]))
    put(os.path.join(tmp, "ratios.json"), b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with open(os.path.join(ROOT, "magcache_dist", "planner", "profiles", "h100.json")) as f:
        profile = dict(json.load(f), memory_capacity="80GB")
    put(os.path.join(tmp, "profile.json"), json.dumps(profile))


def wall(cmd, expect: int, says: str = "") -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of ``cmd``; it must exit ``expect`` (and its stderr contain
    ``says``: rejected for the reason the case is about, not another). CPU time is what a loaded machine changes
    least: compare it when other work shares the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != expect or says not in p.stderr:
        raise SystemExit(f"{cmd} exited {p.returncode}, expected {expect} saying {says!r}: {p.stderr[-1000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-demo", action="store_true", help="rejections only (skip the demo run)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "startup.json"))
    args = ap.parse_args(argv)
    rows = {k: [] for k in ["import torch", *BAD, *FILE_CASES, "demo start-up"]}
    cpu = {k: [] for k in ["import torch", *BAD, *FILE_CASES]}
    demo_wall = []

    def record(name, cmd, says=""):
        w, c = wall(cmd, 2 if name != "import torch" else 0, says)
        rows[name].append(w)
        cpu[name].append(c)

    with tempfile.TemporaryDirectory() as tmp:
        file_cases(tmp)
        for _ in range(args.repeats):
            record("import torch", [PY, "-c", "import torch"])
            for name, extra in BAD.items():
                record(name, GEN + extra + [f"output_dir={tmp}/bad"])
            for name, (extra, says) in FILE_CASES.items():
                base = GEN[:2] if extra[0] == "--config" else GEN  # a case may name its own config file
                cmd = base + [e.replace("{tmp}", tmp) for e in extra] + [f"output_dir={tmp}/bad"]
                record(name, cmd, says)
            if args.no_demo:
                continue
            out = os.path.join(tmp, "demo")
            w = wall(GEN + [f"output_dir={out}", "progress=false"], 0)[0]
            with open(os.path.join(out, "report.json")) as f:
                rows["demo start-up"].append(w - json.load(f)["phases_s"]["total"])
            demo_wall.append(w)
    rows = {k: v for k, v in rows.items() if v}
    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    floor, cpu_floor = med["import torch"], cpu_med["import torch"]
    print(f"median of {args.repeats} rounds, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'what':52} {'wall s':>7} {'- import torch':>15} {'CPU s':>7} {'- import torch':>15}")
    for k, v in med.items():
        c = cpu_med.get(k)
        tail = f" {c:7.2f} {c - cpu_floor:+15.2f}" if c is not None else ""
        print(f"{k:52} {v:7.2f} {v - floor:+15.2f}{tail}")
    res = dict(repeats=args.repeats, median_s=med, minus_import_torch_s={k: v - floor for k, v in med.items()},
               cpu_median_s=cpu_med, cpu_minus_import_torch_s={k: v - cpu_floor for k, v in cpu_med.items()},
               load_average=os.getloadavg()[0], cpu_samples_s=cpu,
               demo_wall_median_s=statistics.median(demo_wall) if demo_wall else None, samples_s=rows,
               target_met={k: v - floor <= 1.0 for k, v in med.items() if k != "import torch"})
    from magcache_dist.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
