"""Analytic cost of one generation job per rank: tokens, FLOPs, bytes moved, memory, and time on a device profile.

Everything follows the code paths of this repository (models/wan.py, magcache_dist/parallel, sampling/loop.py);
other families give their own figures (ModelFamily.cost_figures):
- tokens: the latent grid divided by the patch size; SP pads the sequence to a multiple of the SP degree and each
  rank computes ``chunk = ceil(L / sp)`` tokens (padding included).
- per block and computed call, per rank (B = 1, D dim, Fh FFN dim, T text_len, Lp padded tokens, c = chunk):
  GEMMs 2*c*D*D*(4 self + 2 cross q/o) + 2*2*c*D*Fh (FFN), + 2*2*T*D*D (cross k/v, on every rank) unless the model
  prepares its text once per generation (Wan: then the k/v of every block and the text embedding, 2*T*(Dt*D + D*D),
  are costed once per branch, and neither computed nor skipped calls redo them; without: the text embedding is part
  of every call);
  attention 4*c*Lp*D (self, QK^T and PV: Ulysses and ring give every rank the same share) + 4*c*T*D (cross);
  elementwise traffic ~ ELEMENTWISE_PASSES reads+writes of c*D values plus the FFN activation (memory bound).
- communication per block and computed call, bytes leaving a rank (the convention of Comm.bytes_sent):
  Ulysses: 4 all-to-alls (q, k, v in; out back) of c*D*b*(u-1)/u; ring: (r-1) shifts of K and V, 2*c*D*b each;
  per call (computed or not): the gather of the head output c*C*prod(patch)*b*(sp-1) and the 32-byte consensus
  all-reduce 32*(sp-1); per step with cfg_degree 2: the all-gather of the fp32 prediction.
- time: GEMM FLOPs / gemm rate + attention FLOPs / (peak * attention_efficiency) + elementwise
  bytes / memory bandwidth + kernels * op_overhead + bytes / (link bandwidth * link_efficiency) + messages *
  latency. No overlap of compute and communication is assumed (the code does not overlap them). The GEMM rate is
  peak * gemm_efficiency * rows / (rows + gemm_half_rows) at the GEMMs' row count (a measured profile gives
  gemm_half_rows per dtype: GEMMs of few rows, e.g. a few hundred tokens per rank, run below the peak).
- ring attention (ring_degree > 1) is costed on the block path that runs on the profile's device
  (magcache_dist/parallel/attention.py; ``ring_path``): CUDA, the fused kernel in the model dtype at the
  attention rate; CPU, the CPU's fused kernel on fp32 upcasts at the fp32 attention rate plus the upcasts; any
  other device, fp32 matrix products at the fp32 GEMM rate plus the score matrix's traffic. Every path adds the
  fp32 merges of the partial outputs (RING_MERGE_PASSES per block).
Not modelled: the text encoder and the VAE (outside the DiT), weight loading, process start-up.
"""
from __future__ import annotations

import math

from magcache_dist.families.base import CostFigures
from magcache_dist.planner.profiles import DeviceProfile

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ELEMENTWISE_PASSES = 40  # reads + writes of [c, D] tensors per block outside GEMMs/attention (norms, RoPE, gates)
PREPARE_PASSES = 8  # reads + writes of [T, D] per block while preparing the text keys (the fp32 RMSNorm of k)
# torch ops dispatched per block / per embed / per head+unpatchify (counted with a TorchDispatchMode on the Wan DiT;
# a test keeps these in sync with models/wan.py; the other families are costed with the same counts)
KERNELS_PER_BLOCK, KERNELS_EMBED, KERNELS_HEAD = 123, 75, 15
# ring attention (magcache_dist/parallel/attention.py): fp32 reads + writes of the [rows, D/u] partial output per
# ring block (the block output upcast, both partials read and the merged one written, the merge weights), and of
# the [rows, keys] score matrix per block on the math path (product, mask, log-sum-exp, exp, the P.V read)
RING_MERGE_PASSES, MATH_SCORE_PASSES = 6, 6


def ring_path(profile: DeviceProfile) -> str:
    """The ring block path that runs on ``profile``'s device: ``fused`` (CUDA: flash / memory-efficient SDPA in
    the model dtype), ``cpu_fp32`` (the CPU's fused kernel on fp32 upcasts) or ``math`` (fp32 matrix products)."""
    return {"cuda": "fused", "cpu": "cpu_fp32"}.get(profile.device_type, "math")


