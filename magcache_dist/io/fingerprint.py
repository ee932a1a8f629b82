"""Files recognised by their content, not their path: the same weights staged to node-local scratch are the same
job, different weights written over the same path are not.

``file_fingerprint(path)`` is cheap to check however large the file: a file up to ``WHOLE`` bytes is hashed whole
(an image, a config, a tokenizer file); a larger one (weights) by its size, its first and its last MiB (a
safetensors file's header, which names every tensor with its dtype, shape and offsets, is at the start; the tail
catches a file cut short or rewritten in place). The answer is remembered per process by (real path, size,
mtime), so a list of a thousand videos reads each weight file's 2 MiB once. A folder's fingerprint covers every
file under it (relative name and fingerprint; hidden files are skipped); a sharded checkpoint's index file covers
the shards it names.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

from magcache_dist.errors import InputError

MIB = 1 << 20
WHOLE = 4 * MIB
MAX_FILES = 10_000  # a folder with more files than this is not a checkpoint folder


@functools.lru_cache(maxsize=4096)
def _file_digest(real: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(real, "rb") as f:
        if size <= WHOLE:
            h.update(f.read())
        else:
            h.update(size.to_bytes(8, "little"))
            h.update(f.read(MIB))
            f.seek(size - MIB)
            h.update(f.read(MIB))
    return h.hexdigest()[:32]


def file_fingerprint(path: str) -> str:
    """``sha256:<32 hex>`` of a file's content (see the module doc); OSError when it cannot be read."""
    st = os.stat(path)
    return "sha256:" + _file_digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _index_shards(path: str) -> list[str]:
    """The shard files a ``*.safetensors.index.json`` (``weight_map``) names, else []."""
    if not path.endswith(".json") or os.path.getsize(path) > 64 * MIB:
        return []
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return []
    wm = index.get("weight_map") if isinstance(index, dict) else None
    return sorted({v for v in wm.values() if isinstance(v, str)}) if isinstance(wm, dict) else []


def content_fingerprint(path: str | None) -> str | None:
    """The fingerprint of a file or a folder (every file under it), or None for None. A path that does not exist
    (validation reports it elsewhere) is kept as ``missing:<path>``, so it never equals any content."""
    if path is None:
        return None
    if os.path.isfile(path):
        shards = _index_shards(path)
        if not shards:
            return file_fingerprint(path)
        h = hashlib.sha256(file_fingerprint(path).encode())  # a sharded checkpoint's index: its shards count too
        for s in shards:
            full = os.path.join(os.path.dirname(path), s)
            h.update(f"{s}\0{file_fingerprint(full) if os.path.isfile(full) else 'missing'}\n".encode())
        return "sha256-index:" + h.hexdigest()[:32]
    if not os.path.isdir(path):
        return f"missing:{path}"
    h, n = hashlib.sha256(), 0
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            n += 1
            if n > MAX_FILES:
                raise InputError(f"{path!r} holds more than {MAX_FILES} files; point it at a checkpoint folder")
            h.update(f"{os.path.relpath(full, path)}\0{file_fingerprint(full)}\n".encode())
    return "sha256-dir:" + h.hexdigest()[:32]
