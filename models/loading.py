"""Weight loading for the Wan DiT: official layout (single or sharded safetensors, .pth) and diffusers layout.

Nothing is unpickled: safetensors, or ``torch.load(weights_only=True)`` for .pth/.pt files. Key names of the two
layouts: ``WAN_DIT_RULES`` (a models/layouts.py rule table).
"""
from __future__ import annotations

import glob
import json
import os

import torch
import torch.nn as nn

from models.layouts import Rule, rename_key

# Wan DiT: official keys (our parameter names) <-> diffusers' WanTransformer3DModel keys
_B, _CE = "blocks.{i}.", "condition_embedder."
WAN_DIT_RULES = [
    Rule("patch_embedding.{p}", ("patch_embedding.{p}",)),
    Rule("text_embedding.0.{p}", (_CE + "text_embedder.linear_1.{p}",)),
    Rule("text_embedding.2.{p}", (_CE + "text_embedder.linear_2.{p}",)),
    Rule("time_embedding.0.{p}", (_CE + "time_embedder.linear_1.{p}",)),
    Rule("time_embedding.2.{p}", (_CE + "time_embedder.linear_2.{p}",)),
    Rule("time_projection.1.{p}", (_CE + "time_proj.{p}",)),
    Rule("img_emb.proj.0.{p}", (_CE + "image_embedder.norm1.{p}",)),
    Rule("img_emb.proj.1.{p}", (_CE + "image_embedder.ff.net.0.proj.{p}",)),
    Rule("img_emb.proj.3.{p}", (_CE + "image_embedder.ff.net.2.{p}",)),
    Rule("img_emb.proj.4.{p}", (_CE + "image_embedder.norm2.{p}",)),
    Rule("head.modulation", ("scale_shift_table",)),
    Rule("head.head.{p}", ("proj_out.{p}",)),
    Rule(_B + "modulation", (_B + "scale_shift_table",)),
    Rule(_B + "self_attn.{c:q|k|v}.{p}", (_B + "attn1.to_{c}.{p}",)),
    Rule(_B + "self_attn.o.{p}", (_B + "attn1.to_out.0.{p}",)),
    Rule(_B + "self_attn.norm_{c:q|k}.{p}", (_B + "attn1.norm_{c}.{p}",)),
    Rule(_B + "cross_attn.{c:q|k|v}.{p}", (_B + "attn2.to_{c}.{p}",)),
    Rule(_B + "cross_attn.o.{p}", (_B + "attn2.to_out.0.{p}",)),
    Rule(_B + "cross_attn.norm_{c:q|k}.{p}", (_B + "attn2.norm_{c}.{p}",)),
    Rule(_B + "cross_attn.k_img.{p}", (_B + "attn2.add_k_proj.{p}",)),
    Rule(_B + "cross_attn.v_img.{p}", (_B + "attn2.add_v_proj.{p}",)),
    Rule(_B + "cross_attn.norm_k_img.{p}", (_B + "attn2.norm_added_k.{p}",)),
    Rule(_B + "norm3.{p}", (_B + "norm2.{p}",)),  # diffusers' norm2 is the (affine) cross-attn norm
    Rule(_B + "ffn.0.{p}", (_B + "ffn.net.0.proj.{p}",)),
    Rule(_B + "ffn.2.{p}", (_B + "ffn.net.2.{p}",)),
]


def official_to_diffusers_key(key: str, where: str = "Wan DiT") -> str:
    """One official Wan DiT key -> its diffusers name (ValueError for a key outside WAN_DIT_RULES)."""
    return rename_key(key, WAN_DIT_RULES, where, "check model.name")[0]


