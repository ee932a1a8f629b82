"""Reading part of a tensor (FSDP: a rank reads only its rows of a dim-0-sharded parameter): the rows a..b-1 of a
safetensors entry (only their bytes read) and of a .pth tensor equal the slice of the whole tensor; the offsets of
a sharded parameter's rows come from torch's own DTensor layout (models.loading.local_rows), checked end to end by
the FSDP gloo tests (tests/dist/test_wan_dist.py, test_wan22_dist.py: equal to one process within 1e-4)."""
import torch
from safetensors.torch import save_file

from models.loading import TensorSource


def test_rows_of_a_tensor_equal_its_slice(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(7, 3, 2, generator=g).to(torch.bfloat16), "b": torch.randn(5, generator=g),
          "s": torch.tensor(2.5)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "m.pth")
    for name in ("m.safetensors", "m.pth"):
        src = TensorSource(str(tmp_path / name))
        for key in ("w", "b"):
            n = sd[key].shape[0]
            for a, b in [(0, n), (0, 3), (3, 7 if n == 7 else 5), (4, 4), (n - 1, n)]:
                got = src.read(key, (a, b))
                assert got.dtype == sd[key].dtype and torch.equal(got, sd[key][a:b]), (name, key, a, b)
        assert torch.equal(src.read("s"), sd["s"])
