"""Import hygiene: no import circle (every module imports first in a fresh interpreter), the family table
matches the names each family class declares, and neither the config layer nor validation of an embedded-model job
imports diffusers or transformers (a rejected bad input must not pay for them)."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

import magcache_dist
from tests.support import ROOT

# the modules where packages meet (families, validation, cache factory, planner), plus the entry points; every
# other module is imported by one of these
FIRST = ["magcache_dist.families.flux", "magcache_dist.families.wan", "magcache_dist.families.tiny",
         "magcache_dist.families.base", "magcache_dist.cache.factory", "magcache_dist.job",
         "magcache_dist.launcher.main", "magcache_dist.run", "magcache_dist.planner", "magcache_dist.batch"]


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180)


def test_every_package_imports_in_any_order():
    modules = sorted(m.name for m in pkgutil.walk_packages(magcache_dist.__path__, "magcache_dist."))
    assert set(FIRST) <= set(modules)
    # each junction module imported first in a fresh interpreter, then everything else, forwards and backwards
    code = ("import importlib, pkgutil, sys, magcache_dist; importlib.import_module(sys.argv[1]); "
            "names = sorted(m.name for m in pkgutil.walk_packages(magcache_dist.__path__, 'magcache_dist.')); "
            "[importlib.import_module(n) for n in (names if int(sys.argv[2]) % 2 else names[::-1])]")
    procs = {m: subprocess.Popen([sys.executable, "-c", code, m, str(i)], cwd=ROOT, stderr=subprocess.PIPE,
                                 text=True) for i, m in enumerate(FIRST)}
    failed = {m: p.communicate(timeout=300)[1][-500:] for m, p in procs.items() if p.wait(timeout=300)}
    assert not failed, failed


def test_family_table_matches_the_classes():
    from magcache_dist.families import MODULES as TABLE
    from magcache_dist.families.base import ModelFamily, family_class

    for target, names in TABLE.items():
        module, name = target.split(":")
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, ModelFamily) and set(cls.names) == set(names), target
        assert all(family_class(n) is cls for n in names)
    with pytest.raises(ValueError, match=r"model\.name='sdxl' has no pipeline; choose one of"):
        family_class("sdxl")


@pytest.mark.parametrize("stage", ["config", "validate"])
def test_no_heavy_imports_before_work(stage, tmp_path):
    step = ("from magcache_dist.config import load_config; load_config('configs/default.yaml')" if stage == "config"
            else "from magcache_dist.config import load_config; from magcache_dist.job import validate_job; "
                 f"validate_job(load_config('configs/default.yaml', ['output_dir={tmp_path}']), 1)")
    p = _fresh(f"import sys; {step}; print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
