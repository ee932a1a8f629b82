"""Flow-matching schedulers on Wan's shifted sigma grid.

sigma_i = shift*s_i / (1 + (shift-1)*s_i) with s = linspace(1 - 1/1000, 0, N+1)[:-1], final sigma 0; the model
predicts the velocity v = noise - x0, and t = sigma * 1000 (integer, as Wan passes it).
UniPC is diffusers' UniPCMultistepScheduler in flow mode (what diffusers' Wan pipeline uses). Euler is one line.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from magcache_dist.errors import InternalError

SOLVERS = ("unipc", "euler")
_IMPORT_LOCK = threading.Lock()  # diffusers' lazy modules are not safe to import from several threads at once


def _unipc_class():
    """diffusers' UniPC, imported on first use (importing diffusers costs seconds: a rejected input never pays it)."""
    with _IMPORT_LOCK:
        from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler


class FlowScheduler:
    def __init__(self, solver: str, num_steps: int, shift: float, num_train_timesteps: int = 1000, sigmas=None):
        if solver not in SOLVERS or not shift > 0:  # SamplerConfig checked the job's values
            raise InternalError(f"FlowScheduler(solver={solver!r}, shift={shift!r})")
        self.solver, self.num_steps = solver, num_steps
        self._unipc = _unipc_class()(num_train_timesteps=num_train_timesteps, prediction_type="flow_prediction",
                                     use_flow_sigmas=True, flow_shift=shift, solver_order=2)
        # Wan's unshifted grid (diffusers' default grid starts at 1.0 instead of 0.999); diffusers applies the shift
        self._unipc.set_timesteps(sigmas=np.linspace(1 - 1 / num_train_timesteps, 0, num_steps + 1)[:-1])
        self.sigmas = self._unipc.sigmas.clone().double()  # [N+1], last 0
        self.timesteps = self._unipc.timesteps.clone()  # [N] int64
        if sigmas is not None:  # a family's own grid (FLUX, HunyuanVideo, Open-Sora): Euler, t = sigma * 1000
            if solver != "euler" or len(sigmas) != num_steps:  # SamplerConfig checked the job's values
                raise InternalError(f"FlowScheduler: a grid of {len(sigmas)} sigmas with solver={solver!r}, "
                                    f"num_steps={num_steps}")
            self.sigmas = torch.tensor([*map(float, sigmas), 0.0], dtype=torch.float64)
            self.timesteps = (self.sigmas[:-1] * num_train_timesteps).float()

    def step(self, v: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.solver == "euler":
            return (x.double() + (self.sigmas[i + 1] - self.sigmas[i]) * v.double()).to(x.dtype)
        return self._unipc.step(v, self.timesteps[i], x, return_dict=False)[0]

    def state_dict(self) -> dict:
        """What a resume needs to continue the multistep solver bit for bit."""
        u = self._unipc
        return dict(model_outputs=list(u.model_outputs), timestep_list=list(u.timestep_list),
                    lower_order_nums=u.lower_order_nums, last_sample=u.last_sample, step_index=u._step_index,
                    this_order=getattr(u, "this_order", None))

    def load_state_dict(self, sd: dict) -> None:
        u = self._unipc
        u.model_outputs, u.timestep_list = list(sd["model_outputs"]), list(sd["timestep_list"])
        u.lower_order_nums, u.last_sample, u._step_index = sd["lower_order_nums"], sd["last_sample"], sd["step_index"]
        if sd.get("this_order") is not None:
            u.this_order = sd["this_order"]
