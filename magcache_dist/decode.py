"""The decode phase of a video: every rank of its data-parallel group decodes a share of its tiles.

``decode_video`` is called by every rank of the group after sampling. With more than one rank and
``vae.parallel=true`` (the default) the family's VAE decode is cut into its tiles (magcache_dist/parallel/vae.py:
diffusers' tiled decode for Wan2.1 / HunyuanVideo / FLUX, Open-Sora's chunks of latent frames, the pixel-space
models' frames) and the tiles are dealt over the ranks; rank 0 assembles the video. The result is bit-equal to the
single-rank tiled decode. With one rank, or ``vae.parallel=false``, rank 0 decodes alone in the mode ``vae.tiling``
says (as before).

Whether the DiT stays on the device while its rank decodes (``dit_stays``): it does when the DiT's weights plus the
decode's estimated peak (the VAE's weights and one tile's activations, ``decode_peak_bytes``) fit in the device's
memory; otherwise ``vae.offload_dit`` moves it to host memory for the decode and back for the next video. The
choice and the estimate go into report.json (``decode``).
"""
from __future__ import annotations

import torch

from magcache_dist.families import folders
from magcache_dist.parallel.vae import decode_split

# A decoder's largest live activations, per output pixel of a tile in flight, in fp32 bytes: a 3D VAE's causal
# convolution at full resolution holds its input with the cached frames (2 + 4 frames at 96 channels for Wan2.1),
# its output and a norm's temporary: 4 x 6 x 96 x 4 B. An estimate, checked by benchmarks/vae_decode.py.
ACTIVATION_BYTES_PER_PIXEL = 4 * 6 * 96 * 4


def decode_peak_bytes(cfg, family, ranks: int = 1) -> int:
    """Estimated device bytes of one rank's decode on a group of ``ranks``: the VAE's weights and one tile's
    activations (a whole frame when the decode is not tiled)."""
    from magcache_dist.planner.cost import DTYPE_BYTES

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
    elsewhere), what the decode did: ``mode``, ``ranks``, ``tiles``, ``dit_on_device``, ``estimated_peak_bytes``)."""
    cfg, comm = job.cfg, par.group
    if not cfg.save_video:
        return None, dict(mode="none", ranks=0)
    keep, need = dit_stays(cfg, job.family, model, latents.device, comm.size)
    info = dict(dit_on_device=keep, estimated_peak_bytes=need)
    td = None
    if cfg.vae.parallel and comm.size > 1:
        td = job.family.tile_decoder(latents, None if keep else model, comm.size)
    if td is None:  # one rank, vae.parallel=false, or nothing worth splitting: rank 0 decodes alone
        mode = "tiled" if cfg.vae.tiling else "whole"
        video = job.family.decode(latents, None if keep else model) if comm.rank == 0 else None
        return video, dict(info, mode=mode, ranks=1)
    tiles = len(td.units)
    video = decode_split(td, comm)
    del td  # the VAE
    folders.free_memory(latents.device)
    return video, dict(info, mode="tiled", ranks=comm.size, tiles=tiles)
