"""The error boundary: what a user must fix versus what is a bug.

``InputError`` (a ValueError) is a problem with what the user gave: a config key, a file, a launcher variable. Its
message names the key or file and the fix; the launcher prints it and exits 2, before any collective where it can.
Anything else raised during a job is a bug: the launcher exits 4 with its traceback. ``InternalError`` is what an
invariant check in library code raises (a broken invariant is never the user's mistake).

Library code outside this package (models/, diffusers, transformers, safetensors) reports a malformed file with a
plain ValueError; ``reading`` marks the places where such code reads the user's files, so that error is reported as
an InputError too.
"""
from __future__ import annotations

from contextlib import contextmanager


class InputError(ValueError):
    """Bad input: the message names the key or file and the fix (exit code 2)."""


class InternalError(RuntimeError):
    """A broken invariant inside magcache-dist: a bug, never the user's input (exit code 4)."""


@contextmanager
def reading():
    """A ValueError raised by library code while it reads the user's files (checkpoints, configs inside them) is an
    InputError: its message already names the file or key."""
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from e
