"""Wan2.2: A14B (T2V, I2V: two experts of the Wan2.1 14B architecture) and TI2V-5B, from a local checkpoint folder.

What differs from Wan2.1 (magcache_dist/families/wan.py, reused for the text encoder, the VAE, the geometry and
the image latents):
- two DiTs: the high-noise expert denoises the steps with timestep >= boundary x 1000, the low-noise expert the
  rest (models/wan_experts.py). Official layout: ``high_noise_model/`` and ``low_noise_model/``; diffusers layout:
  ``transformer/`` (high) and ``transformer_2/`` (low), the boundary in ``model_index.json`` (``boundary_ratio``).
  The official layout keeps the boundary in Wan's code (wan/configs): T2V 0.875, I2V 0.900.
- per-expert guidance: ``sampler.guidance`` for the high-noise expert, ``sampler.guidance_2`` for the low-noise one
  (diffusers' guidance_scale / guidance_scale_2; null: the same as sampler.guidance).
- I2V has no CLIP: the conditioning is the text and ``y`` = [first-frame mask | VAE latents of the image].
- MagCache: the release's two-expert rules (cache/presets.py ``wan2.2-t2v`` / ``wan2.2-i2v``), one cache state for
  both experts, retention placed around the switch step on the sampler's grid (docs/magcache.md "Wan2.2").

Memory: with ``parallel.fsdp`` both experts' blocks are sharded over the SP group. Otherwise, on an accelerator
where the two experts do not fit together (free memory < 2.2 x one expert), the device holds one expert's blocks at
a time (plus both experts' embeddings and heads) and the other's wait in pinned host memory; the experts trade
places block by block on a side stream during the outgoing expert's last computed call, or when the incoming
expert's call reaches its blocks (``PlacedExperts``, families/expert_swap.py; docs/operations.md).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import torch

from magcache_dist.config import resolve_path
from magcache_dist.errors import InputError, reading
from magcache_dist.families import folders
from magcache_dist.families.base import DTYPES, CostFigures
from magcache_dist.families.wan import (
    DIFFUSERS_DIRS,
    LAYOUTS,
    OFFICIAL_FILES,
    WanEncoders,
    WanFamily,
    WanFiles,
    check_dit_config,
    detect_layout,
    layout_need,
    load_image,
    resolve_files,
)
from magcache_dist.sampling.grids import expert_switch_step
from models import wan_components
from models.wan_experts import EXPERTS, ExpertConditions, WanExperts
from models.wan_i2v import LatentCondition, build_wan_model

OFFICIAL_EXPERTS = dict(high="high_noise_model", low="low_noise_model")
DIFFUSERS_EXPERTS = dict(high="transformer", low="transformer_2")
# Wan-Video/Wan2.2 wan/configs: boundary, (high-noise, low-noise) guidance, shift, steps
PUBLISHED = {"t2v": dict(boundary=0.875, guidance=(4.0, 3.0), shift=12.0, steps=40),
             "i2v": dict(boundary=0.900, guidance=(3.5, 3.5), shift=5.0, steps=40)}
HEADROOM = 2.2  # both experts stay on the device when its free memory holds 2.2 x one expert


@dataclasses.dataclass(frozen=True)
class ExpertFiles:
    shared: WanFiles  # umT5, tokenizer, VAE (``dit``: the high-noise expert's weights)
    experts: dict  # "high" / "low" -> weights file (a .safetensors or a sharded index)


def resolve_expert_files(ckpt_dir: str, layout: str, model_name: str) -> ExpertFiles:
    """Every file of a Wan2.2 A14B folder, or a ValueError naming the first missing one."""
    if layout not in LAYOUTS:
        raise InputError(f"model.layout={layout!r} is unknown; choose one of {LAYOUTS}")
    layout = detect_layout(ckpt_dir) if layout == "auto" else layout
    dirs = OFFICIAL_EXPERTS if layout == "official" else DIFFUSERS_EXPERTS
    missing = [d for d in dirs.values() if not os.path.isdir(os.path.join(ckpt_dir, d))]
    if missing:
        names = " and no ".join(repr(m + "/") for m in missing)
        raise InputError(f"ckpt_dir={ckpt_dir!r} ({layout} layout) has no {names} folder: "
                         f"model.name={model_name!r} has two experts ({dirs['high']}/ for the high-noise "
                         f"steps, {dirs['low']}/ for the low-noise steps); copy the complete Wan2.2 A14B release, or "
                         f"set model.name to a one-DiT model (wan2.1-*) for a one-DiT folder")
    experts = {k: folders.diffusers_weights(os.path.join(ckpt_dir, d), ckpt_dir, "diffusion_pytorch_model*",
                                            f"{k}-noise expert weights") for k, d in dirs.items()}

    need = layout_need(ckpt_dir, layout, "Wan2.2")
    if layout == "official":
        shared = WanFiles(layout, experts["high"], need(OFFICIAL_FILES["t5"], "umT5 encoder"),
                          need(OFFICIAL_FILES["tokenizer"], "umT5 tokenizer folder", is_dir=True),
                          need(OFFICIAL_FILES["vae"], "VAE"), None)
    else:
        d = DIFFUSERS_DIRS
        shared = WanFiles(layout, experts["high"], need(os.path.join(d["t5"], "config.json"), "umT5 encoder config"),
                          need(d["tokenizer"], "tokenizer folder", is_dir=True),
                          need(os.path.join(d["vae"], "config.json"), "VAE config"), None)
    return ExpertFiles(shared, experts)


def folder_boundary(ckpt_dir: str, layout: str) -> float | None:
    """A diffusers folder's ``boundary_ratio`` (model_index.json); None for the official layout, which has none.
    A diffusers folder without one, or with a value outside (0, 1), is a ValueError naming the file."""
    if layout != "diffusers":
        return None
    path = os.path.join(ckpt_dir, "model_index.json")
    if not os.path.isfile(path):
        raise InputError(f"ckpt_dir={ckpt_dir!r} (diffusers layout) has no model_index.json, which holds the "
                         f"experts' boundary_ratio; restore it, or set sampler.boundary (T2V-A14B 0.875, I2V-A14B 0.9)")
    value = folders.read_config(path, ckpt_dir).get("boundary_ratio")
    if value is None:
        raise InputError(f"ckpt_dir={ckpt_dir!r}: model_index.json has no boundary_ratio, so the folder does not say "
                         f"where the low-noise expert (transformer_2) takes over; set sampler.boundary (T2V-A14B "
                         f"0.875, I2V-A14B 0.9) or restore the release's model_index.json")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(f"ckpt_dir={ckpt_dir!r}: model_index.json boundary_ratio={value!r} must be a number in "
                         f"(0, 1) (a fraction of the 1000 training timesteps; T2V-A14B 0.875, I2V-A14B 0.9)")
    return float(value)


class Deferred:
    """A branch's conditioning for an expert whose blocks are not (all) on the device yet: its cross-attention keys
    and values are prepared (``prepare_condition``) at its first call after its trade has finished; until then each
    call passes the raw conditioning and every block computes its own (the same numbers)."""

    def __init__(self, raw):
        self.raw = raw


class PlacedExperts(WanExperts):
    """The experts with the family's placement. ``offload_to`` unset: both on the device. Set: the device holds one
    expert's blocks (families/expert_swap.py ``BlockSwap``: the slots) and the other's wait in pinned host memory;
    both experts' embeddings and heads stay on the device, so a skipped call (MagCache) needs no trade.

    When the trades happen (``prefetch``, the default). The sampler announces the generation (``begin_generation``:
    its timesteps, this rank's branches and, where the cache policy knows it in advance, which calls it will skip)
    and each computed call (``before_blocks``). The last call of an expert that will compute before the other
    expert takes over (the step before the switch; the generation's last step, whose next expert is the next
    video's high-noise one) trades each block as soon as it has run, on the side stream, behind the blocks after
    it; the other expert's first computed call waits only for a block whose copy is still in flight. Wherever the
    slots are not the running expert's when its call reaches the blocks (that call was skipped after all, or
    nothing was announced), every slot is traded there and the call waits block by block (streamed).
    ``prefetch=False``: the synchronous trade (every slot, then the host waits), at the same place. ``moves``
    records each trade: dict(away, brought, during=blocks traded during the outgoing expert's last call, at_use=
    the rest, traded when the incoming expert's call reached its blocks, use_s=host seconds spent there)."""

    def __init__(self, high, low, boundary_t: float, device=None, offload_to=None, copier=None,
                 prefetch: bool = True):
        super().__init__(high, low, boundary_t)
        self._device, self._offload_to = device, offload_to
        self.copier, self.prefetch = copier, prefetch
        self.swap = None  # the slots, set up at the first call (the weights are read by then)
        self.resident = "high"  # the expert the slots are (being) given to
        self.moves: list[dict] = []
        self._arms: dict = {}  # (step, branch) -> the expert that takes the slots after that call
        self._armed = None  # (outgoing, incoming) while the last call of ``outgoing`` runs its blocks
        self._first_move = 0  # this generation's first entry of ``moves``

    @property
    def offloading(self) -> bool:
        return self._offload_to is not None

    def _ensure(self) -> None:
        if not self.offloading or self.swap is not None:
            return
        from magcache_dist.families.expert_swap import BlockSwap, default_copier

        blocks = {id(p) for name in EXPERTS for b in getattr(self, name).blocks for p in b.parameters()}
        for p in self.low.parameters():  # the embeddings and the head of both experts live on the device
            if id(p) not in blocks:
                p.data = p.data.to(self._device)
        device = torch.device(self._device)
        self.copier = self.copier if self.copier is not None else default_copier(device)
        self.swap = BlockSwap({"high": self.high, "low": self.low}, self.resident, self.copier,
                              pin=device.type == "cuda")
        for name in EXPERTS:
            for i, block in enumerate(getattr(self, name).blocks):
                block.register_forward_pre_hook(functools.partial(self._before_block, name, i))
                block.register_forward_hook(functools.partial(self._after_block, name, i))

    def _before_block(self, name, i, module, args):
        self.swap.acquire(name, i)

    def _after_block(self, name, i, module, args, out):
        if self._armed is not None and self._armed[0] == name:
            self.swap.release(i, self._armed[1])
            self.moves[-1]["during"] += 1

    def _move(self, away: str, brought: str) -> dict:
        self.moves.append(dict(away=away, brought=brought, during=0, at_use=0, use_s=0.0))
        self.resident = brought
        return self.moves[-1]

    # ---- the sampler's announcements (magcache_dist/sampling/loop.py) -------------------------------------------
    def begin_generation(self, timesteps, start_step: int, branches, skips: dict | None = None) -> None:
        """The generation's timesteps, the first step it runs, this rank's branches in call order and the steps
        each branch will skip (None: unknown, every call counted as computed)."""
        self._ensure()
        self._armed, self._arms, self._first_move = None, {}, len(self.moves)
        names = [self.expert_name(t.reshape(1)) for t in timesteps]
        calls = [(k, b) for k in range(start_step, len(names)) for b in branches
                 if k not in (skips or {}).get(b, ())]
        for n, (k, b) in enumerate(calls):  # the last computed call of an expert before the other one's
            after = names[calls[n + 1][0]] if n + 1 < len(calls) else names[0]  # then the next generation's
            if after != names[k]:
                self._arms[(k, b)] = after

    def placement_report(self) -> dict:
        """report.json's ``experts``: where the experts were and this video's trades (``moves``; ``use_s`` is host
        time, not the device's: the copies run on a side stream)."""
        return dict(offloaded=self.offloading, trades=self.moves[self._first_move:],
                    slots=self.swap.resident_blocks() if self.swap is not None else None)

    def before_blocks(self, step: int, branch: str) -> None:
        """A computed call is about to run its blocks: an announced last call arms the trade of each block."""
        self._armed = None
        incoming = self._arms.get((step, branch)) if self.offloading and self.prefetch else None
        if incoming is not None and incoming != self.resident:
            self._armed = (self.resident, incoming)
            self._move(self.resident, incoming)

    # ---- the seams of WanExperts ------------------------------------------------------------------------------
    def place(self, name: str) -> None:
        """Every slot ``name``'s (a streamed trade, or with ``prefetch=False`` a synchronous one)."""
        import time

        self._ensure()
        if self._armed is not None:
            if self._armed[0] == name:  # the announced last call itself: its blocks leave after they have run
                return
            self._armed = None
        t = time.perf_counter()
        move = self._move(self.resident, name) if name != self.resident else None
        n = self.swap.bring(name)
        if n:
            move = move or self.moves[-1]
            move["at_use"] += n
            if not self.prefetch:
                self.swap.sync()
            move["use_s"] += time.perf_counter() - t

    def forward_blocks(self, tokens: torch.Tensor, ctx) -> torch.Tensor:
        if self.offloading:
            self.place(ctx.expert)
        return super().forward_blocks(tokens, ctx)

    def first_block(self, ctx):
        """Read before the call's blocks run (TeaCache's probe): the expert's slots placed, its first block's copy
        waited for."""
        if self.offloading:
            self.place(ctx.expert)
            self.swap.acquire(ctx.expert, 0)
        return super().first_block(ctx)

    def prepare_condition(self, context) -> ExpertConditions:
        """Each expert's conditioning; an expert whose blocks are not all on the device gets it deferred."""
        if not self.offloading:
            return super().prepare_condition(context)
        self._ensure()
        return ExpertConditions(*(getattr(self, n).prepare_condition(context) if self.swap.complete(n)
                                  else Deferred(context) for n in EXPERTS))

    def embed(self, x: torch.Tensor, t: torch.Tensor, context):
        if isinstance(context, ExpertConditions):
            name = self.expert_name(t)
            cond = getattr(context, name)
            if isinstance(cond, Deferred):
                if self.swap.complete(name):
                    self.swap.sync()
                    setattr(context, name, getattr(self, name).prepare_condition(cond.raw))
                    cond = getattr(context, name)
                else:
                    cond = cond.raw
            context = cond
        return super().embed(x, t, context)

    def to(self, *args, **kwargs):
        """Offloading: ``to(host)`` parks every weight in host memory (a decode that needs the device:
        vae.offload_dit) and ``to(device)`` brings back the embeddings, the heads and the slots' owners."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if not self.offloading or self.swap is None or device is None:
            return super().to(*args, **kwargs)
        blocks = {id(p) for name in EXPERTS for b in getattr(self, name).blocks for p in b.parameters()}
        if device.type == torch.device(self._device).type:
            self.swap.unpark(device)
        else:
            self.swap.park()
        for p in self.parameters():
            if id(p) not in blocks:
                p.data = p.data.to(device)
        return self


def experts_fit(device, expert_bytes: int) -> bool:
    """Whether both experts may stay on ``device`` (always on a CPU, where there is nothing to offload to)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return free >= HEADROOM * expert_bytes


class Wan22Family(WanFamily):
    """Wan2.2 T2V-A14B / I2V-A14B (model.name decides), weights from ``ckpt_dir``. One instance per job."""

    release = "Wan2.2"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.i2v = self.mcfg.in_dim > self.mcfg.out_dim  # no CLIP branch: image_dim is 0
        self.task = "i2v" if self.i2v else "t2v"

    @functools.cached_property
    def expert_files(self) -> ExpertFiles:
        root = folders.ckpt_root(self.cfg, self.name, "Wan2.2", "checkpoint folder",
                                 "official or diffusers layout, two experts")
        return resolve_expert_files(root, self.cfg.model.layout, self.name)

    @property
    def files(self) -> WanFiles:
        return self.expert_files.shared

    # ---- before any collective -----------------------------------------------------------------------------
    def boundary(self) -> float:
        """sampler.boundary, else the diffusers folder's boundary_ratio, else the published value."""
        b = self.cfg.sampler.boundary
        if b is not None:
            if not 0 < b < 1:
                raise InputError(f"sampler.boundary={b!r} must be in (0, 1): the fraction of the 1000 training "
                                 f"timesteps at which the low-noise expert takes over (T2V-A14B 0.875, I2V-A14B 0.9)")
            return float(b)
        root = resolve_path(self.cfg.ckpt_dir) if self.cfg.ckpt_dir is not None else None
        if root is None or not os.path.isdir(root):  # a dry run planned without the files: the published value
            return PUBLISHED[self.task]["boundary"]
        layout = detect_layout(root) if self.cfg.model.layout == "auto" else self.cfg.model.layout
        b = folder_boundary(root, layout)
        return PUBLISHED[self.task]["boundary"] if b is None else b

    def validate(self) -> None:
        super().validate()  # the folder, the high-noise expert's config, shift, geometry, image
        check_dit_config(dataclasses.replace(self.files, dit=self.expert_files.experts["low"]), self.cfg.ckpt_dir,
                         self.name)
        self.boundary()

    def sampler_config(self):
        scfg = super().sampler_config()
        return dataclasses.replace(scfg, guidance_2=self.cfg.sampler.guidance_2, switch_step=self.expert_switch_step())

    def expert_switch_step(self) -> int:
        s = self.cfg.sampler
        return expert_switch_step(s.num_steps, s.shift, self.boundary())

    def cache_rule(self) -> str:
        return f"wan2.2-{self.task}"

    # ---- geometry and cost -------------------------------------------------------------------------------------
    def cost_figures(self) -> CostFigures:
        return dataclasses.replace(super().cost_figures(), experts=2)

    def encoder_params(self) -> dict[str, int]:
        return {} if self.name.startswith("tiny-") else {"umT5-XXL encoder": 5_680_000_000}

    # ---- build / encode ---------------------------------------------------------------------------------------
    def build(self, device, weights=True):
        dtype = DTYPES[self.cfg.model.dtype]
        with torch.device("meta"):
            high, low = (build_wan_model(self.mcfg).to(dtype=dtype) for _ in EXPERTS)
        expert_bytes = sum(p.numel() * p.element_size() for p in high.parameters())
        offload = not self.cfg.parallel.fsdp and not experts_fit(device, expert_bytes)
        model = PlacedExperts(high, low, self.boundary() * 1000, device=device, offload_to="cpu" if offload else None)
        if weights:
            self.load_weights(model, device)
        return model.eval().requires_grad_(False), WanEncoders(self.files, device)

    def load_weights(self, model, device, share=None) -> int:
        """Each expert streamed from its own folder (the low-noise one into host memory when it waits there)."""
        read = 0
        for name in EXPERTS:
            target = "cpu" if (name == "low" and getattr(model, "_offload_to", None)) else device
            read += folders.stream_weights(getattr(model, name), target, self.expert_files.experts[name],
                                           f"ckpt_dir={self.cfg.ckpt_dir!r} ({name}-noise expert)", share=share)
        return read

    def encode_many(self, encoder: WanEncoders, texts: list[tuple[str, str]], branches) -> list[dict]:
        per = 2 if "uncond" in branches else 1
        batches = self._text_contexts(encoder, [list(pair[:per]) for pair in texts])
        if not self.i2v:
            return [dict(zip(["cond", "uncond"], contexts)) for contexts in batches]
        dev, _ = self._encoder_place(encoder)
        with torch.no_grad():
            y = self._image_latents(encoder.files, load_image(resolve_path(self.cfg.image)), dev, encoder.device)
        return [{b: LatentCondition(c, y) for b, c in zip(["cond", "uncond"], contexts)} for contexts in batches]


# ---- TI2V-5B ---------------------------------------------------------------------------------------------------
TI2V_VAE_STRIDE = (4, 16, 16)
TI2V_Z_DIM = 48
# diffusers' AutoencoderKLWan with the Wan2.2 VAE's configuration (base 160 / decoder 256 channels, 48 latent
# channels, residual blocks, 2x2 patchified pixels), counted on the meta device
TI2V_VAE_PARAMS = 704_688_668
OFFICIAL_TI2V_VAE = "Wan2.2_VAE.pth"  # Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py vae_checkpoint


def resolve_ti2v_files(ckpt_dir: str, layout: str, model_name: str) -> WanFiles:
    """Every file of a TI2V-5B folder, or an InputError naming the first missing one. Official layout
    (Wan-AI/Wan2.2-TI2V-5B): the DiT (``diffusion_pytorch_model*.safetensors``, sharded with an index json, and
    config.json) in Wan's key names, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/`` and
    ``Wan2.2_VAE.pth``; a folder holding the Wan2.1 VAE instead is named with the fix. Diffusers layout: as Wan2.1."""
    if layout not in LAYOUTS:
        raise InputError(f"model.layout={layout!r} is unknown; choose one of {LAYOUTS}")
    layout = detect_layout(ckpt_dir) if layout == "auto" else layout
    if layout != "official":
        return resolve_files(ckpt_dir, layout, False)
    vae = os.path.join(ckpt_dir, OFFICIAL_TI2V_VAE)
    if not os.path.isfile(vae) and os.path.isfile(os.path.join(ckpt_dir, OFFICIAL_FILES["vae"])):
        raise InputError(f"ckpt_dir={ckpt_dir!r} (official layout) holds {OFFICIAL_FILES['vae']} (the Wan2.1 VAE: 16 "
                         f"latent channels, 8x) and no {OFFICIAL_TI2V_VAE}; model.name={model_name!r} needs the Wan2.2 "
                         f"VAE (48 latent channels, 16x): copy {OFFICIAL_TI2V_VAE} of the Wan2.2-TI2V-5B release into "
                         f"ckpt_dir, or set model.name to the Wan2.1 / Wan2.2 A14B model this folder holds")
    need = layout_need(ckpt_dir, layout, "Wan2.2-TI2V-5B")
    return WanFiles(layout, folders.diffusers_weights(ckpt_dir, ckpt_dir, "diffusion_pytorch_model*", "DiT weights"),
                    need(OFFICIAL_FILES["t5"], "umT5 encoder"),
                    need(OFFICIAL_FILES["tokenizer"], "umT5 tokenizer folder", is_dir=True),
                    need(OFFICIAL_TI2V_VAE, "VAE"), None)


class Wan22TI2VFamily(WanFamily):
    """Wan2.2 TI2V-5B: one dense 5B DiT on the Wan2.2 VAE (48 latent channels, 4 x 16 x 16 compression; published
    1280x704, 121 frames at 24 fps, 50 steps, shift 5, guidance 5), text-to-video, or text+image-to-video when
    ``image`` is set: the first latent frame is the image's latents (the image resized to height x width, as
    diffusers' pipeline does) and its tokens sit at timestep 0 (models/wan_i2v.py WanFirstFrameModel); the decoded
    first latent frame is the image's. Read from either layout: the official one (Wan-AI/Wan2.2-TI2V-5B: the DiT in
    Wan's key names, umT5 .pth, ``google/umt5-xxl/``, ``Wan2.2_VAE.pth`` converted key by key,
    models/wan_components.py ``vae22_rules``, with the published latent statistics) or the diffusers one
    (Wan-AI/Wan2.2-TI2V-5B-Diffusers). MagCache: the release's TI2V arrays (text only / with an image) with Wan2.1's
    rule (docs/magcache.md)."""

    release = "Wan2.2"
    vae_stride, vae_name, frames_example = TI2V_VAE_STRIDE, "Wan2.2 VAE", 121

    @property
    def image_mode(self) -> bool:
        return self.cfg.image is not None

    @functools.cached_property
    def files(self) -> WanFiles:
        root = folders.ckpt_root(self.cfg, self.name, "Wan2.2", "checkpoint folder", "official or diffusers layout")
        return resolve_ti2v_files(root, self.cfg.model.layout, self.name)

    def check_vae_config(self) -> None:
        """The VAE must be the Wan2.2 VAE: the official file's keys and shapes (read from its header, nothing
        loaded), or the diffusers vae/config.json's latent channels and spatial compression."""
        path = self.files.vae
        if self.files.layout == "official":
            from models.loading import read_shapes

            with reading():
                cfg = wan_components.check_wan22_vae(read_shapes(path), path)
            got = (cfg["z_dim"], cfg["scale_factor_temporal"], cfg["scale_factor_spatial"])
            if got != (TI2V_Z_DIM, *TI2V_VAE_STRIDE[:2]):
                raise InputError(f"ckpt_dir={self.cfg.ckpt_dir!r}: {OFFICIAL_TI2V_VAE} holds a VAE with z_dim={got[0]} "
                                 f"and {got[1]}x temporal, {got[2]}x spatial compression; {self.name} needs the Wan2.2 "
                                 f"VAE (z_dim=48, 4x, 16x): copy {OFFICIAL_TI2V_VAE} of the Wan2.2-TI2V-5B release")
            return
        c = folders.read_config(path, resolve_path(self.cfg.ckpt_dir))
        z, spatial = c.get("z_dim"), c.get("scale_factor_spatial", 8)
        if z != TI2V_Z_DIM or spatial != TI2V_VAE_STRIDE[1]:
            raise InputError(f"ckpt_dir={self.cfg.ckpt_dir!r}: vae/config.json describes a VAE with z_dim={z} and "
                             f"{spatial}x spatial compression (the Wan2.1 VAE: 16, 8x); {self.name} needs the Wan2.2 "
                             f"VAE (z_dim=48, 16x): copy the vae/ folder of the Wan2.2-TI2V-5B release")

    def check_image(self) -> None:
        if self.image_mode:  # text+image: any readable image (resized to height x width)
            self.image_size()

    def validate(self) -> None:
        super().validate()
        self.check_vae_config()

    def build(self, device, weights=True):
        if not self.image_mode:
            return super().build(device, weights)
        from models.wan_i2v import WanFirstFrameModel

        with torch.device("meta"):
            model = WanFirstFrameModel(self.mcfg).to(dtype=DTYPES[self.cfg.model.dtype])
        if weights:
            self.load_weights(model, device)
        return model.eval().requires_grad_(False), WanEncoders(self.files, device)

    def _load_vae(self, files: WanFiles, device):
        path = files.vae if files.layout == "official" else os.path.dirname(files.vae)
        return wan_components.load_wan22_vae(path, files.layout, dtype=DTYPES[self.cfg.vae.dtype], device=device)

    def first_frame_latents(self, files: WanFiles, dev, device) -> torch.Tensor:
        """The image resized to height x width, encoded alone: normalised latents [1, 48, 1, H/16, W/16]."""
        v = self.cfg.video
        image = load_image(resolve_path(self.cfg.image))  # [1, 3, h0, w0] in [-1, 1]
        if tuple(image.shape[-2:]) != (v.height, v.width):
            image = torch.nn.functional.interpolate(image, size=(v.height, v.width), mode="bicubic")
        vae = self._load_vae(files, dev)
        param = next(vae.parameters())
        with torch.no_grad():
            mu = vae.encode(image[:, :, None].to(device=param.device, dtype=param.dtype)).latent_dist.mode().float()
        mean, std = wan_components.latent_stats(vae)
        del vae
        folders.free_memory(dev)
        return ((mu - mean.to(mu.device)) / std.to(mu.device)).to(device)

    def encode_many(self, encoder: WanEncoders, texts: list[tuple[str, str]], branches) -> list[dict]:
        if not self.image_mode:
            return super().encode_many(encoder, texts, branches)
        from models.wan_i2v import FirstFrameCondition

        per = 2 if "uncond" in branches else 1
        batches = self._text_contexts(encoder, [list(pair[:per]) for pair in texts])
        dev, _ = self._encoder_place(encoder)
        z0 = self.first_frame_latents(encoder.files, dev, encoder.device)
        return [{b: FirstFrameCondition(c, z0) for b, c in zip(["cond", "uncond"], contexts)} for contexts in batches]

    def _with_image(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents a decode takes: in image mode the first latent frame is the image's (the sampler also moved
        it: it is not used)."""
        if not self.image_mode:
            return latents
        z0 = self.first_frame_latents(self.files, latents.device, latents.device)
        return torch.cat([z0.to(latents.dtype), latents[:, :, 1:]], dim=2)

    def decode(self, latents: torch.Tensor, model=None) -> torch.Tensor:
        return super().decode(self._with_image(latents), model)

    def tile_decoder(self, latents, model, parts):
        return super().tile_decoder(self._with_image(latents), model, parts)

    def band_decoder(self, latents, model):
        return super().band_decoder(self._with_image(latents), model)

    def latent_shape(self) -> tuple[int, int, int, int]:
        v = self.cfg.video
        return (TI2V_Z_DIM, (v.frames - 1) // TI2V_VAE_STRIDE[0] + 1, v.height // TI2V_VAE_STRIDE[1],
                v.width // TI2V_VAE_STRIDE[2])

    def vae_params(self) -> int:
        return 0 if self.name.startswith("tiny-") else TI2V_VAE_PARAMS

    def default_preset(self) -> str:
        return "wan2.2-ti2v-5b-i2v" if self.image_mode else "wan2.2-ti2v-5b-t2v"
