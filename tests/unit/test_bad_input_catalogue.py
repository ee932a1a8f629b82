"""Every bad input of tests/support/bad_inputs.py: the generate command exits with code 2 on every rank, before any
process group exists, with a message naming the key and the fix (and no traceback), and writes nothing."""
import os
import re
import shutil

import pytest
import torch.distributed as dist

from magcache_dist.launcher import main as generate
from tests.support.bad_inputs import CATALOGUE
from tests.support.families import family_overrides
from tests.support.helpers import job_overrides
from tests.support.pipelines import pipeline_overrides
from tests.support.wan22_tiny import ti2v_overrides, wan22_overrides
from tests.support.wan_tiny import wan_overrides


def test_catalogue_has_distinct_ids_and_covers_every_family():
    ids = [e.id for e in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 100
    bases = {e.base.split(":")[0].rsplit("-", 1)[0] for e in CATALOGUE}
    assert {"tiny", "wan-t2v", "wan-i2v", "family"} <= bases <= {"tiny", "wan-t2v", "wan-i2v", "family", "folder",
                                                                 "wan22-t2v", "wan22-i2v", "wan22-ti2v"}


def _base(entry, tmp: str, request) -> tuple[list[str], dict]:
    """The base job's overrides and the placeholders its entry may use."""
    out = os.path.join(tmp, "out")
    if entry.base == "tiny":
        ckpt = os.path.join(tmp, "tiny.safetensors")
        os.symlink(request.getfixturevalue("tiny_ckpt"), ckpt)
        return job_overrides(ckpt, out, "parallel.ulysses_degree=2"), {}
    if entry.base.startswith("wan22-ti2v-"):
        layout = entry.base.rsplit("-", 1)[1]
        shutil.copytree(request.getfixturevalue("ti2v_ckpt")[layout], os.path.join(tmp, "ck"))
        image = request.getfixturevalue("wan22_ckpts")["image"]
        return ti2v_overrides(os.path.join(tmp, "ck"), out), {"image": image}
    if entry.base.startswith("wan22-"):
        _, task, layout = entry.base.split("-")
        wan = request.getfixturevalue("wan22_ckpts")
        shutil.copytree(wan[task][layout], os.path.join(tmp, "ck"))
        return wan22_overrides(task, os.path.join(tmp, "ck"), out), {"image": wan["image"]}
    if entry.base.startswith("wan-"):
        _, task, layout = entry.base.split("-")
        wan = request.getfixturevalue("wan_ckpts")
        shutil.copytree(wan[task][layout], os.path.join(tmp, "ck"))
        return wan_overrides(task, os.path.join(tmp, "ck"), out), {"image": wan["image"]}
    if entry.base.startswith("family:"):
        return family_overrides(entry.base.split(":", 1)[1], out), {}
    if entry.base.startswith("folder:"):
        name = entry.base.split(":", 1)[1]
        shutil.copytree(request.getfixturevalue("pipeline_folder")(name), os.path.join(tmp, "ck"))
        return pipeline_overrides(name, os.path.join(tmp, "ck"), out), {}
    raise AssertionError(f"unknown base {entry.base!r}")


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_bad_input_exits_2_on_every_rank_before_any_collective(entry, tmp_path, monkeypatch, capsys, request):
    tmp = str(tmp_path)
    base, names = _base(entry, tmp, request)
    extra = entry.setup(tmp) if entry.setup else []
    names["tmp"] = tmp
    argv = [*base, *[re.sub(r"\{(tmp|image)\}", lambda m: names[m.group(1)], o) for o in entry.overrides], *extra]

    def no_collectives(*a, **k):
        raise AssertionError("a process group was created for bad input")

    monkeypatch.setattr(dist, "init_process_group", no_collectives)
    capsys.readouterr()  # what building the base checkpoints printed
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # as torchrun sets them (never reached: no process group)
    monkeypatch.setenv("MASTER_PORT", "29500")
    for rank in range(entry.world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(entry.world))
        code = generate.main(argv)
        err = capsys.readouterr().err
        assert code == 2, (entry.id, rank, err)
        assert err.startswith(f"[rank {rank}] error: "), err
        assert re.search(entry.key, err) and re.search(entry.fix, err), (entry.id, err)
        assert "Traceback" not in err
    assert not os.path.exists(os.path.join(tmp, "out", "video.mp4"))
