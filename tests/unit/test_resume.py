"""Resume: a job resumed from its last step checkpoint gives the uninterrupted run's latents bit for bit (each
solver and cache mode); a mismatching config is refused; checkpoint files are read as plain data only. Killed
processes: tests/dist/test_resume_killed.py."""
import json
import os
import pickle

import pytest
import torch

from magcache_dist.checkpoint import FORMAT, POINTER, validate_checkpointing
from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.helpers import job_config, job_overrides


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine oversubscribed threads make the tiny model 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _latents(out):
    return torch.load(os.path.join(out, "latents.pt"), weights_only=True)


@pytest.mark.parametrize("solver,mode", [("unipc", "magcache"), ("euler", "magcache"), ("unipc", "teacache"),
                                         ("unipc", "calibrate")])
def test_resume_from_the_last_checkpoint_is_bit_identical(tiny_ckpt, tmp_path, solver, mode):
    extra = [f"sampler.solver={solver}", f"cache.mode={mode}"]
    if mode == "teacache":  # identity polynomial: some calls skip, so the probe state must survive the resume
        extra += ["cache.teacache.coefficients=[1.0,0.0]", "cache.teacache.thresh=0.5"]
    ref = run_job(job_config(tiny_ckpt, str(tmp_path / "ref"), *extra), solo_context())
    first = run_job(job_config(tiny_ckpt, str(tmp_path / "job"), "checkpoint.every_n_steps=3", "checkpoint.keep=true",
                               *extra), solo_context())
    ck = tmp_path / "job" / "checkpoint"
    assert first["checkpoint"]["written_steps"] == [3, 6]
    assert sorted(os.listdir(ck)) == [POINTER, "step000003.rank0000.pt", "step000006.rank0000.pt"]
    assert json.loads((ck / POINTER).read_text())["next_step"] == 6
    # continue from step 6 (as if the first job had been killed during step 7): same latents, same decisions
    second = run_job(job_config(tiny_ckpt, str(tmp_path / "job"), "checkpoint.every_n_steps=3", "resume=true", *extra),
                     solo_context())
    assert second["checkpoint"]["resumed_from_step"] == 6
    assert torch.equal(_latents(tmp_path / "ref"), _latents(tmp_path / "job"))
    assert second["ranks"][0]["decisions"] == ref["ranks"][0]["decisions"]
    assert second["skipped_steps"] == ref["skipped_steps"]
    if mode == "teacache":
        assert ref["computed_calls"] < ref["total_calls"]
    if mode == "calibrate":
        assert (tmp_path / "ref" / "ratios.json").read_text().split('"meta"')[0] == \
            (tmp_path / "job" / "ratios.json").read_text().split('"meta"')[0]


def test_mismatching_config_and_missing_checkpoint_are_refused(tiny_ckpt, tmp_path):
    out = str(tmp_path / "job")
    with pytest.raises(ValueError, match=r"resume=true but checkpoint\.dir=.* holds no checkpoint .*resume=false"):
        validate_job(job_config(tiny_ckpt, out, "resume=true"), 1)
    run_job(job_config(tiny_ckpt, out, "checkpoint.every_n_steps=4", "checkpoint.keep=true"), solo_context())
    # keys that cannot change the latents may change on resume
    validate_job(job_config(tiny_ckpt, out, "resume=true", "progress=true", "parallel.timeout_s=30",
                            "cache.consensus_guard=false", "video.fps=12"), 1)
    for extra, msg in [("sampler.num_steps=10", r"sampler\.num_steps=8 in the checkpoint but 10 now"),
                       ("cache.magcache.thresh=0.24", r"cache\.magcache\.thresh=0\.12 in the checkpoint but 0\.24 now"),
                       ("seed=5", r"seed=0 in the checkpoint but 5 now"),
                       ("cache.branch_sync=official",
                        r"cache\.branch_sync='joint' in the checkpoint but 'official' now"),
                       ("prompt=another", r"prompt='a red circle moves right' in the checkpoint but 'another' now")]:
        with pytest.raises(ValueError, match=r"resume=true: the checkpoint .* different job: " + msg):
            validate_job(job_config(tiny_ckpt, out, "resume=true", extra), 1)
    with pytest.raises(ValueError, match=r"written by 1 ranks, this job has WORLD_SIZE=2"):
        validate_checkpointing(validate_job(job_config(tiny_ckpt, out, "resume=true"), 1).cfg, 2)
    with pytest.raises(ValueError, match=r"checkpoint\.every_n_steps=-1 must be an integer >= 0"):
        validate_job(job_config(tiny_ckpt, out, "checkpoint.every_n_steps=-1"), 1)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_finished_videos_checkpoints_are_deleted_unless_kept(tiny_ckpt, tmp_path):
    run_job(job_config(tiny_ckpt, str(tmp_path / "a"), "checkpoint.every_n_steps=3"), solo_context())
    assert sorted(os.listdir(tmp_path / "a")) == ["latents.pt", "report.json"]  # checkpoint/ gone with its files
    run_job(job_config(tiny_ckpt, str(tmp_path / "b"), "checkpoint.every_n_steps=3", "checkpoint.keep=true"),
            solo_context())
    assert sorted(os.listdir(tmp_path / "b" / "checkpoint")) == [POINTER, "step000003.rank0000.pt",
                                                                  "step000006.rank0000.pt"]
    with pytest.raises(ValueError, match=r"checkpoint\.signal='KILL' is not a signal a job can catch"):
        validate_job(job_config(tiny_ckpt, str(tmp_path / "c"), "checkpoint.signal=KILL"), 1)
    validate_job(job_config(tiny_ckpt, str(tmp_path / "c"), "checkpoint.signal=USR1"), 1)


def test_checkpoint_files_are_never_unpickled(tiny_ckpt, tmp_path):
    out = tmp_path / "job"
    run_job(job_config(tiny_ckpt, str(out), "checkpoint.every_n_steps=4", "checkpoint.keep=true"), solo_context())
    state_file = out / "checkpoint" / "step000004.rank0000.pt"
    sd = torch.load(state_file, weights_only=True)
    assert sd["format"] == FORMAT and sd["next_step"] == 4 and sd["x"].shape == (1, 3, 5, 20, 28)
    assert set(sd["cache"]["branches"]) == {"cond", "uncond"} and "torch" in sd["rng"]
    torch.save({"format": FORMAT, "payload": _Evil()}, state_file)  # a pickle that would run code
    with pytest.raises(ValueError, match=r"could not be read as plain data \(weights_only=True\)"):
        run_job(job_config(tiny_ckpt, str(out), "checkpoint.every_n_steps=4", "resume=true"), solo_context())
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(_Evil(), f)
    cfg = load_config(None, job_overrides(str(evil), str(tmp_path / "o")))
    with pytest.raises(ValueError, match=r"model\.ckpt=.*could not be read with weights_only=True"):
        validate_job(cfg, 1)