def ring_attention_time(fig: CostFigures, dims, profile: DeviceProfile, dtype: str, chunk: int,
                        ring_flops: float) -> tuple[float, str]:
    """Seconds of one block's ring attention on one rank (``ring_flops``: its QK^T and PV FLOPs), and the path.
    Per rank the ring's queries are the Ulysses chunk (u * chunk tokens, plus the text for joint attention) on
    N/u heads: [rows, D/u] per partial output."""
    d, u, r, b = fig.dim, dims.ulysses_degree, dims.ring_degree, DTYPE_BYTES[dtype]
    rows = u * chunk + (fig.text_tokens if fig.text_mode == "joint" else 0)
    out_elems = rows * (d // u)
    path = ring_path(profile)
    traffic = r * RING_MERGE_PASSES * out_elems * 4
    if path == "fused":
        rate = profile.peak(dtype) * profile.efficiency("attention", dtype)
    elif path == "cpu_fp32":
        rate = profile.peak("float32") * profile.efficiency("attention", "float32")
        traffic += r * 3 * out_elems * (b + 4)  # q, k and v upcast for every block
    else:
        rate = profile.gemm_rate("float32", rows)
        traffic += r * 3 * out_elems * (b + 4) + MATH_SCORE_PASSES * 4 * ring_flops / (4 * (d // fig.num_heads))
    return ring_flops / rate + traffic / profile.elementwise_bandwidth("float32"), path


def block_costs(fig: CostFigures, chunk: int, padded: int, dtype_bytes: int, prepared: bool = False) -> dict:
    """FLOPs and memory traffic of one block on one rank. Cross (Wan, Open-Sora): 4 self + 2 cross q/o GEMMs per
    image token, cross k/v over the text tokens, the FFN. Joint (FLUX, HunyuanVideo): the text tokens go through
    every block beside the image tokens (qkv + out and the MLP), and attention runs over image + text keys.
    ``self_attention_flops``: the part of ``attention_flops`` that goes through the SP attention op (ring
    included); for joint attention all of it."""
    d, fh, t = fig.dim, fig.ffn_dim, fig.text_tokens
    span = fig.attention_span if fig.attention_span is not None else padded
    if fig.text_mode == "joint":
        rows = chunk + t
        return dict(gemm_flops=2 * rows * d * d * 4 + 2 * 2 * rows * d * fh,
                    attention_flops=4 * rows * (span + t) * d, self_attention_flops=4 * rows * (span + t) * d,
                    elementwise_bytes=(ELEMENTWISE_PASSES * rows * d + 2 * rows * fh) * dtype_bytes)
    return dict(
        gemm_flops=2 * chunk * d * d * 6 + (0 if prepared else 2 * 2 * t * d * d) + 2 * 2 * chunk * d * fh,
        attention_flops=4 * chunk * span * d + 4 * chunk * t * d, self_attention_flops=4 * chunk * span * d,
        elementwise_bytes=(ELEMENTWISE_PASSES * chunk * d + 2 * chunk * fh) * dtype_bytes,
    )


def comm_costs(fig: CostFigures, dims, chunk: int, dtype_bytes: int, latent_numel: int, guard: bool) -> dict:
    """Bytes leaving one rank, and message counts, per computed block, per call and per step."""
    d, u, r, sp = fig.dim, dims.ulysses_degree, dims.ring_degree, dims.sp_degree
    a2a = chunk * d * dtype_bytes * (u - 1) // u if u > 1 else 0  # one all-to-all (Comm's count)
    ring = 2 * chunk * d * dtype_bytes if r > 1 else 0  # one ring shift of K and V
    out_ch = fig.out_channels * math.prod(fig.patch_size)
    return dict(
        ulysses_bytes_per_block=4 * a2a, ulysses_msgs_per_block=4 if u > 1 else 0,
        ring_bytes_per_block=(r - 1) * ring, ring_msgs_per_block=r - 1,
        sp_bytes_per_call=(chunk * out_ch * dtype_bytes * (sp - 1) + (32 * (sp - 1) if guard else 0)) if sp > 1 else 0,
        sp_msgs_per_call=(1 + (1 if guard else 0)) if sp > 1 else 0,
        cfg_bytes_per_step=latent_numel * 4 * (dims.cfg_degree - 1), cfg_msgs_per_step=1 if dims.cfg_degree > 1 else 0,
    )


def memory_per_rank(fig: CostFigures, n_params: int, chunk: int, padded: int, dims, dtype_bytes: int,
                    latent_numel: int, cached_branches: int, ring_q_block: int = 4096, prepared_branches: int = 0,
                    ring: str = "math") -> dict:
    """Bytes resident on one rank at the peak of a block (inference, no autograd). ``ring``: the ring block path
    (``ring_path``): only the math path holds a score matrix ([ring_q_block, keys] per head, and its exp); the
    fused paths hold the fp32 partial outputs (and, on the CPU, the fp32 upcasts of q, k and v)."""
    d, fh, u, r = fig.dim, fig.ffn_dim, dims.ulysses_degree, dims.ring_degree
    heads_local = fig.num_heads // u
    act = dict(
        tokens_and_block_io=3 * chunk * d * dtype_bytes,
        modulation_fp32=2 * chunk * d * 4,
        qkv_and_ulysses_buffers=(3 + (3 if u > 1 else 0)) * chunk * d * dtype_bytes,
        rope_float64=2 * chunk * d * 8,
        ffn_hidden=2 * chunk * fh * dtype_bytes,
        ring_scores=((min(ring_q_block, u * chunk) * u * chunk * heads_local * 4 * 2 if ring == "math" else 0)
                     + 2 * 2 * u * chunk * (d // u) * 4 + (3 * u * chunk * (d // u) * 4 if ring != "fused" else 0))
        if r > 1 else 0,
        embed_full_sequence=padded * d * dtype_bytes + padded * (d // fig.num_heads // 2) * 16,
        cached_residuals=cached_branches * chunk * d * dtype_bytes,
        prepared_text=prepared_branches * (2 * fig.num_layers + 1) * fig.text_tokens * d * dtype_bytes,
        latents_and_solver=6 * latent_numel * 4,
    )
    return dict(weights=n_params * dtype_bytes, activations=act, activations_total=sum(act.values()),
                total=n_params * dtype_bytes + sum(act.values()))


def token_layout(fig: CostFigures, latent: tuple[int, int, int, int], sp: int) -> tuple[tuple, int, int]:
    """The patch grid of a latent [C, F, H, W] (its product: the image tokens), the tokens per rank of ``sp``
    sequence-parallel ranks (the sequence padded to a multiple of ``sp``), and the padded length."""
    grid = tuple(n // p for n, p in zip(latent[1:], fig.patch_size))
    chunk = -(-math.prod(grid) // sp)
    return grid, chunk, chunk * sp


def estimate(fig: CostFigures, dims, profile: DeviceProfile, *, dtype: str, latent: tuple[int, int, int, int],
             num_steps: int, calls_per_rank: list[tuple[int, bool]], guard: bool = True, branches: int = 1,
             prepared: bool = False) -> dict:
    """Per-rank totals. ``calls_per_rank``: (step, computed) of every call this rank makes, in order; ``branches``:
    how many CFG branches this rank runs; ``prepared``: the model prepares its text once per generation (see
    ``CostFigures.prepared_text``; off under FSDP)."""
    b = DTYPE_BYTES[dtype]
    sp = dims.sp_degree
    grid, chunk, padded = token_layout(fig, latent, sp)
    tokens = math.prod(grid)
    latent_numel = math.prod(latent)
    blk = block_costs(fig, chunk, padded, b, prepared)
    comm = comm_costs(fig, dims, chunk, b, latent_numel, guard)
    peak = profile.peak(dtype)
    link = profile.link_bandwidth * profile.link_efficiency

    attn_rate = peak * profile.efficiency("attention", dtype)

    def compute_time(gemm, attn, elem, kernels, rows):
        """``rows``: the GEMMs' row count (tokens on this rank), which sets their rate (profile.gemm_rate)."""
        return (gemm / profile.gemm_rate(dtype, rows) + attn / attn_rate + elem / profile.elementwise_bandwidth(dtype)
                + kernels * profile.op_overhead_s)

    layers = fig.num_layers
    block_rows = chunk + (fig.text_tokens if fig.text_mode == "joint" else 0)
    ring_s, path = (0.0, None)
    local_attn = blk["attention_flops"]
    if dims.ring_degree > 1:  # the ring's share runs on its own block path (ring_attention_time)
        ring_s, path = ring_attention_time(fig, dims, profile, dtype, chunk, blk["self_attention_flops"])
        local_attn -= blk["self_attention_flops"]
    blocks_s = compute_time(blk["gemm_flops"] * layers, local_attn * layers,
                            blk["elementwise_bytes"] * layers, KERNELS_PER_BLOCK * layers, block_rows) + ring_s * layers
    in_ch = fig.in_channels * math.prod(fig.patch_size)
    out_ch = fig.out_channels * math.prod(fig.patch_size)
    d, t = fig.dim, fig.text_tokens
    text_embed_flops = 2 * t * (fig.text_dim * d + d * d) if fig.text_mode == "cross" and fig.text_dim else 0
    embed_head_s = compute_time(2 * tokens * d * in_ch + 2 * chunk * d * out_ch + (0 if prepared else text_embed_flops),
                                0, (padded + 2 * chunk) * d * b + 4 * latent_numel * 4, KERNELS_EMBED + KERNELS_HEAD,
                                chunk)
    prepare_flops = branches * (text_embed_flops + layers * 2 * 2 * t * d * d) if prepared else 0
    # once per branch: every block's k / v (written) and its key RMSNorm (PREPARE_PASSES reads + writes)
    prepare_s = compute_time(prepare_flops, 0, branches * ((2 + PREPARE_PASSES) * layers + 1) * t * d * b, 4 * layers,
                             t) if prepared else 0.0
    block_comm_bytes = (comm["ulysses_bytes_per_block"] + comm["ring_bytes_per_block"]) * layers
    block_comm_msgs = (comm["ulysses_msgs_per_block"] + comm["ring_msgs_per_block"]) * layers
    block_comm_s = block_comm_bytes / link + block_comm_msgs * profile.link_latency_s if sp > 1 else 0.0
    call_comm_s = (comm["sp_bytes_per_call"] / link + comm["sp_msgs_per_call"] * profile.link_latency_s
                   if sp > 1 else 0.0)
    step_comm_s = (comm["cfg_bytes_per_step"] / link + comm["cfg_msgs_per_step"] * profile.link_latency_s
                   if dims.cfg_degree > 1 else 0.0)
    computed = sum(1 for _, comp in calls_per_rank if comp)
    total_calls = len(calls_per_rank)
    skipped = total_calls - computed
    per_computed_call = blocks_s + block_comm_s + embed_head_s + call_comm_s
    per_skipped_call = embed_head_s + call_comm_s
    sampling_s = prepare_s + computed * per_computed_call + skipped * per_skipped_call + num_steps * step_comm_s
    no_cache_s = prepare_s + total_calls * per_computed_call + num_steps * step_comm_s
    bytes_total = dict(ulysses=computed * layers * comm["ulysses_bytes_per_block"],
                       ring=computed * layers * comm["ring_bytes_per_block"],
                       sp=total_calls * comm["sp_bytes_per_call"], cfg=num_steps * comm["cfg_bytes_per_step"])
    return dict(
        tokens=tokens, latent_grid_patches=list(grid), tokens_per_rank=chunk, padded_tokens=padded,
        padding_tokens=padded - tokens,
        flops_per_computed_call=dict(gemm=blk["gemm_flops"] * layers, attention=blk["attention_flops"] * layers),
        ring_attention=dict(path=path, seconds_per_computed_call=ring_s * layers) if path else None,
        comm_per_block=comm, comm_bytes_per_computed_step_per_branch=dict(
            ulysses=layers * comm["ulysses_bytes_per_block"], ring=layers * comm["ring_bytes_per_block"],
            sp_gather_and_consensus=comm["sp_bytes_per_call"]),
        comm_bytes_total=bytes_total,
        time_s=dict(per_computed_call=per_computed_call, per_skipped_call=per_skipped_call, prepare_once=prepare_s,
                    blocks_compute_per_call=blocks_s, blocks_comm_per_call=block_comm_s,
                    embed_head_per_call=embed_head_s, sampling=sampling_s, sampling_without_cache=no_cache_s,
                    speedup=no_cache_s / sampling_s if sampling_s > 0 else 1.0),
        calls=dict(total=total_calls, computed=computed, skipped=skipped),
    )
