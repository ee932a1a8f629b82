"""USP through xDiT's xFuserLongContextAttention (GPU only: xfuser does not import without an accelerator)."""
from __future__ import annotations

import torch
import torch.nn as nn

from magcache_dist.errors import InputError


def check_available() -> None:
    if not torch.cuda.is_available():
        raise InputError("parallel.backend=xfuser needs CUDA GPUs (xfuser cannot run on a CPU-only torch); "
                         "use parallel.backend=native or deepspeed")
    try:
        import xfuser  # noqa: F401
    except ImportError as e:
        raise InputError(f"parallel.backend=xfuser needs xfuser: pip install '.[xfuser]' ({e})") from None


class XFuserUSPAttention(nn.Module):
    """Key padding is not expressible through xFuser's API: the token count must divide the SP degree."""

    def __init__(self, dims, rank: int, world_size: int):
        super().__init__()
        from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention

        init_distributed_environment(rank=rank, world_size=world_size)
        initialize_model_parallel(sequence_parallel_degree=dims.sp_degree,
                                  classifier_free_guidance_degree=dims.cfg_degree,
                                  ring_degree=dims.ring_degree, ulysses_degree=dims.ulysses_degree)
        self.attn = xFuserLongContextAttention()
        self.sp_degree = dims.sp_degree

    def forward(self, q, k, v, k_lens=None):
        if k_lens is not None and int(k_lens.min()) < q.shape[1] * self.sp_degree:
            raise InputError(f"parallel.backend=xfuser cannot mask padded tokens: choose a resolution/frame count "
                             f"whose token count divides the SP degree {self.sp_degree}, or use backend=native")
        return self.attn(None, query=q, key=k, value=v)
