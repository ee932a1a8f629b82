"""Checks of a checkpoint folder's components before any collective and before any weights load: what a job will
read later (text encoders, tokenizers, VAEs, images) is found and checked now, from headers and small files only.

- Weight files: a safetensors header is parsed and its data length compared with the file size (a cut file is
  found now, not halfway through a load); a ``.pth`` / ``.bin`` zip archive's directory is read and every member
  must lie inside the file; a git-lfs pointer file (what a clone without ``git lfs pull`` leaves) is named as such.
- Tokenizer folders: not empty, ``tokenizer.json`` / ``tokenizer_config.json`` / ``vocab.json`` parse, a
  sentencepiece model is not empty or a pointer, and the files that the tokenizer class needs are there (a folder
  with only a sentencepiece model needs the ``sentencepiece`` package to be read at all).
- Config values: every field of a component's config.json whose meaning this project knows (a width, a count, a
  norm epsilon, a scale) has the type and range it must have (``check_config_values``;
  ``read_config``, which every family uses, runs it on every config.json it reads).
- Images: fully decoded (PIL ``load``), not only their header.

Every function raises InputError naming the file (relative to ``ckpt_dir``), the field and the fix.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import zipfile

from magcache_dist.errors import InputError

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def rel(path: str, root: str | None) -> str:
    """``path`` as the user knows it: relative to ``ckpt_dir`` when inside it."""
    if root:
        r = os.path.relpath(path, root)
        if not r.startswith(".."):
            return r
    return path


def _where(path: str, root: str | None) -> str:
    return f"ckpt_dir={root!r}: {rel(path, root)}" if root else repr(path)


def _at(path: str, root: str | None, what: str) -> str:
    """A weight file as the user knows it: inside ``ckpt_dir`` by its relative path and what it is, else (a file
    named by a config key, e.g. model.ckpt) as ``key=path``."""
    return f"{_where(path, root)} ({what})" if root else f"{what}={path!r}"


def lfs_pointer(path: str) -> bool:
    """Whether ``path`` is a git-lfs pointer file (a few hundred bytes of text naming the real file's hash)."""
    try:
        if os.path.getsize(path) > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def _not_a_pointer(path: str, root: str | None, what: str) -> None:
    where = _at(path, root, what)
    if lfs_pointer(path):
        raise InputError(f"{where} is a git-lfs pointer file ({os.path.getsize(path)} bytes), not the file "
                         f"itself; run 'git lfs pull' in that folder (or download the file directly)")
    if os.path.getsize(path) == 0:
        raise InputError(f"{where} is empty; re-download that file")


# ---- weight files ----------------------------------------------------------------------------------------------
def check_safetensors(path: str, root: str | None, what: str) -> None:
    """The header parses, every tensor's byte range matches its dtype and shape, and the data ends where the file
    does (a truncated or padded download is found here)."""
    _not_a_pointer(path, root, what)
    where, size = _at(path, root, what), os.path.getsize(path)
    fix = "re-download or re-export it"
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise InputError(f"its header length {n} does not fit in the file's {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise InputError("its header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{where} is not a readable safetensors file ({e}); {fix}") from None
    end = 0
    for key, e in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(e, dict) and e.get("dtype") in ST_ITEMSIZE and isinstance(e.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in e["shape"]) and isinstance(e.get("data_offsets"), list) \
            and len(e["data_offsets"]) == 2 and all(isinstance(o, int) for o in e["data_offsets"])
        if not ok:
            raise InputError(f"{where}: tensor {key!r} has a malformed header entry {e!r}; {fix}")
        start, stop = e["data_offsets"]
        if stop - start != math.prod(e["shape"]) * ST_ITEMSIZE[e["dtype"]] or start < 0:
            raise InputError(f"{where}: tensor {key!r} ({e['dtype']} {e['shape']}) has data_offsets "
                             f"{e['data_offsets']} that do not match its size; {fix}")
        end = max(end, stop)
    if 8 + n + end != size:
        raise InputError(f"{where} is {size} bytes but its header describes {8 + n + end}: the file is "
                         f"{'cut short' if size < 8 + n + end else 'longer than its tensors'}; {fix}")


def check_torch_archive(path: str, root: str | None, what: str) -> None:
    """A ``.pth`` / ``.pt`` / ``.bin`` file: torch's zip archive with a readable directory whose members all lie
    inside the file (legacy pickled files: only that they are not empty or a pointer)."""
    _not_a_pointer(path, root, what)
    where, size = _at(path, root, what), os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        if magic[:1] == b"\x80":  # a legacy (pre-1.6) pickled file: no directory to check
            return
        raise InputError(f"{where} is neither a torch zip archive nor a legacy torch file; re-download "
                         f"that file")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{where} is a damaged or cut zip archive ({e}); re-download that file") from None
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise InputError(f"{where} is a zip archive without torch's data.pkl; it is not a torch file")
    for i in infos:
        if i.header_offset + i.compress_size > size:
            raise InputError(f"{where} is cut short: member {i.filename!r} ends past the file's {size} "
                             f"bytes; re-download that file")


def check_index(path: str, root: str | None, what: str) -> None:
    """A sharded index json: its weight_map parses and every shard it names exists and is consistent."""
    where = _at(path, root, what)
    try:
        with open(path) as f:
            weight_map = json.load(f).get("weight_map")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"{where} is not a readable index json ({e}); re-download that file") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str)
                                                                     for v in weight_map.values()):
        raise InputError(f"{where}: 'weight_map' must be an object {{tensor name: shard file}}; "
                         f"re-download that file")
    for shard in sorted(set(weight_map.values())):
        p = os.path.join(os.path.dirname(path), shard)
        if os.path.basename(shard) != shard or not os.path.isfile(p):
            raise InputError(f"{where} names the shard {shard!r}, which is missing; copy every shard")
        check_weight_file(p, root, what)


