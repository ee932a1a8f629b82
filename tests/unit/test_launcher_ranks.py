"""The launcher's rank variables (issue 27.1 / 28): torchrun's or an srun step's, expanded SLURM node lists, and
malformed or inconsistent values refused with exit 2 before anything else."""
import pytest

from magcache_dist.launcher.main import main
from magcache_dist.launcher.ranks import Ranks, expand_nodelist, read_ranks

STEP = dict(SLURM_STEP_ID="0", SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[07-08]")


@pytest.mark.parametrize("text,hosts", [
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a1,b[2-3]", ["a1", "b2", "b3"]),
    ("r[1-2]-n[08-09]", ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]),
    ("gpu-[9-11].cluster", ["gpu-9.cluster", "gpu-10.cluster", "gpu-11.cluster"]),
    ("solo", ["solo"]), ("x[5]", ["x5"]), ("n[098-101]", ["n098", "n099", "n100", "n101"]),
])
def test_node_lists_expand(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("text,msg", [("node[01-", "unbalanced '\\["), ("a,,b", "empty name"),
                                      ("n[3-1]", "runs backwards"), ("n[a-b]", "not a list of numbers"),
                                      ("a]b", "unbalanced '\\]'"), ("n[[1]]", "nested"), ("", "empty")])
def test_malformed_node_lists_are_refused(text, msg):
    with pytest.raises(ValueError, match=msg):
        expand_nodelist(text)


def test_srun_step_gives_ranks_and_rendezvous():
    r = read_ranks(dict(STEP, SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="1"))
    assert r == Ranks(5, 8, 1, "gpu07", 20000 + 4242, "slurm")
    r = read_ranks(dict(STEP, SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="16", SLURM_LOCALID="0",
                        MASTER_ADDR="10.0.0.1", MASTER_PORT="29511"))
    assert r == Ranks(1, 2, 0, "10.0.0.1", 29511, "slurm")  # the step's own task count; explicit address kept
    # an allocation's shell (no step) is a single process, whatever SLURM_NTASKS says
    assert read_ranks(dict(SLURM_JOB_ID="1", SLURM_NTASKS="8", SLURM_PROCID="0")).source == "single"
    assert read_ranks({}) == Ranks(0, 1, 0, None, None, "single")
    # torchrun inside an allocation: its variables describe the ranks, SLURM's its own tasks
    r = read_ranks(dict(STEP, SLURM_PROCID="1", SLURM_NTASKS="2", RANK="9", WORLD_SIZE="16", LOCAL_RANK="1",
                        MASTER_ADDR="h", MASTER_PORT="1234", TORCHELASTIC_RUN_ID="x"))
    assert (r.rank, r.world, r.source) == (9, 16, "torchrun")
    # the same values exported by hand in an srun step are fine
    assert read_ranks(dict(STEP, SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1", RANK="1", WORLD_SIZE="2",
                           LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="1")).rank == 1


@pytest.mark.parametrize("env,msg", [
    (dict(RANK="one", WORLD_SIZE="2"), r"RANK='one' must be an integer >= 0"),
    (dict(RANK="0", WORLD_SIZE="two"), r"WORLD_SIZE='two' must be an integer >= 1"),
    (dict(RANK="0", WORLD_SIZE="0"), r"WORLD_SIZE='0' must be an integer >= 1"),
    (dict(RANK="-1", WORLD_SIZE="2"), r"RANK='-1' must be an integer >= 0"),
    (dict(RANK="1", WORLD_SIZE="1"), r"RANK=1 must be < WORLD_SIZE=1"),
    (dict(RANK="2", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="1"), r"RANK=2 must be < WORLD_SIZE=2"),
    (dict(RANK="0"), r"RANK is set but WORLD_SIZE is not"),
    (dict(RANK="0", WORLD_SIZE="2"), r"WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT"),
    (dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="99999"), r"MASTER_PORT=99999 must be a port"),
    (dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="x"), r"LOCAL_RANK='x' must be an integer"),
    (dict(STEP, SLURM_PROCID="2", SLURM_NTASKS="2"), r"SLURM_PROCID=2 must be < SLURM_NTASKS=2"),
    (dict(STEP, SLURM_PROCID="a", SLURM_NTASKS="2"), r"SLURM_PROCID='a' must be an integer"),
    (dict(STEP, SLURM_PROCID="0"), r"SLURM_NTASKS is not"),
    (dict(STEP, SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_STEP_NODELIST="gpu[1-"),
     r"SLURM_STEP_NODELIST='gpu\[1-'.*unbalanced"),
    (dict(STEP, SLURM_PROCID="1", SLURM_NTASKS="2", RANK="0", WORLD_SIZE="2", MASTER_ADDR="h", MASTER_PORT="1"),
     r"RANK=0 disagrees with SLURM_PROCID=1"),
    (dict(STEP, SLURM_PROCID="1", SLURM_NTASKS="2", RANK="1", WORLD_SIZE="4", MASTER_ADDR="h", MASTER_PORT="1"),
     r"WORLD_SIZE=4 disagrees with SLURM_NTASKS=2"),
])
def test_bad_rank_variables_are_refused(env, msg):
    with pytest.raises(ValueError, match=msg):
        read_ranks(env)


def test_the_launcher_exits_2_before_anything_else(monkeypatch, capsys, tmp_path):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "never"
    assert main(["model.name=tiny-video", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "error: RANK=1 must be < WORLD_SIZE=1" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, no lock taken
