"""Ring attention's fused-kernel path (issue 26, item 3), tested on the CPU: everything but the CUDA kernel call.

On CUDA each ring block goes through a fused kernel in the model dtype (``cuda_block_kernel``: flash, else the
memory-efficient kernel) inside ``fused_attention_with_lse``, which cuts each batch item's padding keys, handles
blocks with no valid key, upcasts the block output and merges in fp32. Here the kernel is replaced by the math path
(``math_block_kernel``), so the (out, lse) pairs the merge sees are the current path's, and by the same math with
its output rounded to bf16, which is what a bf16 fused kernel hands back.
"""
import torch

from magcache_dist.parallel.attention import (
    attention_with_lse,
    cuda_block_kernel,
    fp32_attention_with_lse,
    fused_attention_with_lse,
    math_block_kernel,
    merge_partials,
)

BF16 = torch.bfloat16


def _qkv(b=2, length=50, heads=4, dh=8, seed=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, length, heads, dh, generator=g).to(dtype) for _ in range(3)]


def math_kernel(qh, kh, vh):
    return math_block_kernel(qh, kh, vh)


def rounding_kernel(qh, kh, vh):
    """fp32 statistics and accumulation, output rounded to the inputs' dtype, lse fp32: a fused bf16 kernel."""
    out, lse = math_block_kernel(qh, kh, vh)
    return out.to(qh.dtype), lse


# all valid; partly padded; one batch item partly padded and the other wholly; all padding; no k_lens
CASES = ((torch.tensor([50, 50]), 0), (torch.tensor([30, 30]), 0), (torch.tensor([30, 60]), 40),
         (torch.tensor([10, 10]), 20), (None, 0))


def test_fused_path_with_the_math_kernel_equals_the_fp32_path_on_masked_ragged_and_dead_blocks():
    q, k, v = _qkv()
    calls = []

    def counting(qh, kh, vh):
        calls.append(kh.shape[2])
        return math_kernel(qh, kh, vh)

    for k_lens, off in CASES:
        calls.clear()
        out, lse = fused_attention_with_lse(q, k, v, k_lens, off, counting)
        ref, ref_lse = fp32_attention_with_lse(q, k, v, k_lens, off)
        assert out.dtype == lse.dtype == torch.float32 and out.shape == ref.shape and lse.shape == ref_lse.shape
        assert (out - ref).abs().max() < 1e-5, (k_lens, off)
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.equal(lse == float("-inf"),
                                                                                   ref_lse == float("-inf"))
        assert (lse - ref_lse).nan_to_num(0).abs().max() < 1e-5
        # the kernel sees only valid keys: one call when the items agree, one per item with keys otherwise
        expected = {(None, 0): [50], (50, 0): [50], (30, 0): [30], (30, 40): [20], (10, 20): []}
        key = (None if k_lens is None else int(k_lens[0]), off)
        assert calls == expected[key], (key, calls)


def test_ring_merge_of_fused_blocks_equals_full_attention_fp32():
    q, k, v = _qkv(length=60)
    k_lens = torch.tensor([60, 47])  # the second item's last block is partly padding
    full, full_lse = fp32_attention_with_lse(q, k, v, k_lens, 0)
    out = lse = None
    for b0 in range(0, 60, 20):  # three ring blocks, merged in the order a ring rank sees them
        o, l_ = fused_attention_with_lse(q, k[:, b0:b0 + 20], v[:, b0:b0 + 20], k_lens, b0, math_kernel)
        out, lse = (o, l_) if out is None else merge_partials(out, lse, o, l_)
    assert (out - full).abs().max() < 1e-5 and (lse - full_lse).abs().max() < 1e-5


def test_ring_merge_of_bf16_block_outputs_is_within_the_largest_block_rounding():
    """The merge is a convex combination of the block outputs (weights exp(lse_b - lse), summing to 1), so rounding
    each block's output to bf16 moves the merged fp32 result by at most the largest block rounding error, element
    by element; then the one rounding to bf16 at the end of the op."""
    q, k, v = _qkv(length=60, dtype=BF16)
    k_lens = torch.tensor([60, 53])
    blocks = [(b0, b0 + 20) for b0 in (40, 0, 20)]  # rank 1's order of a ring of 3
    exact = out32 = lse32 = out = lse = None
    worst = torch.zeros(2, 60, 4, 8)
    for lo, hi in blocks:
        o32, l32 = fused_attention_with_lse(q, k[:, lo:hi], v[:, lo:hi], k_lens, lo, math_kernel)
        o, l_ = fused_attention_with_lse(q, k[:, lo:hi], v[:, lo:hi], k_lens, lo, rounding_kernel)
        assert torch.equal(l_, l32) and torch.equal(o, o32.to(BF16).float())  # only the output is rounded
        worst = torch.maximum(worst, (o - o32).abs())
        out32, lse32 = (o32, l32) if out32 is None else merge_partials(out32, lse32, o32, l32)
        out, lse = (o, l_) if out is None else merge_partials(out, lse, o, l_)
    assert ((out - out32).abs() <= worst + 1e-6).all()
    assert torch.equal(lse, lse32)
    exact = fp32_attention_with_lse(q, k, v, k_lens, 0)[0]
    assert (out32 - exact).abs().max() < 1e-5
    assert (out - out32).abs().max() > 0  # the rounding is real: this is not the fp32 path


def test_attention_with_lse_keeps_the_cpu_path_and_takes_a_given_kernel():
    q, k, v = _qkv(dtype=BF16)
    k_lens = torch.tensor([30, 60])
    out, lse = attention_with_lse(q, k, v, k_lens, 10)
    ref, ref_lse = fp32_attention_with_lse(q, k, v, k_lens, 10)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)  # CPU, no kernel: the fp32 path, bit for bit
    out, lse = attention_with_lse(q, k, v, k_lens, 10, kernel=rounding_kernel)
    ref, ref_lse = fused_attention_with_lse(q, k, v, k_lens, 10, rounding_kernel)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_cuda_block_kernel_falls_back_to_the_math_path_where_no_fused_kernel_runs():
    """On CPU tensors neither CUDA kernel exists (NotImplementedError, a RuntimeError), so the chain ends at the
    fp32 math path: the same result the fused kernels give within their rounding."""
    q, k, v = (t.transpose(1, 2) for t in _qkv(dtype=BF16))
    out, lse = cuda_block_kernel(q, k, v)
    ref, ref_lse = math_block_kernel(q, k, v)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