def check_weight_file(path: str, root: str | None, what: str) -> None:
    """Any weight file a job reads (by its name: safetensors, index json, or a torch archive)."""
    if path.endswith(".index.json"):
        check_index(path, root, what)
    elif path.endswith(".safetensors"):
        check_safetensors(path, root, what)
    elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        check_torch_archive(path, root, what)


def weights_in(folder: str) -> list[str]:
    """The weight files a transformers / diffusers ``from_pretrained`` would read in ``folder`` (an index json wins
    over single files; safetensors over .bin)."""
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.bin.index.json", "*.bin"):
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        if found:
            return found[:1] if pattern.endswith("index.json") else found
    return []


def check_pretrained(root: str, sub: str, what: str, fix: str) -> dict:
    """A ``save_pretrained`` folder (a text encoder, a VAE, an image encoder): its config.json read and value-
    checked, and its weights found and checked. Returns the config."""
    folder = os.path.join(root, sub)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise InputError(f"ckpt_dir={root!r}: missing {what} config '{os.path.join(sub, 'config.json')}'; {fix}")
    cfg = read_config(cfg_path, root)
    files = weights_in(folder)
    if not files:
        raise InputError(f"ckpt_dir={root!r}: no {what} weights (*.safetensors, *.bin or a sharded index) in "
                         f"{sub}; {fix}")
    for f in files:
        check_weight_file(f, root, what)
    return cfg


