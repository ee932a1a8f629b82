"""VBench (Huang et al. 2024): its prompt list as a prompts file for a job, and a job's videos in the layout
VBench's scorer reads.

    python -m magcache_dist.eval.vbench prompts --out vbench.jsonl [--samples 5] [--seed 0] [--dimension scene ...]
    python -m magcache_dist.eval.vbench export --job outputs/vbench/magcache --out outputs/vbench-videos/magcache

``prompts`` reads ``VBench_full_info.json`` from the installed ``vbench`` package (the list its scorer uses:
946 entries, each a ``prompt_en`` and the ``dimension`` list it serves; two prompts appear twice, for two
dimensions, and are written once) without importing the package (its import needs detectron2 and more), or from
``--info PATH`` (e.g. a VBench checkout's ``vbench/VBench_full_info.json``). It writes one JSONL line per
(prompt, sample index): ``{"prompt", "seed", "name"}``. VBench samples 5 videos per prompt (``--samples``) with a
different, recorded, reproducible seed for each; here seed = the first 4 bytes of SHA-256(base seed, prompt,
index) (``--seeds distinct``, unchanged when the list is edited or split), or base seed + index (``--seeds
index``: every prompt gets the same seeds, as the MagCache release does). A job's folder names must be short and
file-system safe, so ``name`` is ``<slug of the prompt>-<8 hex of its SHA-1>-<index>``.

``export`` puts a prompt-list job's finished videos into one flat folder named as VBench's scorer looks them up,
``<prompt>-<index>.mp4`` (prompt from the job's summary or report, index from the name's last ``-<n>``), as
symbolic links (default) or copies (``--copy``). The folder must hold nothing else: the scorer lists it and takes
the file suffix from its first entry. Exit codes: 0 done; 2 bad input (one line naming the argument and the fix).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys

from magcache_dist.errors import InputError
from magcache_dist.eval.folders import load_folder
from magcache_dist.io.atomic import atomic_path, atomic_write_text
from magcache_dist.prompts import NAME_RE, slug

INFO_FILE = "VBench_full_info.json"
SAMPLES = 5  # VBench: "for each prompt, sample 5 videos" (prompts/README.md), named <prompt>-<0..4>.mp4
INSTALL_HINT = "pip install --no-deps vbench==0.1.5 (only its prompt list is read), or give --info PATH"
INDEX_RE = re.compile(r"-(\d+)$")


def info_path(given: str | None) -> str:
    """The VBench_full_info.json to read: ``given``, else the installed vbench package's."""
    if given:
        if not os.path.isfile(given):
            raise InputError(f"--info {given}: no such file; give VBench's {INFO_FILE}")
        return given
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the vbench package is not installed, so its prompt list cannot be read: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], INFO_FILE)
    if not os.path.isfile(path):
        raise InputError(f"the installed vbench package ({os.path.dirname(path)}) has no {INFO_FILE}; install "
                         f"vbench==0.1.5 or give --info PATH")
    return path


def read_info(path: str) -> list[tuple[str, list[str]]]:
    """[(prompt, dimensions)] in the file's order, each prompt once (dimensions merged), every entry checked."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} cannot be read as JSON ({e}); give VBench's {INFO_FILE}") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: holds a JSON {type(data).__name__}, not VBench's list of prompts")
    out: dict[str, list[str]] = {}
    for i, e in enumerate(data):
        ok = isinstance(e, dict) and isinstance(e.get("prompt_en"), str) and e["prompt_en"].strip() \
            and isinstance(e.get("dimension"), list) and all(isinstance(d, str) for d in e["dimension"])
        if not ok:
            raise InputError(f"{path}: entry [{i}] is {str(e)[:80]!r}; VBench's entries have a 'prompt_en' string and "
                             f"a 'dimension' list of strings")
        prompt = e["prompt_en"].strip()
        if "/" in prompt or "\n" in prompt:
            raise InputError(f"{path}: entry [{i}]: the prompt {prompt[:60]!r} cannot be a file name")
        dims = out.setdefault(prompt, [])
        dims += [d for d in e["dimension"] if d not in dims]
    return list(out.items())


def video_name(prompt: str, index: int) -> str:
    """The job's name (folder) of sample ``index`` of ``prompt``: short, file-system safe, unique per prompt."""
    name = f"{slug(prompt, 72)}-{hashlib.sha1(prompt.encode()).hexdigest()[:8]}-{index}"
    assert NAME_RE.match(name), name
    return name


def vbench_file(prompt: str, index: int) -> str:
    """The file name VBench's scorer looks for: ``<prompt>-<index>.mp4``."""
    return f"{prompt}-{index}.mp4"


def sample_seed(base: int, prompt: str, index: int, mode: str) -> int:
    if mode == "index":
        return base + index
    return int.from_bytes(hashlib.sha256(f"{base}\n{prompt}\n{index}".encode()).digest()[:4], "big")


