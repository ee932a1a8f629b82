import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny Wan checkpoint (official key layout + text encoder) with non-trivial random weights."""
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"), seed=0)


@pytest.fixture(scope="session")
def wan_ckpts(tmp_path_factory):
    """Tiny random Wan2.1 T2V and I2V checkpoints, each saved in the official and the diffusers layout."""
    from tests.wan_tiny import build_components, save_diffusers, save_image, save_official

    root = tmp_path_factory.mktemp("wan")
    out = {"image": save_image(str(root / "first_frame.png"))}
    for task in ("t2v", "i2v"):
        comps = build_components(task)
        out[task] = dict(comps=comps, official=save_official(comps, str(root / f"{task}-official")),
                         diffusers=save_diffusers(comps, str(root / f"{task}-diffusers")))
    return out
