"""Job configuration: OmegaConf YAML + ``key=value`` overrides, validated against a structured schema.

Unknown keys and wrong types are errors naming the key. ``validate_job`` then checks everything that can be
checked before a process group exists (parallel degrees, cache settings, files), so bad input never reaches a
collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ModelSection:
    name: str = "tiny-video"  # a key of models.wan.WAN_CONFIGS
    ckpt: Optional[str] = None  # weights; None = seeded random init (init_seed); relative paths: project root
    init_seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    layout: str = "auto"  # Wan2.1 ckpt_dir: auto | official | diffusers


@dataclass
class VideoSection:
    frames: int = 16
    height: int = 64
    width: int = 64
    fps: int = 8


@dataclass
class SamplerSection:
    num_steps: int = 20
    shift: float = 5.0
    guidance: float = 5.0
    solver: str = "unipc"


@dataclass
class CacheSection:
    mode: str = "magcache"  # off | magcache | calibrate | teacache | auto | online
    preset: Optional[str] = None
    ratios_file: Optional[str] = None
    rule: Optional[str] = None  # decision rule for ratios_file (wan, hunyuanvideo, flux, opensora)
    thresh: float = 0.12
    K: int = 2
    retention: float = 0.2
    consensus_guard: bool = True  # verify with one all-reduce per call that all ranks agree
    # joint: one skip decision per step for both CFG branches, agreed over every rank (magcache, online,
    # teacache); official: each family's released per-branch rule, bit for bit (docs/magcache.md)
    branch_sync: str = "joint"
    calibration_out: Optional[str] = None  # calibrate mode: where to write the ratio file
    teacache_thresh: float = 0.1  # teacache mode: threshold on the accumulated rescaled rel-L1 change
    teacache_coefficients: Optional[List[float]] = None  # teacache mode: polynomial (highest degree first);
    # None = the coefficients fitted for model.name (magcache_dist/cache/data/<model>-teacache.json)
    store_dir: Optional[str] = None  # ratio store: calibrate writes into it, auto reads (and fills) it
    online_predictor: str = "powerlaw"  # online mode: powerlaw | hold (magcache_dist/cache/online.py)
    online_window: int = 6  # online mode: measurements the predictor fits
    online_margin: bool = True  # online mode: widen the error by the predictor's latest miss


@dataclass
class ParallelSection:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_degree: int = 1
    backend: str = "native"  # native | deepspeed | xfuser
    timeout_s: float = 600.0  # collective timeout
    fsdp: bool = False  # shard the DiT's block weights across each sequence-parallel group


@dataclass
class CheckpointSection:
    every_n_steps: int = 0  # write the sampling state every N steps (0 = never); resume=true continues from it
    dir: Optional[str] = None  # default <output_dir>/checkpoint; must be shared by all ranks (see checkpoint.py)


@dataclass
class PlannerSection:
    device: str = "cpu"  # dry_run device profile: a name in magcache_dist/planner/profiles (h100, h200, cpu) or a path


@dataclass
class TextEncoderSection:
    """Wan2.1: where umT5 (and CLIP for I2V) run; they are loaded for encoding only and freed right after."""
    device: str = "auto"  # auto (the DiT's device) | cpu
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16


@dataclass
class VaeSection:
    """Wan2.1 VAE: decoded on rank 0 after sampling (frame by frame: it is causal in time)."""
    dtype: str = "float32"
    tiling: bool = False  # spatial tiles (diffusers' tiled decode) so a 720P decode fits in little memory
    tile_height: int = 256  # pixels
    tile_width: int = 256
    tile_stride_height: int = 192  # < tile size: the overlap is blended
    tile_stride_width: int = 192
    offload_dit: bool = True  # move the DiT to CPU before decoding, freeing its GPU memory for the VAE


@dataclass
class JobConfig:
    prompt: str = "a red circle moves right"
    negative_prompt: str = ""
    seed: int = 0
    output_dir: str = "outputs/demo"
    save_video: bool = True
    progress: bool = True
    # intra-op threads per rank on CPU. None = 1: small models gain nothing from more, and on a busy machine
    # OpenMP's spinning threads slow them down by an order of magnitude. GPU runs leave torch's default.
    cpu_threads: Optional[int] = None
    model: ModelSection = field(default_factory=ModelSection)
    video: VideoSection = field(default_factory=VideoSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    cache: CacheSection = field(default_factory=CacheSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    resume: bool = False  # continue from checkpoint.dir (same config required)
    dry_run: bool = False  # print and write the plan (launch/generate.py); loads no weights, starts no process group
    planner: PlannerSection = field(default_factory=PlannerSection)
    ckpt_dir: Optional[str] = None  # Wan2.1 checkpoint directory (official or diffusers layout)
    image: Optional[str] = None  # I2V: the first frame (any image file PIL reads)
    text_encoder: TextEncoderSection = field(default_factory=TextEncoderSection)
    vae: VaeSection = field(default_factory=VaeSection)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Merge schema defaults, the YAML file and ``key=value`` overrides; raise ValueError naming the key."""
    try:
        cfg = OmegaConf.structured(JobConfig)
        if path is not None:
            if not os.path.isfile(path):
                raise ValueError(f"--config {path!r} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value (e.g. sampler.num_steps=30)")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        job = OmegaConf.to_object(cfg)
        if job.cache.mode in ("False", "false"):
            # YAML 1.1 reads a bare `off` as the boolean false, which OmegaConf turns into "False" for this str field
            job.cache.mode = "off"
        return job
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ValueError(f"config key {key!r}: {msg}" if key else f"config: {msg}") from None


def resolve_path(p: str | None) -> str | None:
    if p is None or os.path.isabs(p):
        return p
    return p if os.path.exists(p) else os.path.join(PROJECT_ROOT, p)


def to_dict(cfg: JobConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))
