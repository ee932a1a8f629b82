"""Job configuration: OmegaConf YAML + ``key=value`` overrides, validated against a structured schema.

Unknown keys and wrong types are errors naming the key. Every section is a frozen dataclass: nothing changes a
config once it is loaded. A key whose default depends on the model (``sampler.shift``, ``.guidance``, ``.solver``)
is ``None`` (unset) here; the model family fills it in (``ModelFamily.resolve``), and ``validate_job`` returns the
resolved config in a frozen ``Job`` without touching the one it was given. ``validate_job`` then checks everything
that can be checked before a process group exists (parallel degrees, cache settings, files), so bad input never
reaches a collective.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magcache_dist.errors import InputError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ModelSection:
    name: str = "tiny-video"  # a key of models.wan.WAN_CONFIGS
    ckpt: Optional[str] = None  # weights; None = seeded random init (init_seed); relative paths: project root
    init_seed: int = 0
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16
    layout: str = "auto"  # Wan2.1 ckpt_dir: auto | official | diffusers
    compile: bool = False  # torch.compile the DiT's blocks after parallelization (magcache_dist/compile.py)


@dataclass(frozen=True)
class VideoSection:
    frames: int = 16
    height: int = 64
    width: int = 64
    fps: int = 8


@dataclass(frozen=True)
class SamplerSection:
    """``None``: unset, the model family's default (else SHIFT / GUIDANCE / SOLVER below)."""
    num_steps: int = 20
    shift: Optional[float] = None  # sigma shift (Wan: the diffusers folder's flow_shift; HunyuanVideo: 7.0)
    guidance: Optional[float] = None  # classifier-free guidance scale (HunyuanVideo: embedded guidance 6.0)
    solver: Optional[str] = None  # unipc | euler (HunyuanVideo: euler)
    # two-expert models (Wan2.2 A14B): the low-noise expert's guidance (null: sampler.guidance) and the boundary,
    # a fraction of the 1000 training timesteps (null: the checkpoint's model_index.json, else the published one)
    guidance_2: Optional[float] = None
    boundary: Optional[float] = None


# What an unset sampler key means when the model family has no default of its own
SHIFT, GUIDANCE, SOLVER = 5.0, 5.0, "unipc"


@dataclass(frozen=True)
class MagCacheSection:
    """The MagCache rule (cache.mode=magcache, auto and online): thresholds, and for magcache where the ratios come
    from (a preset, or a ratio file; neither: the model's default preset)."""
    preset: Optional[str] = None
    ratios_file: Optional[str] = None
    rule: Optional[str] = None  # decision rule for ratios_file (wan, hunyuanvideo, flux, opensora)
    thresh: float = 0.12
    K: int = 2
    retention: float = 0.2


@dataclass(frozen=True)
class TeaCacheSection:
    thresh: float = 0.1  # threshold on the accumulated rescaled rel-L1 change
    coefficients: Optional[List[float]] = None  # polynomial (highest degree first); None = the coefficients fitted
    # for model.name (magcache_dist/cache/data/<model>-teacache.json)


@dataclass(frozen=True)
class OnlineSection:
    predictor: str = "powerlaw"  # powerlaw | hold (magcache_dist/cache/online.py)
    window: int = 6  # measurements the predictor fits
    margin: bool = True  # widen the error by the predictor's latest miss


@dataclass(frozen=True)
class CalibrationSection:
    out: Optional[str] = None  # calibrate: where to write the ratio file (default <output_dir>/ratios.json)
    store_dir: Optional[str] = None  # ratio store: calibrate writes into it, auto reads (and fills) it


@dataclass(frozen=True)
class CacheSection:
    mode: str = "magcache"  # off | magcache | calibrate | teacache | auto | online
    # joint: one skip decision per step for both CFG branches, agreed over every rank (magcache, online,
    # teacache); official: each family's released per-branch rule, bit for bit (docs/magcache.md)
    branch_sync: str = "joint"
    consensus_guard: bool = True  # verify with one all-reduce per call that all ranks agree
    magcache: MagCacheSection = field(default_factory=MagCacheSection)
    teacache: TeaCacheSection = field(default_factory=TeaCacheSection)
    online: OnlineSection = field(default_factory=OnlineSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)


# The flat cache keys of earlier versions -> where they live now (an old key is an error naming the new one)
MOVED = {f"cache.{k}": f"cache.magcache.{k}" for k in ("preset", "ratios_file", "rule", "thresh", "K", "retention")}
MOVED.update({"cache.teacache_thresh": "cache.teacache.thresh",
              "cache.teacache_coefficients": "cache.teacache.coefficients",
              "cache.online_predictor": "cache.online.predictor", "cache.online_window": "cache.online.window",
              "cache.online_margin": "cache.online.margin", "cache.calibration_out": "cache.calibration.out",
              "cache.store_dir": "cache.calibration.store_dir"})


