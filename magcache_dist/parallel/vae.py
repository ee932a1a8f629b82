"""A VAE decode dealt over the ranks of a data-parallel group: the tiled decode, one tile per rank at a time.

Every VAE here already has a tiled decode whose tiles are independent: diffusers' ``tiled_decode`` of
AutoencoderKLWan (spatial tiles, all frames through the causal cache), AutoencoderKLHunyuanVideo (chunks of frames,
each in spatial tiles) and AutoencoderKL (FLUX, spatial tiles), and Open-Sora's chunks of latent frames. A tile
is the unit of work: tile ``u`` goes to rank ``u % N``; after each round (one tile per rank) the round's tiles move
to rank 0's host memory (``Comm.gather_to``), and rank 0 blends them exactly as the single-rank tiled decode does,
with the same in-place ramps in the same order. So the result is bit-equal to the single-rank tiled decode of the
same VAE (same tiles, same arithmetic per tile), for any N; this is also why a job on more than one rank that takes
this route decodes in tiles whatever ``vae.tiling`` says (the tiled mode), unless ``vae.parallel=false`` keeps the
decode on rank 0. The Wan VAEs' whole decode takes the row bands instead (parallel/vae_bands.py, ``vae.split``).

Memory per rank: the VAE's weights plus one tile's activations on the device (a decoded tile leaves the device
before the next starts); on the host, rank 0 ends with every tile (the video and its overlaps), any other rank
with one round's tile. Time: about 1/N of the tiled decode plus the gathers (each tile's pixels once).

The unit and blending logic mirrors diffusers 0.42's tiled decodes (a pinned dependency); a test compares each
against the VAE's own ``decode`` with tiling enabled, so a diffusers change that moves the arithmetic shows up.
"""
from __future__ import annotations

import math

import torch

from magcache_dist.parallel.comm import Comm

# Shape legend: B batch, C channels, F frames, H/W pixels (h/w latent), T tiles.


