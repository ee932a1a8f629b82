"""Wan2.2 TI2V-5B from the official layout (Wan-AI/Wan2.2-TI2V-5B: the DiT in Wan's key names, sharded with an index
json, the umT5 .pth, google/umt5-xxl/ and Wan2.2_VAE.pth): the converted Wan2.2 VAE equals the diffusers VAE of the
same weights, its key table follows the published conversion's pairs and reads the released architecture from the
shapes, and a whole job (text only, and with an image) equals the same job on the diffusers folder of those weights.
The tiny official folder is written by tests/support/wan22_tiny.py from its own list of the official names, not from
the library's rule table."""
import os

import pytest
import torch

from magcache_dist.config import load_config
from magcache_dist.job import validate_job
from magcache_dist.parallel import solo_context
from magcache_dist.run import run_job
from models import wan_components
from tests.support.wan22_tiny import ti2v_overrides, vae22_diffusers_to_official_key


def test_vae22_key_table_follows_the_published_conversion():
    pairs = {  # official Wan2.2_VAE.pth key -> diffusers AutoencoderKLWan key (diffusers' conversion script)
        "conv1.bias": "quant_conv.bias", "conv2.weight": "post_quant_conv.weight",
        "encoder.conv1.weight": "encoder.conv_in.weight", "decoder.conv1.bias": "decoder.conv_in.bias",
        "encoder.head.0.gamma": "encoder.norm_out.gamma", "decoder.head.2.weight": "decoder.conv_out.weight",
        "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
        "decoder.middle.2.residual.3.gamma": "decoder.mid_block.resnets.1.norm2.gamma",
        "encoder.downsamples.0.downsamples.1.residual.6.bias": "encoder.down_blocks.0.resnets.1.conv2.bias",
        "encoder.downsamples.1.downsamples.0.shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.downsamples.0.downsamples.2.resample.1.weight": "encoder.down_blocks.0.downsampler.resample.1.weight",
        "encoder.downsamples.2.downsamples.2.time_conv.bias": "encoder.down_blocks.2.downsampler.time_conv.bias",
        "decoder.upsamples.0.upsamples.2.residual.0.gamma": "decoder.up_blocks.0.resnets.2.norm1.gamma",
        "decoder.upsamples.2.upsamples.0.shortcut.bias": "decoder.up_blocks.2.resnets.0.conv_shortcut.bias",
        "decoder.upsamples.1.upsamples.3.time_conv.weight": "decoder.up_blocks.1.upsampler.time_conv.weight",
        "decoder.upsamples.2.upsamples.3.resample.1.bias": "decoder.up_blocks.2.upsampler.resample.1.bias",
    }
    from models.layouts import rename_key

    rules = wan_components.vae22_rules(2)
    for official, diffusers in pairs.items():
        assert rename_key(official, rules, "Wan2.2 VAE") == (diffusers,)
    with pytest.raises(ValueError, match=r"'encoder\.downsamples\.0\.downsamples\.3\.resample\.1\.weight' is not"):
        rename_key("encoder.downsamples.0.downsamples.3.resample.1.weight", rules, "Wan2.2 VAE")  # one too far


def test_released_vae_architecture_is_read_from_the_shapes():
    """At real size on the meta device: the released Wan2.2 VAE's keys (named the official way by the test support)
    give back its configuration and its 704,688,668 parameters."""
    from diffusers import AutoencoderKLWan

    from magcache_dist.families.wan22 import TI2V_VAE_PARAMS

    released = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                    patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**released)
    shapes = {vae22_diffusers_to_official_key(k, 2): tuple(v.shape) for k, v in vae.state_dict().items()}
    cfg = wan_components.check_wan22_vae(shapes, "Wan2.2_VAE.pth")
    assert {k: cfg[k] for k in released} == released
    assert sum(v.numel() for v in vae.state_dict().values()) == TI2V_VAE_PARAMS
    del shapes["decoder.upsamples.1.upsamples.3.time_conv.weight"]  # a damaged file: named by its own keys
    with pytest.raises(ValueError, match=r"missing keys \['decoder\.upsamples\.1\.upsamples\.3\.time_conv\.weight'\]"):
        wan_components.check_wan22_vae(shapes, "Wan2.2_VAE.pth")


def test_official_vae_decodes_as_the_diffusers_vae(ti2v_ckpt):
    from diffusers import AutoencoderKLWan

    src = AutoencoderKLWan.from_pretrained(os.path.join(ti2v_ckpt["diffusers"], "vae")).eval()
    vae = wan_components.load_wan22_vae(os.path.join(ti2v_ckpt["official"], "Wan2.2_VAE.pth"), "official")
    assert (vae.config.num_res_blocks, vae.config.patch_size, vae.config.scale_factor_spatial) == (1, 2, 16)
    mean, std = wan_components.latent_stats(vae)  # the official file carries none: the released values
    assert mean.flatten().tolist() == pytest.approx(list(wan_components.WAN22_LATENTS_MEAN))
    assert std.flatten()[[0, 39]].tolist() == pytest.approx([0.4765, 1.6887])
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(1, 48, 2, 4, 4, generator=g), torch.rand(1, 3, 5, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        got, want = vae.decode(z).sample, src.decode(z).sample
        assert got.shape == (1, 3, 5, 64, 64) and torch.equal(got, want)  # the same weights: bit-equal
        assert got.std() > 0.05  # not a clamped constant
        mu, ref = vae.encode(x).latent_dist.mode(), src.encode(x).latent_dist.mode()
        assert mu.shape == (1, 48, 2, 4, 4) and torch.equal(mu, ref)


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "image"])
def test_official_layout_job_equals_the_diffusers_job(image, ti2v_ckpt, wan22_ckpts, tmp_path):
    """The same weights in both layouts (the diffusers folder with the released latent statistics, which the official
    layout uses): bit-equal latents and decoded video, text only and with an image (whose latents the official VAE's
    encoder makes)."""
    extra = [f"image={wan22_ckpts['image']}"] if image else []
    out = {}
    for layout in ("official", "diffusers_published"):
        cfg = load_config(None, ti2v_overrides(ti2v_ckpt[layout], str(tmp_path / layout), "cache.mode=off",
                                               "save_video=false", *extra))
        run_job(cfg, solo_context())
        job = validate_job(cfg, 1)
        assert job.family.files.layout == ("official" if layout == "official" else "diffusers")
        latents = torch.load(tmp_path / layout / "latents.pt", weights_only=True)
        with torch.no_grad():
            out[layout] = latents, job.family.decode(latents)
    (lat_o, vid_o), (lat_d, vid_d) = out["official"], out["diffusers_published"]
    assert lat_o.shape == (1, 48, 3, 4, 4) and vid_o.shape == (1, 3, 9, 64, 64)
    assert torch.equal(lat_o, lat_d) and torch.equal(vid_o, vid_d)  # the same weights and statistics: bit-equal
    assert vid_o.std() > 0.05
