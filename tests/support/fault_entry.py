"""launch/generate.py with a fault injected into one rank, for the failure and resume tests.

    FAULT=<kind>@<n> FAULT_RANK=<r> python tests/support/fault_entry.py <generate.py arguments>

kinds: ``kill_attn`` / ``raise_attn``: SIGKILL / RuntimeError at the n-th self-attention call of that rank
(Ulysses, ring or local op); ``kill_after_step``: SIGKILL right after step n finished (and its checkpoint, if any,
was written); ``kill_after_steps``: the same after the n-th step of the job (a prompt list counts over its
videos); ``kill_in_save``: SIGKILL halfway through writing the n-th checkpoint file; ``record_videos`` (no fault): every
video the process writes is appended to the file $MADE_LOG (its folder and the pid); ``slow_steps``: n ms of sleep
after every step, each step logged to $STEP_LOG.<rank> (a test sends its signal mid-run); ``raise_read``: OSError at the
n-th tensor read from a safetensors weight file (a disk error mid-load). FAULT_RANK=all: every rank.
The library has no test hooks: the fault is patched in here, from outside.
"""
import os
import signal
import sys


def _die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(kind: str, n: int) -> None:
    calls = [0]

    def count():
        calls[0] += 1
        return calls[0] == n

    if kind in ("kill_attn", "raise_attn"):
        from magcache_dist.parallel import attention
        from models import attention as local

        def wrap(cls):
            orig = cls.forward

            def forward(self, q, k, v, k_lens=None, *a):
                if count():
                    if kind == "kill_attn":
                        _die()
                    raise RuntimeError("injected fault inside attention")
                return orig(self, q, k, v, k_lens, *a)
            cls.forward = forward

        for cls in (attention.UlyssesAttention, attention.RingAttention, local.LocalAttention):
            wrap(cls)
    elif kind in ("kill_after_step", "kill_after_steps"):
        from magcache_dist import checkpoint

        orig = checkpoint.Checkpointer.on_step

        def on_step(self, step, x, state, scheduler):
            orig(self, step, x, state, scheduler)
            if (step == n) if kind == "kill_after_step" else count():
                _die()
        checkpoint.Checkpointer.on_step = on_step
    elif kind == "kill_in_save":
        import torch

        real_save = torch.save

        def save(obj, path, *a, **kw):  # checkpoint files are the first torch.save calls of a job
            real_save(obj, path, *a, **kw)
            if count():
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)  # the temp file is half written when the process dies
                _die()
        torch.save = save
    elif kind == "slow_steps":  # not a fault: n ms of sleep after each step, each step logged to $STEP_LOG.<rank>
        import time

        from magcache_dist import checkpoint

        orig_step = checkpoint.Checkpointer.on_step

        def slow_step(self, step, x, state, scheduler):
            orig_step(self, step, x, state, scheduler)
            with open(f"{os.environ['STEP_LOG']}.{self.par.rank}", "a") as f:
                f.write(f"{os.path.basename(self.cfg.output_dir)} {step}\n")
            time.sleep(n / 1000)
        checkpoint.Checkpointer.on_step = slow_step
    elif kind == "raise_read":
        from models import loading

        orig_read = loading._SafetensorsFile.read

        def read(self, key, rows=None):
            if count():
                raise OSError(5, "injected read error", self.path)
            return orig_read(self, key, rows)
        loading._SafetensorsFile.read = read
    elif kind == "record_videos":  # not a fault: every video this process writes is appended to $MADE_LOG
        from magcache_dist import run

        orig_finalize = run.finalize

        def finalize(job, *a, **kw):
            out = orig_finalize(job, *a, **kw)
            with open(os.environ["MADE_LOG"], "a") as f:
                f.write(f"{os.path.basename(job.cfg.output_dir)} {os.getpid()}\n")
            return out
        run.finalize = finalize
    else:
        raise SystemExit(f"unknown FAULT kind {kind!r}")


if __name__ == "__main__":
    fault = os.environ.get("FAULT")
    on = os.environ.get("FAULT_RANK", "0")
    if fault and (on == "all" or int(os.environ.get("RANK", "0")) == int(on)):
        kind, n = fault.split("@")
        install(kind, int(n))
    from magcache_dist.launcher.main import main

    sys.exit(main(sys.argv[1:]))