# ---- tokenizers ----------------------------------------------------------------------------------------------
def _json_file(path: str, root: str | None, what: str) -> object:
    _not_a_pointer(path, root, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{_where(path, root)} ({what}) is not readable JSON ({e}); re-download that file") from None


def check_tokenizer(folder: str, root: str | None, what: str, fix: str) -> None:
    """A tokenizer folder as transformers' AutoTokenizer reads it, checked without building the tokenizer: the
    files that describe it parse, and one complete set of vocabulary files is there and readable."""
    where = f"ckpt_dir={root!r}: {rel(folder, root)}" if root else repr(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{where} ({what}) is missing; {fix}")
    names = set(os.listdir(folder))
    if not names:
        raise InputError(f"{where} ({what}) is an empty folder; {fix}")
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    if "tokenizer_config.json" in names and not isinstance(_json_file(p("tokenizer_config.json"), root, what),
                                                            dict):
        raise InputError(f"{_where(p('tokenizer_config.json'), root)} ({what}) must be a JSON object; {fix}")
    if "tokenizer.json" in names:
        tok = _json_file(p("tokenizer.json"), root, what)
        if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
            raise InputError(f"{_where(p('tokenizer.json'), root)} ({what}) is not a tokenizers file (no 'model' "
                             f"object); {fix}")
        return  # a fast tokenizer: everything is in tokenizer.json
    spm = [n for n in SENTENCEPIECE_FILES if n in names]
    for n in spm:
        _not_a_pointer(p(n), root, what)
        with open(p(n), "rb") as f:
            if f.read(1) != b"\x0a":  # a ModelProto starts with its repeated 'pieces' field (1, length-delimited)
                raise InputError(f"{_where(p(n), root)} ({what}) is not a sentencepiece model; {fix}")
    if spm:
        if importlib.util.find_spec("sentencepiece") is None:
            raise InputError(f"{where} ({what}) holds only a sentencepiece model ({spm[0]}, no tokenizer.json); "
                             f"reading it needs the 'sentencepiece' package: pip install sentencepiece, or add the "
                             f"release's tokenizer.json to that folder")
        return
    if "vocab.json" in names and "merges.txt" in names:  # byte-level BPE (CLIP, GPT-2)
        if not isinstance(_json_file(p("vocab.json"), root, what), dict):
            raise InputError(f"{_where(p('vocab.json'), root)} ({what}) must be a JSON object; {fix}")
        _not_a_pointer(p("merges.txt"), root, what)
        return
    if "vocab.txt" in names:  # WordPiece
        _not_a_pointer(p("vocab.txt"), root, what)
        return
    raise InputError(f"{where} ({what}) holds no vocabulary (tokenizer.json, a sentencepiece model such as "
                     f"spiece.model, vocab.json + merges.txt, or vocab.txt); {fix}")


# ---- images --------------------------------------------------------------------------------------------------
def check_image(path: str, key: str = "image", shown: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, decoded in full (a file cut after a valid header fails here); ``shown``:
    the value as the user gave it (a relative path), for the messages."""
    from PIL import Image

    shown = path if shown is None else shown
    if not os.path.isfile(path):
        raise InputError(f"{key}={shown!r} does not exist")
    if lfs_pointer(path):
        raise InputError(f"{key}={shown!r} is a git-lfs pointer file, not the image; run 'git lfs pull'")
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (OSError, SyntaxError, DecompressionBombError)
        raise InputError(f"{key}={shown!r} is not a readable image ({type(e).__name__}: {e}); give a PNG or JPEG "
                         f"file that opens in an image viewer") from None


# ---- config values -------------------------------------------------------------------------------------------
# field -> kind, for the fields of component configs (transformers, diffusers, Open-Sora) whose meaning is known;
# a field absent from a file is not checked here (the component's own default applies)
_POS_INT = ("d_model", "d_ff", "d_kv", "num_layers", "num_heads", "num_decoder_layers", "hidden_size",
            "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
            "max_position_embeddings", "projection_dim", "attention_head_dim", "num_single_layers", "in_channels",
            "out_channels", "latent_channels", "layers_per_block", "norm_num_groups", "ffn_dim", "text_dim",
            "freq_dim", "dim", "in_dim", "out_dim", "text_len", "base_dim", "z_dim", "num_res_blocks",
            "joint_attention_dim", "pooled_projection_dim", "temporal_compression_ratio",
            "spatial_compression_ratio", "patch_size_t", "text_embed_dim", "depth", "caption_channels",
            "model_max_length", "input_sq_size", "relative_attention_num_buckets", "relative_attention_max_distance",
            "num_train_timesteps", "base_image_seq_len", "max_image_seq_len", "micro_frame_size", "head_dim")
_POS_FLOAT = ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "eps", "norm_eps", "scaling_factor",
              "mlp_ratio", "rope_theta")
_FLOAT = ("shift_factor", "dropout_rate", "attention_dropout", "dropout", "initializer_factor", "base_shift",
          "max_shift")
_BOOL = ("guidance_embeds", "cross_attn_norm", "pred_sigma", "use_dynamic_shifting", "invert_sigmas",
         "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas",
         "thresholding", "lower_order_final", "predict_x0", "is_encoder_decoder", "tie_word_embeddings")
_POS_INT_LIST = ("block_out_channels", "dim_mult", "axes_dims_rope", "channel_multipliers")
_FLOAT_LIST = ("latents_mean",)
_POS_FLOAT_LIST = ("latents_std",)
KINDS = {**{k: "an integer >= 1" for k in _POS_INT}, **{k: "a number > 0" for k in _POS_FLOAT},
         **{k: "a number" for k in _FLOAT}, **{k: "true or false" for k in _BOOL},
         **{k: "a list of integers >= 1" for k in _POS_INT_LIST}, **{k: "a list of numbers" for k in _FLOAT_LIST},
         **{k: "a list of numbers > 0" for k in _POS_FLOAT_LIST}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fits(kind: str, v) -> bool:
    if kind == "an integer >= 1":
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1
    if kind == "a number > 0":
        return _number(v) and v > 0
    if kind == "a number":
        return _number(v)
    if kind == "true or false":
        return isinstance(v, bool)
    if kind == "a list of integers >= 1":
        return isinstance(v, list) and all(_fits("an integer >= 1", x) for x in v)
    if kind == "a list of numbers":
        return isinstance(v, list) and all(_number(x) for x in v)
    return isinstance(v, list) and all(_number(x) and x > 0 for x in v)


def check_config_values(c: dict, path: str, root: str | None, skip: tuple[str, ...] = ()) -> None:
    """Every known field of a config dict (nested objects too, e.g. a CLIP config's ``text_config``) has its kind:
    a width given as the string "32", a count of 0 or an epsilon given as text is named with the file and field.
    ``null`` is left alone (the component's default); ``skip``: fields the caller checks itself."""
    problems = []

    def walk(obj: dict, prefix: str):
        for k, v in obj.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif k in KINDS and k not in skip and v is not None and not _fits(KINDS[k], v):
                problems.append(f"{prefix}{k}={v!r}")
                kinds.append(KINDS[k])

    kinds: list[str] = []
    walk(c, "")
    if problems:
        raise InputError(f"{_where(path, root)} has " + "; ".join(f"{p} (must be {k})" for p, k in zip(problems, kinds))
                         + "; fix that field or re-download the file (numbers are written without quotes)")


def read_config(path: str, root: str) -> dict:
    """A component's config.json as a dict, every known field value-checked (``check_config_values``); an
    InputError naming the file when it is a pointer, not JSON or not an object. (families.folders re-exports it.)"""
    if lfs_pointer(path):
        raise InputError(f"ckpt_dir={root!r}: {os.path.relpath(path, root)} is a git-lfs pointer file, not the file "
                         f"itself; run 'git lfs pull' in that folder (or download the file directly)")
    try:
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError (a binary file) are ValueErrors
        raise InputError(f"ckpt_dir={root!r}: {os.path.relpath(path, root)} is not readable JSON ({e}); "
                         f"re-download that file") from None
    if not isinstance(c, dict):
        raise InputError(f"ckpt_dir={root!r}: {os.path.relpath(path, root)} is not a JSON object; re-download it")
    check_config_values(c, path, root)  # every known field's type and range, named with the file
    return c


# ---- schedulers ----------------------------------------------------------------------------------------------
# diffusers scheduler fields that change the sigma grid or the update, and the value under which they do nothing:
# this project implements the grids of families/*.py (Euler on the family's grid, or UniPC in flow mode), so a
# folder whose scheduler sets one of these otherwise would make a different video than diffusers does
NO_EFFECT = {
    "FlowMatchEulerDiscreteScheduler": dict(num_train_timesteps=1000, invert_sigmas=False, shift_terminal=None,
                                            use_karras_sigmas=False, use_exponential_sigmas=False,
                                            use_beta_sigmas=False, time_shift_type="exponential",
                                            stochastic_sampling=False),
    "UniPCMultistepScheduler": dict(num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
                                    thresholding=False, predict_x0=True, solver_type="bh2", lower_order_final=True,
                                    disable_corrector=[], solver_p=None, use_karras_sigmas=False,
                                    use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=True,
                                    final_sigmas_type="zero", use_dynamic_shifting=False,
                                    time_shift_type="exponential", sigma_min=None, sigma_max=None,
                                    shift_terminal=None),
}


def check_scheduler(root: str, classes: tuple[str, ...], extra: dict | None = None) -> dict | None:
    """The folder's scheduler/scheduler_config.json (None when absent): one of ``classes``, and every field this
    project does not implement at its no-effect value (``extra``: the family's own fields, e.g. HunyuanVideo's
    ``use_dynamic_shifting=False``). Returns the config."""
    path = os.path.join(root, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return None
    c = read_config(path, root)
    name = c.get("_class_name")
    if name is not None and name not in classes:
        raise InputError(f"ckpt_dir={root!r}: scheduler/scheduler_config.json is a {name}; this pipeline samples "
                         f"like {' or '.join(classes)} only: use the release's scheduler folder")
    rules = {**NO_EFFECT.get(name or classes[0], {}), **(extra or {})}
    bad = [(k, c[k], v) for k, v in rules.items() if k in c and c[k] != v and not (v is None and c[k] is None)]
    if bad:
        raise InputError(f"ckpt_dir={root!r}: scheduler/scheduler_config.json sets "
                         + ", ".join(f"{k}={g!r}" for k, g, _ in bad)
                         + "; this project does not implement "
                         + ("it" if len(bad) == 1 else "them") + " (the video would differ from diffusers'): set "
                         + ", ".join(f"{k}={json.dumps(v)}" for k, _, v in bad) + " or use the release's file")
    return c
