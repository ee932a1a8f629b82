"""Weights by content (issue 27.4): the config hash covers a content fingerprint of the files a job reads
(model.ckpt, ckpt_dir, image, ratio files), not their paths. The same weights staged to another path are
recognised by reuse and resume; other weights written over the same path are refused."""
import os
import shutil

import pytest

from magcache_dist.checkpoint import config_hash, fingerprint
from magcache_dist.errors import InputError
from magcache_dist.io.fingerprint import content_fingerprint, file_fingerprint
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.random_weights import save_tiny_checkpoint
from magcache_dist.run import run_job
from tests.support.helpers import job_config


def test_fingerprint_follows_content_not_path(tmp_path):
    a = save_tiny_checkpoint(str(tmp_path / "a" / "w.safetensors"), seed=0)
    b = str(tmp_path / "scratch" / "copy.safetensors")
    os.makedirs(os.path.dirname(b))
    shutil.copy(a, b)
    assert file_fingerprint(a) == file_fingerprint(b)
    cfg_a, cfg_b = job_config(a, str(tmp_path / "o")), job_config(b, str(tmp_path / "o"))
    assert cfg_a.model.ckpt != cfg_b.model.ckpt
    assert config_hash(fingerprint(cfg_a)) == config_hash(fingerprint(cfg_b))
    assert fingerprint(cfg_a)["model.ckpt"] == file_fingerprint(a)
    save_tiny_checkpoint(b, seed=1)  # other weights at the same path
    assert config_hash(fingerprint(job_config(b, str(tmp_path / "o")))) != config_hash(fingerprint(cfg_a))
    # a folder: every file under it by name and content
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    shutil.copytree(tmp_path / "a", d1)
    shutil.copytree(tmp_path / "a", d2)
    assert content_fingerprint(str(d1)) == content_fingerprint(str(d2))
    (d2 / "extra.json").write_text("{}")
    assert content_fingerprint(str(d1)) != content_fingerprint(str(d2))
    assert content_fingerprint(str(tmp_path / "nowhere")).startswith("missing:")


def test_a_large_file_is_read_at_its_ends_only(tmp_path):
    """Above 4 MiB: size + first and last MiB. A change in the tail or the size is seen."""
    p = tmp_path / "big.bin"
    data = bytearray(os.urandom(6 << 20))
    p.write_bytes(bytes(data))
    before = file_fingerprint(str(p))
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(1, 1))  # even with another mtime only the content counts
    assert file_fingerprint(str(p)) != before
    p.write_bytes(bytes(data[:-1]))
    assert file_fingerprint(str(p)) not in (before,)


def test_staged_weights_are_reused_and_resumed_other_weights_are_not(tiny_ckpt, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves right\na blue square moves up\n")
    out = str(tmp_path / "out")
    made = run_job(job_config(tiny_ckpt, out, f"prompts_file={prompts}"), solo_context())
    assert made["videos_reused"] == 0
    staged = str(tmp_path / "node-local" / "tiny.safetensors")
    os.makedirs(os.path.dirname(staged))
    shutil.copy(tiny_ckpt, staged)
    again = run_job(job_config(staged, out, f"prompts_file={prompts}"), solo_context())
    assert again["videos_reused"] == 2  # the same weights at another path: every video reused
    save_tiny_checkpoint(staged, seed=5)  # other weights at that path: nothing reused
    other = run_job(job_config(staged, out, f"prompts_file={prompts}"), solo_context())
    assert other["videos_reused"] == 0
    # resume: a checkpoint written with the weights at one path continues from a copy, not from other weights
    single = str(tmp_path / "single")
    run_job(job_config(tiny_ckpt, single, "checkpoint.every_n_steps=3", "checkpoint.keep=true"), solo_context())
    copy = str(tmp_path / "copy.safetensors")
    shutil.copy(tiny_ckpt, copy)
    validate_job(job_config(copy, single, "checkpoint.every_n_steps=3", "resume=true"), 1)
    with pytest.raises(InputError, match=r"model\.ckpt='sha256:.*' in the checkpoint but 'sha256:.*' now"):
        validate_job(job_config(staged, single, "checkpoint.every_n_steps=3", "resume=true"), 1)


def test_how_the_weights_are_read_is_not_part_of_the_hash(tmp_path):
    """parallel.shared_load reads the same bytes into the same weights: a video made either way is the same one
    (a prompt list's done videos stay done, a checkpoint resumes)."""
    a = save_tiny_checkpoint(str(tmp_path / "w.safetensors"), seed=0)
    hashes = {config_hash(fingerprint(job_config(a, str(tmp_path / "o"), f"parallel.shared_load={v}")))
              for v in ("auto", "true", "false")}
    assert len(hashes) == 1 and "parallel.shared_load" not in fingerprint(job_config(a, str(tmp_path / "o")))
