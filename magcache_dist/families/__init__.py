"""Model families beyond the embedded tiny models: each module registers a ModelFamily (pipeline.register_family).

The sampler, cache and parallel code are shared; a family only says how to validate, build, condition, make
noise for and decode its model (see docs/adding_a_model.md).

Families load lazily: ``MODULES`` names which module registers which model names, and ``pipeline.get_family``
imports a module only when one of its names is used, so a job on the embedded model (or a rejected bad input)
never imports diffusers' or transformers' model code. tests/unit checks that the table matches what each module
registers.
"""
MODULES = {
    "magcache_dist.families.flux": ("flux.1-dev", "flux.1-dev-tiny", "flux.1-schnell", "flux.1-schnell-tiny"),
    "magcache_dist.families.hunyuanvideo": ("hunyuanvideo", "hunyuanvideo-tiny"),
    "magcache_dist.families.opensora": ("opensora-1.2", "opensora-1.2-tiny"),
    "magcache_dist.families.wan": ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p",
                                   "tiny-wan-t2v", "tiny-wan-i2v"),
}
