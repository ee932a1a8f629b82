"""Ranks that load the same DiT share the reading (magcache_dist/parallel/load_share.py): each reads a row block
of every tensor with at least as many rows as ranks, the group all-gathers; the weights are bit-identical to a
single reader's, for row counts that do not divide, tensors of fewer rows than ranks, and a dtype conversion on
the way (file bf16 -> model fp32, file fp32 -> model bf16). Ranks are threads (ThreadComm)."""
import pytest
import torch
from safetensors.torch import save_file

from magcache_dist.parallel.load_share import RowShare
from magcache_dist.parallel.threads import run_on_comms
from models.loading import load_streaming


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(7, 11)  # 11 rows: 4/4/3 over 3 ranks, 6/5 over 2
        self.b = torch.nn.Linear(11, 2)  # 2 rows: fewer than 3 ranks, read whole by every rank there
        self.scale = torch.nn.Parameter(torch.tensor(0.5))  # 0-d: read whole
        self.table = torch.nn.Parameter(torch.randn(5, 3, 2))


def _built(dtype):
    with torch.device("meta"):
        net = Net().to(dtype)
    return net.to_empty(device="cpu")


@pytest.mark.parametrize("file_dtype,model_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("ranks", [2, 3])
def test_shared_load_is_bit_identical_and_each_rank_reads_its_rows(tmp_path, file_dtype, model_dtype, ranks):
    torch.manual_seed(0)
    ref = Net()
    path = str(tmp_path / "w.safetensors")
    save_file({k: v.to(file_dtype).contiguous() for k, v in ref.state_dict().items()}, path)
    alone = _built(model_dtype)
    whole = load_streaming(alone, path, "test")
    assert whole == sum(v.numel() * v.element_size() for v in ref.to(file_dtype).state_dict().values())

    def load(comm):
        net = _built(model_dtype)
        share = RowShare(comm)
        read = load_streaming(net, path, "test", share=share)
        return net.state_dict(), read, share.gathered_bytes

    got = run_on_comms(load, ranks)
    row_bytes = {k: v[0].numel() * torch.finfo(file_dtype).bits // 8 for k, v in ref.state_dict().items() if v.dim()}
    for r, (sd, read, gathered) in enumerate(got):
        for k, v in alone.state_dict().items():
            assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), (ranks, r, k)
        # rank r's rows of every tensor with >= ranks rows, the others whole
        cuts = {k: [n * i // ranks for i in range(ranks + 1)] for k, n in
                ((k, v.shape[0]) for k, v in ref.state_dict().items() if v.dim())}
        expect = sum((cuts[k][r + 1] - cuts[k][r]) * row_bytes[k] if v.dim() and v.shape[0] >= ranks
                     else v.numel() * torch.finfo(file_dtype).bits // 8 for k, v in ref.state_dict().items())
        assert read == expect < whole, (ranks, r, read, expect, whole)
        assert gathered == sum(v.numel() * v.element_size() for k, v in alone.state_dict().items()
                               if v.dim() and v.shape[0] >= ranks)
    assert sum(g[1] for g in got) >= whole  # every byte read by some rank
