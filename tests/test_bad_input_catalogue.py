"""Every bad input of tests/bad_inputs.py: launch/generate.py exits with code 2 on every rank, before any process
group exists, with a message naming the key and the fix (and no traceback)."""
import os
import re

import pytest
import torch.distributed as dist

from tests.bad_inputs import CATALOGUE
from tests.helpers import job_overrides

from magcache_dist.launcher import main as generate


def test_catalogue_has_at_least_20_distinct_inputs():
    ids = [e[0] for e in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 20


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e[0] for e in CATALOGUE])
def test_bad_input_exits_2_on_every_rank_before_any_collective(entry, tiny_ckpt, tmp_path, monkeypatch, capsys):
    name, overrides, world, key, fix, setup = entry
    tmp = str(tmp_path)
    ckpt = os.path.join(tmp, "tiny.safetensors")
    os.symlink(tiny_ckpt, ckpt)
    extra = setup(tmp) if setup else []
    argv = [*job_overrides(ckpt, os.path.join(tmp, "out"), "parallel.ulysses_degree=2"),
            *[o.replace("{tmp}", tmp) for o in overrides], *extra]

    def no_collectives(*a, **k):
        raise AssertionError("a process group was created for bad input")

    monkeypatch.setattr(dist, "init_process_group", no_collectives)
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        code = generate.main(argv)
        err = capsys.readouterr().err
        assert code == 2, (name, rank, err)
        assert err.startswith(f"[rank {rank}] error: "), err
        assert re.search(key, err) and re.search(fix, err), (name, err)
        assert "Traceback" not in err
    assert not os.path.exists(os.path.join(tmp, "out", "video.mp4"))
