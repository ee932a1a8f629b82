"""Generate a video, or the videos of a prompt list. Single process or under torchrun:

    magcache-generate --config configs/default.yaml prompt="a blue square moves up"
    torchrun --nproc_per_node 4 launch/generate.py --config configs/default.yaml parallel.ulysses_degree=4
    torchrun --nproc_per_node 4 launch/generate.py --config configs/default.yaml prompts_file=prompts.txt \
        parallel.dp_degree=2 parallel.ulysses_degree=2
    srun --ntasks-per-node 8 --gpus-per-task 1 python launch/generate.py ...   # one task per GPU, no torchrun

The ranks come from torchrun's variables or from SLURM's (magcache_dist/launcher/ranks.py); malformed or
inconsistent ones exit 2 before anything else.

Bad input exits with code 2 and a message naming the key, before any process group is created; so does a
second single-video job on an ``output_dir`` that a running job holds (rank 0 locks it; the jobs of a prompt
list, e.g. ``prompts_shard=I/N`` array jobs, share their output_dir and claim each video). A rank that fails exits
with 4 naming itself and the cause; the others end within seconds with 5, naming that rank
(magcache_dist/launcher/health.py).
SIGTERM (when no rank failed) or ``checkpoint.signal`` stops every rank after its current step; rank 0 writes a
step checkpoint and the job exits with 75: rerun the same command to continue (magcache_dist/preempt.py).
``dry_run=true`` prints the plan (magcache_dist/planner) and loads nothing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import traceback

EXIT_BAD_INPUT, EXIT_DISAGREEMENT = 2, 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="magcache-dist video generation")
    ap.add_argument("--config", default=None, help="OmegaConf YAML (configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sampler.num_steps=30")
    args = ap.parse_args(argv)

    from magcache_dist.launcher.ranks import export, read_ranks

    try:  # torchrun's or srun's variables, checked before anything else
        ranks = read_ranks()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    export(ranks)  # srun: SLURM's ranks as torchrun's variables (env:// rendezvous, health monitor)
    rank, world, local_rank = ranks.rank, ranks.world, ranks.local_rank

    from magcache_dist.config import load_config
    from magcache_dist.errors import InputError
    from magcache_dist.job import validate_job
    from magcache_dist.planner.preflight import memory_preflight

    lock = None
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.dry_run:  # the planner: no weights, no process group
            from magcache_dist.planner import dry_run

            dry_run(cfg, write=rank == 0)
            return 0
        job = validate_job(cfg, world)
        memory_preflight(job, world)  # the planner's estimate against the free memory, before any weight loads
        # one video: a second job on the same output_dir stops here, naming the first (released at exit); a list's
        # jobs share output_dir, each video claimed by one worker (magcache_dist/claims.py)
        if rank == 0 and job.videos is None:
            from magcache_dist.io.probe import OutputLock

            lock = OutputLock(os.path.abspath(cfg.output_dir))
    except InputError as e:
        for line in str(e).splitlines() or [""]:  # one line per problem, each naming its key
            print(f"[rank {rank}] error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a bug in the checks themselves: not the user's mistake
        from magcache_dist.launcher.health import EXIT_RANK_FAILED

        print(f"[rank {rank}] error: internal error while checking the job (a bug in magcache-dist):",
              file=sys.stderr)
        traceback.print_exception(e)
        return EXIT_RANK_FAILED
    from magcache_dist.launcher.logs import RankLog

    log = RankLog(job.cfg, rank, world)  # output_dir/logs/rank<r>.log: a copy of what this rank prints
    try:
        return run(job, rank, world, local_rank)
    finally:
        log.close()
        if lock is not None:
            lock.release()


def job_device(cfg, local_rank: int):
    """This rank's device (its GPU, else the CPU with ``cpu_threads`` intra-op threads, default 1)."""
    import torch

    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not use_cuda or cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads or 1)
    return device


def init_backend(cfg, device) -> None:
    """The default process group (NCCL on GPUs, gloo on CPU; through deepspeed when it is the SP backend)."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=cfg.parallel.timeout_s)
    if cfg.parallel.backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)


def run(job, rank: int, world: int, local_rank: int) -> int:
    """The job proper, once the input is known good (validated, output_dir locked)."""
    import torch.distributed as dist

    from magcache_dist.errors import InputError
    from magcache_dist.launcher.health import build_health_monitor, on_launcher_stop, report_failure
    from magcache_dist.parallel.consensus import SkipDisagreement
    from magcache_dist.parallel.dims import build_dist_context, solo_context
    from magcache_dist.preempt import EXIT_PREEMPTED, Preempted, StopRequest, install, signal_number
    from magcache_dist.run import run_job

    cfg = job.cfg
    device = job_device(cfg, local_rank)
    monitor = None
    stop = StopRequest()  # SIGTERM / checkpoint.signal: stop after the current step with a checkpoint (exit 75)
    install(stop, signal_number(cfg.checkpoint.signal))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.request(signum))
    try:
        if world > 1:
            init_backend(cfg, device)
            monitor = build_health_monitor(rank, world)  # a failing rank ends every rank, naming itself
            if monitor is not None:  # torchrun SIGTERMs the survivors: they still say which rank failed and why
                signal.signal(signal.SIGTERM, on_launcher_stop(monitor, rank, stop))
            par = build_dist_context(job.dims, cfg.parallel.backend)
        else:
            par = solo_context()
            par.backend = cfg.parallel.backend
        par.stop = stop
        report = run_job(job, par, device)
        if report is not None and job.videos is not None:  # the summary as this group left it (the last one to
            # finish, of every group and shard, lists every video done)
            print(f"wrote {cfg.output_dir}/summary.json: {report['videos_done']}/{report['videos_total']} videos "
                  f"done ({report['videos_reused']} reused), {report['computed_calls']}/{report['total_calls']} "
                  f"calls computed, wall {report['wall_s']:.1f}s")
        elif report is not None:
            print(f"wrote {cfg.output_dir}/report.json: {report['computed_calls']}/{report['total_calls']} calls "
                  f"computed, skipped {report['skipped_steps']}, sampling {report['phases_s']['sample']:.2f}s")
        if monitor is not None:
            monitor.mark_done()
        code = 0
    except Preempted as e:
        print(f"[rank {rank}] {e} (exit {EXIT_PREEMPTED})", file=sys.stderr, flush=True)
        if monitor is not None:  # not a failure: the peers stop at the same step
            monitor.mark_done()
        code = EXIT_PREEMPTED
    except InputError as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr)
        if monitor is not None:  # e.g. this rank's checkpoint file is unreadable: the others must not wait
            monitor.post_failure(f"ValueError: {e}")
            monitor.mark_reported()
        code = EXIT_BAD_INPUT
    except SkipDisagreement as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr)
        if monitor is not None:
            monitor.mark_reported()
        code = EXIT_DISAGREEMENT
    except Exception as e:  # noqa: BLE001 - any other failure: name the rank and the cause, end the job
        code = report_failure(e, rank, monitor, log_dir=os.path.join(cfg.output_dir, "logs"))
    finally:
        # the watchdog and a SIGTERM diagnosis use the store from their own threads: one still inside a store
        # call when the interpreter exits aborts the process (SIGABRT instead of this rank's exit code)
        stuck = monitor is not None and not monitor.stop()
        if dist.is_initialized():
            dist.destroy_process_group()
    if stuck:
        print(f"[rank {rank}] the health monitor's store call did not return; ending the process here",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
