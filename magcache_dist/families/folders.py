"""What the families that run from a checkpoint folder share (Wan2.1, FLUX.1, HunyuanVideo, Open-Sora 1.2): finding
a component's files with an error that names the missing one, reading a component's config.json, comparing the
fields that change the math with what ``model.name`` builds, placing the encoders (loaded once, run, freed before
sampling), and making room for the VAE on rank 0 after sampling.

Every function here runs before any collective (validation) or on one rank (encode, decode); none holds state.
"""
from __future__ import annotations

import gc
import glob
import math
import os

import torch

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families.base import DTYPES
from magcache_dist.families.components import check_weight_file, read_config  # noqa: F401 (read_config: re-exported)


def free_memory(device) -> None:
    """Return what the last freed component held (host and, on a GPU, the caching allocator's blocks)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def vae_decode(vae, z: torch.Tensor, device) -> torch.Tensor:
    """A diffusers VAE's decode of prepared latents ``z`` -> the pixels in [-1, 1] (CPU, float32); the VAE is freed
    after (pass it straight from the family's ``_decode_input``, holding no other reference)."""
    with torch.no_grad():
        out = vae.decode(z).sample.float().clamp(-1, 1).cpu()
    del vae
    free_memory(device)
    return out


def ckpt_root(cfg, name: str, family: str, noun: str, contents: str, model_ckpt: bool = False) -> str:
    """The job's ``ckpt_dir``, resolved, or a ValueError that says what to pass: ``ckpt_dir`` unset or not a folder,
    or (unless the family takes one, ``model_ckpt``) a ``model.ckpt``, which only the embedded tiny models read.
    ``family noun`` names the folder ("Wan2.1" "checkpoint folder"), ``contents`` what is in it."""
    from magcache_dist.config import resolve_path

    if cfg.model.ckpt is not None and not model_ckpt:
        raise InputError(f"model.ckpt is for the embedded tiny models; {name} loads everything from ckpt_dir "
                         f"(set model.ckpt=null and ckpt_dir=/path/to/the {family} {noun})")
    if cfg.ckpt_dir is None:
        raise InputError(f"ckpt_dir is not set; pass ckpt_dir=/path/to/the {name} {noun} ({contents})")
    root = resolve_path(cfg.ckpt_dir)
    if not os.path.isdir(root):
        article = "an" if family[0] in "AEIOU" else "a"
        raise InputError(f"ckpt_dir={cfg.ckpt_dir!r} is not a directory; point it at {article} {family} {noun} "
                         f"({contents})")
    return root


def stream_weights(model, device, path: str, where: str, convert=None, share=None) -> int:
    """Materialise a meta-built ``model`` in its dtype on ``device`` (an FSDP-sharded one as this rank's shards
    only) and stream the weights at ``path`` in, tensor by tensor (``convert``: a checkpoint-layout conversion
    applied on the way; ``share``: the group's ranks read a row block each and all-gather, see
    magcache_dist/parallel/load_share.py); ``where`` names the checkpoint in errors. Returns the bytes read."""
    from models.loading import load_streaming

    model.to_empty(device=device)
    read = load_streaming(model, path, where, convert=convert, share=share)
    model.requires_grad_(False)
    return read


def scheduler_shift(root: str, key: str, default: float | None) -> float | None:
    """The sigma shift ``key`` of the folder's scheduler/scheduler_config.json (``default`` when the file or the
    field is absent), or a ValueError naming the file when it is not a number > 0."""
    path = os.path.join(root, "scheduler", "scheduler_config.json")
    shift = read_config(path, root).get(key, default) if os.path.isfile(path) else default
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float))
                              or not math.isfinite(shift) or shift <= 0):
        raise InputError(f"ckpt_dir={root!r}: scheduler/scheduler_config.json has {key}={shift!r}; it must be a "
                         f"number > 0 (or set sampler.shift)")
    return None if shift is None else float(shift)


def default_shift(cfg, key: str, default: float | None) -> float | None:
    """A family's default sampler.shift: the ``ckpt_dir`` folder's scheduler shift ``key`` when the folder is there
    (checked as in ``scheduler_shift``), else ``default``."""
    root = resolve_path(cfg.ckpt_dir) if cfg.ckpt_dir else None
    return scheduler_shift(root, key, default) if root and os.path.isdir(root) else default


