"""Our sigma grid (official Wan2.1: s from 1 - 1/1000) against diffusers' default UniPC flow grid (s from 1.0),
on the shipped tiny-video model: how far apart the two grids' videos are.

    python -m benchmarks.sigma_grid [--pairs 4]

Full sampling (no cache), the same noise and prompt; PSNR / SSIM of the diffusers-grid video against ours, and the
first and last sigmas of each grid. Writes benchmarks/results/sigma_grid.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from benchmarks._common import ROOT, build_job
from benchmarks.quality import PAIRS

from magcache_dist.cache import NoCache
from magcache_dist.eval.metrics import psnr, ssim
from magcache_dist.io.atomic import atomic_write_text
from magcache_dist.sampling import sample
from magcache_dist.sampling.schedulers import FlowScheduler


def diffusers_grid(job) -> FlowScheduler:
    """Our scheduler object with diffusers' own default timesteps (``set_timesteps(num_steps)``)."""
    s = FlowScheduler(job.scfg.solver, job.scfg.num_steps, job.scfg.shift)
    s._unipc.set_timesteps(job.scfg.num_steps)
    s.sigmas, s.timesteps = s._unipc.sigmas.clone().double(), s._unipc.timesteps.clone()
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sigma_grid.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    job = build_job([])
    ours = FlowScheduler(job.scfg.solver, job.scfg.num_steps, job.scfg.shift)
    theirs = diffusers_grid(job)
    rows = []
    for prompt, seed in PAIRS[: args.pairs]:
        texts = job.family.encode(job.text, prompt, job.cfg.negative_prompt, job.scfg.branches)
        noise = job.family.make_noise(seed)
        videos = []
        for sched in (FlowScheduler(job.scfg.solver, job.scfg.num_steps, job.scfg.shift), diffusers_grid(job)):
            lat = sample(job.model, noise, texts, job.scfg, NoCache(), scheduler=sched).latents
            videos.append(job.family.decode(lat)[0])
        rows.append(dict(prompt=prompt, seed=seed, psnr=psnr(videos[1], videos[0]), ssim=ssim(videos[1], videos[0])))
        print(f"{prompt!r} seed {seed}: PSNR {rows[-1]['psnr']:.2f} dB, SSIM {rows[-1]['ssim']:.4f}", flush=True)
    res = dict(num_steps=job.scfg.num_steps, shift=job.scfg.shift,
               ours_first_last=[float(ours.sigmas[0]), float(ours.sigmas[-2])],
               diffusers_first_last=[float(theirs.sigmas[0]), float(theirs.sigmas[-2])],
               mean_psnr=float(np.mean([r["psnr"] for r in rows])), mean_ssim=float(np.mean([r["ssim"] for r in rows])),
               rows=rows)
    print(f"sigma[0]: ours {res['ours_first_last'][0]:.6f}, diffusers {res['diffusers_first_last'][0]:.6f}; "
          f"last: {res['ours_first_last'][1]:.6f} vs {res['diffusers_first_last'][1]:.6f}; diffusers-grid video vs "
          f"ours: {res['mean_psnr']:.2f} dB PSNR, SSIM {res['mean_ssim']:.4f} (mean of {len(rows)})")
    atomic_write_text(args.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
