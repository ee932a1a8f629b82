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
