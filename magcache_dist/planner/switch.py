"""The planner's cost of Wan2.2 A14B's expert switch without FSDP, as the run makes it (families/wan22.py
``PlacedExperts``, families/expert_swap.py).

Where the device holds one expert, the other's blocks wait in pinned host memory and the two trade places block by
block: slot ``i`` goes to the host and the other expert's block ``i`` comes in, both copies on one side stream
(``2 x block bytes / host_link_bandwidth`` per block). During the high-noise expert's last computed call (MagCache
announces its schedule; other policies: the last call before the switch, if computed) each block is traded as soon
as it has run, behind the blocks after it, and the low-noise expert's first computed call waits only for a block
whose copy is still in flight ("prefetched"); otherwise every slot is traded when that call reaches its blocks,
which wait one by one ("streamed"). The last computed call of a video trades back the same way for the next video
of the group (none after the last). ``exposed`` is what the copies add to the sampling time (a per-block
pipeline: the copy engine against the block compute of ``time_s.blocks_compute_per_call``); ``hidden`` the rest.
"""
from __future__ import annotations

HOST_LINK_BANDWIDTH = 25e9  # bytes/s per direction when a profile gives no host_link_bandwidth (planner/phases.py)


def block_params(fig) -> int:
    """Parameters of one Wan block (self- and cross-attention with their q / k RMSNorms and biases, the affine
    cross-attention norm, the FFN, the modulation): 351,394,304 for the 14B dims."""
    d, f = fig.dim, fig.ffn_dim
    return 8 * d * d + 8 * d + 4 * d + 2 * d + 2 * d * f + f + d + 6 * d


def resident_params(fig, resident: int) -> int:
    """Weights a rank holds on its device: every expert it keeps, or (one resident) that expert plus the other's
    embeddings and head, which stay on the device."""
    if fig.experts == 1 or resident == fig.experts:
        return fig.params * resident
    return fig.params + (fig.params - fig.num_layers * block_params(fig))


def pipeline_exposed(layers: int, copy_s: float, block_s: float, prefetch: bool, gap_s: float = 0.0) -> float:
    """Seconds the incoming expert's first computed call waits for its blocks. ``prefetch``: block ``i``'s copy
    starts once block ``i`` of the outgoing expert's last call has run (its blocks from 0, the incoming call
    ``gap_s`` after them); else every copy starts at the incoming call."""
    ready, t_copy = [], 0.0
    for i in range(layers):
        start = (i + 1) * block_s if prefetch else 0.0
        t_copy = max(t_copy, start) + copy_s
        ready.append(t_copy)
    t = (layers * block_s + gap_s) if prefetch else 0.0
    waited = 0.0
    for i in range(layers):
        waited += max(0.0, ready[i] - t)
        t = max(t, ready[i]) + block_s
    return waited


def switch_cost(fig, profile, dtype_bytes: int, time_s: dict, calls: list, switch_step: int | None,
                resident: int, videos: int, announced: bool) -> dict | None:
    """The plan's ``experts.switch``: None for one-expert models; ``mode``: "both resident" (nothing moves) or
    "one resident" with the bytes and seconds of a trade and, per video, its exposed and hidden parts.
    ``calls``: this rank's calls in order, (step, computed); ``announced``: the cache policy tells the model its
    schedule before sampling (MagCache's precomputed ratios: the trade runs during the outgoing expert's last
    computed call), else the model arms only the last call before the switch, as if computed; ``videos``: how
    many this rank's group makes (the trade back happens between two of them)."""
    if fig.experts == 1:
        return None
    if resident == fig.experts:
        return dict(mode="both resident", trades_per_video=0, exposed_s_per_video=0.0)
    layers = fig.num_layers
    block_bytes = block_params(fig) * dtype_bytes
    bw = float(profile.extra.get("host_link_bandwidth", HOST_LINK_BANDWIDTH))
    copy_s = 2 * block_bytes / bw  # the slot to the host, then the other expert's block in (one side stream)
    block_s = (time_s["blocks_compute_per_call"] + time_s["blocks_comm_per_call"]) / layers
    trade_s = layers * copy_s

    def one(outgoing: list, incoming: list) -> dict:
        """``outgoing``: the outgoing expert's calls; ``incoming``: the calls after them up to the first computed
        one of the incoming expert (the next video's first call for a trade back)."""
        computed = [n for n, (_, c) in enumerate(outgoing) if c]
        prefetch = bool(computed) and (announced or outgoing[-1][1])
        between = outgoing[computed[-1] + 1:] if prefetch else []
        skipped_before = between + [c for c in incoming if not c[1]]
        gap = time_s["embed_head_per_call"] + len(skipped_before) * time_s["per_skipped_call"]
        exposed = pipeline_exposed(layers, copy_s, block_s, prefetch, gap)
        return dict(prefetched=prefetch, exposed_s=exposed, hidden_s=trade_s - exposed)

    high = [c for c in calls if switch_step is not None and c[0] < switch_step]
    low = [c for c in calls if switch_step is None or c[0] >= switch_step]
    at_switch = one(high, low)
    back = one(low, high[:1])  # the next video's first call (computed: the retention steps)
    backs = (videos - 1) / videos if videos > 0 else 0.0  # trades back that a next video waits for, per video
    return dict(mode="one resident", block_bytes=block_bytes, trade_bytes=2 * layers * block_bytes,
                host_link_bandwidth=bw, copy_s_per_block=copy_s, block_compute_s=block_s, trade_s=trade_s,
                synchronous_s=trade_s, switch=at_switch, trade_back=back, trades_per_video=1 + backs,
                exposed_s_per_video=at_switch["exposed_s"] + backs * back["exposed_s"],
                host_bytes=layers * block_bytes + block_bytes)
