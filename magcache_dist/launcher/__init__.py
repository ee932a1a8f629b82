"""The launcher: what runs around a job on each process (read torchrun's environment, validate, lock the output,
start the process group, supervise the ranks, map failures to exit codes). ``magcache-generate`` and
``launch/generate.py`` are this package's ``main``."""