def prompts_command(args) -> int:
    path = info_path(args.info)
    entries = read_info(path)
    known = sorted({d for _, dims in entries for d in dims})
    if args.dimension:
        bad = [d for d in args.dimension if d not in known]
        if bad:
            raise InputError(f"--dimension {bad[0]}: not a VBench dimension; the dimensions are {', '.join(known)}")
        entries = [(p, dims) for p, dims in entries if set(dims) & set(args.dimension)]
    if args.samples < 1 or args.seed < 0:
        raise InputError("--samples must be at least 1 and --seed at least 0")
    lines = [json.dumps(dict(prompt=p, seed=sample_seed(args.seed, p, i, args.seeds), name=video_name(p, i)))
             for p, _ in entries for i in range(args.samples)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(entries)} prompts x {args.samples} sample(s) = {len(lines)} videos "
          f"(from {path}; seeds: {args.seeds}, base {args.seed})")
    return 0


def export_command(args) -> int:
    folder = load_folder(args.job, "--job")
    if folder.layout != "prompt-job":
        raise InputError(f"--job {args.job}: not a prompt-list job's output_dir (no summary.json); export the "
                         f"folder of a job run with prompts_file=")
    out = os.path.abspath(args.out)
    if os.path.commonpath([os.path.realpath(out), os.path.realpath(folder.path)]) == os.path.realpath(folder.path):
        raise InputError(f"--out {args.out}: is inside --job {args.job}; VBench's folder must hold only videos, "
                         f"give a folder outside the job")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {args.out}: is a file; give a folder")
    others = [f for f in (os.listdir(out) if os.path.isdir(out) else []) if not f.endswith(".mp4")]
    if others:
        raise InputError(f"--out {args.out}: holds {others[0]!r}, not a video; VBench's scorer reads every file of "
                         f"the folder, so give an empty folder or one this command filled")
    targets: dict[str, str] = {}
    for name, v in folder.videos.items():
        if v.prompt is None:
            raise InputError(f"--job {args.job}: video {name!r} has no prompt in summary.json or its report.json; "
                             f"rerun the job to rewrite them")
        if not v.path.endswith(".mp4"):
            raise InputError(f"--job {args.job}: video {name!r} is {os.path.basename(v.path)}, not an mp4; VBench "
                             f"scores videos")
        m = INDEX_RE.search(name)
        target = vbench_file(v.prompt, int(m.group(1)) if m else 0)
        if "/" in v.prompt or target in targets:
            why = "holds a '/'" if "/" in v.prompt else f"is also the one of {targets.get(target)!r}"
            raise InputError(f"--job {args.job}: video {name!r}: its VBench file name {target!r} {why}; write the "
                             f"list with 'python -m magcache_dist.eval.vbench prompts' (names end with -<index>)")
        targets[target] = name
    os.makedirs(out, exist_ok=True)
    for target, name in targets.items():
        src, dst = folder.videos[name].path, os.path.join(out, target)
        if args.copy:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        else:  # a link made beside the target, then renamed over it (never opened: it would follow the link)
            tmp = os.path.join(out, f".{os.getpid()}.link.tmp")
            os.symlink(os.path.abspath(src), tmp)
            os.replace(tmp, dst)
    per_prompt: dict[str, int] = {}
    for t in targets:
        per_prompt[INDEX_RE.sub("", t[:-4])] = per_prompt.get(INDEX_RE.sub("", t[:-4]), 0) + 1
    counts = sorted(set(per_prompt.values()))
    print(f"{'copied' if args.copy else 'linked'} {len(targets)} videos of {len(per_prompt)} prompts into {out} "
          f"({'/'.join(map(str, counts))} per prompt; skipped in the job: {len(folder.skipped)})")
    return 0


def _parser() -> argparse.ArgumentParser:
    intro, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(prog="python -m magcache_dist.eval.vbench", description=intro.replace("\n", " "),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts", help="VBench's prompt list -> a JSONL prompts file (prompt, seed, name)")
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p.add_argument("--samples", type=int, default=SAMPLES, help=f"videos per prompt (default {SAMPLES}, as VBench)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--seeds", choices=("distinct", "index"), default="distinct",
                   help="distinct: a hash of (seed, prompt, index); index: seed + index for every prompt")
    p.add_argument("--dimension", action="append", help="only the prompts of this VBench dimension (repeatable)")
    p.add_argument("--info", help=f"VBench's {INFO_FILE} (default: the installed vbench package's)")
    e = sub.add_parser("export", help="a job's videos -> <prompt>-<index>.mp4 in one flat folder")
    e.add_argument("--job", required=True, help="the prompt-list job's output_dir")
    e.add_argument("--out", required=True, help="the folder to give VBench's scorer (--videos_path)")
    e.add_argument("--copy", action="store_true", help="copy the videos instead of linking them")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prompts":
            if not args.out.endswith(".jsonl"):
                raise InputError(f"--out {args.out}: give a .jsonl file (a job reads names and seeds from JSONL)")
            return prompts_command(args)
        return export_command(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
