"""The one catalogue of bad inputs: each is rejected by launch/generate.py before any collective, on every rank,
with exit code 2 and a message naming the config key (or file) and the fix (tests/unit/test_bad_input_catalogue.py
runs each one in-process; tests/dist/test_cli.py runs the command itself).

An entry is a ``Bad``: id, overrides, world size, regex for the key, regex for the fix, an optional
``setup(tmp)`` that may create files and returns extra overrides, and the base job it modifies:
- ``tiny`` (default): tests.support.helpers.job_overrides on the tiny checkpoint with parallel.ulysses_degree=2;
- ``wan-<task>-<layout>``: the tiny Wan2.1 folder (tests.support.wan_tiny) copied to ``{tmp}/ck`` (a setup may
  remove or edit its files), with ``{image}`` naming its first-frame image;
- ``wan22-<t2v|i2v>-<layout>``, ``wan22-ti2v-<official|diffusers>``: the tiny Wan2.2 A14B / TI2V-5B folders
  (tests.support.wan22_tiny), copied to ``{tmp}/ck`` the same way;
- ``family:<model name>``: a tiny FLUX.1 / HunyuanVideo / Open-Sora job (tests.support.families);
- ``folder:<tiny-* model name>``: a tiny full-pipeline folder of those families (tests.support.pipelines) copied to
  ``{tmp}/ck`` (a setup may remove or edit its files).
``{tmp}`` in overrides is the test's temporary directory; later overrides win. To add a rule, append an entry.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from typing import Callable, NamedTuple

from magcache_dist.random_weights import save_tiny_checkpoint


class Bad(NamedTuple):
    id: str
    overrides: list
    world: int
    key: str
    fix: str
    setup: Callable | None = None
    base: str = "tiny"


def _write(path, data: bytes | str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def _ratios(tmp, branches=("cond",), value=1.0):
    obj = {"format": "magcache-ratios/1", "num_steps": 8,
           "branches": {b: {"ratios": [value] * 8} for b in branches}}
    return _write(os.path.join(tmp, "ratios.json"), json.dumps(obj))


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _resume_with_other_steps(tmp):
    from magcache_dist.checkpoint import FORMAT, POINTER, config_hash, fingerprint
    from magcache_dist.config import load_config
    from tests.support.helpers import job_overrides

    other = load_config(None, job_overrides(os.path.join(tmp, "tiny.safetensors"), os.path.join(tmp, "out"),
                                            "parallel.ulysses_degree=2", "sampler.num_steps=12"))
    fp = fingerprint(other)
    _write(os.path.join(tmp, "ck", POINTER), json.dumps(dict(format=FORMAT, next_step=4, world_size=2,
                                                             config_hash=config_hash(fp), config=fp)))
    return [f"checkpoint.dir={tmp}/ck", "resume=true"]


def _ratio_json(obj) -> callable:
    return lambda tmp: _write(os.path.join(tmp, "r.json"), json.dumps(obj)) and []


def _store_key(num_steps=8) -> dict:
    return {"model": "tiny", "weights": "x", "num_steps": num_steps, "resolution": [5, 20, 28], "solver": "unipc",
            "shift": 5.0, "guidance": 5.0}


def _store_index(entries) -> callable:
    return lambda tmp: _write(os.path.join(tmp, "store", "index.json"),
                              json.dumps({"format": "magcache-ratio-store/1", "entries": entries})) and []


def _yaml(text: str | bytes):
    """A setup writing ``{tmp}/bad.yaml`` (the overrides pass it with --config)."""
    return lambda tmp: _write(os.path.join(tmp, "bad.yaml"), text) and []


YAML = ["--config", "{tmp}/bad.yaml"]
_HELD = []  # locks held by a setup for the rest of the session (the "first job" of output-dir-in-use)


def _first_job_holds(tmp):
    from magcache_dist.io.probe import OutputLock

    _HELD.append(OutputLock(os.path.join(tmp, "out")))
    return []


_ENTRIES = [
    # id, overrides, world, key, fix, setup
    ("unknown-top-level-key", ["modle.name=tiny"], 2, r"'modle'", r"Did you mean: 'model'", None),
    ("unknown-nested-key", ["cache.treshold=0.1"], 2, r"cache\.treshold", r"did you mean: cache\.magcache\.thresh",
     None),
    ("old-flat-cache-key", ["cache.thresh=0.1", "cache.store_dir=/tmp/s"], 2, r"cache\.thresh has moved",
     r"use cache\.magcache\.thresh.*\n.*cache\.store_dir has moved; use cache\.calibration\.store_dir", None),
    ("wrong-type-int", ["sampler.num_steps=many"], 2, r"sampler\.num_steps", r"converted to Integer", None),
    ("wrong-type-degree", ["parallel.ulysses_degree=1.5"], 2, r"parallel\.ulysses_degree", r"converted to Integer",
     None),
    ("wrong-type-bool", ["resume=maybe"], 2, r"'resume'", r"not a valid bool", None),
    ("degrees-not-world-size", ["parallel.ulysses_degree=4"], 2, r"parallel\.ulysses_degree=4",
     r"make the product equal the number of processes", None),
    ("ulysses-does-not-divide-heads", ["parallel.ulysses_degree=3"], 3, r"parallel\.ulysses_degree=3",
     r"use a divisor of 4 and put the rest in parallel\.ring_degree", None),
    ("cfg-degree-3", ["parallel.ulysses_degree=1", "parallel.cfg_degree=3"], 3, r"parallel\.cfg_degree=3",
     r"must be 1 or 2", None),
    ("cfg-parallel-without-guidance", ["parallel.ulysses_degree=1", "parallel.cfg_degree=2", "sampler.guidance=1.0"],
     2, r"parallel\.cfg_degree=2", r"sampler\.guidance != 1", None),
    ("unknown-backend", ["parallel.backend=horovod"], 2, r"parallel\.backend='horovod'", r"choose one of", None),
    ("xfuser-without-cuda", ["parallel.backend=xfuser"], 2, r"parallel\.backend=xfuser", r"needs CUDA", None),
    ("timeout-zero", ["parallel.timeout_s=0"], 2, r"parallel\.timeout_s=0", r"must be >= 10", None),
    ("unknown-cache-mode", ["cache.mode=fast"], 2, r"cache\.mode='fast'", r"choose one of", None),
    ("unknown-preset", ["cache.magcache.preset=wan3"], 2, r"cache\.magcache\.preset='wan3'", r"choose one of", None),
    ("K-zero", ["cache.magcache.K=0"], 2, r"cache\.magcache\.K=0", r"integer >= 1", None),
    ("thresh-negative", ["cache.magcache.thresh=-1"], 2, r"cache\.magcache\.thresh=-1", r"number >= 0", None),
    ("retention-above-1", ["cache.magcache.retention=1.2"], 2, r"cache\.magcache\.retention=1\.2",
     r"must be in \[0, 1\)", None),
    ("zero-steps", ["sampler.num_steps=0"], 2, r"sampler\.num_steps=0", r"integer >= 1", None),
    ("negative-steps", ["sampler.num_steps=-5"], 2, r"sampler\.num_steps=-5", r"integer >= 1", None),
    ("unknown-solver", ["sampler.solver=ddim"], 2, r"sampler\.solver='ddim'", r"choose one of", None),
    ("guidance-below-1", ["sampler.guidance=0.5"], 2, r"sampler\.guidance=0\.5", r"must be >= 1", None),
    ("shift-zero", ["sampler.shift=0"], 2, r"sampler\.shift=0", r"must be > 0", None),
    ("height-not-patch-multiple", ["video.height=30"], 2, r"video\.height=30",
     r"positive multiple of the patch size 4", None),
    ("zero-frames", ["video.frames=0"], 2, r"video\.frames=0", r"positive multiple of the patch size", None),
    ("fps-zero", ["video.fps=0"], 2, r"video\.fps=0", r"must be >= 1", None),
    ("empty-prompt", ["prompt="], 2, r"prompt is empty", r'pass prompt="a red circle moves right"', None),
    ("unknown-model", ["model.name=gpt2"], 2, r"model\.name='gpt2'", r"choose one of", None),
    ("wan-with-model-ckpt", ["model.name=wan2.1-t2v-14b"], 2, r"model\.ckpt is for the embedded tiny models",
     r"set model\.ckpt=null and ckpt_dir=", None),
    ("wan-without-ckpt-dir", ["model.name=wan2.1-t2v-14b", "model.ckpt=null"], 2, r"ckpt_dir is not set",
     r"pass ckpt_dir=/path/to/the wan2\.1-t2v-14b checkpoint folder", None),
    ("wan-ckpt-dir-not-a-directory", ["model.name=wan2.1-t2v-14b", "model.ckpt=null", "ckpt_dir={tmp}/nope"], 2,
     r"ckpt_dir=.*nope' is not a directory", r"point it at a Wan2\.1 checkpoint folder", None),
    ("wan-ckpt-dir-without-weights", ["model.name=wan2.1-t2v-14b", "model.ckpt=null", "ckpt_dir={tmp}"], 2,
     r"ckpt_dir=.*: no DiT weights", r"diffusion_pytorch_model\.safetensors or its sharded index", None),
    ("bad-dtype", ["model.dtype=int8"], 2, r"model\.dtype='int8'", r"must be one of", None),
    ("missing-checkpoint", ["model.ckpt=/nonexistent/x.safetensors"], 2, r"model\.ckpt='/nonexistent/x\.safetensors'",
     r"set model\.ckpt=null", None),
    ("corrupt-checkpoint", ["model.ckpt={tmp}/corrupt.safetensors"], 2, r"model\.ckpt=.*corrupt\.safetensors",
     r"re-download or re-export it",
     lambda tmp: _write(os.path.join(tmp, "corrupt.safetensors"),
                        b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header") and []),
    ("checkpoint-of-another-model", ["model.ckpt={tmp}/tv.safetensors"], 2, r"model\.ckpt=.*tv\.safetensors",
     r"check model\.name",
     lambda tmp: save_tiny_checkpoint(os.path.join(tmp, "tv.safetensors"), name="tiny-video") and []),
    ("pickle-checkpoint", ["model.ckpt={tmp}/evil.pth"], 2, r"model\.ckpt=.*evil\.pth",
     r"weights_only=True.*convert it to \.safetensors",
     lambda tmp: _write(os.path.join(tmp, "evil.pth"), pickle.dumps(_Evil())) and []),
    ("missing-ratio-file", ["cache.magcache.preset=null", "cache.magcache.ratios_file=/nonexistent/r.json"], 2,
     r"cache\.magcache\.ratios_file='/nonexistent/r\.json'", r"cache\.mode=calibrate or use cache\.magcache\.preset",
     None),
    ("ratio-file-not-json", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"cache\.magcache\.ratios_file=",
     r"is not valid JSON", lambda tmp: _write(os.path.join(tmp, "r.json"), "{not json") and []),
    ("ratio-file-missing-branch", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/ratios.json"], 2,
     r"ratios: the table has branches \['cond'\]", r"calibrate with the same guidance setting",
     lambda tmp: _ratios(tmp) and []),
    ("ratio-file-negative-ratio", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/ratios.json"], 2,
     r"cache\.magcache\.ratios_file=.*ratios\.cond\[0\]=-1\.0", r"must be finite and > 0",
     lambda tmp: _ratios(tmp, value=-1.0) and []),
    ("ratio-file-unknown-rule",
     ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/ratios.json", "cache.magcache.rule=sdxl"], 2,
     r"cache\.magcache\.rule='sdxl'", r"choose one of", lambda tmp: _ratios(tmp, ("cond", "uncond")) and []),
    ("preset-and-ratio-file", ["cache.magcache.ratios_file={tmp}/ratios.json"], 2,
     r"cache\.magcache\.preset or cache\.magcache\.ratios_file",
     r"set either", lambda tmp: _ratios(tmp, ("cond", "uncond")) and []),
    ("output-dir-is-a-file", ["output_dir={tmp}/afile"], 2, r"output_dir=.*afile",
     r"choose a directory you can write to", lambda tmp: _write(os.path.join(tmp, "afile"), "x") and []),
    ("output-dir-under-a-file", ["output_dir={tmp}/afile/sub"], 2, r"output_dir=.*afile/sub",
     r"choose a directory you can write to", lambda tmp: _write(os.path.join(tmp, "afile"), "x") and []),
    ("output-dir-name-too-long", ["output_dir={tmp}/" + "x" * 300], 2, r"output_dir=.*xxx",
     r"cannot be written \(the name is too long\); choose a directory you can write to", None),
    ("output-dir-in-use", ["parallel.ulysses_degree=1"], 1,
     r"output_dir=.*/out' is in use by another job \(pid \d+ on host .*, started",
     r"wait for it to finish or choose another output_dir", _first_job_holds),
    ("checkpoint-dir-under-a-file", ["checkpoint.every_n_steps=2", "checkpoint.dir={tmp}/afile/ck"], 2,
     r"checkpoint\.dir=.*afile/ck", r"choose a directory you can write to",
     lambda tmp: _write(os.path.join(tmp, "afile"), "x") and []),
    ("calibration-out-under-a-file", ["cache.mode=calibrate", "cache.calibration.out={tmp}/afile/r.json"], 2,
     r"cache\.calibration\.out=.*afile", r"choose a directory you can write to",
     lambda tmp: _write(os.path.join(tmp, "afile"), "x") and []),
    ("calibration-out-is-a-directory", ["cache.mode=calibrate", "cache.calibration.out={tmp}"], 2,
     r"cache\.calibration\.out=.* is a directory", r"give a file path", None),
    ("store-dir-name-too-long", ["cache.mode=calibrate", "cache.calibration.store_dir={tmp}/" + "y" * 300], 2,
     r"cache\.calibration\.store_dir=.*yyy", r"the name is too long", None),
    # config files that are not the YAML mapping they should be: the file, the line and the fix are named
    ("yaml-unclosed-bracket", YAML, 2, r"bad\.yaml' is not valid YAML at line 3", r"expected ',' or '}'",
     _yaml("seed: 1\nvideo: {frames: 16\n")),
    ("yaml-top-level-list", YAML, 2, r"bad\.yaml' must be a mapping of keys", r"not a list",
     _yaml("- seed: 1\n- seed: 2\n")),
    ("yaml-duplicate-key", YAML, 2, r"key 'seed' appears twice in one section \(lines 1 and 3\)", r"keep one",
     _yaml("seed: 1\nprompt: a red circle\nseed: 2\n")),
    ("yaml-tab-indent", YAML, 2, r"bad\.yaml' is not valid YAML at line 2", r"spaces, not tabs",
     _yaml("model:\n\tname: tiny\n")),
    ("yaml-not-utf8", YAML, 2, r"bad\.yaml' is not UTF-8 text \(byte 8\)", r"save it as UTF-8",
     _yaml(b"prompt: \xff\xfe red\n")),
    ("yaml-section-as-value", YAML, 2, r"sampler is a section \(SamplerSection\)", r"set its keys",
     _yaml("sampler: 5\n")),
    ("override-section-as-value", ["sampler=5"], 2, r"override 'sampler=5': sampler is a section",
     r"sampler\.num_steps=\.\.\.", None),
    ("yaml-value-as-section", YAML, 2, r"seed must be a single value, not a section", r"bad\.yaml",
     _yaml("seed: {a: 1}\n")),
    # ratio files and ratio-store indexes: schema-checked, naming the file and the field
    ("ratio-file-zero-steps", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"cache\.magcache\.ratios_file=.*r\.json': 'num_steps' must be an integer >= 1, got 0", r"integer >= 1",
     _ratio_json({"format": "magcache-ratios/1", "num_steps": 0, "branches": {"cond": {"ratios": []}}})),
    ("ratio-file-steps-as-text", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"'num_steps' must be an integer >= 1, got '8'", r"cache\.magcache\.ratios_file=",
     _ratio_json({"format": "magcache-ratios/1", "num_steps": "8", "branches": {"cond": {"ratios": [1] * 8}}})),
    ("ratio-file-branches-list", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"'branches' must be an object", r"got list",
     _ratio_json({"format": "magcache-ratios/1", "num_steps": 8, "branches": [1, 2]})),
    ("ratio-file-ratios-text", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"branches\.cond\.ratios must be a list of 8 numbers \(num_steps\)", r"got str",
     _ratio_json({"format": "magcache-ratios/1", "num_steps": 8, "branches": {"cond": {"ratios": "abc"}}})),
    ("ratio-file-bool-ratio", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"branches\.uncond\.ratios\[7\]=True", r"must be a finite number",
     _ratio_json({"format": "magcache-ratios/1", "num_steps": 8,
                  "branches": {"cond": {"ratios": [1] * 8}, "uncond": {"ratios": [1] * 7 + [True]}}})),
    ("ratio-file-bad-meta", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
     r"'meta' must be an object",
     r"got int", _ratio_json({"format": "magcache-ratios/1", "num_steps": 8, "meta": 5,
                              "branches": {"cond": {"ratios": [1] * 8}, "uncond": {"ratios": [1] * 8}}})),
    ("store-index-entry-not-object", ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store"], 2,
     r"cache\.calibration\.store_dir=.*index\.json entries\[0\] is a int", r"fix or remove that entry",
     _store_index([3])),
    ("store-index-entry-bad-steps", ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store"], 2,
     r"entries\[0\] key\.num_steps=0 must be an integer >= 1", r"fix or remove that entry",
     _store_index([{"file": "a.json", "key": _store_key(num_steps=0)}])),
    ("store-index-entry-escapes", ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store"], 2,
     r"entries\[0\] 'file'='\.\./\.\./etc/passwd' must be a file name inside the store", r"fix or remove",
     _store_index([{"file": "../../etc/passwd", "key": _store_key()}])),
    # keys that do not apply to the chosen model or mode: an error naming the key, not silently ignored
    ("thresh-for-teacache", ["cache.mode=teacache", "cache.magcache.thresh=0.2"], 2,
     r"cache\.magcache\.thresh does not apply here \(cache\.mode='teacache'\)",
     r"TeaCache's threshold is cache\.teacache\.thresh", None),
    ("teacache-thresh-for-magcache", ["cache.teacache.thresh=0.3"], 2,
     r"cache\.teacache\.thresh does not apply here \(cache\.mode='magcache'\)", r"it is for cache\.mode=teacache",
     None),
    ("online-predictor-for-magcache", ["cache.online.predictor=hold"], 2, r"cache\.online\.predictor does not apply",
     r"cache\.mode=online", None),
    ("store-dir-for-magcache", ["cache.calibration.store_dir={tmp}/store"], 2,
     r"cache\.calibration\.store_dir does not apply",
     r"cache\.mode=calibrate or auto", None),
    ("preset-for-auto",
     ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store", "cache.magcache.preset=wan2.1-t2v-14b"], 2,
     r"cache\.magcache\.preset does not apply here \(cache\.mode='auto'\)", r"remove it", None),
    ("image-for-t2v", ["image={tmp}/x.png"], 2, r"image does not apply here \(model\.name='tiny'\)",
     r"image-to-video models", None),
    ("vae-for-tiny", ["vae.tiling=true", "text_encoder.device=cpu"], 2,
     r"text_encoder\.device does not apply here[\s\S]*vae\.tiling does not apply here",
     r"it is for models read from a checkpoint folder \(not the embedded ones\): remove it",
     None),
    ("checkpoint-dir-without-checkpoints", ["checkpoint.dir={tmp}/ck"], 2, r"checkpoint\.dir does not apply here",
     r"checkpoint\.every_n_steps > 0 or resume=true", None),
    # a job that cannot fit in this machine's memory
    ("does-not-fit-in-memory", ["video.frames=4096", "video.height=2048", "video.width=2048"], 2,
     r"memory: the planner estimates .* GB per rank x 2 ranks = .* GB for sampling, but only .* GB is free",
     r"parallel\.fsdp=true.*planner\.memory_check=false to run anyway", None),
    ("does-not-fit-long-video", ["video.frames=20000", "video.height=512", "video.width=512"], 2,
     r"memory: the planner estimates", r"fewer video\.frames", None),
    ("store-index-table-missing", ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store"], 2,
     r"entries\[0\] names 'gone\.json', which is missing", r"fix or remove that entry",
     _store_index([{"file": "gone.json", "key": _store_key()}])),
    ("store-index-table-broken", ["cache.mode=auto", "cache.calibration.store_dir={tmp}/store"], 2,
     r"entries\[0\]: cache\.magcache\.ratios_file=.*t\.json': 'num_steps' must be an integer >= 1",
     r"recalibrate or remove",
     lambda tmp: _write(os.path.join(tmp, "store", "t.json"), json.dumps({"format": "magcache-ratios/1"})) and
     _store_index([{"file": "t.json", "key": _store_key()}])(tmp)),
    # numbers that are not finite or not meaningful
    ("checkpoint-never-written", ["checkpoint.every_n_steps=8"], 2,
     r"checkpoint\.every_n_steps=8 >= sampler\.num_steps=8",
     r"no checkpoint would ever be written", None),
    ("steps-absurd", ["sampler.num_steps=1000000"], 2, r"sampler\.num_steps=1000000", r"must be <= 1000", None),
    ("several-problems-one-line-each", ["sampler.shift=nan", "video.fps=0", "seed=-5"], 2,
     r"error: seed=-5 must be >= 0.*\n\[rank \d\] error: video\.fps=0 must be >= 1.*\n"
     r"\[rank \d\] error: sampler\.shift",
     r"sampler\.shift=nan must be a finite number", None),
    ("thresh-nan", ["cache.magcache.thresh=nan"], 2, r"cache\.magcache\.thresh=nan", r"must be a finite number", None),
    ("shift-inf", ["sampler.shift=inf"], 2, r"sampler\.shift=inf", r"must be a finite number", None),
    ("guidance-inf", ["sampler.guidance=.inf"], 2, r"sampler\.guidance=inf", r"must be a finite number", None),
    ("guidance-absurd", ["sampler.guidance=1e6"], 2, r"sampler\.guidance=1000000\.0", r"must be >= 1 and <= 100", None),
    ("timeout-nan", ["parallel.timeout_s=nan"], 2, r"parallel\.timeout_s=nan", r"must be a finite number", None),
    ("timeout-too-small", ["parallel.timeout_s=0.5"], 2, r"parallel\.timeout_s=0\.5", r"must be >= 10", None),
    ("fps-absurd", ["video.fps=100000"], 2, r"video\.fps=100000", r"must be >= 1 and <= 240", None),
    ("seed-negative", ["seed=-1"], 2, r"seed=-1", r"must be >= 0 and <= 9223372036854775807", None),
    ("seed-too-large", ["seed=18446744073709551616"], 2, r"seed=18446744073709551616", r"<= 9223372036854775807",
     None),
    ("teacache-coefficient-nan", ["cache.mode=teacache", "cache.teacache.coefficients=[1.0,nan]"], 2,
     r"cache\.teacache\.coefficients=\[1\.0, nan\]", r"must be a finite number", None),
    # empty strings that would silently change the job's meaning
    ("ckpt-empty", ["model.ckpt="], 2, r"model\.ckpt is an empty string", r"leave it unset \(null\)", None),
    ("ratios-file-empty", ["cache.magcache.preset=null", "cache.magcache.ratios_file=''"], 2,
     r"cache\.magcache\.ratios_file is an empty string",
     r"give a value", None),
    ("output-dir-empty", ["output_dir="], 2, r"output_dir is an empty string", r"give a value", None),
    ("checkpoint-every-negative", ["checkpoint.every_n_steps=-1"], 2, r"checkpoint\.every_n_steps=-1",
     r"integer >= 0", None),
    ("resume-without-checkpoint", ["resume=true", "checkpoint.dir={tmp}/none"], 2, r"checkpoint\.dir=",
     r"set resume=false to start from scratch", None),
    ("resume-with-other-config", [], 2, r"sampler\.num_steps=12 in the checkpoint but 8 now",
     r"Resume with the original values, or set resume=false", _resume_with_other_steps),
    ("dry-run-unknown-device", ["dry_run=true", "planner.device=tpu9"], 2, r"planner\.device='tpu9'",
     r"choose one of \['cpu', 'h100', 'h200'\]", None),
    ("dry-run-wan-frames-not-4k+1", ["dry_run=true", "model.name=wan2.1-t2v-14b", "video.frames=80",
                                     "video.height=720", "video.width=1280"], 2, r"video\.frames=80",
     r"4k\+1 for the Wan VAE .* use video\.frames=77", None),
    ("fsdp-without-sp", ["parallel.ulysses_degree=1", "parallel.fsdp=true"], 1,
     r"parallel\.fsdp=true shards weights over the sequence-parallel group",
     r"set parallel\.ulysses_degree or parallel\.ring_degree > 1, or parallel\.fsdp=false", None),
    ("prompt-blank", ["prompt=   "], 2, r"prompt is empty", r'pass prompt="a red circle moves right"', None),
    ("online-unknown-predictor", ["cache.mode=online", "cache.online.predictor=magic"], 2,
     r"cache\.online\.predictor='magic' is unknown", r"choose one of \('powerlaw', 'hold'\)", None),
    ("online-K-zero", ["cache.mode=online", "cache.magcache.K=0"], 2, r"cache\.magcache\.K=0", r"integer >= 1", None),
]


def _remove(rel: str) -> Callable:
    """A setup removing ``rel`` from the copied Wan folder."""
    def setup(tmp):
        p = os.path.join(tmp, "ck", rel)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        return []
    return setup


def _shards_without_index(rel: str) -> Callable:
    """A setup splitting ``rel`` (a .safetensors file) of the copied folder into two shard names, without the index
    file that says which tensor is in which."""
    def setup(tmp):
        p = os.path.join(tmp, "ck", rel)
        stem = p.removesuffix(".safetensors")
        shutil.copy(p, f"{stem}-00002-of-00002.safetensors")
        os.rename(p, f"{stem}-00001-of-00002.safetensors")
        return []
    return setup


def _rename(rel: str, to: str) -> Callable:
    """A setup renaming ``rel`` of the copied Wan folder to ``to``."""
    def setup(tmp):
        os.rename(os.path.join(tmp, "ck", rel), os.path.join(tmp, "ck", to))
        return []
    return setup


def _edit_pth(rel: str, renames: dict) -> Callable:
    """A setup renaming keys of a .pth state dict of the copied Wan folder."""
    def setup(tmp):
        import torch

        p = os.path.join(tmp, "ck", rel)
        sd = torch.load(p, weights_only=True)
        torch.save({renames.get(k, k): v for k, v in sd.items()}, p)
        return []
    return setup


def _wan21_vae_as(rel: str) -> Callable:
    """A setup writing a tiny Wan2.1 VAE (Wan2.1_VAE.pth's key names) under the name ``rel``."""
    def setup(tmp):
        import torch

        from tests.support.wan_tiny import build_vae, vae_diffusers_to_official_key

        sd = build_vae(0).state_dict()
        torch.save({vae_diffusers_to_official_key(k): v.contiguous() for k, v in sd.items()},
                   os.path.join(tmp, "ck", rel))
        return []
    return setup


def _edit_json(rel: str, **changes) -> Callable:
    """A setup changing fields of a JSON file of the copied Wan folder (``_scale`` multiplies a field by 2)."""
    def setup(tmp):
        p = os.path.join(tmp, "ck", rel)
        obj = json.load(open(p)) if os.path.exists(p) else {}
        for k, v in changes.items():
            obj[k] = obj[k] * 2 if v == "_double" else v
        _write(p, json.dumps(obj))
        return []
    return setup


WAN = [  # the Wan2.1 checkpoint folders: every file a job needs is named when missing, every geometry rule checked
    Bad("wan-missing-umt5", [], 1, r"missing umT5 encoder 'models_t5_umt5-xxl-enc-bf16\.pth'",
        r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("models_t5_umt5-xxl-enc-bf16.pth"), "wan-t2v-official"),
    Bad("wan-missing-vae", [], 1, r"missing VAE 'Wan2\.1_VAE\.pth'", r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("Wan2.1_VAE.pth"),
        "wan-t2v-official"),
    Bad("wan-missing-tokenizer", [], 1, r"missing umT5 tokenizer folder 'google/umt5-xxl'",
        r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("google"), "wan-t2v-official"),
    Bad("wan-missing-dit", [], 1, r"no DiT weights", r"diffusion_pytorch_model\.safetensors or its sharded index",
        _remove("diffusion_pytorch_model.safetensors"),
        "wan-t2v-official"),
    Bad("wan-dit-shards-without-index", [], 1, r"ckpt_dir holds 2 shards of DiT weights but no "
        r"diffusion_pytorch_model\.safetensors\.index\.json", r"restore the index file",
        _shards_without_index("diffusion_pytorch_model.safetensors"), "wan-t2v-official"),
    Bad("wan-missing-clip", ["image={image}"], 1, r"missing CLIP image encoder",
        r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"), "wan-i2v-official"),
    Bad("wan-diffusers-missing-image-encoder", ["image={image}"], 1,
        r"\(diffusers layout\): missing CLIP image encoder config 'image_encoder/config\.json'",
        r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("image_encoder"), "wan-i2v-diffusers"),
    Bad("wan-diffusers-missing-vae-config", [], 1, r"missing VAE config 'vae/config\.json'",
        r"copy the complete Wan2\.1 release into ckpt_dir",
        _remove("vae"), "wan-t2v-diffusers"),
    Bad("wan-frames-not-4k+1", ["video.frames=8"], 1, r"video\.frames=8 must be 4k\+1", r"use video\.frames=5",
        base="wan-t2v-official"),
    Bad("wan-height-not-16", ["video.height=40"], 1, r"video\.height=40 must be a positive multiple of 16",
        r"e\.g\. 32",
        base="wan-t2v-official"),
    Bad("wan-ckpt-dir-null", ["ckpt_dir=null"], 1, r"ckpt_dir is not set",
        r"pass ckpt_dir=/path/to/the tiny-wan-t2v checkpoint folder", base="wan-t2v-official"),
    Bad("wan-ckpt-dir-missing", ["ckpt_dir=/nonexistent/wan"], 1, r"ckpt_dir='/nonexistent/wan' is not a directory",
        r"point it at a Wan2\.1 checkpoint folder", base="wan-t2v-official"),
    Bad("wan-t2v-folder-for-i2v", ["model.name=tiny-wan-i2v"], 1, r"missing CLIP image encoder|image is not set",
        r"copy the complete Wan2\.1 release into ckpt_dir", base="wan-t2v-official"),
    Bad("wan-unknown-layout", ["model.layout=onnx"], 1, r"model\.layout='onnx' is unknown",
        r"choose one of \('auto', 'official', 'diffusers'\)",
        base="wan-t2v-official"),
    Bad("wan-text-encoder-device", ["text_encoder.device=tpu"], 1, r"text_encoder\.device='tpu'",
        r"must be 'auto' or 'cpu'",
        base="wan-t2v-official"),
    Bad("wan-vae-tile-stride", ["vae.tiling=true", "vae.tile_stride_height=300"], 1,
        r"vae\.tile_height=256 / vae\.tile_stride_height=300", r"need a multiple of 8 >= 16 and 0 < stride <= tile",
        base="wan-t2v-official"),
    Bad("wan-vae-split-unknown", ["vae.split=bands"], 2, r"vae\.split='bands' must be one of",
        r"\['auto', 'patches', 'tiles'\]", base="wan-t2v-official"),
    Bad("wan-shared-load-unknown", ["parallel.shared_load=sometimes"], 2, r"parallel\.shared_load='sometimes' must be",
        r"one of \['auto', 'true', 'false'\]", base="wan-t2v-official"),
    Bad("wan-vae-split-patches-tiled", ["vae.split=patches", "vae.tiling=true"], 2,
        r"vae\.split=patches bands the whole decode", r"vae\.split=tiles or auto\), or set vae\.tiling=false",
        base="wan-t2v-official"),
    Bad("wan-ulysses-does-not-divide-heads", ["parallel.ulysses_degree=8"], 8,
        r"ulysses_degree=8 does not divide num_heads=4",
        r"use a divisor of 4 and put the rest in parallel\.ring_degree", base="wan-t2v-official"),
    Bad("wan-i2v-without-image", [], 1, r"image is not set", r"pass image=/path/to/first_frame\.png",
        base="wan-i2v-official"),
    Bad("wan-image-for-t2v", ["image={image}"], 1, r"image is set but tiny-wan-t2v is text-to-video",
        r"use an i2v model\.name or image=null",
        base="wan-t2v-official"),
    Bad("wan-checkpoint-of-another-size", ["model.name=wan2.1-t2v-1.3b"], 1,
        r"holds a DiT with dim=64, num_heads=4, num_layers=2, ffn_dim=128, text_len=24 but model\.name="
        r"'wan2\.1-t2v-1\.3b' has dim=1536, num_heads=12, num_layers=30", r"set model\.name to the checkpoint's model",
        base="wan-t2v-official"),
    # the same tensor shapes with another head count: only config.json can tell (loading it would compute garbage)
    Bad("wan-other-heads-official", [], 1,
        r"holds a DiT with num_heads=2 but model\.name='tiny-wan-t2v' has num_heads=4 \(config\.json\)",
        r"set model\.name to the checkpoint's model",
        _edit_json("config.json", num_heads=2), "wan-t2v-official"),
    Bad("wan-other-heads-diffusers", [], 1,
        r"holds a DiT with num_heads=2 but model\.name='tiny-wan-t2v' has num_heads=4 \(transformer/config\.json\)",
        r"set model\.name to the checkpoint's model",
        _edit_json("transformer/config.json", num_attention_heads=2, attention_head_dim="_double"),
        "wan-t2v-diffusers"),
    Bad("wan-scheduler-bad-shift", [], 1, r"scheduler/scheduler_config\.json has flow_shift=-1",
        r"it must be a number > 0 \(or set sampler\.shift\)",
        _edit_json("scheduler/scheduler_config.json", flow_shift=-1), "wan-t2v-diffusers"),
]

FAMILIES = [  # FLUX.1, HunyuanVideo, Open-Sora 1.2: each family's own rules
    Bad("opensora-ring", ["parallel.ring_degree=2"], 2, r"parallel\.ring_degree=2: Open-Sora's spatial/temporal",
        r"needs whole frames per rank; use parallel\.ulysses_degree", base="family:opensora-1.2-tiny"),
    Bad("hunyuan-cfg-parallel", ["parallel.cfg_degree=2"], 2,
        r"parallel\.cfg_degree=2: HunyuanVideo makes one call per step",
        r"use parallel\.ulysses_degree / ring_degree instead", base="family:hunyuanvideo-tiny"),
    Bad("flux-teacache", ["cache.mode=teacache"], 1, r"cache\.mode=teacache is wired for the Wan family only",
        r"use cache\.mode=magcache for flux\.1-dev-tiny", base="family:flux.1-dev-tiny"),
    Bad("flux-unipc", ["sampler.solver=unipc"], 1, r"sampler\.solver", r"set sampler\.solver=euler",
        base="family:flux.1-dev-tiny"),
    Bad("flux-frames", ["video.frames=2"], 1, r"video\.frames=2: flux\.1-dev-tiny is an image model",
        r"set video\.frames=1",
        base="family:flux.1-dev-tiny"),
    Bad("schnell-guidance", ["sampler.guidance=3.5"], 1, r"sampler\.guidance", r"FLUX\.1-schnell takes no guidance",
        base="family:flux.1-schnell-tiny"),
    Bad("hunyuan-height", ["video.height=17"], 1, r"video\.height=17 must be a positive multiple of 2",
        r"use video\.height=16",
        base="family:hunyuanvideo-tiny"),
    Bad("flux-ulysses-does-not-divide-heads", ["parallel.ulysses_degree=8"], 8,
        r"ulysses_degree=8 does not divide num_heads=4",
        r"use a divisor of 4 and put the rest in parallel\.ring_degree", base="family:flux.1-dev-tiny"),
    Bad("flux-real-size-needs-ckpt-dir", ["model.name=flux.1-dev", "video.height=32", "video.width=32"], 1,
        r"ckpt_dir is not set", r"pass ckpt_dir=/path/to/the flux\.1-dev diffusers folder",
        base="family:flux.1-dev-tiny"),
]

PROMPT_LISTS = [  # prompts_file and data-parallel groups
    Bad("prompts-file-missing", ["prompts_file={tmp}/none.txt"], 2, r"prompts_file=.*none\.txt' does not exist",
        r"give a text file \(one prompt per line\) or a \.jsonl file"),
    Bad("prompts-file-empty", ["prompts_file={tmp}/p.txt"], 2, r"prompts_file=.*p\.txt' holds no prompts",
        r"write one prompt per line", lambda tmp: _write(os.path.join(tmp, "p.txt"), "# only a comment\n\n") and []),
    Bad("prompts-jsonl-malformed-line", ["prompts_file={tmp}/p.jsonl"], 2,
        r"prompts_file=.*p\.jsonl' line 3 is not valid JSON", r"write one JSON object per line",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a red circle moves right"}\n\n'
                           '{"prompt": "a blue square", seed: 3}\n') and []),
    Bad("prompts-jsonl-unknown-field", ["prompts_file={tmp}/p.jsonl"], 2, r"line 1: unknown field 'promt'",
        r"the fields are prompt, seed, negative_prompt, image, name",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"promt": "a red circle"}\n') and []),
    Bad("prompts-jsonl-no-prompt", ["prompts_file={tmp}/p.jsonl"], 2, r"line 2: 'prompt' is missing or empty",
        r"every line needs a non-empty prompt",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a"}\n{"seed": 4}\n') and []),
    Bad("prompts-jsonl-bad-seed", ["prompts_file={tmp}/p.jsonl"], 2, r"line 1: seed=-3", r"integer >= 0",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a", "seed": -3}\n') and []),
    Bad("prompts-duplicate-names", ["prompts_file={tmp}/p.jsonl"], 2,
        r"lines 1 and 3 both name the video 'red'", r"give each video its own name",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a", "name": "red"}\n{"prompt": "b"}\n'
                           '{"prompt": "c", "name": "red"}\n') and []),
    Bad("prompts-bad-name", ["prompts_file={tmp}/p.jsonl"], 2, r"line 1: name='\.\./up' is not a folder name",
        r"use letters, digits",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a", "name": "../up"}\n') and []),
    Bad("prompts-file-and-prompt", ["prompts_file={tmp}/p.txt", "prompt=a red circle"], 2,
        r"prompt and prompts_file=.* are both given", r"remove one",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("prompts-shard-out-of-range", ["prompts_file={tmp}/p.txt", "prompts_shard=2/2"], 2,
        r"prompts_shard='2/2': need N >= 1 and 0 <= I < N", r"I counts from 0",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("prompts-shard-malformed", ["prompts_file={tmp}/p.txt", "prompts_shard=first"], 2,
        r"prompts_shard='first' is not I/N", r"prompts_shard=0/4",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("prompts-shard-without-list", ["prompts_shard=0/2"], 2,
        r"prompts_shard='0/2' takes a share of a prompt list", r"pass prompts_file=... or remove prompts_shard"),
    Bad("prompts-same-video-twice", ["prompts_file={tmp}/p.txt"], 2,
        r"lines 1 and 3 describe the same video", r"give it another seed or a name",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\na red circle\na blue square\n") and []),
    Bad("checkpoint-signal-uncatchable", ["checkpoint.signal=KILL"], 2,
        r"checkpoint.signal='KILL' is not a signal a job can catch", r"use a name such as USR1"),
    Bad("prompts-file-with-resume", ["prompts_file={tmp}/p.txt", "resume=true", "checkpoint.every_n_steps=2"], 2,
        r"resume does not apply to a prompt list", r"remove resume=true",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("prompts-file-with-calibration-out", ["prompts_file={tmp}/p.txt", "cache.mode=calibrate",
                                              "cache.calibration.out={tmp}/r.json"], 2,
        r"cache\.calibration\.out names one file, but a prompt list calibrates per video",
        r"use cache\.calibration\.store_dir", lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("dp-degree-does-not-divide-world", ["prompts_file={tmp}/p.txt", "parallel.dp_degree=2"], 2,
        r"parallel\.ulysses_degree=2 x ring_degree=1 x cfg_degree=1 x dp_degree=2 = 4 does not match WORLD_SIZE=2",
        r"make the product equal the number of processes",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), "a blue square\n") and []),
    Bad("dp-degree-without-prompts-file", ["parallel.ulysses_degree=1", "parallel.dp_degree=2"], 2,
        r"parallel\.dp_degree=2 splits a prompt list over groups", r"pass prompts_file=\.\.\. or set "
        r"parallel\.dp_degree=1"),
    Bad("dp-degree-zero", ["parallel.dp_degree=0"], 2, r"parallel\.dp_degree=0", r"integer >= 1"),
]

def _official_transformer_with_a_wrong_key(tmp):
    """BFL's single-file layout of the folder's transformer, one key renamed (as a cut or foreign file would be)."""
    from safetensors.torch import load_file, save_file

    from models.flux import FLUX_OFFICIAL
    from models.layouts import diffusers_to_official

    sd = diffusers_to_official(load_file(os.path.join(tmp, "ck", "transformer", "diffusion_pytorch_model.safetensors")),
                               FLUX_OFFICIAL)
    sd["double_blocks.0.img_attn.qkv.weightx"] = sd.pop("double_blocks.0.img_attn.qkv.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tmp, "flux1.safetensors"))
    return [f"model.ckpt={tmp}/flux1.safetensors"]


def _flux_weights_of_other_width(tmp):
    """transformer/ weights whose context embedder reads 64-wide text (the config still says 32)."""
    from safetensors.torch import load_file, save_file

    p = os.path.join(tmp, "ck", "transformer", "diffusion_pytorch_model.safetensors")
    sd = load_file(p)
    sd["context_embedder.weight"] = torch_cat_twice(sd["context_embedder.weight"])
    save_file(sd, p)
    return []


def torch_cat_twice(t):
    import torch

    return torch.cat([t, t], dim=1).contiguous()


FLUX_PIPELINE = [  # FLUX.1 folders (base folder:tiny-flux-dev / tiny-flux-schnell)
    Bad("flux-ckpt-dir-null", ["ckpt_dir=null"], 1, r"ckpt_dir is not set",
        r"pass ckpt_dir=/path/to/the tiny-flux-dev diffusers folder", None, "folder:tiny-flux-dev"),
    Bad("flux-ckpt-dir-missing", ["ckpt_dir={tmp}/nowhere"], 2, r"ckpt_dir='.*nowhere' is not a directory",
        r"point it at a FLUX\.1 diffusers folder", None, "folder:tiny-flux-dev"),
    Bad("flux-missing-t5", [], 2, r"missing t5 config 'text_encoder_2/config\.json'",
        r"copy the complete FLUX\.1 diffusers release", _remove("text_encoder_2"), "folder:tiny-flux-dev"),
    Bad("flux-missing-clip-tokenizer", [], 1, r"missing clip tokenizer folder 'tokenizer'",
        r"copy the complete FLUX\.1 diffusers release", _remove("tokenizer"), "folder:tiny-flux-dev"),
    Bad("flux-missing-vae", [], 1, r"missing vae config 'vae/config\.json'", r"copy the complete FLUX\.1",
        _remove("vae"), "folder:tiny-flux-schnell"),
    Bad("flux-missing-transformer-weights", [], 1, r"no weights \(\*\.safetensors or a sharded index\) in transformer",
        r"copy the complete release", _remove("transformer/diffusion_pytorch_model.safetensors"),
        "folder:tiny-flux-dev"),
    Bad("flux-transformer-other-size", [], 2, r"transformer/config\.json has num_layers=2 but "
        r"model\.name='tiny-flux-dev' needs num_layers=1", r"set model\.name to the checkpoint's model",
        _edit_json("transformer/config.json", num_layers=2), "folder:tiny-flux-dev"),
    Bad("flux-schnell-folder-for-dev", [], 1, r"guidance_embeds=False but model\.name='tiny-flux-dev' needs "
        r"guidance_embeds=True", r"set model\.name to the checkpoint's model",
        _edit_json("transformer/config.json", guidance_embeds=False), "folder:tiny-flux-dev"),
    Bad("flux-t5-other-width", [], 1, r"text_encoder_2/config\.json has d_model=64 but .* needs d_model=32",
        r"replace that component", _edit_json("text_encoder_2/config.json", d_model=64), "folder:tiny-flux-dev"),
    Bad("flux-clip-other-width", [], 1, r"text_encoder/config\.json has hidden_size=64 .* needs hidden_size=32",
        r"replace that component", _edit_json("text_encoder/config.json", hidden_size=64), "folder:tiny-flux-dev"),
    Bad("flux-vae-other-channels", [], 1, r"vae/config\.json has latent_channels=16 .* needs latent_channels=4",
        r"replace that component", _edit_json("vae/config.json", latent_channels=16), "folder:tiny-flux-dev"),
    Bad("flux-vae-other-stride", [], 1, r"vae/config\.json has 3 levels \(stride 4\)", r"replace vae/",
        _edit_json("vae/config.json", block_out_channels=[8, 8, 16]), "folder:tiny-flux-dev"),
    Bad("flux-transformer-config-not-json", [], 1, r"transformer/config\.json is not readable JSON",
        r"re-download that file", lambda tmp: _write(os.path.join(tmp, "ck", "transformer", "config.json"),
                                                      "{not json") and [], "folder:tiny-flux-dev"),
    Bad("flux-weights-other-shape", [], 2, r"\(transformer\): shape mismatch for \[\('context_embedder\.weight'",
        r"check model\.name", _flux_weights_of_other_width, "folder:tiny-flux-dev"),
    Bad("flux-official-file-missing", ["model.ckpt={tmp}/flux1-dev.safetensors"], 1,
        r"model\.ckpt='.*flux1-dev\.safetensors' does not exist", r"set model\.ckpt=null to use ckpt_dir/transformer",
        None, "folder:tiny-flux-dev"),
    Bad("flux-official-file-wrong-key", [], 1, r"model\.ckpt=.*flux1\.safetensors.*qkv\.weightx",
        r"check model\.name", _official_transformer_with_a_wrong_key, "folder:tiny-flux-dev"),
    Bad("flux-height-not-multiple-of-16", ["video.height=40"], 2, r"video\.height=40 must be a positive multiple of 16",
        r"use video\.height=32", None, "folder:tiny-flux-dev"),
    Bad("flux-pipeline-frames", ["video.frames=5"], 1, r"video\.frames=5: tiny-flux-dev is an image model",
        r"set video\.frames=1", None, "folder:tiny-flux-dev"),
    Bad("flux-schnell-guidance", ["sampler.guidance=3.5"], 1, r"FLUX\.1-schnell takes no guidance",
        r"set sampler\.guidance=1", None, "folder:tiny-flux-schnell"),
    Bad("flux-bad-tiles", ["vae.tiling=true", "vae.tile_height=20"], 1, r"vae\.tile_height=20",
        r"need a multiple of 8", None, "folder:tiny-flux-dev"),
    Bad("flux-text-encoder-device", ["text_encoder.device=cuda:3"], 1, r"text_encoder\.device='cuda:3'",
        r"must be 'auto' or 'cpu'", None, "folder:tiny-flux-dev"),
    Bad("flux-layout-key", ["model.layout=official"], 1, r"model\.layout does not apply here",
        r"it is for Wan2\.1 models", None, "folder:tiny-flux-dev"),
]

HUNYUAN_PIPELINE = [  # HunyuanVideo folders (base folder:tiny-hunyuanvideo)
    Bad("hy-missing-clip", [], 1, r"missing CLIP text encoder \(CLIPTextModel\) 'text_encoder_2/config\.json'",
        r"copy the complete diffusers-layout release", _remove("text_encoder_2"), "folder:tiny-hunyuanvideo"),
    Bad("hy-missing-tokenizer", [], 1, r"missing LLaMA tokenizer 'tokenizer'",
        r"copy the complete diffusers-layout release",
        _remove("tokenizer"), "folder:tiny-hunyuanvideo"),
    Bad("hy-missing-vae", [], 1, r"missing VAE \(AutoencoderKLHunyuanVideo\) 'vae/config\.json'",
        r"copy the complete diffusers-layout release", _remove("vae"), "folder:tiny-hunyuanvideo"),
    Bad("hy-llama-width", [], 1, r"text_encoder/config\.json has hidden_size=48 .*text_embed_dim=32",
        r"use the text encoder released with this transformer", _edit_json("text_encoder/config.json", hidden_size=48),
        "folder:tiny-hunyuanvideo"),
    Bad("hy-clip-width", [], 1, r"text_encoder_2/config\.json has hidden_size=48 .*pooled_projection_dim=24",
        r"use the CLIP-L text encoder released with it", _edit_json("text_encoder_2/config.json", hidden_size=48),
        "folder:tiny-hunyuanvideo"),
    Bad("hy-vae-channels", [], 1, r"vae/config\.json has latent_channels=16 .*in_channels=4",
        r"use the VAE released with this transformer", _edit_json("vae/config.json", latent_channels=16),
        "folder:tiny-hunyuanvideo"),
    Bad("hy-transformer-other-size", ["model.name=hunyuanvideo"], 1,
        r"transformer/config\.json has .*num_attention_heads=2.* but model\.name='hunyuanvideo' needs .*"
        r"num_attention_heads=24",
        r"set model\.name to the checkpoint's model", base="folder:tiny-hunyuanvideo"),
    Bad("hy-transformer-heads-edited", [], 1, r"transformer/config\.json has num_attention_heads=4 .*needs "
        r"num_attention_heads=2",
        r"set model\.name to the checkpoint's model", _edit_json("transformer/config.json", num_attention_heads=4),
        "folder:tiny-hunyuanvideo"),
    Bad("hy-frames-not-4k+1", ["video.frames=8"], 1, r"video\.frames=8 must be 4k\+1 for the HunyuanVideo VAE",
        r"use video\.frames=5", base="folder:tiny-hunyuanvideo"),
    Bad("hy-width-not-16", ["video.width=40"], 1, r"video\.width=40 must be a positive multiple of 16",
        r"use video\.width=32", base="folder:tiny-hunyuanvideo"),
    Bad("hy-ckpt-dir-missing", ["ckpt_dir={tmp}/nowhere"], 1, r"ckpt_dir=.*nowhere' is not a directory",
        r"point it at a HunyuanVideo folder \(diffusers layout", base="folder:tiny-hunyuanvideo"),
    Bad("hy-with-model-ckpt", ["model.ckpt=/x/transformer.safetensors"], 1,
        r"model\.ckpt is for the embedded tiny models",
        r"set model\.ckpt=null and ckpt_dir=/path/to/the HunyuanVideo folder", base="folder:tiny-hunyuanvideo"),
    Bad("hy-ckpt-dir-null", ["ckpt_dir=null"], 1, r"ckpt_dir is not set",
        r"pass ckpt_dir=/path/to/the tiny-hunyuanvideo folder",
        base="folder:tiny-hunyuanvideo"),
    Bad("hy-missing-transformer-weights", [], 1, r"no weights \(\*\.safetensors or a sharded index\) in transformer",
        r"copy the complete release", _remove("transformer/diffusion_pytorch_model.safetensors"),
        "folder:tiny-hunyuanvideo"),
    Bad("hy-text-encoder-device", ["text_encoder.device=cuda:1"], 2, r"text_encoder\.device='cuda:1'",
        r"must be 'auto' or 'cpu'", base="folder:tiny-hunyuanvideo"),
    Bad("hy-vae-tile", ["vae.tiling=true", "vae.tile_width=20"], 1, r"vae\.tile_width=20 / vae\.tile_stride_width=192",
        r"need a multiple of 8 >= 16", base="folder:tiny-hunyuanvideo"),
    Bad("hy-vae-split-patches", ["vae.split=patches"], 2, r"vae\.split=patches: tiny-hunyuanvideo's VAE",
        r"use vae\.split=auto or vae\.split=tiles", base="folder:tiny-hunyuanvideo"),
]

OPENSORA_PIPELINE = [  # Open-Sora 1.2 folders (base folder:tiny-opensora)
    Bad("opensora-missing-transformer", [], 1, r"missing STDiT3 folder 'transformer'",
        r"copy the complete Open-Sora 1\.2 release into ckpt_dir", _remove("transformer"), "folder:tiny-opensora"),
    Bad("opensora-missing-vae-config", [], 1, r"missing VAE config 'vae/config\.json'",
        r"copy the complete Open-Sora 1\.2 release into ckpt_dir", _remove("vae/config.json"), "folder:tiny-opensora"),
    Bad("opensora-missing-vae-weights", [], 1, r"no weights \(\*\.safetensors or a sharded index\) in vae",
        r"copy the complete release into ckpt_dir", _remove("vae/model.safetensors"), "folder:tiny-opensora"),
    Bad("opensora-missing-text-encoder", [], 1, r"missing T5 text encoder config 'text_encoder/config\.json'",
        r"copy the complete Open-Sora 1\.2 release into ckpt_dir", _remove("text_encoder"), "folder:tiny-opensora"),
    Bad("opensora-missing-tokenizer", [], 1, r"missing T5 tokenizer folder 'tokenizer'",
        r"copy the complete Open-Sora 1\.2 release into ckpt_dir", _remove("tokenizer"), "folder:tiny-opensora"),
    Bad("opensora-t5-width", [], 1,
        r"text_encoder/config\.json has d_model=64 but tiny-opensora's STDiT3 takes caption_channels=32",
        r"use the T5 the model was trained with", _edit_json("text_encoder/config.json", d_model=64),
        "folder:tiny-opensora"),
    Bad("opensora-vae-latent-channels", [], 1,
        r"vae/config\.json gives 8 latent channels \(vae_temporal\.embed_dim\) but tiny-opensora's STDiT3 takes "
        r"in_channels=4", r"use the VAE the model was trained with",
        _edit_json("vae/config.json", vae_temporal=dict(type="VAE_Temporal", in_out_channels=4, latent_embed_dim=4,
                                                        embed_dim=8, filters=8, num_res_blocks=1, num_groups=4,
                                                        channel_multipliers=[1, 2, 2, 4],
                                                        temporal_downsample=[False, True, True])),
        "folder:tiny-opensora"),
    Bad("opensora-vae-stride", [], 1, r"the 2D VAE downsamples by 4 but tiny-opensora expects 8",
        r"use the VAE the model was trained with",
        _edit_json("vae/spatial_vae/config.json", block_out_channels=[8, 8, 16],
                   down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
        "folder:tiny-opensora"),
    Bad("opensora-vae-temporal-type", [], 1, r"vae/config\.json has vae_temporal\.type='VAE_Temporal_3D'",
        r"Open-Sora 1\.2's VAE is VAE_Temporal_SD",
        _edit_json("vae/config.json", vae_temporal={"type": "VAE_Temporal_3D"}),
        "folder:tiny-opensora"),
    Bad("opensora-dit-other-heads", [], 1,
        r"transformer/config\.json has num_heads=2 but model\.name='tiny-opensora' needs num_heads=4",
        r"set model\.name to the checkpoint's model", _edit_json("transformer/config.json", num_heads=2),
        "folder:tiny-opensora"),
    Bad("opensora-dit-no-qk-norm", [], 1, r"transformer/config\.json has qk_norm=False", r"qk_norm=true",
        _edit_json("transformer/config.json", qk_norm=False), "folder:tiny-opensora"),
    Bad("opensora-checkpoint-of-another-size", ["model.name=opensora-1.2"], 1,
        r"transformer/config\.json has hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=16, "
        r"input_sq_size=64 but model\.name='opensora-1\.2' needs hidden_size=1152",
        r"set model\.name to the checkpoint's model",
        base="folder:tiny-opensora"),
    Bad("opensora-height-not-16", ["video.height=40"], 1,
        r"video\.height=40 must be a positive multiple of 16 \(VAE stride 8 x patch 2\)", r"use video\.height=32",
        base="folder:tiny-opensora"),
    Bad("opensora-vae-tiling", ["vae.tiling=true"], 1, r"vae\.tiling=true: tiny-opensora decodes 4 frames at a time",
        r"set vae\.tiling=false", base="folder:tiny-opensora"),
    Bad("opensora-with-model-ckpt", ["model.ckpt=/x/model.safetensors"], 1,
        r"model\.ckpt is for the embedded tiny models",
        r"set model\.ckpt=null and ckpt_dir=/path/to/the Open-Sora 1\.2 checkpoint folder",
        base="folder:tiny-opensora"),
    Bad("opensora-ckpt-dir-missing", ["ckpt_dir={tmp}/nowhere"], 1, r"ckpt_dir=.*nowhere' is not a directory",
        r"point it at an Open-Sora 1\.2 checkpoint folder", base="folder:tiny-opensora"),
    Bad("opensora-ckpt-dir-null", ["ckpt_dir=null"], 1, r"ckpt_dir is not set",
        r"pass ckpt_dir=/path/to/the tiny-opensora checkpoint folder", base="folder:tiny-opensora"),
    Bad("opensora-vae-weights-without-prefix", [], 1,
        r"\(vae\): checkpoint does not match the model: missing keys \['spatial_vae\.module\.decoder\.conv_in\.bias'",
        r"check model\.name",
        lambda tmp: __import__("safetensors.torch").torch.save_file(
            {k.replace("spatial_vae.module.", "", 1): v for k, v in __import__("safetensors.torch").torch.load_file(
                os.path.join(tmp, "ck", "vae", "model.safetensors")).items()},
            os.path.join(tmp, "ck", "vae", "model.safetensors")) or [], "folder:tiny-opensora"),
    Bad("opensora-pipeline-ring", ["parallel.ulysses_degree=1", "parallel.ring_degree=2"], 2,
        r"parallel\.ring_degree=2: Open-Sora's spatial/temporal", r"use parallel\.ulysses_degree",
        base="folder:tiny-opensora"),
]

WAN22 = [  # Wan2.2 A14B folders (two experts): base ``wan22-<task>-<layout>`` (tests.support.wan22_tiny)
    Bad("wan22-one-expert-folder", [], 1,
        r"has no 'low_noise_model/' folder: model\.name='tiny-wan22-t2v' has two experts",
        r"copy the complete Wan2\.2 A14B release", _remove("low_noise_model"), "wan22-t2v-official"),
    Bad("wan22-wan21-folder-for-a14b", ["model.name=tiny-wan22-t2v"], 1,
        r"has no 'high_noise_model/' and no 'low_noise_model/' folder",
        r"set model\.name to a one-DiT model \(wan2\.1-\*\)",
        base="wan-t2v-official"),
    Bad("wan22-diffusers-vae-weights-missing", [], 1, r"VAE", r"copy the complete Wan2\.2 release into ckpt_dir",
        _remove("vae/diffusion_pytorch_model.safetensors"), "wan22-t2v-diffusers"),
    Bad("wan22-diffusers-one-expert", [], 1, r"has no 'transformer_2/' folder",
        r"copy the complete Wan2\.2 A14B release",
        _remove("transformer_2"), "wan22-t2v-diffusers"),
    Bad("wan22-experts-of-different-shapes", [], 1,
        r"holds a DiT with dim=128, num_heads=8 .*\(low_noise_model/config\.json\)",
        r"set model\.name to the checkpoint's model",
        _edit_json("low_noise_model/config.json", dim=128, num_heads=8), "wan22-t2v-official"),
    Bad("wan22-missing-boundary", [], 1, r"model_index\.json has no boundary_ratio",
        r"set sampler\.boundary \(T2V-A14B 0\.875",
        _edit_json("model_index.json", boundary_ratio=None), "wan22-t2v-diffusers"),
    Bad("wan22-folder-boundary-out-of-range", ["image={image}"], 1,
        r"model_index\.json boundary_ratio=1\.5 must be a number in \(0, 1\)",
        r"I2V-A14B 0\.9", _edit_json("model_index.json", boundary_ratio=1.5), "wan22-i2v-diffusers"),
    Bad("wan22-boundary-one", ["sampler.boundary=1.0"], 1, r"sampler\.boundary=1\.0 must be in \(0, 1\)",
        r"T2V-A14B 0\.875, I2V-A14B 0\.9", base="wan22-t2v-official"),
    Bad("wan22-boundary-zero", ["sampler.boundary=0"], 1, r"sampler\.boundary=0(\.0)? must be > 0", r"<= 1",
        base="wan22-t2v-official"),
    Bad("wan22-guidance-2-below-one", ["sampler.guidance_2=0.5"], 1, r"sampler\.guidance_2=0\.5 must be >= 1",
        r"<= 100",
        base="wan22-t2v-official"),
    Bad("wan22-i2v-without-image", [], 1, r"image is not set", r"pass image=/path/to/first_frame\.png",
        base="wan22-i2v-official"),
    Bad("wan22-ti2v-wan21-vae", [], 1, r"vae/config\.json describes a VAE with z_dim=16 and 8x spatial compression",
        r"needs the Wan2\.2 VAE \(z_dim=48, 16x\)", _edit_json("vae/config.json", z_dim=16, scale_factor_spatial=8),
        "wan22-ti2v-diffusers"),
    Bad("wan22-ti2v-official-wan21-vae", [], 1,
        r"holds Wan2\.1_VAE\.pth \(the Wan2\.1 VAE: 16 latent channels, 8x\) and no Wan2\.2_VAE\.pth",
        r"copy Wan2\.2_VAE\.pth of the Wan2\.2-TI2V-5B release into ckpt_dir",
        _rename("Wan2.2_VAE.pth", "Wan2.1_VAE.pth"), "wan22-ti2v-official"),
    Bad("wan22-ti2v-official-missing-vae", [], 1, r"missing VAE 'Wan2\.2_VAE\.pth'",
        r"copy the complete Wan2\.2-TI2V-5B release", _remove("Wan2.2_VAE.pth"), "wan22-ti2v-official"),
    Bad("wan22-ti2v-official-vae-keys", [], 1,
        r"Wan2\.2_VAE\.pth: keys do not match the Wan2\.2 VAE: missing keys \['decoder\.head\.2\.bias'\] \(1\), "
        r"unexpected keys \['decoder\.head\.3\.bias'\] \(1\)",
        r"is this the Wan2\.2-TI2V-5B release's Wan2\.2_VAE\.pth\?",
        _edit_pth("Wan2.2_VAE.pth", {"decoder.head.2.bias": "decoder.head.3.bias"}), "wan22-ti2v-official"),
    Bad("wan22-ti2v-official-vae-is-wan21", [], 1,
        r"Wan2\.2_VAE\.pth: keys do not match the Wan2\.2 VAE: missing keys \[.*\] \(\d+\), unexpected keys",
        r"it holds the Wan2\.1 VAE's keys \(Wan2\.1_VAE\.pth: 16 latent channels, 8x\); copy Wan2\.2_VAE\.pth",
        _wan21_vae_as("Wan2.2_VAE.pth"), "wan22-ti2v-official"),
    Bad("wan22-ti2v-official-dit-config", [], 1, r"holds a DiT with dim=128 .*\(config\.json\)",
        r"set model\.name to the checkpoint's model", _edit_json("config.json", dim=128), "wan22-ti2v-official"),
    Bad("wan22-ti2v-image-missing", ["image={tmp}/none.png"], 1, r"image='.*none\.png' does not exist",
        r"does not exist",
        base="wan22-ti2v-diffusers"),
    Bad("wan22-ti2v-height-not-32", ["video.height=48"], 1, r"video\.height=48 must be a positive multiple of 32",
        r"e\.g\. 32", base="wan22-ti2v-diffusers"),
]

CATALOGUE = ([Bad(*e) for e in _ENTRIES] + WAN + FAMILIES + PROMPT_LISTS + FLUX_PIPELINE + HUNYUAN_PIPELINE
             + OPENSORA_PIPELINE + WAN22)


# ---- issue 28: every file a job reads is checked before any collective and before any weights load -------------
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:"
               "4d7a2146b4b3c1a8f0a6f3b0e2b1f8f6c0c5e6f1a9b8d7c6e5f4a3b2c1d0e9f8\nsize 11361920418\n")


def _cut_file(path: str, keep: float = 0.5) -> list:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))
    return []


def _cut(rel: str, keep: float = 0.5) -> Callable:
    """A setup cutting the copied folder's file ``rel`` to ``keep`` of its size (an interrupted download)."""
    def setup(tmp):
        p = os.path.join(tmp, "ck", rel)
        with open(p, "r+b") as f:
            f.truncate(int(os.path.getsize(p) * keep))
        return []
    return setup


def _replace(rel: str, data: bytes | str) -> Callable:
    """A setup replacing the copied folder's file ``rel`` with ``data`` (a folder ``rel``: emptied)."""
    def setup(tmp):
        p = os.path.join(tmp, "ck", rel)
        if os.path.isdir(p):
            shutil.rmtree(p)
            os.makedirs(p)
            if data:
                _write(os.path.join(p, "tokenizer_config.json"), data)
        else:
            _write(p, data)
        return []
    return setup


def _spiece(rel: str, data: str) -> Callable:
    """A setup leaving in the copied folder's tokenizer folder ``rel`` a slow T5 tokenizer: its config and a
    ``spiece.model`` holding ``data``."""
    def setup(tmp):
        _replace(rel, '{"tokenizer_class": "T5Tokenizer"}')(tmp)
        _write(os.path.join(tmp, "ck", rel, "spiece.model"), data)
        return []
    return setup


def _cut_image(tmp):
    """A PNG whose header (and size) is intact but whose pixel data stops halfway."""
    from tests.support.wan_tiny import save_image

    p = save_image(os.path.join(tmp, "cut.png"), h=64, w=96)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    return [f"image={p}"]


def _tiny_resume_state(tmp, pointer_edit=None, rank_files: bool = True, rank_edit=None):
    """A checkpoint of the catalogue's base tiny job (2 ranks) in {tmp}/ck: latest.json (``pointer_edit`` changes
    it) and, with ``rank_files``, both ranks' files (``rank_edit`` changes them)."""
    import torch

    from magcache_dist.checkpoint import FORMAT, POINTER, config_hash, fingerprint
    from magcache_dist.config import load_config
    from magcache_dist.families.base import make_family
    from tests.support.helpers import job_overrides

    given = load_config(None, job_overrides(os.path.join(tmp, "tiny.safetensors"), os.path.join(tmp, "out"),
                                            "parallel.ulysses_degree=2"))
    fp = fingerprint(make_family(given).cfg)  # resolved as validation resolves it (dtypes, sampler defaults)
    ptr = dict(format=FORMAT, next_step=4, world_size=2, config_hash=config_hash(fp), config=fp)
    if pointer_edit:
        pointer_edit(ptr)
    _write(os.path.join(tmp, "ck", POINTER), json.dumps(ptr))
    for rank in range(2) if rank_files else ():
        sd = dict(format=FORMAT, next_step=4, rank=rank, world_size=2, config_hash=config_hash(fp),
                  x=torch.zeros(1, 3, 5, 20, 28), scheduler={}, cache={}, rng=dict(torch=torch.get_rng_state()))
        if rank_edit:
            rank_edit(sd)
        torch.save(sd, os.path.join(tmp, "ck", f"step000004.rank{rank:04d}.pt"))
    return [f"checkpoint.dir={tmp}/ck", "resume=true"]


def _profile(text: str | bytes):
    return lambda tmp: _write(os.path.join(tmp, "p.json"), text) and []


_H100 = {"name": "mine", "peak_flops": {"float32": 4.9e14, "bfloat16": 9.9e14}, "gemm_efficiency": 0.65,
         "attention_efficiency": 0.4, "memory_bandwidth": 3.35e12, "memory_capacity": "80GB", "link_bandwidth": 4.5e11,
         "link_efficiency": 0.7, "link_latency_s": 1e-5, "op_overhead_s": 4e-6}
RESUME = ["checkpoint.dir={tmp}/ck", "resume=true"]
SCHED = "scheduler/scheduler_config.json"
DIT_FIX = r"re-download"

COMPONENTS = [  # each component of a checkpoint folder: found and checked from headers before any weights load
    Bad("wan-tokenizer-empty-folder", [], 1, r"google/umt5-xxl \(umT5 tokenizer\) is an empty folder",
        r"copy the complete Wan2\.1 release", _replace("google/umt5-xxl", ""), "wan-t2v-official"),
    Bad("wan-tokenizer-json-not-json", [], 1, r"tokenizer/tokenizer\.json \(umT5 tokenizer\) is not readable JSON",
        DIT_FIX, _replace("tokenizer/tokenizer.json", "<html>rate limited</html>"), "wan-t2v-diffusers"),
    Bad("wan-tokenizer-no-vocabulary", [], 1, r"google/umt5-xxl \(umT5 tokenizer\) holds no vocabulary",
        r"spiece\.model", _replace("google/umt5-xxl", '{"tokenizer_class": "T5Tokenizer"}'), "wan-t2v-official"),
    Bad("wan-spiece-model-not-sentencepiece", [], 1, r"google/umt5-xxl/spiece\.model \(umT5 tokenizer\) is not a "
        r"sentencepiece model", r"copy the complete Wan2\.1 release",
        _spiece("google/umt5-xxl", "not a model\n"), "wan-t2v-official"),
    Bad("wan-umt5-pth-cut", [], 1, r"models_t5_umt5-xxl-enc-bf16\.pth \(umT5 encoder\) is (a damaged or cut zip|cut "
        r"short)", DIT_FIX, _cut("models_t5_umt5-xxl-enc-bf16.pth", 0.6), "wan-t2v-official"),
    Bad("wan-vae-lfs-pointer", [], 1, r"Wan2\.1_VAE\.pth \(VAE\) is a git-lfs pointer file \(\d+ bytes\)",
        r"run 'git lfs pull' in that folder", _replace("Wan2.1_VAE.pth", LFS_POINTER), "wan-t2v-official"),
    Bad("wan-clip-pth-empty", ["image={image}"], 1, r"models_clip_open-clip-xlm-roberta-large-vit-huge-14\.pth "
        r"\(CLIP image encoder\) is empty", DIT_FIX,
        _replace("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", b""), "wan-i2v-official"),
    Bad("wan-dit-safetensors-cut", [], 1, r"diffusion_pytorch_model\.safetensors \(DiT weights\) is \d+ bytes but "
        r"its header describes \d+: the file is cut short", DIT_FIX,
        _cut("diffusion_pytorch_model.safetensors", 0.9), "wan-t2v-official"),
    Bad("wan-diffusers-text-encoder-weights-missing", [], 1, r"no umT5 encoder weights \(\*\.safetensors, \*\.bin or a "
        r"sharded index\) in text_encoder", r"copy the complete Wan2\.1 release",
        _remove("text_encoder/model.safetensors"), "wan-t2v-diffusers"),
    Bad("wan-diffusers-vae-cut", [], 1, r"vae/diffusion_pytorch_model\.safetensors \(VAE\) is \d+ bytes .* cut short",
        DIT_FIX, _cut("vae/diffusion_pytorch_model.safetensors", 0.7), "wan-t2v-diffusers"),
    Bad("wan-diffusers-image-encoder-config-binary", ["image={image}"], 1,
        r"image_encoder/config\.json is not readable JSON", DIT_FIX,
        _replace("image_encoder/config.json", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "wan-i2v-diffusers"),
    Bad("wan-i2v-image-cut", [], 1, r"image=.*cut\.png' is not a readable image", r"give a PNG or JPEG file",
        _cut_image, "wan-i2v-official"),
    Bad("wan-dit-config-heads-as-text", [], 1, r"transformer/config\.json has num_attention_heads='4' \(must be an "
        r"integer >= 1\)", r"numbers are written without quotes",
        _edit_json("transformer/config.json", num_attention_heads="4"), "wan-t2v-diffusers"),
    Bad("wan-umt5-config-eps-as-text", [], 1, r"text_encoder/config\.json has layer_norm_epsilon='1e-6' \(must be a "
        r"number > 0\)", r"fix that field", _edit_json("text_encoder/config.json", layer_norm_epsilon="1e-6"),
        "wan-t2v-diffusers"),
    Bad("wan-scheduler-karras", [], 1, r"scheduler/scheduler_config\.json sets use_karras_sigmas=True; this project "
        r"does not implement it", r"set use_karras_sigmas=false",
        _edit_json(SCHED, _class_name="UniPCMultistepScheduler", flow_shift=3.0, use_karras_sigmas=True),
        "wan-t2v-diffusers"),
    Bad("wan-scheduler-shift-terminal", [], 1, r"sets time_shift_type='linear', shift_terminal=0\.1",
        r"set time_shift_type=\"exponential\", shift_terminal=null",
        _edit_json(SCHED, _class_name="UniPCMultistepScheduler", shift_terminal=0.1, time_shift_type="linear"),
        "wan-t2v-diffusers"),
    Bad("wan-scheduler-other-class", [], 1, r"scheduler/scheduler_config\.json is a DDIMScheduler",
        r"UniPCMultistepScheduler only", _edit_json(SCHED, _class_name="DDIMScheduler"), "wan-t2v-diffusers"),
    Bad("wan-scheduler-shift-text", [], 1, r"scheduler/scheduler_config\.json has flow_shift='5'",
        r"it must be a number > 0", _edit_json(SCHED, flow_shift="5"), "wan-t2v-diffusers"),
    # FLUX.1 folders
    Bad("flux-negative-prompt", ["negative_prompt=blurry"], 1, r"negative_prompt does not apply here \(model\.name="
        r"'tiny-flux-dev', sampler\.guidance=3\.5\)", r"FLUX\.1 and HunyuanVideo are guidance-distilled",
        base="folder:tiny-flux-dev"),
    Bad("flux-sampler-shift", ["sampler.shift=3"], 1, r"sampler\.shift does not apply here \(model\.name="
        r"'tiny-flux-dev'\)", r"FLUX\.1's grid comes from its scheduler", base="folder:tiny-flux-dev"),
    Bad("flux-pixel-negative-prompt", ["negative_prompt=blurry"], 1, r"negative_prompt does not apply here",
        r"guidance-distilled", base="family:flux.1-dev-tiny"),
    Bad("flux-scheduler-time-shift-linear", [], 1, r"scheduler_config\.json sets time_shift_type='linear'",
        r"time_shift_type=\"exponential\"", _edit_json(SCHED, time_shift_type="linear"), "folder:tiny-flux-dev"),
    Bad("flux-scheduler-karras-and-invert", [], 1, r"sets invert_sigmas=True, use_karras_sigmas=True",
        r"does not implement them", _edit_json(SCHED, invert_sigmas=True, use_karras_sigmas=True),
        "folder:tiny-flux-dev"),
    Bad("flux-scheduler-equal-seq-lens", [], 1, r"base_image_seq_len = max_image_seq_len = 256",
        r"they must differ", _edit_json(SCHED, max_image_seq_len=256), "folder:tiny-flux-dev"),
    Bad("flux-scheduler-shift-zero", [], 1, r"scheduler_config\.json has shift=0", r"must be a number > 0",
        _edit_json(SCHED, shift=0), "folder:tiny-flux-schnell"),
    Bad("flux-scheduler-base-shift-text", [], 1, r"scheduler_config\.json has base_shift='0\.5' \(must be a number\)",
        r"numbers are written without quotes", _edit_json(SCHED, base_shift="0.5"), "folder:tiny-flux-dev"),
    Bad("flux-transformer-layers-as-text", [], 1, r"transformer/config\.json has num_layers='1' \(must be an integer",
        r"fix that field", _edit_json("transformer/config.json", num_layers="1"), "folder:tiny-flux-dev"),
    Bad("flux-vae-scaling-factor-zero", [], 1, r"vae/config\.json has scaling_factor=0 \(must be a number > 0\)",
        r"fix that field", _edit_json("vae/config.json", scaling_factor=0), "folder:tiny-flux-dev"),
    Bad("flux-t5-tokenizer-not-json", [], 1, r"tokenizer_2/tokenizer\.json \(t5 tokenizer\) is not readable JSON",
        DIT_FIX, _replace("tokenizer_2/tokenizer.json", "{\"version\": "), "folder:tiny-flux-dev"),
    Bad("flux-clip-weights-lfs-pointer", [], 1, r"text_encoder/model\.safetensors \(clip text encoder\) is a git-lfs "
        r"pointer file", r"git lfs pull", _replace("text_encoder/model.safetensors", LFS_POINTER),
        "folder:tiny-flux-dev"),
    Bad("flux-t5-weights-cut", [], 2, r"text_encoder_2/model\.safetensors \(t5 text encoder\) is \d+ bytes .* cut "
        r"short", DIT_FIX, _cut("text_encoder_2/model.safetensors"), "folder:tiny-flux-dev"),
    # HunyuanVideo folders
    Bad("hy-tokenizer-empty", [], 1, r"tokenizer \(LLaMA tokenizer\) is an empty folder",
        r"copy the complete diffusers-layout release", _replace("tokenizer", ""), "folder:tiny-hunyuanvideo"),
    Bad("hy-llama-weights-cut", [], 1, r"text_encoder/model\.safetensors \(LLaMA text encoder \(LlamaModel\)\) is "
        r"\d+ bytes .* cut short", DIT_FIX, _cut("text_encoder/model.safetensors"), "folder:tiny-hunyuanvideo"),
    Bad("hy-vae-weights-missing", [], 1, r"no VAE \(AutoencoderKLHunyuanVideo\) weights", r"copy the complete",
        _remove("vae/diffusion_pytorch_model.safetensors"), "folder:tiny-hunyuanvideo"),
    Bad("hy-scheduler-dynamic-shifting", [], 1, r"sets use_dynamic_shifting=True; this project does not implement it",
        r"set use_dynamic_shifting=false", _edit_json(SCHED, use_dynamic_shifting=True), "folder:tiny-hunyuanvideo"),
    Bad("hy-scheduler-shift-zero", [], 1, r"scheduler/scheduler_config\.json has shift=0",
        r"it must be a number > 0 \(or set sampler\.shift\)", _edit_json(SCHED, shift=0), "folder:tiny-hunyuanvideo"),
    Bad("hy-negative-prompt", ["negative_prompt=blurry"], 1, r"negative_prompt does not apply here",
        r"FLUX\.1 and HunyuanVideo are guidance-distilled", base="folder:tiny-hunyuanvideo"),
    Bad("hy-clip-layers-zero", [], 1, r"text_encoder_2/config\.json has num_hidden_layers=0 \(must be an integer >= "
        r"1\)", r"fix that field", _edit_json("text_encoder_2/config.json", num_hidden_layers=0),
        "folder:tiny-hunyuanvideo"),
    # Open-Sora 1.2 folders
    Bad("opensora-frames-without-schedule", ["video.frames=9"], 1, r"video\.frames=9: Open-Sora 1\.2's timestep "
        r"transform has no schedule for 2 to 16 frames", r"use video\.frames=1 \(an image\) or >= 17",
        base="folder:tiny-opensora"),
    Bad("opensora-t5-weights-cut", [], 1, r"text_encoder/model\.safetensors \(T5 text encoder\) is \d+ bytes",
        DIT_FIX, _cut("text_encoder/model.safetensors", 0.3), "folder:tiny-opensora"),
    Bad("opensora-tokenizer-spiece-pointer", [], 1, r"tokenizer/spiece\.model \(T5 tokenizer\) is a git-lfs pointer",
        r"git lfs pull", _spiece("tokenizer", LFS_POINTER), "folder:tiny-opensora"),
    Bad("opensora-transformer-config-binary", [], 1, r"transformer/config\.json is not readable JSON", DIT_FIX,
        _replace("transformer/config.json", b"\x00\x01\xff\xfe"), "folder:tiny-opensora"),
    Bad("tiny-checkpoint-cut", ["model.ckpt={tmp}/cut.safetensors"], 2, r"model\.ckpt=.*cut\.safetensors' is \d+ "
        r"bytes but its header describes \d+: the file is cut short", r"re-download or re-export it",
        lambda tmp: shutil.copy(os.path.join(tmp, "tiny.safetensors"), os.path.join(tmp, "cut.safetensors"))
        and _cut_file(os.path.join(tmp, "cut.safetensors"))),
    Bad("tiny-checkpoint-lfs-pointer", ["model.ckpt={tmp}/p.safetensors"], 2, r"model\.ckpt=.*p\.safetensors' is a "
        r"git-lfs pointer file", r"git lfs pull", lambda tmp: _write(os.path.join(tmp, "p.safetensors"), LFS_POINTER)
        and []),
    Bad("opensora-dit-weights-lfs-pointer", [], 1, r"transformer/model\.safetensors \(weights\) is a git-lfs pointer",
        r"git lfs pull", _replace("transformer/model.safetensors", LFS_POINTER), "folder:tiny-opensora"),
]

JSON_FILES = [  # every other JSON a job reads, and the values inside it
    Bad("ratio-file-binary", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"], 2,
        r"cache\.magcache\.ratios_file=.*r\.json' is not valid JSON: it is not UTF-8 text", r"a binary file",
        lambda tmp: _write(os.path.join(tmp, "r.json"), b"\x89PNG\r\n\x1a\n\xff\xfe\x00") and []),
    Bad("ratio-file-published-not-a-list", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"],
        2, r"ratios_file=.*r\.json': 'mag_ratios' must be a non-empty list of numbers", r"got int",
        _ratio_json({"mag_ratios": 5, "num_steps": 8})),
    Bad("ratio-file-published-no-steps", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"],
        2, r"ratios_file=.*r\.json': 'num_steps' must be an integer >= 1, got None", r"integer >= 1",
        _ratio_json({"mag_ratios": [1.0] * 16, "interleaved": True})),
    Bad("ratio-file-published-one-branch-interleaved", ["cache.magcache.preset=null",
                                                        "cache.magcache.ratios_file={tmp}/r.json"], 2,
        r"'branches' must list 2 distinct branch names \(interleaved\)", r"got \['cond'\]",
        _ratio_json({"mag_ratios": [1.0] * 16, "num_steps": 8, "interleaved": True, "branches": ["cond"]})),
    Bad("ratio-file-published-text-value", ["cache.magcache.preset=null", "cache.magcache.ratios_file={tmp}/r.json"],
        2, r"mag_ratios\[3\]='1\.1' must be a finite number", r"ratios_file=",
        _ratio_json({"mag_ratios": [1.0, 1.0, 1.0, "1.1"] + [1.0] * 12, "num_steps": 8, "interleaved": True})),
    Bad("resume-pointer-null-config", RESUME, 2, r"latest\.json has config=None \(must be an object\)",
        r"set resume=false to start from scratch",
        lambda tmp: _tiny_resume_state(tmp, pointer_edit=lambda p: p.update(config=None)) and []),
    Bad("resume-pointer-missing-world-size", RESUME, 2,
        r"latest\.json has world_size='<missing>' \(must be an integer >= 0\)", r"set resume=false",
        lambda tmp: _tiny_resume_state(tmp, pointer_edit=lambda p: p.pop("world_size")) and []),
    Bad("resume-rank-file-missing", RESUME, 2, r"step000004\.rank0000\.pt is missing", r"set resume=false",
        lambda tmp: _tiny_resume_state(tmp, rank_files=False) and []),
    Bad("resume-rank-file-null-latents", RESUME, 2, r"step000004\.rank0000\.pt has x=None \(must be a tensor\)",
        r"set resume=false", lambda tmp: _tiny_resume_state(tmp, rank_edit=lambda sd: sd.update(x=None)) and []),
    Bad("resume-rank-file-cut", RESUME, 2, r"step000004\.rank0001\.pt could not be read as plain data",
        r"set resume=false", lambda tmp: _tiny_resume_state(tmp) and _cut("step000004.rank0001.pt")(tmp)),
    Bad("device-profile-with-units", ["dry_run=true", "planner.device={tmp}/p.json"], 2,
        r"planner\.device=.*p\.json.* has memory_capacity='80GB'",
        r"without a unit suffix, e\.g\. memory_capacity: 80e9",
        _profile(json.dumps(_H100))),
    Bad("device-profile-binary", ["dry_run=true", "planner.device={tmp}/p.json"], 2,
        r"planner\.device=.*p\.json.* is not readable JSON", r"give a profile like",
        _profile(b"\xff\xfe\x00\x01")),
    Bad("device-profile-missing-figure", ["dry_run=true", "planner.device={tmp}/p.json"], 2,
        r"p\.json lacks link_bandwidth", r"every profile gives them",
        _profile(json.dumps({k: v for k, v in _H100.items() if k != "link_bandwidth"}))),
]

PATHS_AND_LISTS = [  # prompt lists, output paths, home folders
    Bad("prompts-json-array", ["prompts_file={tmp}/p.txt"], 2, r"prompts_file=.*p\.txt' is one JSON array",
        r"one prompt per line, or a \.jsonl file",
        lambda tmp: _write(os.path.join(tmp, "p.txt"), '["a red circle", "a blue square"]\n') and []),
    Bad("prompts-json-array-jsonl", ["prompts_file={tmp}/p.jsonl"], 2, r"p\.jsonl' is one JSON array",
        r"one JSON object per line",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '[\n {"prompt": "a"},\n {"prompt": "b"}\n]\n') and []),
    Bad("prompts-name-collides-with-summary", ["prompts_file={tmp}/p.jsonl"], 2,
        r"line 2: name='summary\.json' is a file the job writes into output_dir itself", r"choose another name",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a"}\n{"prompt": "b", "name": "summary.json"}\n')
        and []),
    Bad("prompts-name-collides-with-checkpoint", ["prompts_file={tmp}/p.jsonl"], 2,
        r"name='checkpoint' is a file the job writes", r"choose another name",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a", "name": "checkpoint"}\n') and []),
    Bad("prompts-line-image-for-t2v", ["prompts_file={tmp}/p.jsonl"], 2,
        r"prompts_file=.*p\.jsonl' line 2: image does not apply here \(model\.name='tiny'\)",
        r"it is for image-to-video models",
        lambda tmp: _write(os.path.join(tmp, "x.png"), "an image: part of the line's identity, it must exist")
        and _write(os.path.join(tmp, "p.jsonl"), f'{{"prompt": "a"}}\n{{"prompt": "b", "image": "{tmp}/x.png"}}\n')
        and []),
    Bad("prompts-line-negative-for-flux", ["prompts_file={tmp}/p.jsonl"], 1,
        r"line 1: negative_prompt does not apply here \(model\.name='flux\.1-dev-tiny'", r"guidance-distilled",
        lambda tmp: _write(os.path.join(tmp, "p.jsonl"), '{"prompt": "a", "negative_prompt": "blurry"}\n') and [],
        "family:flux.1-dev-tiny"),
    Bad("dry-run-output-dir-is-a-file", ["dry_run=true", "output_dir={tmp}/afile"], 2, r"output_dir=.*afile",
        r"choose a directory you can write to", lambda tmp: _write(os.path.join(tmp, "afile"), "x") and []),
    Bad("output-dir-unknown-home", ["output_dir=~nosuchuser-magcache/out"], 2,
        r"output_dir='~nosuchuser-magcache/out': '~nosuchuser-magcache' is not a home folder", r"give an absolute path",
        None),
]

CATALOGUE += COMPONENTS + JSON_FILES + PATHS_AND_LISTS