@dataclass(frozen=True)
class ParallelSection:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_degree: int = 1
    dp_degree: int = 1  # data-parallel groups, each working through its share of prompts_file (round-robin)
    backend: str = "native"  # native | deepspeed | xfuser
    timeout_s: float = 600.0  # collective timeout
    fsdp: bool = False  # shard the DiT's block weights across each sequence-parallel group
    # the group's ranks read a row block of the DiT's checkpoint each and all-gather the rest (auto: on GPUs, where
    # the gather runs over NVLink / InfiniBand; not on CPU, where gloo's gather is slower than each rank's own copy)
    shared_load: str = "auto"


@dataclass(frozen=True)
class CheckpointSection:
    every_n_steps: int = 0  # write the sampling state every N steps (0 = never); resume=true continues from it
    dir: Optional[str] = None  # default <output_dir>/checkpoint; must be shared by all ranks (see checkpoint.py)
    keep: bool = False  # keep a finished video's step checkpoints (default: deleted once its report is written)
    # besides SIGTERM, the signal that asks the job to stop after the current step, write a step checkpoint and exit
    # with 75 ("preempted, rerun to continue"), e.g. USR1 for SLURM's --signal=B:USR1@120 (null: SIGTERM only)
    signal: Optional[str] = None


@dataclass(frozen=True)
class PlannerSection:
    device: str = "cpu"  # dry_run device profile: a name in magcache_dist/planner/profiles (h100, h200, cpu) or a path
    memory_check: bool = True  # before loading weights: refuse a job whose estimated memory exceeds what is free


@dataclass(frozen=True)
class TextEncoderSection:
    """Where the text encoders run (Wan2.1: umT5, CLIP for I2V; HunyuanVideo: LLaMA, CLIP-L); they are loaded for
    encoding only and freed right after."""
    device: str = "auto"  # auto (the DiT's device) | cpu
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16


@dataclass(frozen=True)
class VaeSection:
    """The VAE (Wan2.1, HunyuanVideo): decoded on rank 0 after sampling (causal in time)."""
    dtype: str = "float32"
    tiling: bool = False  # spatial tiles (diffusers' tiled decode) so a 720P decode fits in little memory
    tile_height: int = 256  # pixels
    tile_width: int = 256
    tile_stride_height: int = 192  # < tile size: the overlap is blended
    tile_stride_width: int = 192
    offload_dit: bool = True  # move the DiT to CPU before decoding, freeing its GPU memory for the VAE
    # (kept on the device when it fits beside the decode: magcache_dist/decode.py dit_stays)
    parallel: bool = True  # >1 rank: the tiled decode's tiles dealt over the group's ranks (the tiled mode,
    # whatever vae.tiling says); false: rank 0 decodes alone in the mode vae.tiling says
    # how a >1-rank group shares the decode (magcache_dist/decode.py decode_route): auto = row bands with halo
    # exchange for the Wan VAEs' whole decode (vae.tiling=false), the tiles otherwise; patches / tiles force one
    split: str = "auto"


@dataclass(frozen=True)
class JobConfig:
    prompt: str = "a red circle moves right"
    # many videos in one job: a text file (one prompt per line) or .jsonl (prompt, seed, negative_prompt, image,
    # name); each video gets a folder under output_dir, and summary.json / summary.md list them all
    prompts_file: Optional[str] = None
    # "I/N": this job makes share I (0 <= I < N) of the list (video k when k % N == I); N jobs (e.g. a SLURM array)
    # fill one output_dir together, each video claimed by one worker (magcache_dist/claims.py)
    prompts_shard: Optional[str] = None
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


class _Plain(str):
    """An unquoted YAML scalar, kept as its text until the schema says what type it is."""


