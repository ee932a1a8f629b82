"""One rank of the parallel-decode test: joins a gloo group of ``world`` processes and runs ``decode_video`` (the
job's decode phase) on each given job's fixed latents; rank 0 saves the decoded video and what the decode did."""
from __future__ import annotations

import datetime
import os
import sys


def fixed_latents(family, seed: int = 0):
    import torch

    return torch.randn((1, *family.latent_shape()), generator=torch.Generator().manual_seed(seed))


def main(rank: int, world: int, port: int, out_dir: str, jobs: list) -> None:
    import torch
    import torch.distributed as dist

    from magcache_dist.config import load_config
    from magcache_dist.decode import decode_video
    from magcache_dist.families.base import make_family
    from magcache_dist.parallel.dims import ParallelDims, build_dist_context

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        par = build_dist_context(ParallelDims(world, 1))
        for name, overrides in jobs:
            cfg = load_config(None, overrides)
            family = make_family(cfg)

            class Job:  # what decode_video reads of a job
                pass

            job = Job()
            job.cfg, job.family = cfg, family
            video, info = decode_video(job, None, fixed_latents(family), par)
            if rank == 0:
                torch.save(dict(video=video, info=info), os.path.join(out_dir, f"{name}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import json

    rank, world, port, out_dir, jobs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    with open(jobs) as f:
        main(rank, world, port, out_dir, json.load(f))
