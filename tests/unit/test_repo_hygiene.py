"""Repository rules checked by reading files (no model runs): nothing outside tests/ imports tests/;
docs/configuration.md lists every key of the job schema with its type and default; no paragraph is repeated in the
docs; benchmarks/README.md lists every benchmark and every result file it keeps."""
import ast
import collections
import dataclasses
import pathlib
import re
import typing

from magcache_dist.config import JobConfig
from tests.support import ROOT

SKIP = {".git", ".venv", "outputs", "build", "tests", "__pycache__"}
DOCS = ["README.md", "benchmarks/README.md", *sorted(str(p.relative_to(ROOT))
                                                     for p in pathlib.Path(ROOT, "docs").glob("*.md"))]


# ---- nothing outside tests/ imports tests/ -------------------------------------------------------------------
def _python_files_outside_tests() -> list[pathlib.Path]:
    root = pathlib.Path(ROOT)
    return sorted(p for p in root.rglob("*.py") if not SKIP.intersection(p.relative_to(root).parts)
                  and not p.relative_to(root).parts[0].endswith(".egg-info"))


def _imports_of_tests(path: pathlib.Path) -> list[str]:
    """Every import of the ``tests`` package in ``path``, at any depth (inside functions too), as 'line: module'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{node.lineno}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    return found


def test_nothing_outside_tests_imports_tests():
    files = _python_files_outside_tests()
    assert any(p.name == "gpu_check.py" for p in files) and any(p.parts[-2] == "benchmarks" for p in files)
    bad = {str(p.relative_to(ROOT)): hits for p in files if (hits := _imports_of_tests(p))}
    assert not bad, f"import what they need from the package (e.g. magcache_dist.random_weights): {bad}"


def test_the_import_scan_sees_nested_imports(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import os\n\ndef f():\n    from tests.support.helpers import job_config\n    import tests\n")
    assert _imports_of_tests(src) == ["4: tests.support.helpers", "5: tests"]


# ---- docs/configuration.md is the full table of the schema ---------------------------------------------------
def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if type(None) in args:
        return f"{_type_name(next(a for a in args if a is not type(None)))} or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(args[0])}"
    return tp.__name__


def _default_text(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return (value or '""') if isinstance(value, str) else repr(value)


def _schema_rows(cls=JobConfig, prefix: str = "") -> dict:
    """{dotted key: (type, default)} of every leaf of the schema, in the words docs/configuration.md uses."""
    hints, rows = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.update(_schema_rows(hints[f.name], f"{prefix}{f.name}."))
        else:
            rows[prefix + f.name] = (_type_name(hints[f.name]), _default_text(f))
    return rows


def _doc_rows() -> dict:
    rows = {}
    for line in pathlib.Path(ROOT, "docs", "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`[\w.]+`", cells[0]):
            assert cells[0].strip("`") not in rows, f"{cells[0]} has two rows in docs/configuration.md"
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`"))
            assert cells[3], f"{cells[0]} in docs/configuration.md says nothing about what it means"
    return rows


def test_configuration_doc_lists_every_key_with_its_type_and_default():
    schema, doc = _schema_rows(), _doc_rows()
    assert len(schema) > 50 and "vae.tile_stride_width" in schema
    missing, extra = sorted(schema.keys() - doc.keys()), sorted(doc.keys() - schema.keys())
    assert not missing, f"keys without a row in docs/configuration.md: {missing}"
    assert not extra, f"rows in docs/configuration.md for no key: {extra}"
    wrong = {k: f"doc says {doc[k]}, schema {schema[k]}" for k in schema if doc[k] != schema[k]}
    assert not wrong, f"docs/configuration.md: type / default differ from magcache_dist/config.py: {wrong}"


# ---- no paragraph said twice -----------------------------------------------------------------------------------
def _paragraphs(text: str) -> list[str]:
    """The text's blocks between blank lines (prose, tables, code), whitespace collapsed; short ones (headings,
    one-line captions) are left out."""
    return [n for block in re.split(r"\n\s*\n", text) if len(n := " ".join(block.split())) >= 80]


def test_no_paragraph_is_repeated_in_the_docs():
    seen = collections.defaultdict(list)
    for name in DOCS:
        for n in _paragraphs(pathlib.Path(ROOT, name).read_text()):
            seen[n].append(name)
    repeats = {n[:100]: where for n, where in seen.items() if len(where) > 1}
    assert not repeats, f"say it once and link to it: {repeats}"


def test_the_repeat_check_sees_a_repeat():
    para = "The model never knows about caching or distribution: the sampler calls its seams and shards the tokens."
    assert _paragraphs(f"# T\n\n{para}\n\n{para.replace(' ', chr(10), 3)}\n") == [para, para]


# ---- benchmarks/README.md: each benchmark with its latest result ---------------------------------------------
def test_benchmarks_readme_lists_every_script_and_every_result_file():
    bench = pathlib.Path(ROOT, "benchmarks")
    text = (bench / "README.md").read_text()
    table = text[:text.index("\n## ")]  # the table at the top
    listed = set(re.findall(r"^\| `(\w+)\.py` \|", table, flags=re.M))
    scripts = {p.stem for p in bench.glob("*.py")} - {"__init__", "_common", "diffusers_hook"}
    assert scripts == listed, f"benchmarks/README.md table vs benchmarks/*.py: {sorted(scripts ^ listed)}"
    results = sorted(str(p.relative_to(bench / "results")) for p in (bench / "results").rglob("*") if p.is_file())
    unlisted = [r for r in results if pathlib.PurePath(r).name not in text]
    assert not unlisted, f"result files no benchmark in benchmarks/README.md names (remove or document): {unlisted}"
