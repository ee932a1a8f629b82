import os

import pytest
import torch

from tests.helpers import save_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests import it from here

# Tiny models run fastest on one intra-op thread, and simulated / spawned ranks would otherwise oversubscribe
# the cores (each rank's pool wants every core). Results do not depend on it.
torch.set_num_threads(1)


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
