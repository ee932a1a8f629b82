"""Sequence-parallel attention ops, swapped into the model's ``attn_op`` seams from outside.

q/k/v arrive as this rank's sequence shard [B, L/P, N, Dh]; ``k_lens`` is the global number of real tokens.
- Ulysses: all-to-all trades heads for sequence, full-sequence attention on N/P heads, all-to-all back.
- Ring: K/V shards travel around the ring point to point; partial results merge by log-sum-exp.
- USP: Ulysses inside each ring chunk, ring across chunks.

Precision (models/attention.py states the policy): Ulysses runs the single process's own kernel call on the same
tokens (``unpadded_attention``), bit-identical in any dtype. Ring keeps its partial outputs and log-sum-exps in
fp32 through every merge and rounds to the model dtype once; its blocks compute
- on CUDA: with a fused kernel in the model dtype (flash attention, else the memory-efficient kernel; fp32
  statistics and accumulation, as the single process's kernel), whose block output is rounded to the model dtype
  once before the fp32 merge (``fused_attention_with_lse``);
- elsewhere: in fp32 from the exactly upcast q/k/v (``fp32_attention_with_lse``: the CPU's fused kernel in fp32).
The all-to-alls and the ring's K/V messages carry the model dtype unchanged (no cast on the wire).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from magcache_dist.errors import InternalError
from magcache_dist.parallel.comm import Comm
from models.attention import key_padding_mask, unpadded_attention


def attention_with_lse(q, k, v, k_lens, k_offset: int, q_block: int = 4096, kernel=None):
    """Exact attention of q over one K/V block plus its log-sum-exp; the output is fp32 whatever the input dtype.

    q [B, Lq, N, Dh], k/v [B, Lk, N, Dh]; keys at global positions >= k_lens are masked.
    Returns out [B, Lq, N, Dh] (fp32) and lse [B, N, Lq] (fp32, -inf where no key is valid).
    ``kernel`` None picks by device: on CUDA a fused kernel in the model dtype (``fused_attention_with_lse`` with
    ``cuda_block_kernel``), elsewhere ``fp32_attention_with_lse``. A kernel given here (``kernel(qh, kh, vh) ->
    (out, lse)``, see ``fused_attention_with_lse``) runs on any device: tests pass the CPU's fused kernel.
    """
    if kernel is None and q.device.type == "cuda":
        kernel = cuda_block_kernel
    if kernel is not None:
        return fused_attention_with_lse(q, k, v, k_lens, k_offset, kernel)
    return fp32_attention_with_lse(q, k, v, k_lens, k_offset, q_block)


def fp32_attention_with_lse(q, k, v, k_lens, k_offset: int, q_block: int = 4096):
    """The fp32 block path (CPU and any device without CUDA's fused kernels).

    The upcast of bf16 / fp16 inputs is exact, so the scores are what a fused kernel accumulates in fp32 from the
    same inputs; the partial output stays fp32 until the caller's last merge (rounding each block would add one
    rounding per block). On CPU this is torch's fused flash kernel (which returns the log-sum-exp) in fp32;
    elsewhere a math path that processes queries in blocks of ``q_block`` to bound the score matrix.
    """
    mask = key_padding_mask(k_lens, k.shape[1], k_offset)  # [B, 1, 1, Lk] bool or None
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, N, L, Dh]
    dead = None if mask is None else ~mask.any(dim=-1)  # [B, 1, 1]: the whole block is padding
    if q.device.type == "cpu":
        bias = None if mask is None else torch.zeros(mask.shape, dtype=qh.dtype).masked_fill(~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, False, attn_mask=bias)
    else:
        out, lse = math_block_kernel(qh, kh, vh, mask, q_block)
    if dead is not None and bool(dead.any()):
        lse = lse.masked_fill(dead, float("-inf"))
        out = out.masked_fill(dead.unsqueeze(-1), 0.0)
    return out.transpose(1, 2), lse


def math_block_kernel(qh, kh, vh, mask=None, q_block: int = 4096):
    """Attention and log-sum-exp as plain matrix products in fp32, [B, N, L, Dh] layout, queries in blocks of
    ``q_block`` (bounds the score matrix); ``mask`` [B, 1, 1, Lk] bool (True = valid key) or None."""
    qh, kh, vh = qh.float(), kh.float(), vh.float()
    scale = qh.shape[-1] ** -0.5
    outs, lses = [], []
    for q0 in range(0, qh.shape[2], q_block):
        sc = (qh[:, :, q0:q0 + q_block] @ kh.transpose(-1, -2)) * scale  # [B, N, lq, Lk]
        if mask is not None:
            sc = sc.masked_fill(~mask, float("-inf"))
        l_ = torch.logsumexp(sc, dim=-1)
        outs.append(torch.exp(sc - l_.unsqueeze(-1)).nan_to_num(0.0) @ vh)
        lses.append(l_)
    return torch.cat(outs, 2), torch.cat(lses, -1)


def cuda_block_kernel(qh, kh, vh):
    """One unmasked block through CUDA's fused SDPA kernels in the inputs' dtype, [B, N, L, Dh] layout: flash
    attention (fp16 / bf16, head dim a multiple of 8 up to 256, sm80+), else the memory-efficient kernel (any
    float dtype, fp32 included; its log-sum-exp is padded to a multiple of 32 queries and cut here), else the fp32
    math path. Both kernels keep the softmax statistics and the accumulation in fp32 and return the output in the
    inputs' dtype and the log-sum-exp (natural log of the scaled scores) in fp32."""
    dh = qh.shape[-1]
    if qh.dtype in (torch.float16, torch.bfloat16) and dh % 8 == 0 and dh <= 256:
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qh, kh, vh)[:2]
            return out, lse
        except RuntimeError:  # this GPU / build has no flash kernel for these inputs: the next kernel
            pass
    try:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qh, kh, vh, None, True)[:2]
        return out, lse[..., :qh.shape[2]]
    except RuntimeError:
        return math_block_kernel(qh, kh, vh)


