"""Outputs that can be trusted: identical runs write byte-identical latents.pt, and a model that produces NaN or
inf stops at the step where it appears (exit 4 naming step and branch) instead of writing a black video."""
import os

import pytest

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from magcache_dist.sampling.loop import NonFiniteError
from tests.support.helpers import job_overrides


def test_identical_runs_write_byte_identical_latents(tiny_ckpt, tmp_path):
    for name in ("a", "b"):
        run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / name))), solo_context())
    a, b = ((tmp_path / n / "latents.pt").read_bytes() for n in ("a", "b"))
    assert len(a) > 1000 and a == b


def test_nan_weights_stop_at_the_first_step_naming_the_branch(nan_ckpt, tmp_path):
    out = tmp_path / "job"
    with pytest.raises(NonFiniteError, match=r"the 'cond' prediction at step 0 holds \d+ non-finite values"):
        run_job(load_config(None, job_overrides(nan_ckpt, str(out), "save_video=true")), solo_context())
    assert not out.exists() or os.listdir(out) == []  # no video, no latents, no report


