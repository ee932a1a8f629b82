"""Streaming load (models/loading.py load_streaming): the Wan DiT built on the meta device and filled tensor by
tensor from safetensors (single or sharded, either layout) or .pth, converted to the model's dtype on the fly,
gives exactly the weights of the whole-file loader, and never holds two checkpoint tensors at once."""
import json
import os
import weakref

import pytest
import torch
from safetensors.torch import save_file

from models import loading
from models.loading import load_state_dict_strict, load_streaming, read_tensors
from models.wan import get_config
from models.wan_i2v import build_wan_model


def _empty_model(name: str, dtype=torch.float32):
    with torch.device("meta"):
        model = build_wan_model(get_config(name))
    return model.to(dtype=dtype).to_empty(device="cpu")


def _sharded(sd: dict, root) -> str:
    """The state dict as a 2-shard safetensors checkpoint with its index json."""
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, os.path.join(root, shard))
    index = os.path.join(root, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"weight_map": {k: s for s, ks in shards.items() for k in ks}}, f)
    return index


@pytest.mark.parametrize("fmt", ["official", "diffusers", "sharded", "pth"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_weights_equal_the_whole_file_load(fmt, dtype, wan_ckpts, tmp_path):
    root = wan_ckpts["t2v"]["official" if fmt in ("official", "sharded", "pth") else "diffusers"]
    path = os.path.join(root, "diffusion_pytorch_model.safetensors") if fmt != "diffusers" else \
        os.path.join(root, "transformer", "diffusion_pytorch_model.safetensors")
    if fmt == "sharded":
        path = _sharded(read_tensors(path), tmp_path)
    elif fmt == "pth":
        torch.save(read_tensors(path), tmp_path / "dit.pth")
        path = str(tmp_path / "dit.pth")
    ref = build_wan_model(get_config("tiny-wan-t2v"))
    load_state_dict_strict(ref, read_tensors(path), "ref")
    model = _empty_model("tiny-wan-t2v", dtype)
    load_streaming(model, path, "test")
    for (k, a), (k2, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert k == k2 and b.dtype == dtype and torch.equal(a.to(dtype), b), k


def test_the_loader_never_holds_two_tensors(wan_ckpts, monkeypatch):
    live, peak = [], [0]
    read = loading._SafetensorsFile.read

    def tracking(self, key, rows=None):
        t = read(self, key, rows)
        live.append(weakref.ref(t))
        peak[0] = max(peak[0], sum(r() is not None for r in live))
        return t

    monkeypatch.setattr(loading._SafetensorsFile, "read", tracking)
    model = _empty_model("tiny-wan-t2v")
    load_streaming(model, os.path.join(wan_ckpts["t2v"]["official"], "diffusion_pytorch_model.safetensors"), "t")
    assert len(live) == len(model.state_dict()) and peak[0] == 1


def test_bad_files_are_named_before_any_weight_is_copied(wan_ckpts, tmp_path):
    src = os.path.join(wan_ckpts["t2v"]["official"], "diffusion_pytorch_model.safetensors")
    data = open(src, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    model = _empty_model("tiny-wan-t2v")
    with pytest.raises(ValueError, match=r"cut\.safetensors'.*'.*' is cut short; re-download the file"):
        load_streaming(model, str(tmp_path / "cut.safetensors"), "t")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ValueError, match=r"junk\.safetensors' is not a readable safetensors file"):
        load_streaming(model, str(tmp_path / "junk.safetensors"), "t")
    sd = read_tensors(src)
    sd.pop("head.head.bias")
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['head\.head\.bias'\]"):
        load_streaming(model, str(tmp_path / "short.safetensors"), "t")
