"""Each rank's own log file: what the rank prints (stdout and stderr) also goes to
``output_dir/logs/[shard<i>-of<n>.]rank<r>.log``, appended, with a header line per run; the terminal output is
unchanged. The shards of a list (several jobs, one output_dir) keep separate files."""
from __future__ import annotations

import os
import socket
import sys
import time


class _Tee:
    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        n = self.stream.write(text)
        try:
            self.file.write(text)
            if "\n" in text:
                self.file.flush()
        except (OSError, ValueError):  # the log is a copy: a full disk must not end the job
            pass
        return n

    def flush(self):
        self.stream.flush()
        try:
            self.file.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)


def log_path(cfg, rank: int) -> str:
    from magcache_dist.prompts import parse_shard

    i, n = parse_shard(cfg.prompts_shard) if cfg.prompts_file else (0, 1)
    tag = f"shard{i}-of{n}." if n > 1 else ""
    return os.path.join(os.path.abspath(cfg.output_dir), "logs", f"{tag}rank{rank}.log")


class RankLog:
    """Copies this process's stdout and stderr into its rank's log file until ``close``."""

    def __init__(self, cfg, rank: int, world: int):
        self.path = log_path(cfg, rank)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a", buffering=1)
        self.file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} rank {rank} of {world} on {socket.gethostname()} "
                        f"pid {os.getpid()} (SLURM job {os.environ.get('SLURM_JOB_ID', '-')}) ===\n")
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.file), _Tee(sys.stderr, self.file)

    def close(self) -> None:
        sys.stdout, sys.stderr = self.saved
        self.file.close()