def _diffusers_name_or_key(key: str) -> str:
    """official_to_diffusers_key, or the key itself outside the table (a model that is not a Wan DiT)."""
    try:
        return official_to_diffusers_key(key)
    except ValueError:
        return key


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file: a .safetensors file, a sharded index json, a directory holding either, or a
    .pth/.pt file (``TensorSource`` below)."""
    source = TensorSource(path)
    return {k: source.read(k) for k in source.files}


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], where: str, prefix: str = "") -> None:
    """Load with strict key and shape checking (``check_shapes``); the error lists the missing/unexpected keys."""
    own = model.state_dict()
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    names = check_shapes(model, {k: tuple(v.shape) for k, v in sd.items()}, where)
    model.load_state_dict({k: sd[names[k]].to(own[k].dtype) for k in own}, strict=True)


def read_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a weight file (same inputs as ``read_tensors``) without reading the tensors: the
    safetensors headers, or a memory-mapped ``torch.load(weights_only=True)``. For checks before any collective."""
    return TensorSource(path).shapes()


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, str]:
    """Strict key and shape checks of a checkpoint (key -> shape, either Wan layout) against ``model`` (which may
    live on the meta device); returns each of the model's keys -> the checkpoint's name for it."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = {k: k for k in shapes}  # ours -> the checkpoint's
    if is_diffusers_layout(shapes):
        inverse = {_diffusers_name_or_key(k): k for k in own}
        names = {inverse.get(k, k): k for k in shapes}
    missing, unexpected = sorted(set(own) - set(names)), sorted(set(names) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where}: checkpoint does not match the model: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)}); check model.name")
    bad = [(k, tuple(shapes[names[k]]), own[k]) for k in own if tuple(shapes[names[k]]) != own[k]]
    if bad:
        raise ValueError(f"{where}: shape mismatch for {bad[:4]} (checkpoint vs model); check model.name")
    return names


# ---- streaming: one tensor at a time, straight into a built model ------------------------------------------------
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class _SafetensorsFile:
    """A .safetensors file read one tensor at a time with plain reads (the header gives each tensor's byte range).

    Not a memory map: pages of a mapped file that a copy touches count in the process's resident memory until
    the kernel drops them, so mapping a 28 GB checkpoint would double the load peak; a read buffer lives only
    until its tensor is copied into the model."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            self.base = 8 + n
            self.entries = {k: v for k, v in header.items() if k != "__metadata__"}
            for k, e in self.entries.items():  # fail here, not halfway through the load
                if e.get("dtype") not in _ST_DTYPES or len(e.get("data_offsets", ())) != 2:
                    raise ValueError(f"entry {k!r} has dtype {e.get('dtype')!r} / offsets {e.get('data_offsets')}")
        except Exception as e:  # truncated or not safetensors at all
            raise ValueError(f"model.ckpt={path!r} is not a readable safetensors file ({type(e).__name__}: {e}); "
                             f"re-download or re-export it") from None

    def keys(self):
        return self.entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor, or with ``rows=(a, b)`` only its rows a..b-1 (dim 0): only their bytes are read."""
        e = self.entries[key]
        start, end = e["data_offsets"]
        dtype, shape = _ST_DTYPES[e["dtype"]], list(e["shape"])
        if rows is not None and shape:
            row_bytes = (end - start) // shape[0] if shape[0] else 0
            start, end = start + rows[0] * row_bytes, start + rows[1] * row_bytes
            shape[0] = rows[1] - rows[0]
        if end == start:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(end - start)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.base + start)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"model.ckpt={self.path!r}: '{key}' is cut short; re-download the file")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


class _TorchFile:
    """A .pth/.pt file through ``torch.load(weights_only=True, mmap=True)``: tensors are views of the mapped file
    (legacy non-zip files cannot be mapped and are read whole)."""

    def __init__(self, path: str):
        self.path = path
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                import warnings

                with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing it
                    warnings.simplefilter("ignore")
                    sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"model.ckpt={path!r} could not be read with weights_only=True: "
                             f"{str(e).splitlines()[0]}; convert it to .safetensors") from None
        self.sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        if not isinstance(self.sd, dict) or not all(torch.is_tensor(v) for v in self.sd.values()):
            raise ValueError(f"model.ckpt={path!r} does not hold a dict of tensors")

    def keys(self):
        return self.sd.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.sd[key].shape)

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        t = self.sd[key]
        return t if rows is None or t.dim() == 0 else t[rows[0]:rows[1]]  # a view: only its pages are touched


class TensorSource:
    """The tensors of a weight file (same inputs as ``read_tensors``) by name, read one at a time."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            for pattern in ("*.safetensors.index.json", "*.safetensors", "*.pth", "*.pt"):
                found = sorted(glob.glob(os.path.join(path, pattern)))
                if found:
                    if pattern == "*.safetensors" and len(found) > 1:
                        raise ValueError(f"model.ckpt={path!r} holds {len(found)} .safetensors files and no index "
                                         f"json")
                    path = found[0]
                    break
            else:
                raise ValueError(f"model.ckpt={path!r}: no .safetensors, index json or .pth file in that directory")
        if not os.path.isfile(path):
            raise ValueError(f"model.ckpt={path!r} does not exist")
        self.files: dict[str, object] = {}  # key -> the file holding it
        if path.endswith(".index.json"):
            try:
                with open(path) as f:
                    weight_map = json.load(f).get("weight_map")
            except (OSError, json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"model.ckpt={path!r} is not a readable index json ({e}); re-download it") from None
            if not isinstance(weight_map, dict):
                raise ValueError(f"model.ckpt={path!r}: index json has no 'weight_map'")
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(os.path.dirname(path), shard)
                if not os.path.isfile(shard_path):
                    raise ValueError(f"model.ckpt={path!r}: shard {shard!r} listed in the index is missing")
                f = _SafetensorsFile(shard_path)
                self.files.update({k: f for k in f.keys()})
        elif path.endswith(".safetensors"):
            f = _SafetensorsFile(path)
            self.files = {k: f for k in f.keys()}
        elif path.endswith((".pth", ".pt", ".bin")):
            f = _TorchFile(path)
            self.files = {k: f for k in f.keys()}
        else:
            raise ValueError(f"model.ckpt={path!r}: unknown weight file type (use .safetensors, index json or .pth)")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: f.shape(k) for k, f in self.files.items()}

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``key`` (``rows=(a, b)``: only its rows a..b-1, read alone)."""
        return self.files[key].read(key, rows)


def load_streaming(model: nn.Module, path: str, where: str, convert=None, share=None) -> int:
    """Fill a built model (its parameters already on their device, in their dtype: e.g. ``to_empty`` after a
    meta-device build) from a weight file in either Wan layout, tensor by tensor: each is read, converted to the
    parameter's dtype and copied to its device, then freed, so the load never holds more than the model plus one
    tensor. A sharded parameter (FSDP's DTensor) keeps only this rank's shard of it, with no collective: sharded on
    dim 0 (FSDP's placement), only this rank's rows are read from the file (each rank of N reads about 1/N of the
    sharded bytes); with a layout conversion the tensor is read whole and sliced. The key and shape checks of
    ``load_state_dict_strict`` run first, on the names and shapes only.

    ``share``: ranks that all load this whole model share the reading (magcache_dist/parallel/load_share.py):
    ``share.rows(n)`` is this rank's rows of a tensor of ``n`` rows (None: read it whole), ``share.fill(dst,
    part)`` the collective that assembles the whole tensor from every rank's rows. Every rank must then load the
    same model from the same file. Not with ``convert`` (the tensors are read whole there).

    ``convert({file key: tensor}) -> {model key: tensor}``: a per-tensor layout conversion (e.g. an official
    fused qkv split into the library's q, k, v), applied to meta tensors for the checks and to each tensor read.
    Returns the bytes this rank read from the file."""
    source = TensorSource(path)
    own = model.state_dict()  # views of the parameters and buffers
    read = 0
    if convert is None:
        names = check_shapes(model, source.shapes(), where)  # ours -> the file's
        with torch.no_grad():
            for key, dst in own.items():
                rows = local_rows(dst)  # this rank's rows of a sharded parameter
                block = None  # this rank's rows of a whole parameter, the others' come from the group
                if rows is None and share is not None and not hasattr(dst, "to_local") and dst.dim() > 0:
                    block = share.rows(dst.shape[0])
                src = source.read(names[key], rows or block)
                read += src.numel() * src.element_size()
                if block is not None:
                    share.fill(dst, src)
                elif rows is not None:
                    dst.to_local().copy_(src)
                else:
                    _put(dst, src)
                del src
        return read
    shapes = {}
    for key, shape in source.shapes().items():
        shapes.update({k: tuple(v.shape) for k, v in convert({key: torch.empty(shape, device="meta")}).items()})
    check_shapes(model, shapes, where)
    with torch.no_grad():
        for key in source.files:
            src = source.read(key)
            read += src.numel() * src.element_size()
            for name, part in convert({key: src}).items():
                _put(own[name], part)
            del src
    return read


def local_rows(dst: torch.Tensor) -> tuple[int, int] | None:
    """The rows (dim 0) of the whole tensor that this rank holds of a parameter sharded on dim 0 alone (FSDP's
    DTensor with placements (Shard(0),)), or None (a plain tensor, or another placement: read whole)."""
    if not hasattr(dst, "to_local") or dst.dim() == 0:
        return None
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if len(dst.placements) != 1 or not isinstance(dst.placements[0], Shard) or dst.placements[0].dim != 0:
        return None
    shape, offset = compute_local_shape_and_global_offset(dst.shape, dst.device_mesh, dst.placements)
    if tuple(shape) != tuple(dst.to_local().shape):
        return None  # a padded local shard: slice the whole tensor as distribute_tensor does
    return offset[0], offset[0] + shape[0]


def _put(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into a parameter or buffer (in its dtype, on its device); a sharded (FSDP) one keeps only this
    rank's part of the tensor."""
    if hasattr(dst, "to_local"):
        from torch.distributed.tensor import distribute_tensor

        part = distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements, src_data_rank=None)
        dst.to_local().copy_(part.to_local())
        del part
    else:
        dst.copy_(src)
