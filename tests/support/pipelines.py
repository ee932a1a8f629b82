"""Tiny full-pipeline checkpoint folders of the FLUX.1, HunyuanVideo and Open-Sora 1.2 families (test utilities).

``tiny-*`` model names are the published pipelines at toy size: the real library classes (text encoders, VAE,
transformer) saved in the checkpoint layout a user downloads, built locally with random weights. Each family's
support module provides

- ``build_folder(name, root) -> root``: write the checkpoint folder of model ``name`` under ``root``;
- ``pipeline_overrides(name, folder, out, *extra) -> list[str]``: the overrides of a short job on that folder.

``FOLDERS`` maps each ``tiny-*`` name to its module; the bad-input catalogue's ``folder:<name>`` base and the
``pipeline_folder`` fixture (tests/conftest.py) go through it.
"""
from __future__ import annotations

import importlib

FOLDERS = {
    "tiny-flux-dev": "tests.support.flux_tiny",
    "tiny-flux-schnell": "tests.support.flux_tiny",
    "tiny-hunyuanvideo": "tests.support.hunyuan_tiny",
    "tiny-opensora": "tests.support.opensora_tiny",
}


def support(name: str):
    """The support module of a ``tiny-*`` pipeline name."""
    return importlib.import_module(FOLDERS[name])


def build_folder(name: str, root: str) -> str:
    return support(name).build_folder(name, root)


def pipeline_overrides(name: str, folder: str, out: str, *extra: str) -> list[str]:
    return support(name).pipeline_overrides(name, folder, out, *extra)
