"""The checks of the files a job reads (issue 28), on small real files: weight headers and sizes, torch archives,
git-lfs pointers, tokenizer folders, config values, scheduler settings, prompt lists, resume state, ratio files,
device profiles, sigma grids and paths. The bad-input catalogue runs the same classes through the entry point."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from magcache_dist.families import components
from magcache_dist.prompts import read_prompts

POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 123456789\n"


def _safetensors(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def test_safetensors_size_must_match_its_header(tmp_path):
    p = _safetensors(tmp_path / "w.safetensors", a=torch.ones(4, 8), b=torch.zeros(3, dtype=torch.bfloat16))
    components.check_safetensors(p, None, "w")  # intact
    with open(p, "ab") as f:
        f.write(b"\0" * 16)  # padded: the header describes fewer bytes than the file holds
    with pytest.raises(ValueError, match=r"is \d+ bytes but its header describes \d+: the file is longer than"):
        components.check_safetensors(p, None, "w")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 40)
    with pytest.raises(ValueError, match=r"the file is cut short; re-download or re-export it"):
        components.check_safetensors(p, None, "w")
    with open(p, "r+b") as f:
        f.truncate(20)  # inside the header
    with pytest.raises(ValueError, match=r"is not a readable safetensors file \(its header length \d+ does not fit"):
        components.check_safetensors(p, None, "w")


def test_safetensors_offsets_must_match_dtype_and_shape(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    p = tmp_path / "w.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 12)
    with pytest.raises(ValueError, match=r"tensor 'a' \(F32 \[4\]\) has data_offsets \[0, 12\] that do not match"):
        components.check_safetensors(str(p), None, "w")


def test_index_names_every_shard(tmp_path):
    _safetensors(tmp_path / "m-1.safetensors", a=torch.ones(2))
    idx = tmp_path / "m.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
    with pytest.raises(ValueError, match=r"names the shard 'm-2\.safetensors', which is missing; copy every shard"):
        components.check_weight_file(str(idx), str(tmp_path), "DiT")
    idx.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(ValueError, match=r"names the shard '\.\./\.\./etc/passwd', which is missing"):
        components.check_weight_file(str(idx), str(tmp_path), "DiT")


def test_torch_archive_directory_and_pointer(tmp_path):
    p = tmp_path / "t5.pth"
    torch.save({"w": torch.randn(64, 64)}, p)
    components.check_torch_archive(str(p), str(tmp_path), "umT5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"ckpt_dir=.*: t5\.pth \(umT5\) is (a damaged or cut zip archive|cut short)"):
        components.check_torch_archive(str(p), str(tmp_path), "umT5")
    p.write_text(POINTER)
    assert components.lfs_pointer(str(p))
    with pytest.raises(ValueError, match=r"t5\.pth \(umT5\) is a git-lfs pointer file \(\d+ bytes\), not the file "
                                         r"itself; run 'git lfs pull'"):
        components.check_weight_file(str(p), str(tmp_path), "umT5")
    p.write_bytes(b"")
    with pytest.raises(ValueError, match=r"t5\.pth \(umT5\) is empty"):
        components.check_weight_file(str(p), str(tmp_path), "umT5")


def test_tokenizer_folders(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    with pytest.raises(ValueError, match=r"tok \(T5 tokenizer\) is an empty folder; fix"):
        components.check_tokenizer(str(tok), str(tmp_path), "T5 tokenizer", "fix")
    (tok / "vocab.json").write_text(json.dumps({"a": 0}))
    (tok / "merges.txt").write_text("#version: 0.2\na b\n")
    components.check_tokenizer(str(tok), str(tmp_path), "CLIP tokenizer", "fix")  # byte-level BPE files
    (tok / "tokenizer.json").write_text("{\"model\": {\"type\": \"BPE\"}")  # cut
    with pytest.raises(ValueError, match=r"tok/tokenizer\.json \(CLIP tokenizer\) is not readable JSON"):
        components.check_tokenizer(str(tok), str(tmp_path), "CLIP tokenizer", "fix")
    (tok / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    with pytest.raises(ValueError, match=r"is not a tokenizers file \(no 'model' object\)"):
        components.check_tokenizer(str(tok), str(tmp_path), "CLIP tokenizer", "fix")


def test_sentencepiece_only_folder_needs_the_package(tmp_path, monkeypatch):
    import importlib.util

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "spiece.model").write_bytes(b"\x0a\x05\x0a\x01a\x15\x00\x00\x00\x00")  # starts like a ModelProto
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sentencepiece" else real(n, *a))
    with pytest.raises(ValueError, match=r"holds only a sentencepiece model \(spiece\.model, no tokenizer\.json\); "
                                         r"reading it needs the 'sentencepiece' package"):
        components.check_tokenizer(str(tok), None, "T5 tokenizer", "fix")


def test_config_values_are_typed_field_by_field(tmp_path):
    ok = {"d_model": 32, "layer_norm_epsilon": 1e-6, "text_config": {"hidden_size": 24}, "head_dim": None,
          "latents_std": [0.5, 1.0], "guidance_embeds": True, "_class_name": "X", "unknown": "anything"}
    components.check_config_values(ok, "c.json", None)
    bad = dict(ok, d_model="32", layer_norm_epsilon=0, text_config={"hidden_size": 24.0}, latents_std=[1, 0],
               guidance_embeds="true")
    with pytest.raises(ValueError) as e:
        components.check_config_values(bad, "c.json", None)
    msg = str(e.value)
    for part in ("d_model='32' (must be an integer >= 1)", "layer_norm_epsilon=0 (must be a number > 0)",
                 "text_config.hidden_size=24.0 (must be an integer >= 1)", "latents_std=[1, 0] (must be a list of "
                 "numbers > 0)", "guidance_embeds='true' (must be true or false)"):
        assert part in msg, msg


def test_scheduler_configs_as_diffusers_saves_them_pass_and_unimplemented_fields_fail(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    root = str(tmp_path)
    # what diffusers writes for Wan's scheduler (every field, at its default) and HunyuanVideo's
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0).save_config(
        os.path.join(root, "scheduler"))
    assert components.check_scheduler(root, ("UniPCMultistepScheduler",))["flow_shift"] == 3.0
    FlowMatchEulerDiscreteScheduler(shift=7.0).save_config(os.path.join(root, "scheduler"))
    components.check_scheduler(root, ("FlowMatchEulerDiscreteScheduler",), dict(use_dynamic_shifting=False))
    for kwargs, field in ((dict(use_karras_sigmas=True), "use_karras_sigmas=True"),
                          (dict(shift_terminal=0.02), "shift_terminal=0.02"),
                          (dict(time_shift_type="linear"), "time_shift_type='linear'"),
                          (dict(stochastic_sampling=True), "stochastic_sampling=True"),
                          (dict(use_dynamic_shifting=True), "use_dynamic_shifting=True")):
        FlowMatchEulerDiscreteScheduler(**kwargs).save_config(os.path.join(root, "scheduler"))
        with pytest.raises(ValueError, match=rf"sets {field}; this project does not implement it"):
            components.check_scheduler(root, ("FlowMatchEulerDiscreteScheduler",), dict(use_dynamic_shifting=False))


def test_image_is_decoded_in_full(tmp_path):
    from tests.support.wan_tiny import save_image

    p = save_image(str(tmp_path / "a.png"), h=64, w=96)
    assert components.check_image(p) == (96, 64)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    from PIL import Image

    with Image.open(p) as im:
        assert im.size == (96, 64)  # the header alone says nothing is wrong
    with pytest.raises(ValueError, match=r"image='first\.png' is not a readable image"):
        components.check_image(p, shown="first.png")


def test_prompt_list_bom_array_and_reserved_names(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes("\ufeffa red circle moves right\na blue square\n".encode("utf-8"))
    videos = read_prompts(str(p), 0, "", None)
    assert [v.prompt for v in videos] == ["a red circle moves right", "a blue square"]
    assert videos[0].name.startswith("a-red-circle-moves-right-") and videos[0].given == ()  # no BOM in the slug
    p.write_text('["a", "b"]')
    with pytest.raises(ValueError, match=r"is one JSON array; a prompts file is a text file"):
        read_prompts(str(p), 0, "", None)
    p.write_text("[a red circle] moves right\n")  # text in brackets is a prompt, not JSON
    assert read_prompts(str(p), 0, "", None)[0].prompt == "[a red circle] moves right"
    q = tmp_path / "p.jsonl"
    q.write_text('{"prompt": "a", "name": "report.json"}\n')
    with pytest.raises(ValueError, match=r"line 1: name='report\.json' is a file the job writes"):
        read_prompts(str(q), 0, "", None)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")  # a line's image is part of its identity: it must exist
    q.write_text(f'{{"prompt": "a", "negative_prompt": "b", "image": "{tmp_path / "x.png"}"}}\n{{"prompt": "c"}}\n')
    assert [v.given for v in read_prompts(str(q), 0, "", None)] == [("negative_prompt", "image"), ()]


def test_home_in_paths_is_expanded(tmp_path, monkeypatch):
    from magcache_dist.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["output_dir=~/out", "checkpoint.dir=~/ck"])
    assert cfg.output_dir == str(tmp_path / "out") and cfg.checkpoint.dir == str(tmp_path / "ck")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output_dir: ~/from-yaml\nprompt: a ~ in a prompt stays\n")
    cfg = load_config(str(cfg_file))
    assert cfg.output_dir == str(tmp_path / "from-yaml") and cfg.prompt == "a ~ in a prompt stays"


def test_plan_command_caps_the_steps(capsys):
    from magcache_dist.schedule import main

    args = ["--preset", "wan2.1-t2v-1.3b", "--thresh", "0.12", "--K", "2", "--retention", "0.2"]
    assert main([*args, "--steps", "1000000"]) == 2
    assert "--steps=1000000 must be >= 1 and <= 1000 (as sampler.num_steps)" in capsys.readouterr().err
    assert main([*args, "--steps", "0"]) == 2
    assert main([*args, "--steps", "50"]) == 0


def test_sigma_grid_check_and_the_open_sora_transform_it_guards():
    from magcache_dist.families.opensora import rflow_timesteps
    from magcache_dist.sampling.grids import check_grid

    assert not all(t == t for t in rflow_timesteps(4, 256, 256, 9))  # the release's transform: NaN at 2..16 frames
    check_grid([t / 1000 for t in rflow_timesteps(4, 256, 256, 17)], 4, "x")
    with pytest.raises(ValueError, match=r"the sampler's sigma grid for video\.frames=9 is not usable \(\[nan"):
        check_grid([t / 1000 for t in rflow_timesteps(4, 256, 256, 9)], 4, "video.frames=9")
    with pytest.raises(ValueError, match=r"not increasing"):
        check_grid([0.5, 0.9], 2, "x")


def test_published_ratio_layout_is_schema_checked():
    from magcache_dist.cache.ratios import RatioTable

    t = RatioTable.from_json({"mag_ratios": [1.0] * 8, "num_steps": 4, "interleaved": True})
    assert t.branches == ["cond", "uncond"] and t.num_steps == 4
    for entry, msg in (({"mag_ratios": {"a": 1}, "num_steps": 4}, r"'mag_ratios' must be a non-empty list"),
                       ({"mag_ratios": [1.0] * 4, "num_steps": "4"}, r"'num_steps' must be an integer >= 1, got '4'"),
                       ({"mag_ratios": [1.0, None, 1.0, 1.0], "num_steps": 4}, r"mag_ratios\[1\]=None"),
                       ({"mag_ratios": [1.0] * 4, "num_steps": 4, "padding": -1}, r"'padding' must be an integer"),
                       ({"mag_ratios": [1.0] * 8, "num_steps": 4, "interleaved": "yes"}, r"'interleaved' must be")):
        with pytest.raises(ValueError, match=msg):
            RatioTable.from_json(entry, where="r.json")


def test_device_profile_numbers_without_units(tmp_path):
    from magcache_dist.planner.profiles import PROFILE_DIR, load_profile

    with open(os.path.join(PROFILE_DIR, "h100.json")) as f:
        prof = json.load(f)
    p = tmp_path / "p.json"
    p.write_text(json.dumps(prof))
    assert load_profile(str(p)).memory_capacity == 80e9
    for key, value in (("link_bandwidth", "450 GB/s"), ("peak_flops", 9.9e14), ("gemm_efficiency", {"bfloat16": "x"}),
                       ("op_overhead_s", None), ("memory_capacity", float("inf"))):
        p.write_text(json.dumps(dict(prof, **{key: value})))
        with pytest.raises(ValueError, match=rf"has {key}=.*without a unit suffix"):
            load_profile(str(p))


def test_resume_state_is_schema_checked_before_any_collective(tiny_ckpt, tmp_path):
    from magcache_dist.checkpoint import POINTER
    from magcache_dist.job import validate_job
    from magcache_dist.parallel import solo_context
    from magcache_dist.run import run_job
    from tests.support.helpers import job_config

    out = str(tmp_path / "job")
    run_job(job_config(tiny_ckpt, out, "checkpoint.every_n_steps=4", "checkpoint.keep=true"), solo_context())
    validate_job(job_config(tiny_ckpt, out, "resume=true"), 1)  # the intact checkpoint
    ck = os.path.join(out, "checkpoint")
    ptr_path, rank_path = os.path.join(ck, POINTER), os.path.join(ck, "step000004.rank0000.pt")
    ptr = json.load(open(ptr_path))
    sd = torch.load(rank_path, weights_only=True)
    for field in ("config_hash", "next_step", "config"):
        json.dump(dict(ptr, **{field: None}), open(ptr_path, "w"))
        with pytest.raises(ValueError, match=rf"latest\.json has {field}=None \(must be"):
            validate_job(job_config(tiny_ckpt, out, "resume=true"), 1)
    json.dump(ptr, open(ptr_path, "w"))
    for field in ("rng", "cache", "rank"):
        torch.save({k: v for k, v in sd.items() if k != field}, rank_path)
        with pytest.raises(ValueError, match=rf"step000004\.rank0000\.pt has {field}='<missing>'"):
            validate_job(job_config(tiny_ckpt, out, "resume=true"), 1)
    torch.save(dict(sd, rank=1), rank_path)
    with pytest.raises(ValueError, match=r"belongs to another job, step or rank than latest\.json says"):
        validate_job(job_config(tiny_ckpt, out, "resume=true"), 1)
