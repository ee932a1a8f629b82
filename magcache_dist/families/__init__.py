"""Model families beyond the embedded tiny models: each module registers a ModelFamily (pipeline.register_family).

The sampler, cache and parallel code are shared; a family only says how to validate, build, condition, make
noise for and decode its model (see docs/adding_a_model.md).
"""
from magcache_dist.families import flux, hunyuanvideo, opensora, wan  # noqa: F401  (registration)
