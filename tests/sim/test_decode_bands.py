"""The Wan VAEs' whole decode in row bands with halo exchange (magcache_dist/parallel/vae_bands.py) on simulated ranks
(threads, real tensors): diffusers' AutoencoderKLWan at toy size (random weights) in its Wan2.1 shape and its Wan2.2
shape (48 latent channels, residual up-blocks, patch 2), several latent frames (the causal cache), heights not
divisible by the ranks and bands of one latent row; rank 0's video against the VAE's own single-rank ``decode`` within
1e-4 (measured: at most 2.1e-6). Then the route (vae.split) and the planner's band figures."""
import copy

import pytest
import torch
import torch.nn as nn

from magcache_dist.errors import InputError
from magcache_dist.parallel.comm import SoloComm
from magcache_dist.parallel.threads import run_on_comms
from magcache_dist.parallel.vae_bands import BandDecode, Halo, _patched, band_rows, unsupported


def _wan21():
    from tests.support.wan_tiny import build_vae

    return build_vae(3)


def _wan22():
    from tests.support.wan22_tiny import build_ti2v_vae

    return build_ti2v_vae(3)


CASES = {  # VAE, latents [1, C, F', h, w], rank counts (h % ranks != 0 among them; h == ranks: one row per band)
    "wan2.1": (_wan21, (1, 16, 3, 7, 9), (1, 2, 3)),
    "wan2.1-one-row-bands": (_wan21, (1, 16, 2, 4, 5), (4,)),
    "wan2.2": (_wan22, (1, 48, 3, 5, 4), (1, 2, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_banded_decode_equals_the_vaes_whole_decode(case):
    make, shape, sizes = CASES[case]
    vae = make()
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert ref.abs().max() > 0.1  # a real signal, not near-zero outputs
    for size in sizes:
        outs = run_on_comms(lambda comm: BandDecode(copy.deepcopy(vae), z).run(comm), size, timeout=180)
        got, others = outs[0], outs[1:]
        assert got.shape == ref.shape, (case, size)
        assert (got - ref).abs().max() <= 1e-4, (case, size, (got - ref).abs().max())
        assert all(o is None for o in others)


def test_the_decoders_forwards_are_restored_even_after_an_error():
    vae = _wan21()
    with pytest.raises(RuntimeError, match="boom"):
        with _patched(vae.decoder, Halo(SoloComm(), [(0, 7)]), 7):
            assert "forward" in vars(vae.decoder.conv_in) and "forward" in vars(vae.decoder.mid_block.attentions[0])
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in vae.decoder.modules())
    z = torch.randn(1, 16, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = vae.decode(z).sample
        BandDecode(vae, z).run(SoloComm())
        assert torch.equal(vae.decode(z).sample, a)


def test_band_rows_and_the_edges_exchanged():
    assert band_rows(7, 3) == [(0, 3), (3, 5), (5, 7)] and band_rows(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert band_rows(90, 8)[0] == (0, 12) and band_rows(90, 8)[-1] == (79, 90)

    def body(comm):  # each rank's rows are its rank number; a halo of 1 row from each neighbour, zeros at the ends
        x = torch.full((1, 2, 3, 5), float(comm.rank + 1))
        return Halo(comm, band_rows(9, 3)).padded(x, 1, 1)[0, 0, :, 1].tolist()

    assert run_on_comms(body, 3) == [[0, 1, 1, 1, 2], [1, 2, 2, 2, 3], [2, 3, 3, 3, 0]]


def test_an_unknown_layer_is_named():
    vae = _wan21()
    assert unsupported(vae) is None and unsupported(_wan22()) is None
    vae.decoder.conv_out = nn.Conv3d(8, 3, 3, padding=1)
    assert "decoder.conv_out: Conv3d" in unsupported(vae)


def _family(*overrides):
    from magcache_dist.config import load_config
    from magcache_dist.families.base import make_family

    return make_family(load_config("configs/wan2.1-t2v-14b-720p.yaml", list(overrides)))


def test_route_and_its_fallbacks():
    from magcache_dist.decode import decode_route

    f = _family()
    assert decode_route(f.cfg, f, 1) == ("single", None) and decode_route(f.cfg, f, 8) == ("patches", None)
    assert decode_route(f.cfg, f, 91)[0] == "tiles" and "91 ranks > 90 latent rows" in decode_route(f.cfg, f, 91)[1]
    t = _family("vae.tiling=true")
    assert decode_route(t.cfg, t, 8)[0] == "tiles" and "vae.tiling=true" in decode_route(t.cfg, t, 8)[1]
    s = _family("vae.split=tiles")
    assert decode_route(s.cfg, s, 8) == ("tiles", None)
    h = _family("model.name=hunyuanvideo")
    assert decode_route(h.cfg, h, 8) == ("tiles", None)


@pytest.mark.parametrize("overrides,needle", [
    (["vae.split=bands"], "vae.split='bands' must be one of"),
    (["vae.split=patches", "vae.tiling=true"], "vae.split=patches bands the whole decode"),
    (["vae.split=patches", "model.name=hunyuanvideo"], "only the Wan VAEs"),
])
def test_bad_split_is_refused(overrides, needle):
    from magcache_dist.decode import check_split

    f = _family(*overrides)
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_split(f.cfg, f)


def test_planner_band_peak_falls_with_ranks_and_decode_meets_one_sixth():
    from magcache_dist.decode import decode_peak_bytes
    from magcache_dist.planner.phases import decode_seconds
    from magcache_dist.planner.profiles import load_profile

    f = _family()
    peaks = [decode_peak_bytes(f.cfg, f, n) for n in (1, 2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4
    weights = f.vae_params() * 4
    assert (peaks[3] - weights) < (peaks[0] - weights) / 4  # activations: about 1/N of the whole frame's
    d = decode_seconds(f.cfg, f, load_profile("h100"), 8)
    assert d["split"] == "patches" and d["bands"] == 8
    assert d["compute_s"] <= d["whole_single_rank_s"] / 6


class _Scale(nn.Module):  # a layer the bands do not know (as a diffusers update could add)
    def forward(self, x):
        return x * 1.0


def test_an_unknown_layer_sends_every_rank_to_the_tiles():
    """decode_video on 2 thread ranks with a decoder the bands do not know: both ranks take the tiles (no hang), the
    video is the tiled decode bit for bit, and report.json's decode says why."""
    from types import SimpleNamespace

    from magcache_dist.config import load_config
    from magcache_dist.decode import decode_video
    from magcache_dist.parallel.vae import WanTiles

    vae = _wan21()
    vae.decoder.norm_out = _Scale()
    z = torch.randn(1, 16, 3, 7, 9, generator=torch.Generator().manual_seed(2))
    tile = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                tile_sample_stride_width=24)

    class Family:
        band_decode, name = True, "fake-wan"

        def latent_shape(self):
            return tuple(z.shape[1:])

        def vae_params(self):
            return 0

        def band_decoder(self, latents, model):
            return BandDecode(copy.deepcopy(vae), latents)

        def tile_decoder(self, latents, model, parts):
            v = copy.deepcopy(vae)
            v.enable_tiling(**tile)
            return WanTiles(v, latents)

    cfg = load_config(None, ["video.frames=9", "video.height=56", "video.width=72"])
    job = SimpleNamespace(cfg=cfg, family=Family())
    outs = run_on_comms(lambda comm: decode_video(job, None, z, SimpleNamespace(group=comm)), 2, timeout=180)
    (video, info), (other, _) = outs
    vae.enable_tiling(**tile)
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert other is None and torch.equal(video, ref)
    assert info["split"] == "tiles" and info["mode"] == "tiled" and info["tiles"] == 9
    assert "decoder.norm_out: _Scale is not a layer the banded decode knows" in info["split_note"]
