"""Outputs that can be trusted: identical runs write byte-identical latents.pt, and a model that produces NaN or
inf stops at the step where it appears (exit 4 naming step and branch) instead of writing a black video."""
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from magcache_dist.config import load_config
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from magcache_dist.sampling.loop import NonFiniteError
from tests.conftest import ROOT
from tests.helpers import job_overrides


def test_identical_runs_write_byte_identical_latents(tiny_ckpt, tmp_path):
    for name in ("a", "b"):
        run_job(load_config(None, job_overrides(tiny_ckpt, str(tmp_path / name))), solo_context())
    a, b = ((tmp_path / n / "latents.pt").read_bytes() for n in ("a", "b"))
    assert len(a) > 1000 and a == b


@pytest.fixture(scope="module")
def nan_ckpt(tiny_ckpt, tmp_path_factory):
    sd = load_file(tiny_ckpt)
    sd["head.head.weight"][0, 0] = float("nan")  # one weight of the output head
    path = str(tmp_path_factory.mktemp("nan") / "nan.safetensors")
    save_file(sd, path)
    return path


def test_nan_weights_stop_at_the_first_step_naming_the_branch(nan_ckpt, tmp_path):
    out = tmp_path / "job"
    with pytest.raises(NonFiniteError, match=r"the 'cond' prediction at step 0 holds \d+ non-finite values"):
        run_job(load_config(None, job_overrides(nan_ckpt, str(out), "save_video=true")), solo_context())
    assert not out.exists() or os.listdir(out) == []  # no video, no latents, no report


def test_generate_exits_4_on_non_finite_output(nan_ckpt, tmp_path):
    out = tmp_path / "job"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "launch/generate.py"),
                        *job_overrides(nan_ckpt, str(out), "save_video=true")],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert p.returncode == 4, p.stderr[-2000:]
    assert "NonFiniteError: the 'cond' prediction at step 0" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "video.mp4").exists() and not (out / "report.json").exists()


_HOLD = """
import sys, time
from magcache_dist.io.probe import OutputLock
lock = OutputLock({d!r})
print("held", flush=True)
time.sleep(60)
"""


def test_output_lock_names_the_holder_and_dies_with_it(tmp_path):
    from magcache_dist.io.probe import LOCK_NAME, OutputLock

    d = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, d=d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"output_dir=.* is in use by another job \(pid {holder.pid} on host"):
            OutputLock(d)
    finally:
        holder.kill()  # SIGKILL: no release ran, the kernel drops the lock
        holder.wait()
    lock = OutputLock(d)  # free again, although the dead holder's file is still there
    with pytest.raises(ValueError, match="in use by another job"):
        OutputLock(d)  # and exclusive within one process too
    lock.release()
    assert not os.path.exists(os.path.join(d, LOCK_NAME))  # released: nothing left in the output folder
    OutputLock(d).release()