def cpu_block_kernel(qh, kh, vh):
    """The CPU's fused flash kernel in the inputs' dtype (fp32 statistics and accumulation, output in the inputs'
    dtype, log-sum-exp fp32): the CUDA path's arithmetic on a CPU, for tests and measurements."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, False)


def fused_attention_with_lse(q, k, v, k_lens, k_offset: int, kernel):
    """One K/V block through a fused kernel in the model dtype, the result as ``attention_with_lse`` returns it.

    Fused kernels take no key mask here: padding sits at the end of the global sequence, so the valid keys of a
    block are a prefix of it for every batch item (``k_lens - k_offset`` of them, clamped to [0, Lk]); the kernel
    runs on that prefix (one call when every item has the same count, one per item otherwise), and a block with
    no valid key gives out 0, lse -inf. The kernel's output (the model dtype: the one rounding of this block) is
    upcast to fp32 for the caller's fp32 merge; the log-sum-exp is fp32 as the kernel returns it.
    """
    b, lq, n, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[1]
    valid = [lk] * b if k_lens is None else [min(max(int(x) - k_offset, 0), lk) for x in k_lens.tolist()]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, L, Dh]

    def run(rows: slice, m: int):
        if m == 0:
            nb = rows.stop - rows.start
            return (q.new_zeros(nb, n, lq, v.shape[-1], dtype=torch.float32),
                    q.new_full((nb, n, lq), float("-inf"), dtype=torch.float32))
        o, l_ = kernel(qh[rows], kh[rows, :, :m], vh[rows, :, :m])
        return o.float(), l_.float()

    if len(set(valid)) == 1:
        out, lse = run(slice(0, b), valid[0])
    else:
        parts = [run(slice(i, i + 1), m) for i, m in enumerate(valid)]
        out, lse = torch.cat([o for o, _ in parts]), torch.cat([l_ for _, l_ in parts])
    return out.transpose(1, 2), lse


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Combine two partial softmax-attention results over disjoint key sets (fp32 in, fp32 out)."""
    lse = torch.logaddexp(lse_a, lse_b)
    finite = torch.isfinite(lse)
    wa = torch.where(finite, torch.exp(lse_a - lse), torch.zeros_like(lse))
    wb = torch.where(finite, torch.exp(lse_b - lse), torch.zeros_like(lse))

    def w(x):  # [B, N, L] -> [B, L, N, 1]
        return x.transpose(1, 2).unsqueeze(-1)

    return out_a * w(wa) + out_b * w(wb), lse


class RingAttention(nn.Module):
    """Ring attention over ``comm``: the rank's chunk index is comm.rank, chunk length Lc = q.shape[1].
    ``block_kernel``: None picks by device (``attention_with_lse``); a kernel given runs every block through it."""

    def __init__(self, comm: Comm, block_kernel=None):
        super().__init__()
        self.comm, self.block_kernel = comm, block_kernel

    def extra_repr(self):
        return f"ring_degree={self.comm.size}"

    def forward(self, q, k, v, k_lens=None, base_offset: int = 0):
        p, r, lc = self.comm.size, self.comm.rank, k.shape[1]
        kv = torch.stack([k, v])  # travels as one message
        out = lse = None
        for s in range(p):
            src = (r - s) % p  # whose K/V we hold now
            o, l = attention_with_lse(q, kv[0], kv[1], k_lens, base_offset + src * lc, kernel=self.block_kernel)
            out, lse = (o, l) if out is None else merge_partials(out, lse, o, l)
            if s + 1 < p:
                kv = self.comm.ring_shift(kv)
        return out.to(q.dtype)


def _seq_to_heads(x, comm: Comm):
    """[B, Ls, N, Dh] sequence shard -> [B, P*Ls, N/P, Dh] full (chunk) sequence on a head slice."""
    parts = comm.all_to_all(list(x.chunk(comm.size, dim=2)))  # part from rank j: its seq shard, my heads
    return torch.cat(parts, dim=1)


def _heads_to_seq(x, comm: Comm):
    """Inverse of _seq_to_heads."""
    parts = comm.all_to_all(list(x.chunk(comm.size, dim=1)))  # part from rank j: my seq shard, its heads
    return torch.cat(parts, dim=2)


class UlyssesAttention(nn.Module):
    """Ulysses all-to-all around an inner op (local attention, or ring attention for USP)."""

    def __init__(self, comm: Comm, ring: RingAttention | None = None):
        super().__init__()
        self.comm, self.ring = comm, ring

    def extra_repr(self):
        return f"ulysses_degree={self.comm.size}"

    def forward(self, q, k, v, k_lens=None):
        if q.shape[2] % self.comm.size:
            raise InternalError(f"ulysses_degree={self.comm.size} does not divide num_heads={q.shape[2]}")
        q, k, v = (_seq_to_heads(t, self.comm) for t in (q, k, v))  # [B, P*Ls, N/P, Dh]
        if self.ring is not None:
            out = self.ring(q, k, v, k_lens)
        else:
            out = unpadded_attention(q, k, v, k_lens)  # the single process's call on its tokens
        return _heads_to_seq(out, self.comm)
