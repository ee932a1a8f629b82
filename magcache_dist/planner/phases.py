"""The whole job in the plan: every phase (``load``, ``encode``, ``sample``, ``decode``, ``write``) with its seconds
and peak device memory per rank, the total per video, and for a prompt list the total per data-parallel group and
for the job. Phases are named as in report.json (magcache_dist/phases.py), so a plan and a run compare phase by
phase.

- load: the bytes this rank reads (the DiT: whole, or its shards under ``parallel.fsdp``) over the profile's
  ``storage_bandwidth`` (bytes/s; a cold read from local storage; measured by magcache_dist.planner.measure).
- encode: every encoder read once per job (``storage_bandwidth``) and run on the group's prompts (2 x parameters x
  text tokens per prompt and branch, at the GEMM rate of ``text_encoder.dtype``). The DiT is not on the device yet
  (magcache_dist/run.py), so the peak is the largest encoder alone.
- sample: the sampling estimate (magcache_dist/planner/cost.py).
- decode: the VAE read, then its tiles (magcache_dist/parallel/vae.py) dealt over the group's ranks in rounds: each
  round costs its largest tile, at ``vae_decode_flops_per_pixel`` (the family's figure, counted with torch's
  FlopCounterMode at real size) over the GEMM rate of ``vae.dtype``. The peak: the VAE's weights and one tile's
  activations, plus the DiT when it stays on the device (it does when both fit in 90% of the device memory).
  On the row-band route (the Wan VAEs' whole decode, magcache_dist/decode.py ``decode_route``): the tallest band's
  share of the whole decode, the halo rows and the middle block's keys/values exchanged and the bands gathered to
  rank 0 at the link bandwidth (``decode.band_decode_seconds``); the peak: the VAE's weights and one band's
  activations (``decode.band_peak_bytes``).
- write: the mp4 writer's start-up plus the video's 8-bit pixels at ``WRITE_BYTES_PER_S`` (mp4 encoding on the
  host; assumptions, not measured per device).
"""
from __future__ import annotations

import math

from magcache_dist.planner.cost import DTYPE_BYTES

DEFAULT_STORAGE_BANDWIDTH = 2.0e9  # bytes/s when a profile gives none: one local NVMe drive, cold read
WRITE_BYTES_PER_S = 200e6  # 8-bit RGB pixels per second through the mp4 writer (host side)
WRITE_START_S = 1.0  # the writer's start-up (an ffmpeg process): 1.13 s for a 5-frame 48 px mp4 here (loaded CPU)


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


def decode_seconds(cfg, family, profile, ranks: int) -> dict:
    """The decode's compute on ``ranks`` ranks (tiles in rounds), the single-rank whole decode for comparison."""
    fpp = family.vae_decode_flops_per_pixel()
    rate = profile.gemm_rate(cfg.vae.dtype if cfg.vae.dtype in profile.peak_flops else "float32", 1 << 20)
    units = decode_units(cfg, family)
    v = cfg.video
    whole = (1 if family.image_model else v.frames) * v.height * v.width * fpp / rate if units else 0.0
    from magcache_dist.decode import band_decode_seconds, decode_route

    if units and decode_route(cfg, family, ranks)[0] == "patches":  # row bands with halo exchange
        return band_decode_seconds(cfg, family, profile, ranks, whole)
    parallel = cfg.vae.parallel and ranks > 1
    if not parallel and not cfg.vae.tiling:
        return dict(compute_s=whole, whole_single_rank_s=whole, tiled_single_rank_s=None, tiles=1 if units else 0,
                    rounds=1, ranks=1)
    n = ranks if parallel else 1
    rounds = [units[k:k + n] for k in range(0, len(units), n)]
    return dict(compute_s=sum(max(r) for r in rounds) * fpp / rate, whole_single_rank_s=whole,
                tiled_single_rank_s=sum(units) * fpp / rate, tiles=len(units), rounds=len(rounds), ranks=n)


def job_phases(cfg, family, dims, profile, sampling_s: float, mem: dict, num_videos: int) -> dict:
    """The plan's ``phases`` (per rank, first video), ``per_video`` totals and the prompt list's totals."""
    from magcache_dist.decode import decode_peak_bytes

    bw = float(profile.extra.get("storage_bandwidth", DEFAULT_STORAGE_BANDWIDTH))
    group = dims.group_size
    te_dtype = cfg.text_encoder.dtype if cfg.text_encoder.dtype in DTYPE_BYTES else "bfloat16"
    te_b = DTYPE_BYTES[te_dtype]
    vae_b = DTYPE_BYTES.get(cfg.vae.dtype, 4)
    encoders = family.encoder_params()
    fig = family.cost_figures()
    per_group = math.ceil(num_videos / dims.dp_degree)
    branches = 2 if cfg.sampler.guidance > 1 else 1
    te_rate = profile.gemm_rate(te_dtype if te_dtype in profile.peak_flops else "float32", fig.text_tokens)
    enc_compute = sum(2 * p * fig.text_tokens * branches for p in encoders.values())  # per prompt
    on_device = cfg.text_encoder.device != "cpu"

    dec = decode_seconds(cfg, family, profile, group)
    vae_bytes = family.vae_params() * vae_b
    decode_need = decode_peak_bytes(cfg, family, group) if vae_bytes else 0
    stays = (not cfg.vae.offload_dit) or mem["weights"] + decode_need <= 0.9 * profile.memory_capacity
    move_s = 0.0 if stays else 2 * mem["weights"] / profile.extra.get("host_link_bandwidth", 25e9)  # there and back
    frames = 1 if family.image_model else cfg.video.frames
    video_bytes = frames * cfg.video.height * cfg.video.width * 3
    phases = dict(
        load=dict(s=mem["weights"] / bw, peak_bytes=mem["weights"], read_bytes=mem["weights"]),
        encode=dict(s=sum(encoders.values()) * te_b / bw + enc_compute * per_group / te_rate,
                    peak_bytes=max(encoders.values(), default=0) * te_b if on_device else 0,
                    read_bytes=sum(encoders.values()) * te_b, prompts=per_group),
        sample=dict(s=sampling_s, peak_bytes=mem["total"]),
        decode=dict(s=vae_bytes / bw + dec["compute_s"] + move_s, peak_bytes=decode_need + (mem["weights"] if stays
                                                                                          else 0),
                    read_bytes=vae_bytes, dit_on_device=stays, **dec),
        write=dict(s=WRITE_START_S + video_bytes / WRITE_BYTES_PER_S, peak_bytes=0, rank=0),
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
