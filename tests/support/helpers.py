"""Shared test utilities: job overrides for the tiny checkpoints (built by magcache_dist.random_weights), sampling on
simulated ranks, the schedule command in-process."""
from __future__ import annotations

from magcache_dist.config import load_config
from magcache_dist.random_weights import odd_inputs, tiny_model

# 5 frames x 20 x 28 pixels with 1x4x4 patches -> 5*5*7 = 175 tokens: divisible by neither 2 nor 4
ODD_VIDEO = ["video.frames=5", "video.height=20", "video.width=28"]


def job_overrides(ckpt: str, out: str, *extra: str) -> list[str]:
    return ["model.name=tiny", f"model.ckpt={ckpt}", f"output_dir={out}", "progress=false", "save_video=false",
            "sampler.num_steps=8", "cache.magcache.preset=wan2.1-t2v-1.3b", "cache.magcache.thresh=0.12",
            "cache.magcache.K=2",
            "cache.magcache.retention=0.2", *ODD_VIDEO, *extra]


def job_config(ckpt: str, out: str, *extra: str):
    return load_config(None, job_overrides(ckpt, out, *extra))


def run_sampling(dims, cfg, policy_for, guard: bool = True) -> list:
    """Sample the tiny model on ``odd_inputs`` with one simulated rank per thread (``dims``; None = single
    process); ``policy_for(par)`` builds each rank's cache policy. Returns [(latents, decisions)] in rank order."""
    from magcache_dist.parallel import apply_sequence_parallel, build_thread_contexts, solo_context
    from magcache_dist.parallel.threads import run_threads
    from magcache_dist.sampling import sample

    noise, texts = odd_inputs()

    def one(par):
        model = apply_sequence_parallel(tiny_model(0), par)
        res = sample(model, noise, texts, cfg, policy_for(par), par, guard=guard)
        return res.latents, res.decisions

    if dims is None:
        return [one(solo_context())]
    return run_threads(one, build_thread_contexts(dims, timeout=60))


def plan_command(*args: str) -> tuple[int, str, str]:
    """``python -m magcache_dist.schedule ARGS`` run in this process: (exit code, stdout, stderr). The command itself
    runs in a process of its own once, in tests/dist/test_cli.py."""
    import contextlib
    import io

    from magcache_dist.schedule import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def plan_json(*args: str) -> dict:
    """The plan command's JSON answer for ARGS (it must succeed)."""
    import json

    code, out, err = plan_command(*args)
    assert code == 0, err
    return json.loads(out)
