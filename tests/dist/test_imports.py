"""Import hygiene: no import circle (counting imports inside functions; every module imports in a fresh
interpreter, forwards and backwards), the family table matches the names each family class declares, and
neither the config layer nor validation of an embedded-model job imports diffusers or transformers (a rejected
bad input must not pay for them)."""
import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import magcache_dist
from tests.support import ROOT


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180)


def _imports(path: pathlib.Path, name: str, known: set) -> set:
    """The project modules ``name`` imports anywhere: at the top, under an ``if`` / ``try`` and inside functions
    (an import inside a function is still a dependency: a circle hidden in a function is a circle), but not under
    ``if TYPE_CHECKING:``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            for a in node.names:  # `from pkg import sub` imports the module pkg.sub, `from mod import x` mod
                target = f"{base}.{a.name}"
                found.add(target if target in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return (found & known) - {name}


def test_no_import_circle():
    # no circle among the modules' imports, counting those inside functions: the package is layered (a circle at load
    # time is what breaks `import x` in a fresh interpreter while `import y; import x` works; one hidden in a
    # function is the same tangle)
    root = pathlib.Path(magcache_dist.__file__).parent
    files = {".".join(("magcache_dist", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    assert len(files) > 50
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    assert graph["magcache_dist.run"] and graph["magcache_dist.job"]  # the scan sees the imports
    state, circles = {}, []

    def walk(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(" -> ".join(path[path.index(d):] + [m, d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                walk(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            walk(m, [])
    assert not circles, circles


def test_every_package_imports_in_a_fresh_interpreter():
    # every module, forwards and backwards (the heavy libraries included), each in a fresh interpreter
    code = ("import importlib, pkgutil, sys, magcache_dist; "
            "names = sorted(m.name for m in pkgutil.walk_packages(magcache_dist.__path__, 'magcache_dist.')); "
            "[importlib.import_module(n) for n in (names[::-1] if sys.argv[1] == 'back' else names)]")
    procs = {order: subprocess.Popen([sys.executable, "-c", code, order], cwd=ROOT, stderr=subprocess.PIPE,
                                     text=True) for order in ("forth", "back")}
    failed = {o: p.communicate(timeout=300)[1][-500:] for o, p in procs.items() if p.wait(timeout=300)}
    assert not failed, failed


def test_every_registry_row_is_served():
    # each model name's row: a ModelFamily class that builds a family object for it (its size is in the family's
    # table of sizes), and a default preset that exists
    from magcache_dist.cache.presets import preset_names
    from magcache_dist.config import JobConfig, ModelSection
    from magcache_dist.families import MODELS, model_names
    from magcache_dist.families.base import ModelFamily, family_class

    assert model_names() == sorted(MODELS) and len(MODELS) >= 20
    for name, spec in MODELS.items():
        cls = family_class(name)
        assert issubclass(cls, ModelFamily), name
        family = cls(JobConfig(model=ModelSection(name=name)))
        assert family.spec is spec and family.default_preset() == spec.preset
        assert spec.preset is None or spec.preset in preset_names(), name
        assert spec.embedded == (spec.layouts == ()), name  # a folder model reads at least one layout
    with pytest.raises(ValueError, match=r"model\.name='sdxl' is unknown; choose one of \['flux"):
        family_class("sdxl")


@pytest.mark.parametrize("stage", ["config", "validate"])
def test_no_heavy_imports_before_work(stage, tmp_path):
    step = ("from magcache_dist.config import load_config; load_config('configs/default.yaml')" if stage == "config"
            else "from magcache_dist.config import load_config; from magcache_dist.job import validate_job; "
                 f"validate_job(load_config('configs/default.yaml', ['output_dir={tmp_path}']), 1)")
    p = _fresh(f"import sys; {step}; print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