class _Loader(yaml.SafeLoader):
    """YAML loader for config files: unquoted scalars stay text (typed later from the schema, so that ``prompt: no``
    is the word no, not a boolean), and a key given twice in one mapping is an error naming both lines."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} appears twice in one section (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(ValueError):
    pass


def _plain_scalar(loader, node):
    return _Plain(node.value) if node.style is None else loader.construct_scalar(node)


for _tag in ("bool", "int", "float", "null", "str", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _plain_scalar)


def _field_type(path: list[str]):
    """The schema type at a dotted path (a dataclass for a section), or None where the path is not in the schema."""
    cls = JobConfig
    for name in path:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return None
        cls = hints[name]
    return cls


def _is_str(tp) -> bool:
    return tp is str or tp == Optional[str]


def _typed(value, path: list[str], where: str):
    """YAML data with unquoted scalars as _Plain -> values for OmegaConf: text for string fields (no YAML
    coercion, ``${`` escaped so nothing is interpolated), YAML's reading of the text for every other field."""
    tp = _field_type(path)
    if isinstance(value, dict):
        if tp is not None and not dataclasses.is_dataclass(tp) and typing.get_origin(tp) is not dict:
            raise InputError(f"{where}: {'.'.join(path)} must be a single value, not a section")
        return {k: _typed(v, path + [str(k)], where) for k, v in value.items()}
    if tp is not None and dataclasses.is_dataclass(tp):
        raise InputError(f"{where}: {'.'.join(path)} is a section ({tp.__name__}); set its keys, e.g. "
                         f"{'.'.join(path)}.{dataclasses.fields(tp)[0].name}=...")
    if isinstance(value, list):
        return [_typed(v, path + ["[]"], where) for v in value]
    if isinstance(value, _Plain):
        if _is_str(tp):
            return None if (tp is not str and value in ("null", "~")) else _escape(str(value))
        return yaml.safe_load(str(value)) if str(value) != "" else None
    return _escape(value) if isinstance(value, str) else value


def _escape(text: str) -> str:
    return text.replace("${", "\\${")  # OmegaConf would interpolate ${...} (environment variables, other keys)


def _read_yaml(path: str) -> dict:
    where = f"--config {path!r}"
    if not os.path.isfile(path):
        raise InputError(f"{where} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except _DuplicateKey as e:
        raise InputError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        hint = " (YAML indents with spaces, not tabs)" if "\t" in line else ""
        raise InputError(f"{where} is not valid YAML{at}: {problem}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping of keys (e.g. 'prompt: ...'), not a {type(data).__name__}")
    return _typed(data, [], where)


def _override(item: str) -> dict:
    """``a.b=value`` -> {"a": {"b": typed value}}: strings stay as written (one pair of surrounding quotes is
    removed; ``null`` unsets an optional string), everything else is read as YAML, as OmegaConf does."""
    if "=" not in item:
        raise InputError(f"override {item!r} must look like key=value (e.g. sampler.num_steps=30)")
    key, value = item.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise InputError(f"override {item!r}: the key {key!r} is not a dotted config key")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    else:
        value = _Plain(value)
    out = _typed(value, path, f"override {item!r}")
    for name in reversed(path):
        out = {name: out}
    return out


def _schema_keys(cls=None, prefix: str = "") -> list[str]:
    cls = cls or JobConfig
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        out += _schema_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{name}"]
    return out


def _suggest(key: str) -> str:
    """'; did you mean: ...' naming the closest keys of the whole schema (a key may have moved to a subsection)."""
    import difflib

    keys = _schema_keys()
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {}
    for k in keys:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    close = [k for name in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.6) for k in by_leaf[name]]
    close += [k for k in difflib.get_close_matches(key, keys, n=2, cutoff=0.75) if k not in close]
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close.sort(key=lambda k: not k.startswith(section))  # the same section first
    return f"; did you mean: {', '.join(close[:3])}" if close else ""


def _all_keys(d: dict, prefix: str = "") -> list[str]:
    return [k for key, v in d.items()
            for k in (_all_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def _check_moved(parts: list[dict], path: str | None, overrides: list[str]) -> None:
    wheres = ([f"--config {path!r}"] if path is not None else []) + [f"override {o!r}" for o in overrides]
    problems = [f"{where}: {k} has moved; use {MOVED[k]}" for where, part in zip(wheres, parts)
                for k in _all_keys(part) if k in MOVED]
    if problems:
        raise InputError("\n".join(problems))


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Merge schema defaults, the YAML file and ``key=value`` overrides; raise InputError naming the key."""
    try:
        parts = ([_read_yaml(path)] if path is not None else []) + [_override(o) for o in overrides or []]
        _check_moved(parts, path, list(overrides or []))
        cfg = OmegaConf.structured(JobConfig)
        for part in parts:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(part))
        job = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        if key and _field_type(key.split(".")) is None and "not in" in msg and "Did you mean" not in msg:
            msg += _suggest(key)
        raise InputError(f"config key {key!r}: {msg}" if key else f"config: {msg}") from None
    check_values(job)
    job = expand_home(job)
    set_at = {}  # key -> index of the last source that set it (0: the file, then each override in order)
    for i, part in enumerate(parts, start=0 if path is not None else 1):
        for key in _leaves(part):
            set_at[key] = i
    object.__setattr__(job, "_set_at", set_at)
    return job


def _leaves(d: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the values a config source sets (null sets nothing)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}.")
        elif v is not None:
            out.append(f"{prefix}{k}")
    return out


def explicitly_set(job: JobConfig) -> dict:
    """{dotted key: index of the source that last set it}: what the user wrote, not the schema's defaults."""
    return getattr(job, "_set_at", {})


# Ranges a value must be in to mean anything: key -> (low, low included, high); every float must also be finite.
RANGES = {
    "seed": (0, True, 2**63 - 1),
    "video.fps": (1, True, 240),
    "parallel.timeout_s": (10, True, 7 * 24 * 3600),  # under 10 s a collective times out before NCCL/gloo warm up
    "sampler.guidance": (1, True, 100),
    "sampler.shift": (0, False, 1000),
    "sampler.guidance_2": (1, True, 100),
    "sampler.boundary": (0, False, 1),
    "sampler.num_steps": (None, True, 1000),  # the lower bounds of these four: checked where the meaning is known
    "model.init_seed": (0, True, 2**63 - 1),
    "cpu_threads": (1, True, 1024),
    "video.frames": (None, True, 100_000),
    "video.height": (None, True, 16_384),
    "video.width": (None, True, 16_384),
}
# Optional paths for which an empty string would silently mean something else (e.g. random weights)
NON_EMPTY = ("output_dir", "model.ckpt", "ckpt_dir", "image", "cache.magcache.ratios_file",
             "cache.calibration.store_dir", "cache.calibration.out", "cache.magcache.preset", "cache.magcache.rule",
             "checkpoint.dir")


# the keys that name files or folders: a leading ~ is the user's home, as in a shell (YAML and key=value
# overrides do not expand it; without this a folder named '~' would appear in the working directory)
PATHS = ("output_dir", "model.ckpt", "ckpt_dir", "image", "prompts_file", "cache.magcache.ratios_file",
         "cache.calibration.store_dir", "cache.calibration.out", "checkpoint.dir", "planner.device")


def expand_home(job: JobConfig) -> JobConfig:
    """``job`` with ``~`` / ``~user`` at the start of every path key expanded (InputError when it cannot be)."""
    changes = {}
    for key in PATHS:
        v = job
        for part in key.split("."):
            v = getattr(v, part)
        if isinstance(v, str) and v.startswith("~"):
            expanded = os.path.expanduser(v)
            if expanded.startswith("~"):
                raise InputError(f"{key}={v!r}: '{v.split(os.sep)[0]}' is not a home folder on this machine; give "
                                 f"an absolute path")
            changes[key] = expanded
    return evolve(job, **changes) if changes else job


def check_values(job: JobConfig) -> None:
    """Type-independent sanity of every value: finite floats, meaningful ranges, no empty paths."""
    problems = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            key, v = f"{prefix}{f.name}", getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, key + ".")
                continue
            values = v if isinstance(v, list) else [v]
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                problems.append(f"{key}={v!r} must be a finite number")
            elif key in RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
                lo, inclusive, hi = RANGES[key]
                if lo is None and v > hi:
                    problems.append(f"{key}={v!r} must be <= {hi}")
                elif lo is not None and (not ((lo <= v) if inclusive else (lo < v)) or v > hi):
                    problems.append(f"{key}={v!r} must be {'>=' if inclusive else '>'} {lo} and <= {hi}")
            if key in NON_EMPTY and isinstance(v, str) and not v.strip():
                problems.append(f"{key} is an empty string; give a value or leave it unset (null)")

    walk(job, "")
    if problems:
        raise InputError("\n".join(problems))  # one line per problem


def evolve(cfg: JobConfig, **changes) -> JobConfig:
    """A copy of ``cfg`` with dotted keys changed (``evolve(cfg, **{"sampler.shift": 3.0})``); ``cfg`` is left as it
    is, and the copy keeps the record of what the user set (``explicitly_set``)."""
    nested: dict = {}
    for key, value in changes.items():
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def apply(obj, tree: dict):
        return dataclasses.replace(obj, **{k: apply(getattr(obj, k), v) if isinstance(v, dict) else v
                                           for k, v in tree.items()})

    out = apply(cfg, nested)
    object.__setattr__(out, "_set_at", explicitly_set(cfg))
    return out


def resolve_dtypes(cfg: JobConfig, on_gpu: bool) -> JobConfig:
    """``model.dtype`` / ``text_encoder.dtype`` ``auto`` -> bfloat16 on a GPU, float32 on a CPU (where bf16 matmuls are
    several times slower than fp32: docs/magcache.md, what a skipped call costs); a given dtype stays. Returns the
    copy."""
    auto = "bfloat16" if on_gpu else "float32"
    return evolve(cfg, **{f"{s}.dtype": auto for s in ("model", "text_encoder") if getattr(cfg, s).dtype == "auto"})


def resolve_path(p: str | None) -> str | None:
    if p is None or os.path.isabs(p):
        return p
    return p if os.path.exists(p) else os.path.join(PROJECT_ROOT, p)


def to_dict(cfg: JobConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))
