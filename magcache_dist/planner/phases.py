"""The whole job in the plan: every phase (``load``, ``encode``, ``sample``, ``decode``, ``write``) with its seconds
and peak device memory per rank, the total per video, and for a prompt list the total per data-parallel group and
for the job. Phases are named as in report.json (magcache_dist/phases.py), so a plan and a run compare phase by
phase.

- load: ``read_seconds``: the bytes the node's storage serves over the profile's ``storage_bandwidth`` plus the
  bytes this rank copies out of the page cache into its tensors over ``host_read_bandwidth`` (plus, on a GPU, the
  bytes it puts on the device over ``host_link_bandwidth``). The ranks of a data-parallel group share the reading
  (models/loading.py, magcache_dist/parallel/load_share.py): under ``parallel.fsdp`` each reads its rows of a
  sharded parameter; otherwise each reads a 1/N row block of every tensor, puts only that on its device, and the
  group all-gathers the rest over the link (``link_bandwidth`` x ``link_efficiency``: the whole model less the
  rank's block). The ranks of a node read one file: the page cache serves it to all of them, so the storage reads
  at most its size once per node (measured here: 2 readers of one file take as long as one, 2 readers of 2 files
  twice as long), while each rank pays its own copy, the node's ranks together at most at
  ``node_host_read_bandwidth`` when the profile gives one.
- encode: every encoder read once per job (``read_seconds`` as the load) and run on the group's prompts (2 x the
  parameters its matrix products use x text tokens per prompt and branch, at the GEMM rate of
  ``text_encoder.dtype``; a token embedding is a lookup, not counted). The DiT is not on the device yet
  (magcache_dist/run.py), so the peak is the largest encoder alone.
- sample: the sampling estimate (magcache_dist/planner/cost.py).
- decode: the VAE read, then its tiles (magcache_dist/parallel/vae.py) dealt over the group's ranks in rounds: each
  round costs its largest tile, at ``vae_decode_flops_per_pixel`` (the family's figure, counted with torch's
  FlopCounterMode at real size) over the GEMM rate of ``vae.dtype``, plus ``vae_pass_s`` per decoder call (a tile
  of a frame-by-frame VAE is one call per latent frame): what small tiles cost beyond their FLOPs (measured by
  magcache_dist.planner.measure). The peak: the VAE's weights and one tile's activations, plus the DiT when it
  stays on the device (it does when both fit in 90% of the device memory).
  On the row-band route (the Wan VAEs' whole decode, magcache_dist/decode.py ``decode_route``): the tallest band's
  share of the whole decode, its decoder calls (``vae_pass_s`` each, as the whole frame's), the halo rows and the
  middle block's keys/values exchanged and the bands gathered to rank 0 at the link bandwidth
  (``decode.band_decode_seconds``); the peak: the VAE's weights and one band's activations
  (``decode.band_peak_bytes``).
- write: the mp4 writer's start-up ``write_start_s`` plus the video's pixels (frames x height x width) over
  ``write_pixels_per_s``, host CPU time including the ffmpeg process, plus ``write_fork_s_per_byte`` per byte rank 0
  holds in host memory (ffmpeg is started by a fork; measured on the cpu profile; assumptions in the GPU profiles).
"""
from __future__ import annotations

import math

from magcache_dist.planner.cost import DTYPE_BYTES

# figures a profile may leave out (the GPU profiles give each, as documented assumptions)
DEFAULT_STORAGE_BANDWIDTH = 2.0e9  # bytes/s: one local NVMe drive, cold read
DEFAULT_HOST_READ_BANDWIDTH = 5.0e9  # bytes/s one rank copies out of the page cache into its tensors
DEFAULT_HOST_LINK_BANDWIDTH = 25e9  # bytes/s host -> device (PCIe 5 x16, pinned)
DEFAULT_WRITE_START_S = 0.1  # the mp4 writer's start-up (an ffmpeg process)
DEFAULT_WRITE_PIXELS_PER_S = 25e6  # pixels (frames x height x width) per second through libx264
DEFAULT_WRITE_FORK_S_PER_BYTE = 0.05e-9  # the fork that starts ffmpeg, per resident byte of the process


def decode_units(cfg, family) -> list[int]:
    """The work of each decode tile in output pixels x frames, in the order ``decode_split`` deals them."""
    v = cfg.video
    frames = 1 if family.image_model else v.frames
    if family.vae_params() == 0:  # pixel space: frames in pieces, no VAE work worth costing
        return []
    chunk = family.vae_chunk_frames()
    if chunk:  # chunks of frames, each whole (Open-Sora)
        return [min(chunk, frames - i) * v.height * v.width for i in range(0, frames, chunk)]
    th, tw = cfg.vae.tile_height, (cfg.vae.tile_height if family.image_model else cfg.vae.tile_width)
    sh, sw = cfg.vae.tile_stride_height, (cfg.vae.tile_stride_height if family.image_model
                                          else cfg.vae.tile_stride_width)
    if v.height <= th and v.width <= tw:
        return [frames * v.height * v.width]
    return [frames * min(th, v.height - i) * min(tw, v.width - j)
            for i in range(0, v.height, sh) for j in range(0, v.width, sw)]


