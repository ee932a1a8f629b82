"""Prompt lists: one job, many videos (``prompts_file=``).

A text file holds one prompt per line (blank lines and lines starting with ``#`` are skipped). A ``.jsonl`` file
holds one JSON object per line with ``prompt`` and optionally ``seed``, ``negative_prompt``, ``image`` (I2V) and
``name``; what a line leaves out comes from the job (``seed``, ``negative_prompt``, ``image``). Reading the file
is part of validation: a bad file exits 2 naming the line.

A video's identity (``video_id``, written into its report.json and its summary line) is what makes it: its JSONL
``name`` when the line gives one (``name:<name>``), else its prompt, negative prompt, seed and image, the image by
the content of its file so that a staged copy is the same video (``v1:<16 hex of a sha256>``). Its folder under
``output_dir`` derives from the identity, never from its position: the name, else a slug of the prompt and 8 hex
of the identity (``a-red-circle-moves-right-3f2a9c01``). Reordering, editing or splitting a list therefore finds
every video made before in its folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError
from magcache_dist.io.fingerprint import file_fingerprint

FIELDS = ("prompt", "seed", "negative_prompt", "image", "name")
SUMMARY_FORMAT = "magcache-prompt-job/1"  # a prompt-list job's summary.json (magcache_dist/videos.py; read by eval)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# what a prompt-list job writes into output_dir itself (magcache_dist/videos.py, checkpoint.py, io/probe.py): a
# video folder of one of these names would collide with it
RESERVED_NAMES = ("summary.json", "summary.md", ".summary", "report.json", "checkpoint", "plan.json", "video.mp4",
                  "image.png", "frames.png", "latents.pt", "ratios.json", ".magcache-dist.lock", "logs", ".claims")
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class VideoSpec:
    index: int
    name: str  # its folder under output_dir
    prompt: str
    negative_prompt: str
    seed: int
    image: str | None
    line: int  # where it came from (1-based)
    given: tuple[str, ...] = ()  # the job-level fields the line sets itself (negative_prompt, image): checked
    video_id: str = ""  # its identity (see the module doc)


def video_identity(prompt: str, negative_prompt: str, seed: int, image: str | None, name: str | None = None) -> str:
    """``name:<name>`` for a named video, else ``v1:<16 hex>`` of (prompt, negative prompt, seed, image content)."""
    if name:
        return f"name:{name}"
    image_id = None
    if image is not None:
        try:
            image_id = file_fingerprint(resolve_path(image))
        except OSError as e:
            raise InputError(f"image={image!r} cannot be read ({e.strerror or e}); give an existing image file") \
                from None
    key = json.dumps(dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, image=image_id),
                     sort_keys=True, ensure_ascii=False)
    return "v1:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def folder_name(video_id: str, prompt: str) -> str:
    """The folder of a video under output_dir: its name, else a slug of its prompt and 8 hex of its identity."""
    if video_id.startswith("name:"):
        return video_id[len("name:"):]
    return f"{slug(prompt)}-{video_id.split(':', 1)[1][:8]}"


SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``prompts_shard="I/N"`` -> (I, N); (0, 1) when unset. InputError naming the key and the fix."""
    if text is None:
        return 0, 1
    m = SHARD_RE.match(str(text))
    if not m:
        raise InputError(f"prompts_shard={text!r} is not I/N; write e.g. prompts_shard=0/4 (share 0 of 4, counted "
                         f"from 0), or with SLURM arrays prompts_shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"prompts_shard={text!r}: need N >= 1 and 0 <= I < N (I counts from 0; the last of 4 "
                         f"shards is 3/4)")
    return i, n


def slug(text: str, limit: int = 48) -> str:
    """A readable, file-system safe version of a prompt: lower case words joined by '-'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "video"


def read_prompts(path: str, seed: int, negative_prompt: str, image: str | None) -> list[VideoSpec]:
    """The videos of a prompts file, or ValueError naming the file, the line and the fix."""
    where = f"prompts_file={path!r}"
    if not os.path.isfile(path):
        raise InputError(f"{where} does not exist; give a text file (one prompt per line) or a .jsonl file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is not part of a prompt
            text = f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{where} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    lines = text.splitlines()
    jsonl = path.endswith(".jsonl")
    if text.lstrip().startswith("[") and _json_array(text):
        raise InputError(f"{where} is one JSON array; a prompts file is a text file with one prompt per line, or a "
                         f".jsonl file with one JSON object per line (e.g. {{\"prompt\": \"a red circle\"}})")
    entries = []
    for no, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or (not jsonl and text.startswith("#")):
            continue
        entries.append(_entry(text, no, where) if jsonl else dict(prompt=text, line=no))
    if not entries:
        raise InputError(f"{where} holds no prompts; write one prompt per line"
                         + (" (a JSON object with a 'prompt' per line)" if jsonl else ""))
    videos, names, ids = [], {}, {}
    for i, e in enumerate(entries):
        neg, s, img = e.get("negative_prompt", negative_prompt), e.get("seed", seed), e.get("image", image)
        try:
            vid = video_identity(e["prompt"], neg, s, img, e.get("name"))
        except InputError as err:
            raise InputError(f"{where} line {e['line']}: {err}") from None
        name = folder_name(vid, e["prompt"])
        if name.lower() in RESERVED_NAMES:
            raise InputError(f"{where} line {e['line']}: name={name!r} is a file the job writes into output_dir "
                             f"itself; choose another name (not one of {', '.join(RESERVED_NAMES)})")
        if name in names and "name" in e:
            raise InputError(f"{where} lines {names[name]} and {e['line']} both name the video {name!r}; "
                             f"give each video its own name")
        if vid in ids or name in names:
            raise InputError(f"{where} lines {ids.get(vid, names.get(name))} and {e['line']} describe the same video "
                             f"(same prompt, negative prompt, seed and image); remove one, or give it another seed "
                             f"or a name")
        ids[vid] = names[name] = e["line"]
        videos.append(VideoSpec(index=i, name=name, prompt=e["prompt"], negative_prompt=neg, seed=s, image=img,
                                line=e["line"], given=tuple(k for k in ("negative_prompt", "image") if k in e),
                                video_id=vid))
    return videos


def _json_array(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def _entry(text: str, no: int, where: str) -> dict:
    at = f"{where} line {no}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{at} is not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line, "
                         f'e.g. {{"prompt": "a red circle moves right", "seed": 1}}') from None
    if not isinstance(obj, dict):
        raise InputError(f"{at} is a JSON {type(obj).__name__}, not an object; write "
                         f'{{"prompt": "..."}}')
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise InputError(f"{at}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{at}: 'prompt' is missing or empty; every line needs a non-empty prompt")
    out = dict(prompt=prompt.strip(), line=no)
    if "seed" in obj:
        s = obj["seed"]
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX:
            raise InputError(f"{at}: seed={s!r} must be an integer >= 0 and <= {SEED_MAX}")
        out["seed"] = s
    for key in ("negative_prompt", "image", "name"):
        if key in obj and obj[key] is not None:
            if not isinstance(obj[key], str):
                raise InputError(f"{at}: {key}={obj[key]!r} must be a string")
            out[key] = obj[key]
    if "name" in out and not NAME_RE.match(out["name"]):
        raise InputError(f"{at}: name={out['name']!r} is not a folder name; use letters, digits, '.', '_' and '-' "
                         f"(at most 100, not starting with '.' or '-')")
    return out


def video_config(cfg, video: VideoSpec):
    """The job config of one video of a list: its own prompt, seed, negative prompt and image, its folder under
    output_dir (its step checkpoints in the folder's checkpoint/, or under checkpoint.dir by name)."""
    from magcache_dist.config import evolve

    return evolve(cfg, prompt=video.prompt, negative_prompt=video.negative_prompt, seed=video.seed, image=video.image,
                  prompts_file=None, output_dir=os.path.join(cfg.output_dir, video.name),
                  **{"checkpoint.dir": os.path.join(cfg.checkpoint.dir, video.name) if cfg.checkpoint.dir else None})
