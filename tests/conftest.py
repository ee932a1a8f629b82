"""Shared fixtures for every kind of test. The kinds are folders: unit/ (one process, no ranks), sim/ (ranks
simulated by threads), dist/ (processes: gloo groups, torchrun, faults, command lines), gpu/ (CUDA only).
The helpers they share live in tests/support/."""
import os

import pytest
import torch

from magcache_dist.random_weights import save_tiny_checkpoint

# Tiny models run fastest on one intra-op thread, and simulated / spawned ranks would otherwise oversubscribe
# the cores (each rank's pool wants every core). Results do not depend on it.
torch.set_num_threads(1)

KINDS = {"dist": pytest.mark.dist, "gpu": pytest.mark.gpu}


def pytest_collection_modifyitems(config, items):
    """The folder is the kind: tests under dist/ and gpu/ carry that marker (``-m "not dist"`` etc. work)."""
    for item in items:
        kind = os.path.basename(os.path.dirname(str(item.fspath)))
        if kind in KINDS:
            item.add_marker(KINDS[kind])


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny Wan checkpoint (official key layout + text encoder) with non-trivial random weights."""
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"), seed=0)


@pytest.fixture(scope="session")
def wan_ckpts(tmp_path_factory):
    """Tiny random Wan2.1 T2V and I2V checkpoints, each saved in the official and the diffusers layout."""
    from tests.support.wan_tiny import build_components, save_diffusers, save_image, save_official

    root = tmp_path_factory.mktemp("wan")
    out = {"image": save_image(str(root / "first_frame.png"))}
    for task in ("t2v", "i2v"):
        comps = build_components(task)
        out[task] = dict(comps=comps, official=save_official(comps, str(root / f"{task}-official")),
                         diffusers=save_diffusers(comps, str(root / f"{task}-diffusers")))
    return out


@pytest.fixture(scope="session")
def ti2v_ckpt(tmp_path_factory):
    """A tiny random Wan2.2 TI2V-5B folder (one DiT, the 48-channel Wan2.2 VAE): ``diffusers`` (random latent
    statistics in vae/config.json), ``official`` (the same weights in Wan's layout, Wan2.2_VAE.pth) and
    ``diffusers_published`` (the diffusers folder with the released latent statistics, which the official layout
    uses: the same model as ``official``)."""
    from tests.support.wan22_tiny import (
        build_ti2v_components,
        save_ti2v_diffusers,
        save_ti2v_official,
        with_published_latent_stats,
    )

    root = tmp_path_factory.mktemp("ti2v")
    comps = build_ti2v_components()
    diffusers = save_ti2v_diffusers(comps, str(root / "diffusers"))
    return dict(comps=comps, diffusers=diffusers, official=save_ti2v_official(comps, str(root / "official")),
                diffusers_published=with_published_latent_stats(diffusers, str(root / "diffusers-published")))


@pytest.fixture(scope="session")
def wan22_ckpts(tmp_path_factory):
    """Tiny random Wan2.2 A14B T2V and I2V folders (two experts), each in the official and the diffusers layout."""
    from tests.support.wan22_tiny import build_components, save_diffusers, save_official
    from tests.support.wan_tiny import save_image

    root = tmp_path_factory.mktemp("wan22")
    out = {"image": save_image(str(root / "first_frame.png"), h=48, w=48)}
    for task in ("t2v", "i2v"):
        comps = build_components(task)
        out[task] = dict(comps=comps, official=save_official(comps, str(root / f"{task}-official")),
                         diffusers=save_diffusers(comps, str(root / f"{task}-diffusers")))
    return out


@pytest.fixture(scope="session")
def nan_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with one NaN weight in the output head."""
    from safetensors.torch import load_file, save_file

    sd = load_file(tiny_ckpt)
    sd["head.head.weight"][0, 0] = float("nan")
    path = str(tmp_path_factory.mktemp("nan") / "nan.safetensors")
    save_file(sd, path)
    return path


@pytest.fixture(scope="session")
def family_ckpts(tmp_path_factory):
    """A random tiny checkpoint of each FLUX.1 / HunyuanVideo / Open-Sora family (diffusers layout)."""
    from tests.support.families import FAMILY_JOBS, save_family_checkpoint

    d = tmp_path_factory.mktemp("family_ckpts")
    out = {}
    for name in FAMILY_JOBS:
        out[name] = str(d / f"{name}.safetensors")
        save_family_checkpoint(out[name], name, seed=3)
    return out


@pytest.fixture(scope="session")
def family_solo_runs(family_ckpts, tmp_path_factory):
    """Each family's tiny job run in one process: {name: {report, latents}}."""
    from magcache_dist.parallel import solo_context
    from magcache_dist.run import run_job
    from tests.support.families import FAMILY_JOBS, family_config

    out = {}
    for name in FAMILY_JOBS:
        d = tmp_path_factory.mktemp(name)
        report = run_job(family_config(name, str(d), ckpt=family_ckpts[name]), solo_context())
        out[name] = dict(report=report, latents=torch.load(d / "latents.pt", weights_only=True))
    return out


@pytest.fixture(scope="session")
def pipeline_folder(tmp_path_factory):
    """``pipeline_folder(name)``: the tiny full-pipeline checkpoint folder of a ``tiny-*`` model name
    (tests/support/pipelines.py), built once per session; copy it before changing it."""
    from tests.support.pipelines import build_folder

    built = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build_folder(name, str(tmp_path_factory.mktemp(name)))
        return built[name]

    return get