def profile_figure(profile, key: str, default: float) -> float:
    """A job-phase figure of the profile (``storage_bandwidth``, ``write_start_s``, ...), ``default`` without one."""
    return float(profile.extra.get(key, default))


def read_seconds(rank_bytes: float, node_bytes: float, profile, device_bytes: float = 0.0,
                 node_ranks: int = 1) -> float:
    """Seconds for one rank to read ``rank_bytes`` of weights while the node's storage serves ``node_bytes``
    distinct bytes to all its ranks at once (the same file read by every rank of a node: its size, once), and to
    put ``device_bytes`` of them on a GPU. The reads are in series per tensor (read, then copy), so the parts add.
    The ``node_ranks`` ranks of a node copy at once: each at ``host_read_bandwidth``, but together at most at the
    profile's ``node_host_read_bandwidth`` (shared cores and memory; none given: no such limit)."""
    s = node_bytes / profile_figure(profile, "storage_bandwidth", DEFAULT_STORAGE_BANDWIDTH)
    node = profile_figure(profile, "node_host_read_bandwidth", float("inf"))
    s += rank_bytes / min(profile_figure(profile, "host_read_bandwidth", DEFAULT_HOST_READ_BANDWIDTH),
                          node / max(node_ranks, 1))
    if device_bytes and profile.device_type != "cpu":
        s += device_bytes / profile_figure(profile, "host_link_bandwidth", DEFAULT_HOST_LINK_BANDWIDTH)
    return s


def write_seconds(profile, frames: int, height: int, width: int, host_bytes: float = 0.0) -> float:
    """The mp4 writer (rank 0): start-up + pixels over the profile's x264 rate (host CPU time, the ffmpeg process
    included) + the fork that starts ffmpeg, which copies the page tables of the ``host_bytes`` the rank holds in
    host memory (imageio's ``preexec_fn`` rules out vfork)."""
    return (profile_figure(profile, "write_start_s", DEFAULT_WRITE_START_S)
            + frames * height * width / profile_figure(profile, "write_pixels_per_s", DEFAULT_WRITE_PIXELS_PER_S)
            + host_bytes * profile_figure(profile, "write_fork_s_per_byte", DEFAULT_WRITE_FORK_S_PER_BYTE))


def decode_passes(cfg, family) -> int:
    """Decoder calls per decode tile: a frame-by-frame VAE (Wan's causal cache) runs one per latent frame; a chunked
    or image VAE one per tile."""
    if family.image_model or family.vae_chunk_frames() or family.vae_params() == 0:
        return 1
    return family.vae_decode_calls_per_tile()


def decode_seconds(cfg, family, profile, ranks: int) -> dict:
    """The decode's compute on ``ranks`` ranks (tiles in rounds), the single-rank whole decode for comparison: FLOPs
    per pixel at the GEMM rate plus ``vae_pass_s`` per decoder call."""
    fpp = family.vae_decode_flops_per_pixel()
    rate = profile.gemm_rate(cfg.vae.dtype if cfg.vae.dtype in profile.peak_flops else "float32", 1 << 20)
    units = decode_units(cfg, family)
    passes = decode_passes(cfg, family)
    per_pass = profile_figure(profile, "vae_pass_s", 0.0) * passes if units else 0.0
    v = cfg.video
    flops_s = (1 if family.image_model else v.frames) * v.height * v.width * fpp / rate if units else 0.0
    whole = flops_s + per_pass
    from magcache_dist.decode import band_decode_seconds, decode_route

    if units and decode_route(cfg, family, ranks)[0] == "patches":  # row bands with halo exchange
        return band_decode_seconds(cfg, family, profile, ranks, flops_s, per_pass)
    parallel = cfg.vae.parallel and ranks > 1
    if not parallel and not cfg.vae.tiling:
        return dict(compute_s=whole, whole_single_rank_s=whole, tiled_single_rank_s=None, tiles=1 if units else 0,
                    rounds=1, ranks=1, passes_per_tile=passes)
    n = ranks if parallel else 1
    rounds = [units[k:k + n] for k in range(0, len(units), n)]
    return dict(compute_s=sum(max(r) for r in rounds) * fpp / rate + len(rounds) * per_pass,
                whole_single_rank_s=whole, tiled_single_rank_s=sum(units) * fpp / rate + len(units) * per_pass,
                tiles=len(units), rounds=len(rounds), ranks=n, passes_per_tile=passes)


