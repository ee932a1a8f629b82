"""The decode phase of a video: every rank of its data-parallel group decodes a share of it.

``decode_video`` is called by every rank of the group after sampling. With more than one rank and
``vae.parallel=true`` (the default) the family's VAE decode is cut into row bands (the Wan VAEs' whole decode, below)
or into its tiles (magcache_dist/parallel/vae.py:
diffusers' tiled decode for Wan2.1 / HunyuanVideo / FLUX, Open-Sora's chunks of latent frames, the pixel-space
models' frames) and the tiles are dealt over the ranks; rank 0 assembles the video. The result is bit-equal to the
single-rank tiled decode. With one rank, or ``vae.parallel=false``, rank 0 decodes alone in the mode ``vae.tiling``
says (as before).

Whether the DiT stays on the device while its rank decodes (``dit_stays``): it does when the DiT's weights plus the
decode's estimated peak (the VAE's weights and one band's or tile's activations, ``decode_peak_bytes``) fit in the
device's memory; otherwise ``vae.offload_dit`` moves it to host memory for the decode and back for the next video. The
choice and the estimate go into report.json (``decode``).

The route (``decode_route``, ``vae.split``): the Wan VAEs' whole decode (``vae.tiling=false``) runs in row bands with
halo exchange instead (magcache_dist/parallel/vae_bands.py: each rank decodes 1/N of every frame's rows, equal to the
single-rank whole decode within fp32 rounding, and its peak falls with N); ``vae.split=tiles`` keeps the tiles, and
the tiles stay the route for ``vae.tiling=true``, for the other VAEs and for more ranks than latent rows.
"""
from __future__ import annotations

import torch

from magcache_dist.errors import InputError
from magcache_dist.families import folders
from magcache_dist.parallel.vae import decode_split
from magcache_dist.parallel.vae_bands import band_rows, unsupported

# A decoder's largest live activations, per output pixel of a tile in flight, in fp32 bytes: a 3D VAE's causal
# convolution at full resolution holds its input with the cached frames (2 + 4 frames at 96 channels for Wan2.1),
# its output and a norm's temporary: 4 x 6 x 96 x 4 B. An estimate, checked by benchmarks/vae_decode.py.
ACTIVATION_BYTES_PER_PIXEL = 4 * 6 * 96 * 4


SPLITS = ("auto", "patches", "tiles")
# The banded decode's traffic, per neighbouring band, per output pixel column and output frame, in fp32 bytes (halo
# rows of every spatial convolution, the cached frames with them), and the width of the middle block's keys and values
# (gathered from every band), by the VAE's latent channels: the bytes counted by Comm on the published sizes (random
# weights) decoding 2 latent frames: Wan2.1 in benchmarks/vae_decode.py --bands (gloo), Wan2.2 on 2 thread ranks.
BAND_HALO_BYTES = {16: 10.6e3, 48: 15.6e3}  # Wan2.1 VAE, Wan2.2 VAE
BAND_KV_CHANNELS = {16: 2 * 384, 48: 2 * 1024}
BAND_EXCHANGES_PER_LATENT_FRAME = 34  # 33 halo exchanges and the keys/values' all-gather (both VAEs)


def check_split(cfg, family) -> None:
    """``vae.split`` before any collective: a known value, and ``patches`` only where the route exists."""
    split = cfg.vae.split
    if split not in SPLITS:
        raise InputError(f"vae.split={split!r} must be one of {list(SPLITS)} (auto: row bands with halo exchange for "
                         f"the Wan VAEs' whole decode, the VAE's tiles otherwise)")
    if split == "patches" and not family.band_decode:
        raise InputError(f"vae.split=patches: {family.name}'s VAE decodes in tiles over the ranks (only the Wan VAEs "
                         f"have the row-band route); use vae.split=auto or vae.split=tiles")
    if split == "patches" and cfg.vae.tiling:
        raise InputError("vae.split=patches bands the whole decode; with vae.tiling=true the tiles are dealt over "
                         "the ranks (vae.split=tiles or auto), or set vae.tiling=false")


