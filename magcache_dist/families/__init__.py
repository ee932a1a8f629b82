"""Model families: each module defines a ModelFamily subclass (magcache_dist/families/base.py) for its names.

The sampler, cache and parallel code are shared; a family only says how to validate, build, condition, make
noise for and decode its model, and what its latents look like and cost (see docs/adding_a_model.md).

``MODULES`` is the registry: "module:Class" -> the model names it serves. ``base.make_family`` imports a module only
when one of its names is used, so a job on the embedded model (or a rejected bad input) never imports diffusers'
or transformers' model code. tests/unit checks that every class's ``names`` match this table.
"""
MODULES = {
    "magcache_dist.families.tiny:TinyVideoFamily": ("tiny", "tiny-video"),
    "magcache_dist.families.flux:FluxFamily": ("flux.1-dev", "flux.1-dev-tiny", "flux.1-schnell",
                                               "flux.1-schnell-tiny", "tiny-flux-dev", "tiny-flux-schnell"),
    "magcache_dist.families.hunyuanvideo:HunyuanVideoFamily": ("hunyuanvideo", "hunyuanvideo-tiny",
                                                               "tiny-hunyuanvideo"),
    "magcache_dist.families.opensora:OpenSoraFamily": ("opensora-1.2", "opensora-1.2-tiny", "tiny-opensora"),
    "magcache_dist.families.wan:WanFamily": ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p",
                                             "wan2.1-i2v-14b-720p", "tiny-wan-t2v", "tiny-wan-i2v"),
    "magcache_dist.families.wan22:Wan22Family": ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "tiny-wan22-t2v",
                                                 "tiny-wan22-i2v"),
    "magcache_dist.families.wan22:Wan22TI2VFamily": ("wan2.2-ti2v-5b", "tiny-wan22-ti2v"),
}

# the names that run without a checkpoint folder: the embedded model and the pixel-space tiny families (model.ckpt,
# a tiny text encoder, no VAE); every other name is a full pipeline read from ckpt_dir
EMBEDDED = ("tiny", "tiny-video", "flux.1-dev-tiny", "flux.1-schnell-tiny", "hunyuanvideo-tiny", "opensora-1.2-tiny")


def uses_ckpt_dir(name: str) -> bool:
    """Whether model ``name`` is a full pipeline (text encoders, DiT, VAE) read from ``ckpt_dir``."""
    return name not in EMBEDDED
