"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with its AlexNet backbone read from a local file or,
where none is found and the network is reachable, fetched the standard torchvision way into torch hub's cache.

The MagCache release scores each frame with ``lpips.LPIPS(net="alex", spatial=True)`` (version 0.1) on frames
mapped from [0, 1] to [-1, 1], takes the mean of the spatial map, and averages the frames
(eval/magcache/common_metrics/calculate_lpips.py); ``Lpips`` does the same. The package ships its small linear
layers, but takes the AlexNet trunk from torchvision's model zoo, a download: here the trunk is built untrained
(``pnet_rand=True``) and its weights are loaded from, in order, ``--lpips-backbone``, ``$MAGCACHE_LPIPS_BACKBONE``
or torch hub's cache file for torchvision's alexnet (``<torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth``).
When none is there, ``download_backbone`` fetches torchvision's file (``ALEXNET_URL``) with
``torch.hub.load_state_dict_from_url(..., check_hash=True)`` into that cache, as ``torchvision.models.alexnet(
weights="DEFAULT")`` and the MagCache release's scripts (through lpips) do; offline, or with ``--offline``, LPIPS
is reported as unavailable with a line saying how to provide the file.

``lpips`` imports ``torchvision.models`` for its trunks. Where torchvision cannot be imported (PyPI's torchvision
is built against CUDA torch: beside the CPU wheel of torch 2.13 its import fails with "operator torchvision::nms
does not exist"), ``import_lpips`` imports the package against a stand-in ``torchvision.models`` that offers only
``alexnet``, untrained, with torchvision's layers (same state-dict keys and shapes), and removes the stand-in
again; ``Lpips.backend`` records which one was used. Install lpips with ``--no-deps`` there (.ci/setup.sh).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
import warnings

import torch
import torch.nn as nn

from magcache_dist.errors import InputError

ENV_BACKBONE = "MAGCACHE_LPIPS_BACKBONE"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, named as its model zoo caches it
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"  # torchvision AlexNet_Weights.IMAGENET1K_V1
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: an unreachable network fails in seconds, not minutes
INSTALL_HINT = "pip install scipy==1.17.1 && pip install --no-deps lpips==0.1.4 (docs/evaluation.md)"


def default_backbone_path() -> str:
    """Where torchvision's ``alexnet(weights=DEFAULT)`` caches its download (follows $TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE)


def resolve_backbone(path: str | None) -> tuple[str | None, str]:
    """(backbone file or None, one line saying where it came from or how to provide it).

    An explicit ``path`` (the --lpips-backbone flag) or $MAGCACHE_LPIPS_BACKBONE that names no file is an
    error (InputError); a missing hub cache file only makes LPIPS unavailable."""
    for given, source in ((path, "--lpips-backbone"), (os.environ.get(ENV_BACKBONE), f"${ENV_BACKBONE}")):
        if given:
            if not os.path.isfile(given):
                raise InputError(f"{source} {given}: no such file; give torchvision's AlexNet state dict "
                                 f"({ALEXNET_FILE}) or leave it unset to use torch hub's cache")
            return given, f"backbone from {source} {given}"
    default = default_backbone_path()
    if os.path.isfile(default):
        return default, f"backbone from torch hub's cache {default}"
    return None, (f"LPIPS: n/a (no AlexNet backbone weights: copy torchvision's {ALEXNET_FILE} to {default}, "
                  f"or pass --lpips-backbone PATH / set ${ENV_BACKBONE})")


def download_backbone() -> tuple[str | None, str]:
    """(the hub cache file, how it came) after fetching torchvision's AlexNet weights the way torchvision does
    (``torch.hub.load_state_dict_from_url``, hash checked against the file name), or (None, why not)."""
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.load_state_dict_from_url(ALEXNET_URL, progress=False, check_hash=True, map_location="cpu",
                                           weights_only=True)
    except Exception as e:  # URLError, timeouts, a hash mismatch, a full disk: LPIPS is then unavailable
        return None, (f"LPIPS: n/a (no AlexNet backbone weights: downloading {ALEXNET_URL} failed: "
                      f"{type(e).__name__}: {e}; copy torchvision's {ALEXNET_FILE} to {default_backbone_path()}, "
                      f"or pass --lpips-backbone PATH / set ${ENV_BACKBONE})")
    finally:
        socket.setdefaulttimeout(previous)
    path = default_backbone_path()
    if not os.path.isfile(path):
        return None, f"LPIPS: n/a (downloaded {ALEXNET_URL}, but {path} is not there; pass --lpips-backbone PATH)"
    return path, f"backbone downloaded from {ALEXNET_URL} into torch hub's cache {path}"


def lpips_installed() -> bool:
    return importlib.util.find_spec("lpips") is not None


def alexnet_features() -> nn.Sequential:
    """torchvision's ``AlexNet().features`` layer for layer (torchvision/models/alexnet.py): state-dict keys
    ``features.{0,3,6,8,10}.{weight,bias}``."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )


class _AlexNetTrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = alexnet_features()


def _untrained_alexnet(pretrained: bool = False, weights=None, **kwargs) -> nn.Module:
    if pretrained or weights is not None:  # would be a download with the real torchvision: never here
        raise RuntimeError("the torchvision stand-in has no pretrained weights")
    return _AlexNetTrunk()


@contextlib.contextmanager
def _torchvision_stand_in():
    tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    models.alexnet = _untrained_alexnet
    tv.models = models
    names = [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]
    saved = {k: sys.modules.pop(k) for k in names}  # what a failed import of a broken torchvision left behind
    sys.modules.update({"torchvision": tv, "torchvision.models": models})
    try:
        yield
    finally:
        for k in ("torchvision", "torchvision.models"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def import_lpips() -> tuple[types.ModuleType, str]:
    """(the ``lpips`` module, the torchvision it runs on). ImportError when lpips is not installed."""
    if "lpips" not in sys.modules:
        if not lpips_installed():
            raise ImportError(f"the lpips package is not installed: {INSTALL_HINT}")
        try:
            import lpips  # noqa: F401
            import torchvision  # noqa: F401
        except Exception:  # not installed, or built for another torch (RuntimeError: operator ... does not exist)
            with _torchvision_stand_in():
                import lpips  # noqa: F401
    lpips = sys.modules["lpips"]
    tv = lpips.pretrained_networks.tv
    if getattr(tv, "__file__", None) is None:  # the stand-in
        return lpips, "torch.nn AlexNet layers (torchvision cannot be imported)"
    return lpips, f"torchvision {sys.modules['torchvision'].__version__}"


def _trunk_state_dict(net: nn.Module, checkpoint: dict, path: str) -> dict:
    """lpips' trunk keys ``slice{k}.{i}.{weight,bias}`` filled from torchvision's ``features.{i}.{weight,bias}``."""
    out = {}
    for key, param in net.state_dict().items():
        _, idx, leaf = key.split(".")
        src = f"features.{idx}.{leaf}"
        if src not in checkpoint:
            raise InputError(f"LPIPS backbone {path}: no '{src}': not a torchvision AlexNet state dict "
                             f"({ALEXNET_FILE})")
        if tuple(checkpoint[src].shape) != tuple(param.shape):
            raise InputError(f"LPIPS backbone {path}: '{src}' has shape {tuple(checkpoint[src].shape)}, AlexNet's "
                             f"is {tuple(param.shape)}")
        out[key] = checkpoint[src]
    return out


def _unit32(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


class Lpips:
    """LPIPS v0.1, AlexNet trunk, spatial map averaged, per frame: the release's definition."""

    net = "alex"
    version = "0.1"

    def __init__(self, backbone: str, device: str | torch.device = "cpu", chunk: int = 8):
        lpips, self.backend = import_lpips()
        try:
            checkpoint = torch.load(backbone, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"LPIPS backbone {backbone}: cannot be read as a torch state dict "
                             f"({type(e).__name__}: {e})") from e
        if not isinstance(checkpoint, dict):
            raise InputError(f"LPIPS backbone {backbone}: holds a {type(checkpoint).__name__}, not a state dict")
        with warnings.catch_warnings():  # torchvision's 'pretrained' argument is deprecated in favour of 'weights'
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net=self.net, version=self.version, spatial=True, pnet_rand=True, verbose=False)
        model.net.load_state_dict(_trunk_state_dict(model.net, checkpoint, backbone))
        self.model = model.eval().to(device)
        self.device, self.chunk, self.backbone = torch.device(device), chunk, backbone

    def describe(self) -> dict:
        from importlib.metadata import version

        return dict(library=f"lpips {version('lpips')}", net=self.net, version=self.version,
                    spatial=True, backbone=self.backbone, backend=self.backend)

    @torch.no_grad()
    def frames(self, x_FCHW: torch.Tensor, y_FCHW: torch.Tensor) -> list[float]:
        """LPIPS of each frame pair (frames [F, 3, H, W], uint8 or in [0, 1]; AlexNet needs H, W >= 31)."""
        if x_FCHW.shape != y_FCHW.shape or x_FCHW.ndim != 4 or x_FCHW.shape[1] != 3:
            raise InputError(f"LPIPS needs RGB frames [F, 3, H, W] of one shape, got {tuple(x_FCHW.shape)} and "
                             f"{tuple(y_FCHW.shape)}")
        if min(x_FCHW.shape[-2:]) < 31:
            raise InputError(f"LPIPS (AlexNet) needs frames of at least 31x31 pixels, got "
                             f"{x_FCHW.shape[-2]}x{x_FCHW.shape[-1]}")
        out: list[float] = []
        for i in range(0, x_FCHW.shape[0], self.chunk):
            x = _unit32(x_FCHW[i:i + self.chunk].to(self.device)) * 2 - 1  # [n, 3, H, W] in [-1, 1]
            y = _unit32(y_FCHW[i:i + self.chunk].to(self.device)) * 2 - 1
            out += self.model(x, y).mean((1, 2, 3)).tolist()  # spatial map [n, 1, H, W] -> its mean
        return out
