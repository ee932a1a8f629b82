"""Shared by the benchmark scripts: build the shipped job once, then sample many (prompt, seed, policy) runs."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from magcache_dist.config import JobConfig, load_config
from magcache_dist.families.base import ModelFamily
from magcache_dist.job import validate_job
from magcache_dist.sampling.loop import SamplerConfig, SampleResult, sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")
BENCH_README = os.path.join(ROOT, "benchmarks", "README.md")


def write_readme_block(block: str, begin: str, end: str, heading: str) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) into benchmarks/README.md: in place of the
    previous block between the markers, or appended under ``heading`` the first time."""
    from magcache_dist.io.atomic import atomic_write_text

    with open(BENCH_README) as f:
        text = f.read()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    atomic_write_text(BENCH_README, text)


def publish(res: dict, text: str, out: str, default_out: str, name: str, heading: str) -> None:
    """Print the table, write the JSON atomically and, for the default output, the table's block in
    benchmarks/README.md (between ``<!-- name:begin -->`` and ``<!-- name:end -->``, under ``heading``)."""
    import json

    from magcache_dist.io.atomic import atomic_write_text

    print(text)
    atomic_write_text(out, json.dumps(res, indent=1))
    if out == default_out:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        write_readme_block(f"{begin}\n{text}\n{end}", begin, end, heading)
    print(f"wrote {out}")


def load_or_run(args, run, write: bool = True) -> dict:
    """A benchmark's results: read from ``args.out`` with ``--table-only``, else ``run(args)``, written to
    ``args.out`` atomically when ``write`` (a script that calls ``publish`` leaves the writing to it)."""
    import json

    from magcache_dist.io.atomic import atomic_write_text

    if args.table_only:
        with open(args.out) as f:
            return json.load(f)
    res = run(args)
    if write:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(res, indent=1))
    return res


@dataclass
class Job:
    cfg: JobConfig
    scfg: SamplerConfig
    model: torch.nn.Module
    text: torch.nn.Module
    family: ModelFamily

    def run(self, policy, prompt: str, seed: int, model=None) -> tuple[torch.Tensor, SampleResult, float]:
        """(decoded video [3, F, H, W] in [-1, 1], result, sampling wall seconds); ``model`` replaces the job's
        (e.g. a copy carrying another library's hooks)."""
        texts = self.family.encode(self.text, prompt, self.cfg.negative_prompt, self.scfg.branches)
        noise = self.family.make_noise(seed)
        t = time.perf_counter()
        result = sample(model or self.model, noise, texts, self.scfg, policy)
        wall = time.perf_counter() - t
        return self.family.decode(result.latents)[0], result, wall


def build_job(overrides: list[str] | None = None, config: str = DEFAULT_CONFIG) -> Job:
    cfg = load_config(config, list(overrides or []) + ["cache.mode='off'"])
    job = validate_job(cfg, 1)
    model, text = job.family.build("cpu")
    return Job(cfg, job.scfg, model, text, job.family)

