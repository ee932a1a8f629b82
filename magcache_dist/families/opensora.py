"""Open-Sora 1.2 (STDiT3, rectified flow, batched classifier-free guidance: one call per step on [cond; uncond]
rows, the unconditional rows using the learned null caption) on the shared sampler, cache and parallel code.

Two kinds of names:
- ``opensora-1.2-tiny``: the embedded pixel-space size (``model.ckpt`` with a tiny text encoder, no VAE);
- ``opensora-1.2`` and ``tiny-opensora``: the published pipeline from ``ckpt_dir`` (docs/adding_a_model.md, Open-Sora
  section): T5 (transformers), STDiT3 (models/opensora.py), the VideoAutoencoderPipeline VAE (models/opensora_vae.py).

Memory plan of the pipeline (as the Wan family): the DiT is built on the meta device and streamed in; T5 is loaded
once per job, run on every prompt, and freed before sampling; the decode after sampling (the DiT moved off the GPU
first with ``vae.offload_dit`` unless it fits beside it) goes 5 latent frames then 4 frames at a time, collecting
frames on the CPU; on more than one rank the chunks of 5 latent frames are dealt over the group.

Sampling follows Open-Sora's RFLOW (opensora/schedulers/rf, v1.2.0): timesteps (1 - i/N) * 1000 through the
"timestep transform" t' = r t / (1 + (r - 1) t), r = sqrt(H W / 512^2) * sqrt(N_frames // 17 * 5) (1 for one frame),
computed like the release on tensors of the model's dtype; Euler steps z += v (t_i - t_{i+1}) / 1000 with the model's
v = x0 - noise, i.e. our sigma grid sigma_i = t'_i / 1000 and velocity noise - x0 (the sign flips in unpatchify).
"""
from __future__ import annotations

import functools
import glob
import html
import os
import re
from dataclasses import dataclass, replace

import torch

from magcache_dist.errors import InputError
from magcache_dist.families import components, folders
from magcache_dist.families.base import DTYPES, CostFigures, meta_param_count
from magcache_dist.families.common import T5_XXL_ENCODER_PARAMS, PipelineFamily, encode_prompt
from magcache_dist.sampling.grids import shifted_sigmas
from magcache_dist.sampling.loop import SamplerConfig
from models.loading import TensorSource, check_shapes, read_shapes
from models.opensora import OpenSoraCond, STDiT3, opensora_config
from models.opensora_vae import PUBLISHED_2D, SDXL_VAE, OpenSoraVAE, OpenSoraVAEConfig, TemporalVAEConfig
from models.tiny_text import TinyTextEncoder

AES = 6.5  # configs/opensora-v1-2/inference/sample.py: "aesthetic score: 6.5." is appended to every prompt
IMG_FPS = 120  # the fps Open-Sora conditions a one-frame video on
FIX = "copy the complete Open-Sora 1.2 release into ckpt_dir (docs/adding_a_model.md lists the folders)"
STDIT_FIELDS = ("hidden_size", "depth", "num_heads", "mlp_ratio", "in_channels", "patch_size", "caption_channels",
                "model_max_length", "pred_sigma", "input_sq_size")


def rflow_timesteps(num_steps: int, height: int, width: int, num_frames: int, dtype=torch.float32,
                    num_timesteps: int = 1000) -> list[float]:
    """Open-Sora 1.2's RFLOW sampling timesteps (in 0..1000, before the final 0): the uniform grid through its
    timestep transform. Like the release, the resolution / frame ratio is computed on tensors of ``dtype`` (the
    model's: bfloat16 in the published runs) and the transform in float32."""
    h, w, n = (torch.tensor([float(v)], dtype=dtype) for v in (height, width, num_frames))
    ratio_space = (h * w / (512 * 512)).sqrt()
    frames = torch.ones_like(n) if num_frames == 1 else n // 17 * 5
    ratio = ratio_space * frames.sqrt()
    out = []
    for i in range(num_steps):
        t = torch.tensor([(1.0 - i / num_steps) * num_timesteps], dtype=torch.float32) / num_timesteps
        out.append(float((ratio * t / (1 + (ratio - 1) * t) * num_timesteps).float()))
    return out