def need(root: str, rel: str, what: str, fix: str, is_dir: bool = False) -> str:
    """``root/rel`` (a file, or with ``is_dir`` a folder), or a ValueError naming it and ``fix``."""
    path = os.path.join(root, rel)
    if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
        raise InputError(f"ckpt_dir={root!r}: missing {what} '{rel}'; {fix}")
    return path


def diffusers_weights(folder: str, root: str, stem: str = "*", what: str = "weights") -> str:
    """The weights of a component folder (``stem``: the file name before ``.safetensors``, a glob): its sharded
    index json, or its one .safetensors file."""
    rel = os.path.relpath(folder, root)
    where = "ckpt_dir" if rel == "." else rel
    index = sorted(glob.glob(os.path.join(folder, f"{stem}.safetensors.index.json")))
    files = index[:1] or sorted(glob.glob(os.path.join(folder, f"{stem}.safetensors")))
    if len(files) == 1:
        check_weight_file(files[0], root, what)  # headers and sizes: a cut or pointer file is named now
        return files[0]
    name = stem.rstrip("*") or "*"
    if len(files) > 1:
        raise InputError(f"ckpt_dir={root!r}: {where} holds {len(files)} shards of {what} but no "
                         f"{name}.safetensors.index.json; restore the index file")
    expected = "*.safetensors or a sharded index" if name == "*" else f"{name}.safetensors or its sharded index"
    raise InputError(f"ckpt_dir={root!r}: no {what} ({expected}) in {where}; copy the complete release into "
                     f"ckpt_dir")


def check_fields(got: dict, want: dict, path: str, root: str, model_name: str) -> None:
    """Every field of ``want`` that the component's config gives must equal it: a component of another size (or
    head count) may even load silently and compute garbage."""
    diff = {k: (got[k], w) for k, w in want.items() if k in got and _norm(got[k]) != _norm(w)}
    if diff:
        raise InputError(f"ckpt_dir={root!r}: {os.path.relpath(path, root)} has "
                         f"{', '.join(f'{k}={_shown(g, w)}' for k, (g, w) in diff.items())} but model.name="
                         f"{model_name!r} needs "
                         f"{', '.join(f'{k}={w}' for k, (_, w) in diff.items())}; set model.name to the checkpoint's "
                         f"model or replace that component")


def _shown(got, want):
    """A config value as the message shows it: quoted when it is text where a number or flag belongs."""
    return repr(got) if isinstance(got, str) and not isinstance(want, str) else got


def _norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def encoder_place(cfg, device) -> tuple[object, torch.dtype]:
    """(device, dtype) the text / image encoders run in: ``text_encoder.device=cpu`` keeps them off the GPU."""
    return ("cpu" if cfg.text_encoder.device == "cpu" else device), DTYPES[cfg.text_encoder.dtype]


def offload_for_decode(cfg, model, device) -> None:
    """Rank 0 before the VAE decode: move the DiT to host memory (``vae.offload_dit``) so its device memory goes to
    the decode. An FSDP-sharded DiT (parallel.fsdp) holds only its shards and cannot leave its device mesh."""
    device = torch.device(device)
    sharded = model is not None and any(hasattr(p, "to_local") for p in model.parameters())
    if cfg.vae.offload_dit and model is not None and not sharded and device.type != "cpu":
        model.to("cpu")
        free_memory(device)


def check_encoder_options(cfg) -> None:
    """text_encoder.device / dtype and vae.dtype of a job that loads encoders and a VAE."""
    if cfg.text_encoder.device not in ("auto", "cpu"):
        raise InputError(f"text_encoder.device={cfg.text_encoder.device!r} must be 'auto' or 'cpu'")
    for key, val in (("text_encoder.dtype", cfg.text_encoder.dtype), ("vae.dtype", cfg.vae.dtype)):
        if val not in DTYPES:
            raise InputError(f"{key}={val!r} must be one of {sorted(DTYPES)}")


def check_tiles(cfg, multiple: int = 8) -> None:
    """vae.tile_* (pixels): a multiple of the VAE stride, the stride no larger than the tile."""
    t = cfg.vae
    for a, b in (("tile_height", "tile_stride_height"), ("tile_width", "tile_stride_width")):
        size, stride = getattr(t, a), getattr(t, b)
        if size < 2 * multiple or size % multiple or not 0 < stride <= size or stride % multiple:
            raise InputError(f"vae.{a}={size} / vae.{b}={stride}: need a multiple of {multiple} >= {2 * multiple} "
                             f"and 0 < stride <= tile, stride a multiple of {multiple}")
