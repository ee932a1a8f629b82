"""magcache-dist: MagCache skipping for video diffusion transformers under sequence parallelism."""

__version__ = "0.1.0"
