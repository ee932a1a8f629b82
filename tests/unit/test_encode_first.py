"""Encoders apart from the DiT (issue 26, item 2): a job encodes its prompts before the DiT's weights are read
(``build(weights=False)``, encode, ``load_weights``), and its latents are bit-identical to the former order (DiT
loaded in ``build``, then the encoders run beside it), for a tiny Wan2.1 I2V job (umT5, CLIP and the VAE encoder)
and a tiny FLUX.1 job (CLIP-L, T5)."""
import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.families.flux import FluxFamily
from magcache_dist.families.wan import WanFamily
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from tests.support.pipelines import pipeline_overrides
from tests.support.wan_tiny import wan_overrides


def _configs(name, wan_ckpts, pipeline_folder, out):
    if name == "wan":
        return WanFamily, load_config(None, wan_overrides("i2v", wan_ckpts["i2v"]["diffusers"], out,
                                                          image=wan_ckpts["image"]))
    return FluxFamily, load_config(None, pipeline_overrides("tiny-flux-dev", pipeline_folder("tiny-flux-dev"), out))


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_encoders_run_before_the_dit_is_loaded_and_latents_are_unchanged(name, wan_ckpts, pipeline_folder,
                                                                          tmp_path, monkeypatch):
    cls, cfg = _configs(name, wan_ckpts, pipeline_folder, str(tmp_path / "now"))
    events = []
    build, load, encode_many = cls.build, cls.load_weights, cls.encode_many

    def spy_build(self, device, weights=True):
        model, enc = build(self, device, weights)
        events.append(("build", weights, any(p.is_meta for p in model.parameters())))
        return model, enc

    def spy_load(self, model, device, share=None):
        events.append(("load_weights",))
        return load(self, model, device, share=share)

    def spy_encode(self, encoder, texts, branches):
        events.append(("encode",))
        return encode_many(self, encoder, texts, branches)

    with monkeypatch.context() as m:
        m.setattr(cls, "build", spy_build)
        m.setattr(cls, "load_weights", spy_load)
        m.setattr(cls, "encode_many", spy_encode)
        run_job(cfg, solo_context())
    # the DiT is still on the meta device (no weights on any device) while the encoders run
    assert events == [("build", False, True), ("encode",), ("load_weights",)], events
    now = torch.load(tmp_path / "now" / "latents.pt", weights_only=True)

    _, before_cfg = _configs(name, wan_ckpts, pipeline_folder, str(tmp_path / "before"))
    def old_build(self, device, weights=True):  # what build(weights=True) does: the DiT read in at once
        model, enc = build(self, device, False)
        load(self, model, device)
        return model, enc

    with monkeypatch.context() as m:  # the former order: the DiT read in build, the encoders beside it
        m.setattr(cls, "build", old_build)
        m.setattr(cls, "load_weights", lambda self, model, device, share=None: None)
        run_job(before_cfg, solo_context())
    before = torch.load(tmp_path / "before" / "latents.pt", weights_only=True)
    assert torch.equal(now, before)
