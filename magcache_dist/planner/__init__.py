"""Dry-run planner: what a job will do and cost, without loading weights or starting a process group.

    python launch/generate.py --config configs/wan14b_720p_8gpu.yaml dry_run=true planner.device=h100

Prints and writes ``<output_dir>/plan.json``: the MagCache skip schedule, tokens per rank, weight and activation
memory per rank, all-to-all / ring / gather bytes per step, and the estimated sampling time on a device profile
(magcache_dist/planner/profiles/*.json). The world size is the one the parallel degrees describe, so a job for
8 GPUs can be planned on a laptop. Cost model: magcache_dist/planner/cost.py.
"""
from __future__ import annotations

import json
import os

from magcache_dist.cache import skip_schedule
from magcache_dist.cache.magcache import MagCachePolicy
from magcache_dist.config import JobConfig, to_dict
from magcache_dist.errors import InputError
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.planner.cost import DTYPE_BYTES, estimate, memory_per_rank, ring_path, token_layout
from magcache_dist.planner.phases import job_phases
from magcache_dist.planner.profiles import load_profile
from magcache_dist.planner.switch import resident_params, switch_cost

GB = 1e9


def plan_job(cfg: JobConfig, job=None) -> dict:
    """The plan of ``cfg`` on ``cfg.planner.device`` (ValueError naming the key on bad input). ``job``: the
    validated job when there is one (the memory preflight), so nothing is built twice; without it only what the
    plan needs is checked (no weights, no files: a job for 8 GPUs can be planned on a laptop)."""
    from magcache_dist.cache.factory import build_cache
    from magcache_dist.config import resolve_dtypes
    from magcache_dist.families import model_spec
    from magcache_dist.families.base import make_family
    from magcache_dist.job import cache_spec, checked_sampler, parallel_dims

    if job is None:
        cfg = resolve_dtypes(cfg, on_gpu=load_profile(cfg.planner.device).name != "cpu")  # auto: the planned device's
        model_spec(cfg.model.name)  # an unknown name: the error names the choices
        family = make_family(cfg)
        cfg = family.cfg
        family.check_geometry()
        scfg = checked_sampler(cfg, family)  # the sigma grid too: a plan of a job that would start from NaN is none
        dims = parallel_dims(cfg)
        dims.validate(dims.world_size, family.num_heads(), len(scfg.branches))
        policy = build_cache(cache_spec(cfg, family, scfg)) if cfg.cache.mode == "magcache" else None
    else:
        cfg, family, scfg, dims, policy = job.cfg, job.family, job.scfg, job.dims, job.policy
    if cfg.model.dtype not in DTYPE_BYTES:
        raise InputError(f"model.dtype={cfg.model.dtype!r} must be one of {sorted(DTYPE_BYTES)}")
    branches = scfg.branches
    profile = load_profile(cfg.planner.device)
    v = cfg.video
    latent = family.latent_shape()
    fig = family.cost_figures()

    note = None
    if cfg.cache.mode == "magcache":
        schedule = skip_schedule(policy, scfg.num_steps, branches)
        cache = policy.describe() if isinstance(policy, MagCachePolicy) else None
    else:
        schedule = dict(num_steps=scfg.num_steps, skipped_steps={b: [] for b in branches},
                        computed_calls=scfg.num_steps * len(branches), total_calls=scfg.num_steps * len(branches))
        cache = dict(policy=cfg.cache.mode)
        if cfg.cache.mode == "teacache":
            note = "TeaCache decides from the model's activations: planned as if every call were computed"
    mine = [branches[0]] if dims.cfg_degree == 2 else branches  # rank 0 (every rank costs the same)
    calls = [(s, s not in schedule["skipped_steps"][b]) for s in range(scfg.num_steps) for b in mine]
    prepared = fig.prepared_text and not cfg.parallel.fsdp  # magcache_dist/sampling/loop.py prepare_conditions
    est = estimate(fig, dims, profile, dtype=cfg.model.dtype, latent=latent, num_steps=scfg.num_steps,
                   calls_per_rank=calls, guard=cfg.cache.consensus_guard, branches=len(mine), prepared=prepared)
    resident = resident_experts(fig, cfg, profile)
    n_params = resident_params(fig, resident)  # one resident: plus the other's embeddings and head
    videos = num_videos(cfg, job)
    group_videos = -(-videos // dims.dp_degree)
    announced = cfg.cache.mode == "magcache"  # MagCachePolicy.planned_skips: the trade follows the schedule
    switch = switch_cost(fig, profile, DTYPE_BYTES[cfg.model.dtype], est["time_s"], calls, scfg.switch_step,
                         resident, group_videos, announced)
    if switch and switch["exposed_s_per_video"]:  # the copies the compute waits for (planner/switch.py)
        t = est["time_s"]
        full = switch_cost(fig, profile, DTYPE_BYTES[cfg.model.dtype], t, [(s, True) for s, _ in calls],
                           scfg.switch_step, resident, group_videos, announced)
        t.update(expert_switch=switch["exposed_s_per_video"], sampling=t["sampling"] + switch["exposed_s_per_video"],
                 sampling_without_cache=t["sampling_without_cache"] + full["exposed_s_per_video"])
        t["speedup"] = t["sampling_without_cache"] / t["sampling"]
    # parallel.fsdp: every block sharded over the sequence-parallel group (magcache_dist/parallel/fsdp.py); the
    # blocks are nearly all of the weights, so about 1/N of them per rank, plus the one block gathered at a time
    held = (-(-n_params // dims.sp_degree) + fig.params // fig.num_layers) if cfg.parallel.fsdp else n_params
    cached = len(mine) if cfg.cache.mode in ("magcache", "teacache", "calibrate") else 0
    mem = memory_per_rank(fig, held, est["tokens_per_rank"], est["padded_tokens"], dims,
                          DTYPE_BYTES[cfg.model.dtype], latent[0] * latent[1] * latent[2] * latent[3], cached,
                          prepared_branches=len(mine) if prepared else 0, ring=ring_path(profile))
    phases = phase_memory(cfg, family, mem)
    job_plan = job_phases(cfg, family, dims, profile, est["time_s"]["sampling"], mem, videos)
    fits = job_plan["peak_bytes"] <= profile.memory_capacity
    return dict(
        model=cfg.model.name, dtype=cfg.model.dtype, params=fig.params * fig.experts,
        video=dict(frames=v.frames, height=v.height, width=v.width), latent_shape=list(latent),
        parallel=dict(ulysses_degree=dims.ulysses_degree, ring_degree=dims.ring_degree, cfg_degree=dims.cfg_degree,
                      world_size=dims.world_size),
        sampler=dict(num_steps=scfg.num_steps, solver=scfg.solver, guidance=scfg.guidance, branches=branches),
        cache=cache, skip_schedule=schedule, device=dict(name=profile.name, description=profile.description),
        per_rank=dict(**est, memory_bytes=mem, phase_memory_bytes=phases, fits_in_memory=fits),
        gpus_needed=gpus_needed(cfg, family, fig, latent, dims, profile, phases, cached, len(mine) if prepared else 0,
                                resident),
        experts=(dict(count=fig.experts, resident=resident, switch_step=scfg.switch_step, switch=switch,
                      guidance=[scfg.guidance, scfg.guidance_2 if scfg.guidance_2 is not None else scfg.guidance])
                 if fig.experts > 1 else None),
        job=job_plan,
        not_modelled="process start-up; the decode's activations and the write are estimates "
                     "(magcache_dist/planner/phases.py)",
        note=note, config=to_dict(cfg),
    )


def phase_memory(cfg: JobConfig, family, mem: dict) -> dict:
    """Bytes per rank around sampling: while encoding, the largest encoder (they load one at a time, before the
    DiT's weights are read, and are freed before sampling; ``text_encoder.device=cpu`` keeps them in host memory);
    while decoding (every rank of the group), the VAE's weights plus the DiT unless ``vae.offload_dit`` moved it
    to the host."""
    encoders = family.encoder_params()
    te_bytes = DTYPE_BYTES.get(cfg.text_encoder.dtype, 2)
    on_device = cfg.text_encoder.device != "cpu"
    largest = max(encoders.values(), default=0) * te_bytes if on_device else 0
    vae = family.vae_params() * DTYPE_BYTES.get(cfg.vae.dtype, 4)
    return dict(encoders={k: v * te_bytes for k, v in encoders.items()}, encoders_on_device=on_device,
                encode_peak=largest,
                decode_weights=vae + (0 if cfg.vae.offload_dit else mem["weights"]))


def resident_experts(fig, cfg: JobConfig, profile) -> int:
    """How many experts' weights a rank holds: both under parallel.fsdp (sharded) or where both fit (the run
    keeps both when the device's free memory holds 2.2 x one expert: families/wan22.py), else one (the other
    waits in host memory and they trade places at the switch)."""
    if fig.experts == 1 or cfg.parallel.fsdp or profile.name == "cpu":  # a CPU has nowhere to offload to
        return fig.experts
    from magcache_dist.families.wan22 import HEADROOM

    return fig.experts if HEADROOM * fig.params * DTYPE_BYTES[cfg.model.dtype] <= profile.memory_capacity else 1


def gpus_needed(cfg: JobConfig, family, fig, latent, dims, profile, phases: dict, cached: int, prepared: int,
                resident: int = 1) -> dict:
    """The fewest ranks (of ``profile``'s device, this CFG degree) whose per-rank peak, encoding or sampling,
    fits: Ulysses takes the largest degree dividing the heads, ring the rest. Without parallel.fsdp every rank
    holds the whole DiT, so more ranks only shrink the activations."""
    import dataclasses
    import math

    heads, b = family.num_heads(), DTYPE_BYTES[cfg.model.dtype]
    extra = phases["encode_peak"]  # the largest encoder (the DiT is read after encoding)
    for sp in (1, 2, 4, 8, 16, 32, 64):
        u = max(d for d in range(1, sp + 1) if sp % d == 0 and heads % d == 0)
        d = dataclasses.replace(dims, ulysses_degree=u, ring_degree=sp // u, dp_degree=1)
        _, chunk, padded = token_layout(fig, latent, sp)
        held = resident_params(fig, resident) if not cfg.parallel.fsdp else -(-fig.params * resident // sp)
        m = memory_per_rank(fig, held, chunk, padded, d, b, math.prod(latent), cached,
                            prepared_branches=prepared, ring=ring_path(profile))
        if max(m["total"], extra) <= profile.memory_capacity:
            return dict(ranks=sp * dims.cfg_degree, ulysses_degree=u, ring_degree=sp // u,
                        peak_bytes=max(m["total"], extra))
    return dict(ranks=None, note=f"no layout up to 64 ranks fits {profile.name}: the DiT's weights alone are "
                                 f"{fig.params * resident * b / GB:.1f} GB per rank (parallel.fsdp=true shards them)")


def format_plan(p: dict) -> str:
    r, t, m = p["per_rank"], p["per_rank"]["time_s"], p["per_rank"]["memory_bytes"]
    ph, g = r["phase_memory_bytes"], p["gpus_needed"]
    need = (f"{g['ranks']} x {p['device']['name']} at least (ulysses {g['ulysses_degree']} x ring "
            f"{g['ring_degree']}{' x cfg 2' if p['parallel']['cfg_degree'] == 2 else ''}: peak "
            f"{g['peak_bytes'] / GB:.2f} GB per rank)" if g["ranks"] else g["note"])
    par = p["parallel"]
    sk = p["skip_schedule"]
    lines = [
        f"dry run: {p['model']} ({p['params'] / 1e9:.2f}B params, {p['dtype']}) on {par['world_size']} x "
        f"{p['device']['name']} (ulysses {par['ulysses_degree']} x ring {par['ring_degree']} "
        f"x cfg {par['cfg_degree']})",
        f"  video {p['video']['frames']}x{p['video']['height']}x{p['video']['width']} -> latents "
        f"{'x'.join(map(str, p['latent_shape']))} -> {r['tokens']:,} tokens; {r['tokens_per_rank']:,} per rank "
        f"({r['padding_tokens']} padding)",
        f"  skip schedule: {sk['computed_calls']}/{sk['total_calls']} calls computed; skipped steps "
        + ", ".join(f"{b}: {v}" for b, v in sk["skipped_steps"].items()),
        f"  memory per rank: weights {m['weights'] / GB:.2f} GB + activations {m['activations_total'] / GB:.2f} GB = "
        f"{m['total'] / GB:.2f} GB while sampling ({'fits' if r['fits_in_memory'] else 'DOES NOT FIT'} with the "
        f"phases below)",
        f"  around sampling: encoding {ph['encode_peak'] / GB:.2f} GB per rank (largest encoder, before the DiT"
        f"{'' if ph['encoders_on_device'] else ', encoders on the host'}: "
        + (", ".join(f"{k} {v / GB:.2f} GB" for k, v in ph["encoders"].items()) or "none counted")
        + f"), decoding {ph['decode_weights'] / GB:.2f} GB of weights per rank",
        *format_phases(p["job"]),
        f"  needs: {need}",
        *([f"  experts: {p['experts']['count']} (high-noise, then low-noise from step {p['experts']['switch_step']}; "
           f"guidance {p['experts']['guidance'][0]} / {p['experts']['guidance'][1]}); "
           + ("both resident" if p["experts"]["resident"] == p["experts"]["count"] else
              "one resident, the other in host memory until the switch" + format_switch(p["experts"]["switch"]))]
          if p.get("experts") else []),
        "  bytes sent per rank per computed call: " + ", ".join(
            f"{k} {v / 1e6:.2f} MB" for k, v in r["comm_bytes_per_computed_step_per_branch"].items()),
        "  bytes sent per rank, whole job: " + ", ".join(
            f"{k} {v / GB:.3f} GB" for k, v in r["comm_bytes_total"].items()),
        f"  time per computed call {t['per_computed_call']:.4g} s (blocks {t['blocks_compute_per_call']:.4g} s + "
        f"comm {t['blocks_comm_per_call']:.4g} s), per skipped call {t['per_skipped_call']:.4g} s",
        f"  estimated sampling time {t['sampling']:.4g} s (without cache {t['sampling_without_cache']:.4g} s, "
        f"speedup {t['speedup']:.2f}x); not modelled: {p['not_modelled']}",
    ]
    if p.get("note"):
        lines.append(f"  note: {p['note']}")
    return "\n".join(lines)


def format_switch(sw: dict | None) -> str:
    if not sw or sw.get("mode") != "one resident":
        return ""
    how = "prefetched during the high-noise expert's last computed call" if sw["switch"]["prefetched"] else \
        "streamed into the first low-noise call (the last high-noise call is skipped)"
    return (f"; each switch trades {sw['trade_bytes'] / GB:.1f} GB over the host link in {sw['trade_s']:.2f} s, "
            f"{how}: {sw['switch']['exposed_s']:.2f} s exposed, {sw['switch']['hidden_s']:.2f} s hidden; "
            f"{sw['exposed_s_per_video']:.2f} s exposed per video with the trades back; host memory "
            f"{sw['host_bytes'] / GB:.1f} GB pinned per rank")


def format_phases(j: dict) -> list[str]:
    ph, v, pl = j["phases"], j["per_video"], j["prompt_list"]
    d = ph["decode"]
    lines = ["  phases per rank (first video): " + ", ".join(
        f"{k} {ph[k]['s']:.3g} s / {ph[k]['peak_bytes'] / GB:.2f} GB" for k in ("load", "encode", "sample", "decode",
                                                                                "write")),
             (f"  decode: {d['bands']} row bands with halo exchange (band {d['band_compute_s']:.3g} s, exchanges "
              f"{d['exchange_s']:.3g} s, gather to rank 0 {d['gather_s']:.3g} s), compute "
              if d.get("split") == "patches"
              else f"  decode: {d['tiles']} tiles in {d['rounds']} round(s) over {d['ranks']} rank(s), compute ") +
             f"{d['compute_s']:.3g} s (one rank: whole {d['whole_single_rank_s']:.3g} s"
             + (f", tiled {d['tiled_single_rank_s']:.3g} s" if d.get("tiled_single_rank_s") is not None else "")
             + "); DiT "
             f"{'stays on the device' if d['dit_on_device'] else 'moved to the host and back'}",
             f"  per video: {v['first_s']:.4g} s the first, {v['later_s']:.4g} s each later one; "
             f"{pl['videos']} video(s) over {pl['dp_degree']} group(s): {pl['group_s']:.4g} s per group "
             f"({v['amortised_s']:.4g} s per video, {v['amortised_over_sampling']:.2f}x its sampling)"]
    return lines


def num_videos(cfg: JobConfig, job=None) -> int:
    """The videos of the job: its prompt list's (read when no validated job is given), else one."""
    if job is not None and getattr(job, "videos", None) is not None:
        return len(job.videos)
    if cfg.prompts_file:
        from magcache_dist.prompts import read_prompts

        return len(read_prompts(cfg.prompts_file, cfg.seed, cfg.negative_prompt, cfg.image))
    return 1


def dry_run(cfg: JobConfig, write: bool = True) -> dict:
    from magcache_dist.io.probe import ensure_writable_dir

    ensure_writable_dir(os.path.abspath(cfg.output_dir), "output_dir")  # where plan.json goes: before planning
    p = plan_job(cfg)
    print(format_plan(p))
    if write:
        path = os.path.join(cfg.output_dir, "plan.json")
        atomic_write_text(path, json.dumps(p, indent=1, default=str))
        print(f"wrote {path}")
    return p
