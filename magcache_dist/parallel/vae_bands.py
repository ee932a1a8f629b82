"""The Wan VAE decode in spatial patches with halo exchange: each rank of the group decodes one band of rows.

diffusers' ``AutoencoderKLWan`` (the Wan2.1 VAE and the Wan2.2 VAE: 48 latent channels, residual up-blocks,
``patch_size=2``) decodes latent frame by latent frame through its causal time cache. Here every frame's rows are cut
into N contiguous bands, one per rank (``band_rows``: the first ``h % N`` bands one latent row taller); a latent band
of rows [a, b) is rows [a*s, b*s) at every resolution the decoder reaches (s = 2, 4, 8, and 16 after Wan2.2's
unpatchify), because each layer is, along the rows:

- per pixel: the channel-wise RMS norms, SiLU, the 1x1 convolutions (shortcuts, ``post_quant_conv``, the time-only
  ``time_conv`` (3, 1, 1)), nearest-exact 2x upsampling (output row i reads input row i // 2), Wan2.2's ``DupUp3D``
  shortcut (channels to a 2x2 block) and ``unpatchify``;
- a spatial convolution (``WanCausalConv3d`` with a 3x3 spatial kernel, the ``Conv2d`` after each upsample): it gets
  its halo, one row from each neighbouring band (``Comm.exchange_edges``), before it runs, and zero rows at the
  frame's top and bottom as before; the causal time cache holds each band's own rows, and since the halo is taken
  from the time-concatenated input (cached frames + this frame), the neighbours' cached rows come with it: the
  ``feat_cache`` logic runs per band unchanged;
- the middle block's attention (lowest resolution, over the whole frame): the local queries against every band's
  keys and values (one all-gather of k and v per latent frame).

The decoder's modules are used as they are; during the decode the spatial convolutions' and the attention's
``forward`` are replaced on the instance (``_patched``) and restored afterwards, so diffusers is never edited. The
replacements restate diffusers 0.42's forwards with the halo added; tests compare the banded decode with the VAE's own
``decode`` (1, 2 and 3 ranks, Wan2.1 and Wan2.2 shapes, several latent frames), so a diffusers change that moves the
arithmetic shows up. Result: the single-rank whole decode within fp32 rounding (the convolutions see other input
shapes, so their summation order may differ).

Memory per rank: the VAE's weights plus about 1/N of the whole-frame activations (and two halo rows per
convolution); rank 0 gathers the decoded bands into the video on the host.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from magcache_dist.errors import InternalError
from magcache_dist.parallel.comm import Comm

# Shape legend: B batch, C channels, T frames, H/W pixel rows/columns, h latent rows.


def band_rows(h: int, n: int) -> list[tuple[int, int]]:
    """[start, stop) of each of ``n`` contiguous bands of ``h`` rows, the first ``h % n`` one row taller."""
    if not 1 <= n <= h:
        raise InternalError(f"{n} bands of {h} rows")
    base, extra = divmod(h, n)
    out, start = [], 0
    for i in range(n):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def _modules():
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    return akw


def unsupported(vae) -> str | None:
    """Why ``vae``'s decoder cannot be banded (a layer this module does not know, a strided or non-zero-padded
    spatial convolution), or None when it can."""
    akw = _modules()
    known = (akw.WanDecoder3d, akw.WanMidBlock, akw.WanUpBlock, akw.WanResidualUpBlock, akw.WanResidualBlock,
             akw.WanAttentionBlock, akw.WanResample, akw.WanUpsample, akw.WanRMS_norm, akw.DupUp3D, nn.ModuleList,
             nn.Sequential, nn.Dropout, nn.Identity, nn.SiLU, akw.WanCausalConv3d, nn.Conv2d)
    for name, m in vae.decoder.named_modules():
        if not isinstance(m, known):
            return f"decoder.{name}: {type(m).__name__} is not a layer the banded decode knows"
        if isinstance(m, (nn.Conv2d, akw.WanCausalConv3d)):
            k, s = m.kernel_size[-2:], m.stride[-2:]
            if s != (1, 1) or m.padding_mode != "zeros" or m.dilation[-2:] != (1, 1):
                return f"decoder.{name}: a strided, dilated or non-zero-padded spatial convolution"
            if isinstance(m, akw.WanCausalConv3d):
                p = m._padding
                if p[0] != p[1] or p[2] != p[3] or p[5] != 0 or m.padding != (0, 0, 0):
                    return f"decoder.{name}: causal padding {p}"
            elif not isinstance(m.padding, tuple) or len(m.padding) != 2:
                return f"decoder.{name}: padding {m.padding!r}"
            pad = m._padding[2] if isinstance(m, akw.WanCausalConv3d) else m.padding[0]
            if k[0] != 2 * pad + 1:
                return f"decoder.{name}: kernel {tuple(m.kernel_size)} with row padding {pad}"
        if isinstance(m, akw.WanUpsample) and (m.mode != "nearest-exact" or m.scale_factor != (2.0, 2.0)):
            return f"decoder.{name}: upsampling {m.mode} x {m.scale_factor}"
    return None


class Halo:
    """One rank's band in the group: adds neighbouring rows to a tensor whose rows are this band's (dim -2)."""

    def __init__(self, comm: Comm, bands: list[tuple[int, int]]):
        self.comm, self.bands = comm, bands
        self.rows = [b - a for a, b in bands]  # latent rows of each band
        self.exchanges = 0

    def padded(self, x: torch.Tensor, rows: int, cols: int, front: int = 0) -> torch.Tensor:
        """``x`` [..., (T,) h, W] zero-padded by ``cols`` columns on each side and ``front`` frames before (dim -3,
        when given), its ``rows`` rows of padding above and below filled from the neighbouring bands (zeros at the
        frame's top and bottom: the convolution's own padding); one new tensor, as ``F.pad`` would make."""
        if rows > x.shape[-2]:
            raise InternalError(f"a halo of {rows} rows from a band of {x.shape[-2]}")
        above, below = self.comm.exchange_edges(x[..., :rows, :], x[..., -rows:, :]) if rows else (None, None)
        self.exchanges += bool(rows)
        shape = list(x.shape)
        shape[-2] += 2 * rows
        shape[-1] += 2 * cols
        if front:
            shape[-3] += front
        out = x.new_zeros(shape)
        inner = out[..., front:, :, :] if front else out
        h, w = x.shape[-2:]
        inner[..., rows:rows + h, cols:cols + w] = x
        if above is not None:
            inner[..., :rows, cols:cols + w] = above
        if below is not None:
            inner[..., rows + h:, cols:cols + w] = below
        return out

    def gather_rows(self, t: torch.Tensor, scale: int) -> torch.Tensor:
        """Every band's ``t`` [..., rows x scale, W] in rank order along dim -2 (bands of unequal height are
        padded for the all-gather and cut back)."""
        mine, most = t.shape[-2], max(self.rows) * scale
        if most > mine:
            t = torch.cat([t, t.new_zeros((*t.shape[:-2], most - mine, t.shape[-1]))], dim=-2)
        parts = self.comm.all_gather(t)
        return torch.cat([p[..., :r * scale, :].to(t) for p, r in zip(parts, self.rows)], dim=-2)


def _conv(x: torch.Tensor, conv, dims: int) -> torch.Tensor:
    """``conv`` on the already padded ``x``. On a CPU in fp32 through oneDNN (mkldnn) always: PyTorch sends a small
    CPU convolution (batch x channels x frames x rows <= 20480) to its im2col path instead, with a column buffer 27x
    its input and 2-3x the time, which a band hits where the whole frame does not (e.g. 96 channels x 6 frames x 34
    rows); so every band runs the whole decode's kernel, and its memory falls with the band."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
            and torch.backends.mkldnn.enabled:
        return torch.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, [0] * dims, list(conv.stride),
                                        list(conv.dilation), conv.groups)
    return (F.conv3d if dims == 3 else F.conv2d)(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _conv3d_forward(conv, halo: Halo):
    def forward(x, cache_x=None):  # WanCausalConv3d.forward with the rows' halo from the neighbours
        padding = list(conv._padding)  # (W, W, H, H, T front, T back = 0)
        if cache_x is not None and padding[4] > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            padding[4] -= cache_x.shape[2]
        return _conv(halo.padded(x, padding[2], padding[0], padding[4]), conv, 3)
    return forward


def _conv2d_forward(conv, halo: Halo):
    def forward(x):  # nn.Conv2d with zero padding: the rows' padding is the neighbours' halo
        ph, pw = conv.padding
        return _conv(halo.padded(x, ph, pw), conv, 2)
    return forward


def _attention_forward(attn, halo: Halo, latent_rows: int):
    def forward(x):  # WanAttentionBlock.forward: this band's queries against every band's keys and values
        identity = x
        b, c, t, h, w = x.size()
        if h % latent_rows:
            raise InternalError(f"attention on {h} rows of a band of {latent_rows} latent rows")
        x = attn.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        qkv = attn.to_qkv(x)  # [B*T, 3C, h, W]
        q = qkv[:, :c].reshape(b * t, 1, c, h * w).permute(0, 1, 3, 2)
        kv = halo.gather_rows(qkv[:, c:], h // latent_rows)  # [B*T, 2C, H, W]: the whole frame
        kv = kv.reshape(b * t, 1, 2 * c, -1).permute(0, 1, 3, 2).contiguous()
        k, v = kv.chunk(2, dim=-1)
        x = F.scaled_dot_product_attention(q.contiguous(), k, v)
        x = attn.proj(x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + identity
    return forward


@contextlib.contextmanager
def _patched(decoder: nn.Module, halo: Halo, latent_rows: int):
    """``decoder``'s spatial convolutions and attention run banded (instance ``forward``s) inside the block; the
    class forwards are back afterwards, whatever happens."""
    akw = _modules()
    swapped = []
    for m in decoder.modules():
        fwd = None
        if isinstance(m, akw.WanCausalConv3d) and m._padding[2] > 0:
            fwd = _conv3d_forward(m, halo)
        elif isinstance(m, nn.Conv2d) and m.padding[0] > 0:
            fwd = _conv2d_forward(m, halo)
        elif isinstance(m, akw.WanAttentionBlock):
            fwd = _attention_forward(m, halo, latent_rows)
        if fwd is not None:
            m.forward = fwd
            swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def decode_band(vae, z: torch.Tensor, comm: Comm) -> torch.Tensor:
    """This rank's band of the whole decode of ``z`` [1, C, F', h, w] (every rank passes the whole latents): the
    pixels [1, 3, F, rows, W] (unpatchified, clamped to [-1, 1], on z's device), as ``vae.decode(z)`` would give
    them for this band's rows."""
    bands = band_rows(z.shape[3], comm.size)
    a, b = bands[comm.rank]
    halo = Halo(comm, bands)
    zb = z[:, :, :, a:b]
    with torch.no_grad(), _patched(vae.decoder, halo, b - a):
        vae.clear_cache()
        x = vae.post_quant_conv(zb)
        frames = []
        for i in range(zb.shape[2]):
            vae._conv_idx = [0]
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                      first_chunk=i == 0))
        vae.clear_cache()
        out = torch.cat(frames, dim=2)
    if vae.config.patch_size is not None:
        out = _modules().unpatchify(out, patch_size=vae.config.patch_size)
    return out.clamp(-1.0, 1.0)


class BandDecode:
    """A family's whole decode run in bands: ``vae`` and ``z`` (as its ``decode`` would pass them to
    ``vae.decode``), ``finish`` applied to the assembled video (dtype, clamp)."""

    def __init__(self, vae, z: torch.Tensor, finish=None):
        self.vae, self.z, self.finish = vae, z, finish or (lambda v: v)

    def run(self, comm: Comm, out_device="cpu") -> torch.Tensor | None:
        """Every rank of ``comm``: its band, gathered to rank 0; rank 0 gets the video (on ``out_device``), the others
        None."""
        band = decode_band(self.vae, self.z, comm).to(out_device)
        got = comm.gather_to(band, dst=0)
        del band
        return self.finish(torch.cat(got, dim=3)) if comm.rank == 0 else None