def clean_prompt(text: str) -> str:
    """The prompt as the release feeds T5: the aesthetic score appended, then (a light form of Open-Sora's
    clean_caption) HTML entities resolved, lower case, whitespace collapsed."""
    if "aesthetic score:" not in text:
        text = f"{text} aesthetic score: {AES:.1f}."
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()


@dataclass(frozen=True)
class OpenSoraFiles:
    root: str
    dit: str  # transformer/model.safetensors (or a sharded index)
    dit_config: str
    vae: str  # vae/model.safetensors
    vae_config: str
    text_encoder: str  # folder (transformers T5EncoderModel)
    tokenizer: str  # folder


@dataclass(frozen=True)
class OpenSoraEncoders:
    """What ``build`` hands to ``encode``: the checkpoint's files and the job's device."""
    files: OpenSoraFiles
    device: object


def resolve_files(root: str) -> OpenSoraFiles:
    """Every file the pipeline reads, or a ValueError naming the first missing one."""
    dit_dir = folders.need(root, "transformer", "STDiT3 folder", FIX, is_dir=True)
    dit_cfg = folders.need(root, "transformer/config.json", "STDiT3 config", FIX)
    vae_cfg = folders.need(root, "vae/config.json", "VAE config", FIX)
    folders.need(root, "text_encoder/config.json", "T5 text encoder config", FIX)
    te = os.path.join(root, "text_encoder")
    if not any(glob_any(te, p) for p in ("*.safetensors", "*.bin", "*.safetensors.index.json")):
        raise InputError(f"ckpt_dir={root!r}: no T5 weights (*.safetensors, *.bin or an index) in text_encoder; {FIX}")
    components.check_pretrained(root, "text_encoder", "T5 text encoder", FIX)  # config values, weights' headers
    tok = os.path.join(root, "tokenizer")
    if not os.path.isdir(tok):
        # DeepFloyd/t5-v1_1-xxl ships its tokenizer files beside the model: text_encoder/ may hold both
        if not any(os.path.isfile(os.path.join(te, f)) for f in ("tokenizer_config.json", "spiece.model",
                                                                  "tokenizer.json")):
            raise InputError(f"ckpt_dir={root!r}: missing T5 tokenizer folder 'tokenizer' (or tokenizer files in "
                             f"text_encoder); {FIX}")
        tok = te
    components.check_tokenizer(tok, root, "T5 tokenizer", FIX)
    return OpenSoraFiles(root, folders.diffusers_weights(dit_dir, root), dit_cfg,
                         folders.diffusers_weights(os.path.dirname(vae_cfg), root), vae_cfg, te, tok)


def glob_any(folder: str, pattern: str) -> bool:
    return bool(glob.glob(os.path.join(folder, pattern)))


def vae_config(files: OpenSoraFiles) -> OpenSoraVAEConfig:
    """vae/config.json (VideoAutoencoderPipelineConfig, as the release saves it) -> OpenSoraVAEConfig.

    ``vae_temporal``: type ``VAE_Temporal_SD`` (the release's sizes; extra keys override them, as Open-Sora's registry
    passes them on) or ``VAE_Temporal`` with every size given. ``vae_2d``: the release names the 2D VAE by its hub
    id (PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, SDXL's VAE, whose config is built in); a
    ``vae/spatial_vae/config.json`` (diffusers AutoencoderKL config) takes precedence when present."""
    root, path = files.root, files.vae_config
    c = folders.read_config(path, root)
    where = f"ckpt_dir={root!r}: vae/config.json"
    default = OpenSoraVAEConfig()
    t, v2d = c.get("vae_temporal") or {"type": "VAE_Temporal_SD"}, c.get("vae_2d") or {}
    if not isinstance(t, dict) or not isinstance(v2d, dict):
        raise InputError(f"{where}: vae_temporal and vae_2d must be JSON objects; use the release's vae/config.json")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in t.items() if k not in ("type", "from_pretrained")}
    if t.get("type") not in ("VAE_Temporal_SD", "VAE_Temporal"):
        raise InputError(f"{where} has vae_temporal.type={t.get('type')!r}; Open-Sora 1.2's VAE is VAE_Temporal_SD")
    try:
        temporal = TemporalVAEConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: vae_temporal {e}; use the release's vae/config.json") from None
    spatial_path = os.path.join(os.path.dirname(path), "spatial_vae", "config.json")
    if os.path.isfile(spatial_path):
        vae_2d = folders.read_config(spatial_path, root)
    elif v2d.get("from_pretrained", PUBLISHED_2D) == PUBLISHED_2D:
        vae_2d = dict(SDXL_VAE)
    else:
        raise InputError(f"{where} names the 2D VAE {v2d.get('from_pretrained')!r}; put its diffusers config at "
                         f"vae/spatial_vae/config.json (the release's is {PUBLISHED_2D!r}, built in)")
    try:
        cfg = replace(default, vae_2d=vae_2d, temporal=temporal,
                      micro_frame_size=int(c.get("micro_frame_size") or default.micro_frame_size),
                      micro_batch_size=int(v2d.get("micro_batch_size") or default.micro_batch_size),
                      shift=tuple(map(float, c.get("shift", default.shift))),
                      scale=tuple(map(float, c.get("scale", default.scale))))
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: micro_frame_size / micro_batch_size / shift / scale are malformed ({e}); use the "
                         f"release's vae/config.json") from None
    if cfg.micro_frame_size < 1 or cfg.micro_batch_size < 1:
        raise InputError(f"{where} has micro_frame_size={cfg.micro_frame_size}, micro_batch_size="
                         f"{cfg.micro_batch_size}; both must be >= 1 (the release: 17 and 4)")
    if vae_2d.get("latent_channels", 4) != temporal.in_out_channels:
        raise InputError(f"{where}: the 2D VAE has latent_channels={vae_2d.get('latent_channels')} but the temporal "
                         f"VAE takes in_out_channels={temporal.in_out_channels}; use the release's VAE")
    return cfg