def latent_rows(cfg, family) -> int:
    return family.latent_shape()[2]


def decode_route(cfg, family, ranks: int, rows: int | None = None) -> tuple[str, str | None]:
    """How a group of ``ranks`` decodes one video: ``single`` (rank 0 alone), ``tiles`` (dealt over the ranks,
    parallel/vae.py) or ``patches`` (row bands, parallel/vae_bands.py), and why not patches where ``auto`` or
    ``patches`` fell back to the tiles (None otherwise). ``rows``: the latent rows (default: the family's)."""
    if not (cfg.vae.parallel and ranks > 1):
        return "single", None
    if cfg.vae.split == "tiles" or not family.band_decode:
        return "tiles", None
    if cfg.vae.tiling:
        return "tiles", "vae.tiling=true: the tiled decode's tiles dealt over the ranks"
    rows = latent_rows(cfg, family) if rows is None else rows
    if ranks > rows:
        return "tiles", f"{ranks} ranks > {rows} latent rows: the tiles dealt over the ranks"
    return "patches", None


def band_peak_bytes(cfg, family, ranks: int) -> int:
    """Estimated device bytes of one rank's banded decode: the VAE's weights, the activations of its band of the
    whole frame (the tallest band and its two halo rows) and the middle block's gathered keys and values."""
    from magcache_dist.planner.cost import DTYPE_BYTES

    b = DTYPE_BYTES.get(cfg.vae.dtype, 4)
    v, rows = cfg.video, latent_rows(cfg, family)
    band = -(-rows // ranks) * (v.height // rows) + 2
    kv = rows * family.latent_shape()[3] * BAND_KV_CHANNELS.get(family.latent_shape()[0], 2 * 1024) * b
    return int(family.vae_params() * b + ACTIVATION_BYTES_PER_PIXEL * band * v.width * b / 4 + kv)


def band_decode_seconds(cfg, family, profile, ranks: int, whole_s: float, per_call_s: float = 0.0) -> dict:
    """The banded decode on ``ranks`` ranks: the tallest band's share of the whole decode's compute (``whole_s``,
    its FLOPs), plus ``per_call_s`` whole (a per-decoder-call overhead every band pays as the whole frame does), the
    halo rows and keys/values exchanged with the neighbours, and the video's other bands gathered to rank 0, at the
    profile's link bandwidth and latency."""
    from magcache_dist.planner.cost import DTYPE_BYTES

    v, rows = cfg.video, latent_rows(cfg, family)
    c, f_lat, w_lat = family.latent_shape()[0], family.latent_shape()[1], family.latent_shape()[3]
    b = DTYPE_BYTES.get(cfg.vae.dtype, 4)
    link = profile.link_bandwidth * profile.link_efficiency
    compute = whole_s * (-(-rows // ranks)) / rows + per_call_s
    halo = 2 * BAND_HALO_BYTES.get(c, 15.6e3) * b / 4 * v.frames * v.width
    kv = f_lat * rows * w_lat * BAND_KV_CHANNELS.get(c, 2 * 1024) * b * (ranks - 1) / ranks
    exchange = (halo + kv) / link + f_lat * BAND_EXCHANGES_PER_LATENT_FRAME * profile.link_latency_s
    gather = v.frames * v.height * v.width * 3 * 4 * (ranks - 1) / ranks / link  # fp32 pixels into rank 0
    return dict(compute_s=compute + exchange + gather, band_compute_s=compute, exchange_s=exchange, gather_s=gather,
                whole_single_rank_s=whole_s + per_call_s, tiled_single_rank_s=None, tiles=0, rounds=1, ranks=ranks,
                bands=ranks, split="patches")


def decode_peak_bytes(cfg, family, ranks: int = 1) -> int:
    """Estimated device bytes of one rank's decode on a group of ``ranks``: the VAE's weights and one tile's
    activations (a whole frame when the decode is not tiled; a band of it on the row-band route)."""
    from magcache_dist.planner.cost import DTYPE_BYTES

    if decode_route(cfg, family, ranks)[0] == "patches":
        return band_peak_bytes(cfg, family, ranks)
    b = DTYPE_BYTES.get(cfg.vae.dtype, 4)
    tiled = cfg.vae.tiling or (cfg.vae.parallel and ranks > 1)
    px = cfg.vae.tile_height * cfg.vae.tile_width if tiled else cfg.video.height * cfg.video.width
    px = min(px, cfg.video.height * cfg.video.width)
    return int(family.vae_params() * b + ACTIVATION_BYTES_PER_PIXEL * px * b / 4)


def dit_stays(cfg, family, model, device, ranks: int = 1) -> tuple[bool, int]:
    """(keep the DiT on the device while decoding, the decode's estimated peak bytes)."""
    need = decode_peak_bytes(cfg, family, ranks)
    device = torch.device(device)
    if device.type != "cuda" or model is None or not cfg.vae.offload_dit:
        return True, need
    total = torch.cuda.get_device_properties(device).total_memory
    return torch.cuda.memory_allocated(device) + need <= 0.9 * total, need


def decode_video(job, model, latents: torch.Tensor, par) -> tuple[torch.Tensor | None, dict]:
    """Every rank of the group: (the decoded video [1, 3, F, H, W] in [-1, 1], CPU float32, on rank 0 (None
    elsewhere), what the decode did: ``split`` (patches / tiles / single), ``mode``, ``ranks``, ``bands`` or
    ``tiles``, ``split_note`` (why the tiles ran where the bands could have), ``dit_on_device``,
    ``estimated_peak_bytes``)."""
    cfg, comm = job.cfg, par.group
    if not cfg.save_video:
        return None, dict(mode="none", ranks=0)
    keep, need = dit_stays(cfg, job.family, model, latents.device, comm.size)
    route, why = decode_route(cfg, job.family, comm.size, latents.shape[3])
    info = dict(dit_on_device=keep, estimated_peak_bytes=need, split=route, **({"split_note": why} if why else {}))
    if route == "patches":
        video, why = decode_bands(job, None if keep else model, latents, comm)
        if why is None:
            return video, dict(info, mode="whole", ranks=comm.size,
                               bands=[b - a for a, b in band_rows(latents.shape[3], comm.size)])
        route, info["split"], info["split_note"] = "tiles", "tiles", f"the row bands cannot run: {why}"
    td = None
    if route == "tiles":
        td = job.family.tile_decoder(latents, None if keep else model, comm.size)
    if td is None:  # one rank, vae.parallel=false, or nothing worth splitting: rank 0 decodes alone
        mode = "tiled" if cfg.vae.tiling else "whole"
        video = job.family.decode(latents, None if keep else model) if comm.rank == 0 else None
        return video, dict(info, mode=mode, ranks=1, split="single")
    tiles = len(td.units)
    video = decode_split(td, comm)
    del td  # the VAE
    folders.free_memory(latents.device)
    return video, dict(info, mode="tiled", ranks=comm.size, tiles=tiles)


def decode_bands(job, model, latents: torch.Tensor, comm) -> tuple[torch.Tensor | None, str | None]:
    """Every rank of the group: the family's whole decode in row bands (parallel/vae_bands.py): (the video on rank 0,
    None), or (None, why) when the VAE's decoder has a layer the bands do not know (every rank finds the same, so all
    go to the tiles together)."""
    bd = job.family.band_decoder(latents, model)
    why = unsupported(bd.vae)
    video = bd.run(comm) if why is None else None
    del bd  # the VAE
    folders.free_memory(latents.device)
    return video, why