class TiledDecode:
    """One decode cut into independent units: ``units`` (hashable keys, in the single-rank order), ``run(unit)``
    -> the unit's decoded tensor, ``assemble(outs)`` (outs in the order of ``units``) -> the decoded video."""

    units: list

    def run(self, unit) -> torch.Tensor:
        raise NotImplementedError

    def assemble(self, outs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def decode_split(td: TiledDecode, comm: Comm, out_device="cpu") -> torch.Tensor | None:
    """Every rank of ``comm``: its units (``u % size == rank``), one round at a time; rank 0 gets the assembled
    decode (on ``out_device``), the others None."""
    n, rank, units = comm.size, comm.rank, td.units
    outs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k in range(math.ceil(len(units) / n)):
            u = k * n + rank
            out = td.run(units[u]).to(out_device) if u < len(units) else None
            got = comm.gather_to(out, dst=0)
            if rank == 0:
                outs.update({k * n + r: t for r, t in enumerate(got) if t is not None})
        return td.assemble([outs[u] for u in range(len(units))]) if rank == 0 else None


def ramp(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """In place on ``b``: its first ``extent`` slices along ``dim`` blended linearly from ``a``'s last ones (the
    tiled decodes' blend_v / blend_h / blend_t)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for y in range(extent):
        b.select(dim, y).copy_(a.select(dim, -extent + y) * (1 - y / extent) + b.select(dim, y) * (y / extent))
    return b


def stitch(grid: list[list[torch.Tensor]], blend: tuple[int, int], keep: tuple[int, int], dims=(-2, -1)):
    """Tiles in rows (row-major) -> one tensor: each tile blended with the one above and the one on its left (in
    place, in that order), cut to ``keep`` (rows, cols) and concatenated."""
    rows = []
    for i, row in enumerate(grid):
        out = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = ramp(grid[i - 1][j], tile, blend[0], dims[0])
            if j > 0:
                tile = ramp(row[j - 1], tile, blend[1], dims[1])
            out.append(tile.narrow(dims[0], 0, min(keep[0], tile.shape[dims[0]]))
                       .narrow(dims[1], 0, min(keep[1], tile.shape[dims[1]])))
        rows.append(torch.cat(out, dim=dims[1]))
    return torch.cat(rows, dim=dims[0])


def _grid(outs: list, keys: list, n_rows: int) -> list[list]:
    rows = [[] for _ in range(n_rows)]
    for (r, _), t in zip(keys, outs):
        rows[r].append(t)
    return rows


class WanTiles(TiledDecode):
    """AutoencoderKLWan: spatial tiles, each decoded latent frame by latent frame through the causal cache."""

    def __init__(self, vae, z: torch.Tensor):  # z: [1, C, F', h, w] in the VAE's dtype, on its device
        self.vae, self.z = vae, z
        r = vae.spatial_compression_ratio
        _, _, _, h, w = z.shape
        self.tile = (vae.tile_sample_min_height // r, vae.tile_sample_min_width // r)
        stride = (vae.tile_sample_stride_height // r, vae.tile_sample_stride_width // r)
        self.tiled = vae.use_tiling and (w > self.tile[1] or h > self.tile[0])
        self.rows = list(range(0, h, stride[0]))
        self.units = ([(ri, j) for ri in range(len(self.rows)) for j in range(0, w, stride[1])] if self.tiled
                      else [None])

    def run(self, unit):
        vae, z = self.vae, self.z
        if unit is None:
            return vae.decode(z).sample
        ri, j = unit
        i, (th, tw) = self.rows[ri], self.tile
        vae.clear_cache()
        frames = []
        for k in range(z.shape[2]):
            vae._conv_idx = [0]
            tile = vae.post_quant_conv(z[:, :, k:k + 1, i:i + th, j:j + tw])
            frames.append(vae.decoder(tile, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0))
        vae.clear_cache()
        return torch.cat(frames, dim=2)

    def assemble(self, outs):
        if not self.tiled:
            return outs[0]
        vae, p = self.vae, self.vae.config.patch_size or 1
        r = vae.spatial_compression_ratio
        height, width = self.z.shape[3] * r // p, self.z.shape[4] * r // p
        stride = (vae.tile_sample_stride_height // p, vae.tile_sample_stride_width // p)
        blend = (vae.tile_sample_min_height // p - stride[0], vae.tile_sample_min_width // p - stride[1])
        dec = stitch(_grid(outs, self.units, len(self.rows)), blend, stride)[:, :, :, :height, :width]
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            dec = unpatchify(dec, patch_size=p)
        return dec.clamp(-1.0, 1.0)


class HunyuanTiles(TiledDecode):
    """AutoencoderKLHunyuanVideo: chunks of latent frames (framewise decoding), each in spatial tiles."""

    def __init__(self, vae, z: torch.Tensor):
        self.vae, self.z = vae, z
        r, tr = vae.spatial_compression_ratio, vae.temporal_compression_ratio
        _, _, f, h, w = z.shape
        self.tile = (vae.tile_sample_min_height // r, vae.tile_sample_min_width // r)
        self.stride = (vae.tile_sample_stride_height // r, vae.tile_sample_stride_width // r)
        self.t_tile = vae.tile_sample_min_num_frames // tr
        self.temporal = vae.use_framewise_decoding and f > self.t_tile
        chunks = list(range(0, f, vae.tile_sample_stride_num_frames // tr)) if self.temporal else [None]
        self.units = []
        for c in chunks:
            n = min(self.t_tile + 1, f - c) if c is not None else f
            if vae.use_tiling and (w > self.tile[1] or h > self.tile[0]) and n > 0:
                rows = range(0, h, self.stride[0])
                self.units += [(c, ri, j) for ri in range(len(rows)) for j in range(0, w, self.stride[1])]
            else:
                self.units.append((c, None, None))

    def _chunk(self, c):
        return self.z if c is None else self.z[:, :, c:c + self.t_tile + 1]

    def run(self, unit):
        vae, (c, ri, j) = self.vae, unit
        z = self._chunk(c)
        if ri is not None:
            i = ri * self.stride[0]
            z = z[:, :, :, i:i + self.tile[0], j:j + self.tile[1]]
        return vae.decoder(vae.post_quant_conv(z))

    def assemble(self, outs):
        vae = self.vae
        r, tr = vae.spatial_compression_ratio, vae.temporal_compression_ratio
        height, width = self.z.shape[3] * r, self.z.shape[4] * r
        stride = (vae.tile_sample_stride_height, vae.tile_sample_stride_width)
        blend = (vae.tile_sample_min_height - stride[0], vae.tile_sample_min_width - stride[1])
        chunks: dict = {}
        for (c, ri, _), t in zip(self.units, outs):
            chunks.setdefault(c, []).append((ri, t))
        decoded = []
        for c, parts in chunks.items():
            if parts[0][0] is None:
                dec = parts[0][1]
            else:
                grid = [[] for _ in range(max(ri for ri, _ in parts) + 1)]
                for ri, t in parts:
                    grid[ri].append(t)
                dec = stitch(grid, blend, stride)[:, :, :, :height, :width]
            decoded.append(dec[:, :, 1:] if self.temporal and c > 0 else dec)
        if not self.temporal:
            return decoded[0]
        t_stride = vae.tile_sample_stride_num_frames
        t_blend = vae.tile_sample_min_num_frames - t_stride
        out = []
        for i, tile in enumerate(decoded):
            if i > 0:
                out.append(ramp(decoded[i - 1], tile, t_blend, dim=-3)[:, :, :t_stride])
            else:
                out.append(tile[:, :, :t_stride + 1])
        return torch.cat(out, dim=2)[:, :, :(self.z.shape[2] - 1) * tr + 1]


class KLTiles(TiledDecode):
    """diffusers' AutoencoderKL (FLUX): square spatial tiles of an image latent [B, C, h, w]."""

    def __init__(self, vae, z: torch.Tensor):
        self.vae, self.z = vae, z
        size = vae.tile_latent_min_size
        self.tiled = vae.use_tiling and (z.shape[-1] > size or z.shape[-2] > size)
        step = int(size * (1 - vae.tile_overlap_factor))
        self.rows = list(range(0, z.shape[2], step))
        self.units = ([(ri, j) for ri in range(len(self.rows)) for j in range(0, z.shape[3], step)] if self.tiled
                      else [None])

    def run(self, unit):
        vae, z = self.vae, self.z
        if unit is None:
            return vae.decode(z).sample
        i, j, size = self.rows[unit[0]], unit[1], vae.tile_latent_min_size
        tile = z[:, :, i:i + size, j:j + size]
        if vae.config.use_post_quant_conv:
            tile = vae.post_quant_conv(tile)
        return vae.decoder(tile)

    def assemble(self, outs):
        if not self.tiled:
            return outs[0]
        vae = self.vae
        blend = int(vae.tile_sample_min_size * vae.tile_overlap_factor)
        keep = vae.tile_sample_min_size - blend
        return stitch(_grid(outs, self.units, len(self.rows)), (blend, blend), (keep, keep))


class Finished(TiledDecode):
    """``td`` with ``finish`` applied to its assembled result (a family's clamp / dtype / layout)."""

    def __init__(self, td: TiledDecode, finish):
        self.td, self.finish, self.units = td, finish, td.units

    def run(self, unit):
        return self.td.run(unit)

    def assemble(self, outs):
        return self.finish(self.td.assemble(outs))


class ChunkTiles(TiledDecode):
    """Independent pieces along one axis: ``run_piece(i)`` for each of ``count`` pieces, concatenated on ``dim``
    (Open-Sora's chunks of latent frames; the pixel-space models' frames)."""

    def __init__(self, run_piece, count: int, dim: int = 2):
        self.run_piece, self.units, self.dim = run_piece, list(range(count)), dim

    def run(self, unit):
        return self.run_piece(unit)

    def assemble(self, outs):
        return torch.cat(outs, dim=self.dim)
