"""Repository rules checked by reading files (no model runs): nothing outside tests/ imports tests/."""
import ast
import pathlib

from tests.support import ROOT

SKIP = {".git", ".venv", "outputs", "build", "tests", "__pycache__"}


def _python_files_outside_tests() -> list[pathlib.Path]:
    root = pathlib.Path(ROOT)
    return sorted(p for p in root.rglob("*.py")
                  if not SKIP.intersection(p.relative_to(root).parts) and not p.relative_to(root).parts[0].endswith(
                      ".egg-info"))


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