def load_vae(files: OpenSoraFiles, cfg: OpenSoraVAEConfig, device, dtype) -> OpenSoraVAE:
    """The VAE in ``dtype`` on ``device``, streamed from vae/model.safetensors (strict keys and shapes); the
    checkpoint's own ``scale`` / ``shift`` tensors, when it holds them, win over config.json's."""
    where = f"ckpt_dir={files.root!r} (vae)"
    with torch.device("meta"):
        vae = OpenSoraVAE(cfg).to(dtype)
    vae.to_empty(device=device)
    vae.scale.copy_(torch.tensor(cfg.scale).view(vae.scale.shape))
    vae.shift.copy_(torch.tensor(cfg.shift).view(vae.shift.shape))
    source = TensorSource(files.vae)
    stats = {k: source.read(k) for k in ("scale", "shift") if k in source.files}
    check_shapes(vae, {k: s for k, s in source.shapes().items() if k not in stats}, where)
    own = vae.state_dict()
    with torch.no_grad():
        for key, dst in own.items():
            dst.copy_(source.read(key))
        for key, value in stats.items():
            getattr(vae, key).copy_(value.float().reshape(getattr(vae, key).shape))
    return vae.eval().requires_grad_(False)


class OpenSoraFamily(PipelineFamily):
    family = "Open-Sora 1.2"
    rule = "opensora"
    cfg_mode = "batched"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mcfg = opensora_config(self.name)

    def num_heads(self) -> int:
        return self.mcfg.num_heads

    # ---- before any collective -----------------------------------------------------------------------------
    def validate(self) -> None:
        super().validate()
        if self.cfg.parallel.ring_degree > 1:
            raise InputError(f"parallel.ring_degree={self.cfg.parallel.ring_degree}: Open-Sora's spatial/temporal "
                             f"attention needs whole frames per rank; use parallel.ulysses_degree")

    @property
    def stride(self) -> int:
        """Pixels per latent (the 2D VAE's stride; 1 for the pixel-space size)."""
        return 1 if self.pixel else self.mcfg.vae_spatial_stride

    def check_geometry(self) -> None:
        pf, ph, pw = self.mcfg.patch_size
        if ph != pw:
            raise InputError("Open-Sora patches must be square")
        if self.pixel:
            self.check_multiples(pf, ph)
            return
        v = self.cfg.video
        if v.frames < 1:
            raise InputError(f"video.frames={v.frames} must be >= 1 (Open-Sora 1.2 takes any length; 51 = 2 s at "
                             f"24 fps)")
        self.check_multiples(1, self.stride * ph, what=f" (VAE stride {self.stride} x patch {ph})")
        if 1 < v.frames < 17 and self.cfg.sampler.shift is None:  # unset: the release's transform decides
            # the release's timestep transform scales by sqrt(frames // 17 * 5): 0 for 2..16 frames, and its
            # first timestep is then 0 / 0
            raise InputError(f"video.frames={v.frames}: Open-Sora 1.2's timestep transform has no schedule for 2 to "
                             f"16 frames (it scales by frames // 17); use video.frames=1 (an image) or >= 17 (e.g. "
                             f"51), or set sampler.shift to sample on a fixed-shift grid")

    @functools.cached_property
    def files(self) -> OpenSoraFiles:
        return resolve_files(folders.ckpt_root(self.cfg, self.name, "Open-Sora 1.2", "checkpoint folder",
                                               "transformer/, vae/, text_encoder/, tokenizer/"))

    @functools.cached_property
    def vae_cfg(self) -> OpenSoraVAEConfig:
        return vae_config(self.files)

    def validate_pipeline(self) -> None:
        cfg, mcfg, name = self.cfg, self.mcfg, self.name
        files, root = self.files, self.files.root
        # the STDiT3: config.json fields that change the math, then the weights' keys and shapes (headers only)
        c = folders.read_config(files.dit_config, root)
        if c.get("qk_norm", True) is not True:
            raise InputError(f"ckpt_dir={root!r}: transformer/config.json has qk_norm={c['qk_norm']}; Open-Sora "
                             f"1.2's STDiT3 normalises q and k (qk_norm=true)")
        folders.check_fields(c, {k: getattr(mcfg, k) for k in STDIT_FIELDS}, files.dit_config, root, name)
        with torch.device("meta"):
            check_shapes(STDiT3(mcfg), read_shapes(files.dit), f"ckpt_dir={root!r} (transformer)")
        # T5: its width is the STDiT3's caption_channels
        t5 = folders.read_config(os.path.join(files.text_encoder, "config.json"), root)
        if t5.get("d_model") != mcfg.caption_channels:
            raise InputError(f"ckpt_dir={root!r}: text_encoder/config.json has d_model={t5.get('d_model')} but "
                             f"{name}'s STDiT3 takes caption_channels={mcfg.caption_channels}; use the T5 the model "
                             f"was trained with (DeepFloyd/t5-v1_1-xxl for opensora-1.2)")
        # the VAE: its latent channels and stride are what the STDiT3 takes; weights' keys and shapes
        vcfg = self.vae_cfg
        if vcfg.latent_channels != mcfg.in_channels:
            raise InputError(f"ckpt_dir={root!r}: vae/config.json gives {vcfg.latent_channels} latent channels "
                             f"(vae_temporal.embed_dim) but {name}'s STDiT3 takes in_channels={mcfg.in_channels}; "
                             f"use the VAE the model was trained with (hpcai-tech/OpenSora-VAE-v1.2)")
        if not len(vcfg.shift) == len(vcfg.scale) == vcfg.latent_channels:
            raise InputError(f"ckpt_dir={root!r}: vae/config.json has {len(vcfg.shift)} shift / {len(vcfg.scale)} "
                             f"scale values for {vcfg.latent_channels} latent channels; use the release's "
                             f"vae/config.json")
        if vcfg.spatial_stride != mcfg.vae_spatial_stride:
            raise InputError(f"ckpt_dir={root!r}: the 2D VAE downsamples by {vcfg.spatial_stride} but {name} "
                             f"expects {mcfg.vae_spatial_stride}; use the VAE the model was trained with")
        if vcfg.latent_frames(cfg.video.frames) != self.latent_shape()[1]:
            raise InputError(f"ckpt_dir={root!r}: vae/config.json chunks time differently from Open-Sora 1.2 "
                             f"(micro_frame_size={vcfg.micro_frame_size}, time factor {vcfg.temporal.time_factor}; "
                             f"the release: 17 and 4); use the release's VAE")
        with torch.device("meta"):
            try:
                meta_vae = OpenSoraVAE(vcfg)
            except (TypeError, ValueError) as e:
                raise InputError(f"ckpt_dir={root!r}: the VAE of vae/config.json cannot be built ({e}); use the "
                                 f"release's VAE") from None
            shapes = {k: s for k, s in read_shapes(files.vae).items() if k not in ("scale", "shift")}
            check_shapes(meta_vae, shapes, f"ckpt_dir={root!r} (vae)")
        folders.check_encoder_options(cfg)
        if cfg.vae.tiling:
            raise InputError(f"vae.tiling=true: {name} decodes {vcfg.micro_batch_size} frames at a time "
                             f"(the release's micro-batches) and has no spatial tiling; set vae.tiling=false")

    # ---- geometry and cost ---------------------------------------------------------------------------------
    def latent_shape(self):
        v = self.cfg.video
        if self.pixel:
            return self.mcfg.in_channels, v.frames, v.height, v.width
        frames = OpenSoraVAEConfig(temporal=TemporalVAEConfig()).latent_frames(v.frames)  # 17 -> 5, chunked
        return self.mcfg.in_channels, frames, v.height // self.stride, v.width // self.stride

    def cost_figures(self) -> CostFigures:
        m = self.mcfg
        c, f, h, w = self.latent_shape()
        pf, ph, pw = m.patch_size
        # a spatial block (queries see their frame) then a temporal block (their position over time) per depth
        span = ((h // ph) * (w // pw) + f // pf) // 2
        return CostFigures(params=meta_param_count(lambda: STDiT3(m)), dim=m.hidden_size,
                           ffn_dim=int(m.hidden_size * m.mlp_ratio), num_heads=m.num_heads, num_layers=2 * m.depth,
                           patch_size=tuple(m.patch_size), in_channels=m.in_channels,
                           out_channels=m.out_channels, text_tokens=m.model_max_length, attention_span=span,
                           text_dim=m.caption_channels)

    def encoder_params(self) -> dict[str, int]:
        return {"T5-XXL encoder": T5_XXL_ENCODER_PARAMS} if self.name == "opensora-1.2" else {}

    def vae_params(self) -> int:
        # the temporal VAE (counted on the meta device at the published size) + SDXL's 2D VAE
        return 309_687_144 + 83_653_863 if self.name == "opensora-1.2" else 0

    def sampler_defaults(self) -> dict:
        """The pipeline leaves sampler.shift unset by default: the release's resolution/length transform decides
        the grid (sampler_config); a job that sets it gets the shifted grid instead."""
        return dict(super().sampler_defaults(), **({} if self.pixel else {"shift": None}))

    def vae_decode_flops_per_pixel(self) -> float:
        # its 2D stage is an SD-class AutoencoderKL decoder (about FLUX.1's 9.5e6 per pixel); the temporal stage
        # runs at 1/64 of the pixels: an estimate, not counted
        return 10.0e6 if self.name == "opensora-1.2" else 0.0

    def vae_chunk_frames(self) -> int | None:
        return 17 if self.name == "opensora-1.2" else None  # the release's micro_frame_size (OpenSoraVAEConfig)

    def sampler_config(self) -> SamplerConfig:
        s = self.cfg.sampler
        if s.shift is not None:
            # the tiny pixel-space model (and a job that sets sampler.shift) takes sampler.shift as the ratio
            return SamplerConfig(num_steps=s.num_steps, shift=s.shift, guidance=s.guidance, solver=s.solver,
                                 cfg_mode="batched", sigmas=shifted_sigmas(s.num_steps, s.shift))
        v = self.cfg.video
        ts = rflow_timesteps(s.num_steps, v.height, v.width, v.frames, DTYPES[self.cfg.model.dtype])
        return SamplerConfig(num_steps=s.num_steps, guidance=s.guidance, solver=s.solver,  # the grid is explicit
                             cfg_mode="batched", sigmas=tuple(t / 1000 for t in ts))

    # ---- build / encode / decode ---------------------------------------------------------------------------
    def build(self, device, weights=True):
        mcfg = self.mcfg
        if self.pixel:
            torch.manual_seed(self.cfg.model.init_seed)
            model = STDiT3(mcfg)
            text = TinyTextEncoder(text_dim=mcfg.caption_channels, max_len=mcfg.model_max_length)
            if self.cfg.model.ckpt is not None:
                self.load_pixel_weights(model, text, None)  # the official layout is the model's own
            return self.finish(model, text, device)
        with torch.device("meta"):
            model = STDiT3(mcfg).to(dtype=DTYPES[self.cfg.model.dtype])
        if weights:
            self.load_weights(model, device)
        return model.eval().requires_grad_(False), OpenSoraEncoders(self.files, device)

    def load_weights(self, model, device, share=None) -> int | None:
        """Materialise the meta-built STDiT3 in the run dtype on ``device`` and stream transformer/ in."""
        if self.pixel:
            return None
        return folders.stream_weights(model, device, self.files.dit, f"ckpt_dir={self.cfg.ckpt_dir!r} (transformer)",
                                      share=share)

    def encode(self, encoder, prompt, negative, branches):
        if not self.pixel:
            return self.encode_many(encoder, [(prompt, negative)], branches)[0]
        max_len = self.mcfg.model_max_length
        y, n = encode_prompt(encoder, prompt, max_len)
        # Open-Sora's uncond rows: the null caption, with the conditional rows' text mask (or a negative prompt)
        neg, n_neg = encode_prompt(encoder, negative, max_len) if negative else (torch.zeros_like(y), n)
        return {"cond": OpenSoraCond(y=torch.cat([y, neg]), y_lens=torch.tensor([n, n_neg]),
                                     null=torch.tensor([False, not negative]), fps=float(self.cfg.video.fps))}

    def encode_many(self, encoder, texts, branches):
        """T5 loads once for every (prompt, negative prompt) pair, encodes them, and is freed before sampling."""
        if self.pixel:
            return super().encode_many(encoder, texts, branches)
        from transformers import AutoTokenizer, T5EncoderModel

        files, device = encoder.files, encoder.device
        dev, dtype = folders.encoder_place(self.cfg, device)
        max_len = self.mcfg.model_max_length
        v = self.cfg.video
        fps = float(v.fps if v.frames > 1 else IMG_FPS)
        out = []
        with torch.no_grad():
            tokenizer = AutoTokenizer.from_pretrained(files.tokenizer, local_files_only=True)
            t5 = T5EncoderModel.from_pretrained(files.text_encoder, dtype=dtype, local_files_only=True)
            t5 = t5.to(dev).eval().requires_grad_(False)
            for prompt, negative in texts:
                batch = [clean_prompt(prompt)] + ([clean_prompt(negative)] if negative else [])
                tok = tokenizer(batch, max_length=max_len, padding="max_length", truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
                mask = tok["attention_mask"].to(dev)
                feats = t5(input_ids=tok["input_ids"].to(dev), attention_mask=mask).last_hidden_state.float()
                lens = [max(int(m), 1) for m in mask.sum(1)]
                y = feats[:1].to(device)
                neg = feats[1:2].to(device) if negative else torch.zeros_like(y)
                out.append({"cond": OpenSoraCond(y=torch.cat([y, neg]), y_lens=torch.tensor([lens[0], lens[-1]]),
                                                 null=torch.tensor([False, not negative]), fps=fps)})
            del t5  # run once and freed
            folders.free_memory(dev)
        return out

    def decode(self, latents, model=None):
        """Rank 0: [1, 4, F', h, w] normalised latents -> [1, 3, video.frames, 8h, 8w] in [-1, 1] (CPU, float32)."""
        if self.pixel:
            return super().decode(latents, model)
        device = latents.device
        folders.offload_for_decode(self.cfg, model, device)
        vae = load_vae(self.files, self.vae_cfg, device, DTYPES[self.cfg.vae.dtype])
        with torch.no_grad():
            video = vae.decode(latents.to(DTYPES[self.cfg.vae.dtype]), num_frames=self.cfg.video.frames,
                               out_device="cpu")
        del vae
        folders.free_memory(device)
        return video.float().clamp(-1, 1)

    def tile_decoder(self, latents, model, parts):
        """The VAE's chunks of latent frames (each decoded on its own: temporal, then 2D), one per tile."""
        if self.pixel:
            return super().tile_decoder(latents, model, parts)
        from magcache_dist.parallel.vae import ChunkTiles, Finished

        folders.offload_for_decode(self.cfg, model, latents.device)
        vae = load_vae(self.files, self.vae_cfg, latents.device, DTYPES[self.cfg.vae.dtype])
        z, frames = latents.to(DTYPES[self.cfg.vae.dtype]), self.cfg.video.frames
        chunks = ChunkTiles(lambda i: vae.decode_chunk(z, i, frames, out_device="cpu"), vae.num_chunks(z))
        return Finished(chunks, lambda v: v.float().clamp(-1, 1))