def job_phases(cfg, family, dims, profile, sampling_s: float, mem: dict, num_videos: int) -> dict:
    """The plan's ``phases`` (per rank, first video), ``per_video`` totals and the prompt list's totals."""
    from magcache_dist.decode import decode_peak_bytes

    bw = profile_figure(profile, "storage_bandwidth", DEFAULT_STORAGE_BANDWIDTH)
    group = dims.group_size
    te_dtype = cfg.text_encoder.dtype if cfg.text_encoder.dtype in DTYPE_BYTES else "bfloat16"
    te_b = DTYPE_BYTES[te_dtype]
    vae_b = DTYPE_BYTES.get(cfg.vae.dtype, 4)
    encoders = family.encoder_params()
    fig = family.cost_figures()
    per_group = math.ceil(num_videos / dims.dp_degree)
    branches = 2 if cfg.sampler.guidance > 1 else 1
    te_rate = profile.gemm_rate(te_dtype if te_dtype in profile.peak_flops else "float32", fig.text_tokens)
    enc_compute = sum(2 * p * fig.text_tokens * branches for p in family.encoder_matmul_params().values())  # a prompt
    enc_bytes = sum(encoders.values()) * te_b
    # the DiT's checkpoint (every expert): under parallel.fsdp a rank reads its rows of each sharded parameter
    # (models/loading.py local_rows: about the weights it keeps); otherwise the group's ranks read a row block each
    # and all-gather (magcache_dist/parallel/load_share.py); a node's storage serves the file once, or the rows of
    # its ranks
    dit_bytes = fig.params * fig.experts * DTYPE_BYTES[cfg.model.dtype]
    from magcache_dist.parallel.load_share import shares_load

    if cfg.parallel.fsdp:  # the sequence-parallel group's ranks split the sharded blocks' rows
        rank_read, gather_s, shared_by = min(dit_bytes, mem["weights"]), 0.0, dims.sp_degree
    elif family.weights_converted() or not shares_load(cfg.parallel.shared_load, profile.device_type, group):
        rank_read, gather_s, shared_by = dit_bytes, 0.0, 1
    else:
        rank_read, shared_by = dit_bytes / group, group
        gather_s = (dit_bytes - rank_read) / (profile.link_bandwidth * profile.link_efficiency)
    on_device = cfg.text_encoder.device != "cpu"

    dec = decode_seconds(cfg, family, profile, group)
    vae_bytes = family.vae_params() * vae_b
    decode_need = decode_peak_bytes(cfg, family, group) if vae_bytes else 0
    stays = (not cfg.vae.offload_dit) or mem["weights"] + decode_need <= 0.9 * profile.memory_capacity
    link = profile_figure(profile, "host_link_bandwidth", DEFAULT_HOST_LINK_BANDWIDTH)
    move_s = 0.0 if stays else 2 * mem["weights"] / link  # there and back
    frames = 1 if family.image_model else cfg.video.frames
    # what rank 0 holds in host memory when it writes: on a CPU the DiT and the VAE, on a GPU the DiT if moved off
    host_held = mem["weights"] + vae_bytes if profile.device_type == "cpu" else (0 if stays else mem["weights"])
    # every rank of the job loads at its start, so a node's ranks read together (a profile's ranks_per_node: the
    # ranks of one node; none given: the whole job on one node)
    node_ranks = min(dims.world_size, int(profile.extra.get("ranks_per_node", dims.world_size)))
    node_read = min(dit_bytes, rank_read * node_ranks)
    enc_read_s = read_seconds(enc_bytes, enc_bytes, profile, enc_bytes if on_device else 0, node_ranks)
    phases = dict(
        load=dict(s=read_seconds(rank_read, node_read, profile, min(mem["weights"], rank_read), node_ranks)
                  + gather_s, peak_bytes=mem["weights"], read_bytes=rank_read, node_read_bytes=node_read,
                  node_ranks=node_ranks, read_shared_by=shared_by, gather_s=gather_s),
        encode=dict(s=enc_read_s + enc_compute * per_group / te_rate, read_s=enc_read_s,
                    peak_bytes=max(encoders.values(), default=0) * te_b if on_device else 0,
                    read_bytes=enc_bytes, prompts=per_group),
        sample=dict(s=sampling_s, peak_bytes=mem["total"]),
        decode=dict(s=read_seconds(vae_bytes, vae_bytes, profile, vae_bytes, min(group, node_ranks)) + dec["compute_s"]
                    + move_s,
                    peak_bytes=decode_need + (mem["weights"] if stays else 0),
                    read_bytes=vae_bytes, dit_on_device=stays, **dec),
        write=dict(s=write_seconds(profile, frames, cfg.video.height, cfg.video.width, host_held), peak_bytes=0,
                   rank=0, host_bytes=host_held),
    )
    once = phases["load"]["s"] + phases["encode"]["s"]
    each = sum(phases[k]["s"] for k in ("sample", "decode", "write"))
    group_s = once + per_group * each
    return dict(
        phases=phases,
        per_video=dict(first_s=once + each, later_s=each, amortised_s=group_s / per_group,
                       amortised_over_sampling=(group_s / per_group) / sampling_s if sampling_s else None),
        prompt_list=dict(videos=num_videos, dp_degree=dims.dp_degree, videos_per_group=per_group,
                         group_s=group_s, job_s=group_s),
        peak_bytes=max(p["peak_bytes"] for p in phases.values()),
        decode_over_single_rank_whole=(dec["compute_s"] / dec["whole_single_rank_s"]
                                       if dec["whole_single_rank_s"] else None),
        storage_bandwidth=bw,
    )
