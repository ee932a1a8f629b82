"""Output locations checked before any work: a folder is created if missing and proven writable by creating and
removing a file in it (``os.access`` says yes to root on a read-only mount and knows nothing of name limits), and a
job holds an exclusive lock on its output folder for as long as it runs."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time

from magcache_dist.errors import InputError

LOCK_NAME = ".magcache-dist.lock"


def ensure_writable_dir(path: str, key: str) -> str:
    """Create ``path`` if needed and prove a file can be written in it; ValueError naming ``key`` otherwise."""
    where = f"{key}={path!r}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{where} is not a directory (it is a file); choose a directory you can write to")
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        reason = "the name is too long" if e.errno == errno.ENAMETOOLONG else (e.strerror or str(e)).lower()
        raise InputError(f"{where} cannot be written ({reason}); choose a directory you can write to") from None
    return path


class OutputLock:
    """An exclusive ``flock`` on ``<dir>/.magcache-dist.lock``, held until ``release`` or the process ends (the
    kernel drops it even after SIGKILL, so a crashed job never leaves a stale lock). The file says who holds it.
    ``release`` removes the file while still holding the lock; an acquirer that locked a file removed meanwhile
    (its inode is no longer the path's) tries again, so two jobs can never both hold the folder."""

    def __init__(self, directory: str, key: str = "output_dir"):
        ensure_writable_dir(directory, key)
        self.path = os.path.join(directory, LOCK_NAME)
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.fd)
                os.close(self.fd)
                raise InputError(f"{key}={directory!r} is in use by another job ({holder}); wait for it to finish "
                                 f"or choose another {key}") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(self.fd)  # locked a file its holder removed on release: take the current one
        os.ftruncate(self.fd, 0)
        os.write(self.fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                          started=time.strftime("%Y-%m-%d %H:%M:%S"))).encode())

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)  # closing drops the lock
            self.fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
