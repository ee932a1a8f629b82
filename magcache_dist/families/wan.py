"""Wan2.1 T2V and I2V from a local checkpoint directory (official or diffusers layout).

Memory plan on one node (every rank runs the same steps; nothing is downloaded):
- build: the DiT only, created on the meta device and materialised directly in ``model.dtype`` on the job device.
- encode: umT5 (and for I2V: CLIP + the VAE encoder) are loaded, run once, and freed before sampling starts
  (``text_encoder.device=cpu`` keeps them off the GPU entirely).
- decode: the VAE decodes frame by frame (causal in time), in overlapping spatial tiles (``vae.tiling``; always
  on more than one rank, where the tiles are dealt over the group: magcache_dist/decode.py); the DiT is moved to
  the CPU first (``vae.offload_dit``) unless it fits beside the decode.

A ``WanFamily`` object lives for one job; ``build`` returns the DiT and the encoders' handle (files + device), and
``decode`` is handed the DiT to offload: nothing is kept on the object between phases.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import math
import os
import re
from dataclasses import dataclass

import torch

from magcache_dist.config import SHIFT, JobConfig, resolve_path
from magcache_dist.errors import InputError
from magcache_dist.families import components, folders
from magcache_dist.families.base import DTYPES, CostFigures, ModelFamily
from magcache_dist.families.common import wan_cost_figures
from models import wan_components
from models.wan import get_config
from models.wan_i2v import I2VCondition, build_wan_model

VAE_STRIDE = (4, 8, 8)  # time, height, width
Z_DIM = 16
LAYOUTS = ("auto", "official", "diffusers")
# Official release file names (Wan-AI/Wan2.1-*): wan/configs/*.py
OFFICIAL_FILES = dict(t5="models_t5_umt5-xxl-enc-bf16.pth", tokenizer="google/umt5-xxl", vae="Wan2.1_VAE.pth",
                      clip="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
DIFFUSERS_DIRS = dict(dit="transformer", t5="text_encoder", tokenizer="tokenizer", vae="vae", clip="image_encoder")


@dataclass(frozen=True)
class WanEncoders:
    """What ``build`` hands to ``encode``: the checkpoint's files and the job's device."""
    files: "WanFiles"
    device: object


@dataclass(frozen=True)
class WanFiles:
    layout: str
    dit: str  # a .safetensors file, or a sharded index json
    t5: str
    tokenizer: str
    vae: str
    clip: str | None  # I2V only


def detect_layout(ckpt_dir: str) -> str:
    if (os.path.isfile(os.path.join(ckpt_dir, "model_index.json"))
            or os.path.isdir(os.path.join(ckpt_dir, "transformer"))):
        return "diffusers"
    return "official"


def _dit_weights(folder: str, root: str) -> str:
    return folders.diffusers_weights(folder, root, "diffusion_pytorch_model*", "DiT weights")


def layout_need(ckpt_dir: str, layout: str, release: str):
    """``need(rel, what, is_dir=False)``: ``ckpt_dir/rel``, or an InputError naming it, the layout and the release
    to copy."""
    def need(rel: str, what: str, is_dir: bool = False) -> str:
        p = os.path.join(ckpt_dir, rel)
        if not (os.path.isdir(p) if is_dir else os.path.isfile(p)):
            raise InputError(f"ckpt_dir={ckpt_dir!r} ({layout} layout): missing {what} '{rel}'; copy the complete "
                             f"{release} release into ckpt_dir (docs/wan_checkpoints.md lists the files of each "
                             f"layout)")
        return p

    return need


def resolve_files(ckpt_dir: str, layout: str, i2v: bool) -> WanFiles:
    """Every file the job needs, or a ValueError naming the first missing one."""
    if layout not in LAYOUTS:
        raise InputError(f"model.layout={layout!r} is unknown; choose one of {LAYOUTS}")
    layout = detect_layout(ckpt_dir) if layout == "auto" else layout

    need = layout_need(ckpt_dir, layout, "Wan2.1")
    if layout == "official":
        return WanFiles(layout, _dit_weights(ckpt_dir, ckpt_dir), need(OFFICIAL_FILES["t5"], "umT5 encoder"),
                        need(OFFICIAL_FILES["tokenizer"], "umT5 tokenizer folder", is_dir=True),
                        need(OFFICIAL_FILES["vae"], "VAE"),
                        need(OFFICIAL_FILES["clip"], "CLIP image encoder") if i2v else None)
    d = DIFFUSERS_DIRS
    return WanFiles(layout, _dit_weights(need(d["dit"], "DiT folder", True), ckpt_dir),
                    need(os.path.join(d["t5"], "config.json"), "umT5 encoder config"),
                    need(d["tokenizer"], "tokenizer folder", is_dir=True),
                    need(os.path.join(d["vae"], "config.json"), "VAE config"),
                    need(os.path.join(d["clip"], "config.json"), "CLIP image encoder config") if i2v else None)


def _dit_fields(c: dict) -> dict:
    """The fields of a DiT config.json (official or diffusers layout) that change the math, in WanConfig's names;
    absent fields are left out."""
    if "num_attention_heads" in c:  # diffusers
        heads, head_dim = c.get("num_attention_heads"), c.get("attention_head_dim")
        got = dict(num_heads=heads, dim=heads * head_dim if heads and head_dim else None,
                   num_layers=c.get("num_layers"),
                   in_dim=c.get("in_channels"), out_dim=c.get("out_channels"), ffn_dim=c.get("ffn_dim"),
                   text_dim=c.get("text_dim"), freq_dim=c.get("freq_dim"), eps=c.get("eps"),
                   cross_attn_norm=c.get("cross_attn_norm"),
                   patch_size=tuple(c["patch_size"]) if isinstance(c.get("patch_size"), list) else None)
        if "image_dim" in c:
            got["image_dim"] = c["image_dim"] or 0
    else:  # official
        got = {k: c.get(k) for k in ("dim", "num_heads", "num_layers", "in_dim", "out_dim", "ffn_dim", "text_dim",
                                     "freq_dim", "eps", "text_len")}
        if c.get("model_type") in ("t2v", "i2v"):
            got["image_dim"] = None if c["model_type"] == "i2v" else 0  # i2v: any CLIP width
    return {k: v for k, v in got.items() if v is not None}


def check_dit_config(files: WanFiles, ckpt_dir: str, model_name: str) -> None:
    """The checkpoint's own config.json (when shipped) must describe the model that model.name builds, in every
    field that changes the math (heads, widths, layers, channels, norms, patch, eps), not only in its shapes:
    a checkpoint with other heads has the same tensor shapes and would load silently and compute garbage."""
    mcfg = get_config(model_name)
    path = os.path.join(os.path.dirname(files.dit), "config.json")
    if not os.path.isfile(path):
        return
    c = folders.read_config(path, ckpt_dir)
    want = dataclasses.asdict(mcfg)
    want["patch_size"] = tuple(mcfg.patch_size)
    diff = {k: (g, want[k]) for k, g in _dit_fields(c).items() if k in want and g != want[k]}
    if "image_dim" in diff and diff["image_dim"][0] is None:  # official i2v: any CLIP width, or none (Wan2.2)
        diff.pop("image_dim")
    if diff:
        raise InputError(f"ckpt_dir={ckpt_dir!r} holds a DiT with "
                         f"{', '.join(f'{k}={g}' for k, (g, _) in diff.items())} "
                         f"but model.name={model_name!r} has {', '.join(f'{k}={w}' for k, (_, w) in diff.items())} "
                         f"({os.path.relpath(path, ckpt_dir)}); set model.name to the checkpoint's model")


def check_components(files: WanFiles, root: str, release: str = "Wan2.1") -> None:
    """Every component the job reads after the DiT (umT5, its tokenizer, the VAE, CLIP for I2V, the scheduler's
    settings), checked from headers and small files now: a cut, empty or pointer file is named before any
    collective, not found while encoding after the DiT has loaded."""
    fix = f"copy the complete {release} release into ckpt_dir (docs/wan_checkpoints.md lists the files of each layout)"
    components.check_tokenizer(files.tokenizer, root, "umT5 tokenizer", fix)
    if files.layout == "official":
        for path, what in ((files.t5, "umT5 encoder"), (files.vae, "VAE"), (files.clip, "CLIP image encoder")):
            if path is not None:
                components.check_weight_file(path, root, what)
        return
    for path, what in ((files.t5, "umT5 encoder"), (files.vae, "VAE"), (files.clip, "CLIP image encoder")):
        if path is not None:
            components.check_pretrained(root, os.path.relpath(os.path.dirname(path), root), what, fix)
    components.check_scheduler(root, ("UniPCMultistepScheduler",))


def check_folder_shift(cfg: JobConfig, files: WanFiles) -> None:
    """A diffusers folder's scheduler/scheduler_config.json names the sigma shift its model was released with (the
    default of sampler.shift: WanFamily.sampler_defaults); it is checked even when the job sets sampler.shift."""
    if files.layout == "diffusers":
        folders.scheduler_shift(resolve_path(cfg.ckpt_dir), "flow_shift", None)


def i2v_geometry(image_hw: tuple[int, int], max_area: int, patch: tuple[int, int, int]) -> tuple[int, int]:
    """Wan I2V: latent (h, w) keeping the image's aspect ratio within ``max_area`` pixels, multiples of the patch."""
    aspect = image_hw[0] / image_hw[1]
    lat_h = round(math.sqrt(max_area * aspect) // VAE_STRIDE[1] // patch[1] * patch[1])
    lat_w = round(math.sqrt(max_area / aspect) // VAE_STRIDE[2] // patch[2] * patch[2])
    return lat_h, lat_w


def load_image(path: str) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning (without ftfy): unescape HTML entities, collapse whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def encode_prompts(t5, tokenizer, texts: list[str], text_len: int) -> list[torch.Tensor]:
    """Like Wan's T5EncoderModel: pad to text_len, encode with the mask, keep the real tokens -> [T'_i, C] each."""
    batch = tokenizer([clean_prompt(t) for t in texts], padding="max_length", truncation=True, max_length=text_len,
                      add_special_tokens=True, return_tensors="pt")
    device = next(t5.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    out = t5(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, text_len, C]
    return [out[i, : int(n)] for i, n in enumerate(mask.sum(dim=1))]


class WanFamily(ModelFamily):
    """Wan2.1 T2V / I2V (model.name decides), weights from ``ckpt_dir``. One instance per job."""

    release = "Wan2.1"  # the release a fix names (copy the complete ... release)

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.mcfg = get_config(self.name)
        self.i2v = self.mcfg.image_dim > 0

    def num_heads(self) -> int:
        return self.mcfg.num_heads

    def sampler_defaults(self) -> dict:
        """A diffusers folder's released sigma shift (scheduler_config.json flow_shift); the official layout has
        none."""
        shift = SHIFT if self.cfg.model.layout == "official" else folders.default_shift(self.cfg, "flow_shift", SHIFT)
        return dict(super().sampler_defaults(), shift=shift)

    @functools.cached_property
    def files(self) -> WanFiles:
        """The checkpoint's files (resolved once per job: validate, build and decode all need them)."""
        root = folders.ckpt_root(self.cfg, self.name, "Wan2.1", "checkpoint folder", "official or diffusers layout")
        return resolve_files(root, self.cfg.model.layout, self.i2v)

    # ---- before any collective -----------------------------------------------------------------------------
    # the VAE the geometry must suit: (time, space) stride, its name and a frame count it takes (Wan2.2 TI2V-5B's
    # VAE compresses 16x in space)
    vae_stride, vae_name, frames_example = VAE_STRIDE, "Wan VAE", 81

    def check_geometry(self) -> None:
        v, p, (st, ss) = self.cfg.video, self.mcfg.patch_size, self.vae_stride[:2]
        if v.frames < 1 or (v.frames - 1) % st:
            raise InputError(f"video.frames={v.frames} must be {st}k+1 for the {self.vae_name} (e.g. "
                             f"{self.frames_example}); use video.frames={max(1, (v.frames - 1) // st * st + 1)}")
        step = ss * p[1]
        for key, val in (("video.height", v.height), ("video.width", v.width)):
            if val < step or val % step:
                raise InputError(f"{key}={val} must be a positive multiple of {step} (VAE stride {ss} x patch {p[1]}), "
                                 f"e.g. {max(step, val // step * step)}")

    def validate(self) -> None:
        cfg = self.cfg
        files = self.files  # ckpt_dir checked first
        check_dit_config(files, cfg.ckpt_dir, self.name)
        check_folder_shift(cfg, files)
        self.check_geometry()
        self.check_image()
        folders.check_encoder_options(cfg)
        folders.check_tiles(cfg)
        check_components(files, resolve_path(cfg.ckpt_dir), self.release)

    def image_size(self) -> tuple[int, int]:
        """(width, height) of the job's ``image``, decoded in full (a file cut after its header is found now): an
        InputError when it is missing or not a readable image."""
        return components.check_image(resolve_path(self.cfg.image), shown=self.cfg.image)

    def check_image(self) -> None:
        """An I2V model needs a readable ``image`` whose aspect ratio fits the pixel area; a T2V model refuses one."""
        cfg, p = self.cfg, self.mcfg.patch_size
        v = cfg.video
        if self.i2v:
            if cfg.image is None:
                raise InputError(f"image is not set; {self.name} is image-to-video: "
                                 f"pass image=/path/to/first_frame.png")
            w, h = self.image_size()
            lat_h, lat_w = i2v_geometry((h, w), v.height * v.width, p)
            if lat_h < p[1] or lat_w < p[2]:
                raise InputError(f"image={cfg.image!r} ({w}x{h}) is too elongated for video.height x video.width = "
                                 f"{v.height}x{v.width} pixels")
        elif cfg.image is not None:
            raise InputError(f"image is set but {self.name} is text-to-video; use an i2v model.name or image=null")

    # ---- geometry --------------------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latents; for I2V from the image's aspect ratio within height x width pixels (the
        dry-run planner, without an image, takes height x width as they are)."""
        v = self.cfg.video
        lat_f = (v.frames - 1) // VAE_STRIDE[0] + 1
        if self.i2v and self.cfg.image is not None:
            from PIL import Image

            with Image.open(resolve_path(self.cfg.image)) as im:
                w, h = im.size
            lat_h, lat_w = i2v_geometry((h, w), v.height * v.width, self.mcfg.patch_size)
        else:
            lat_h, lat_w = v.height // VAE_STRIDE[1], v.width // VAE_STRIDE[2]
        return Z_DIM, lat_f, lat_h, lat_w

    def cost_figures(self) -> CostFigures:
        return wan_cost_figures(self.mcfg)

    def encoder_params(self) -> dict[str, int]:
        if self.name.startswith("tiny-"):
            return {}
        # umT5-XXL's encoder (11.4 GB in bf16) and, for I2V, the open-clip XLM-RoBERTa-L / ViT-H-14 file (1.3 GB)
        out = {"umT5-XXL encoder": 5_680_000_000}
        if self.i2v:
            out["CLIP ViT-H-14"] = 650_000_000
        return out

    def encoder_matmul_params(self) -> dict[str, int]:
        # umT5-XXL: 24 layers x (4 x 4096^2 attention + 3 x 4096 x 10240 gated FFN) = 4.63e9; its 256384 x 4096 token
        # embedding (1.05e9 of the 5.68e9) is a lookup
        return {k: v - 256_384 * 4096 if k == "umT5-XXL encoder" else v for k, v in self.encoder_params().items()}

    def vae_params(self) -> int:
        return 0 if self.name.startswith("tiny-") else 127_000_000  # the Wan2.1 VAE

    def vae_decode_calls_per_tile(self) -> int:
        return self.latent_shape()[1]  # the causal VAE decodes each tile latent frame by latent frame

    def vae_decode_flops_per_pixel(self) -> float:
        # AutoencoderKLWan at its published size, counted by torch's FlopCounterMode on the meta device (2026-12-06:
        # 8.70e6 per pixel of a 9 x 64 x 64 and a 9 x 128 x 128 decode)
        return 0.0 if self.name.startswith("tiny-") else 8.70e6

    # ---- build / encode / noise / decode -------------------------------------------------------------------
    def build(self, device, weights=True):
        with torch.device("meta"):
            model = build_wan_model(self.mcfg).to(dtype=DTYPES[self.cfg.model.dtype])
        if weights:
            self.load_weights(model, device)
        return model.eval().requires_grad_(False), WanEncoders(self.files, device)

    def load_weights(self, model, device, share=None) -> int:
        """Materialise straight in the run dtype on the job device (a 14B DiT never exists in fp32; an FSDP-sharded
        one only as this rank's shards) and stream the checkpoint in, one tensor at a time."""
        return folders.stream_weights(model, device, self.files.dit, f"ckpt_dir={self.cfg.ckpt_dir!r} (DiT)",
                                      share=share)

    def encode(self, encoder: WanEncoders, prompt: str, negative: str, branches) -> dict:
        return self.encode_many(encoder, [(prompt, negative)], branches)[0]

    def encode_many(self, encoder: WanEncoders, texts: list[tuple[str, str]], branches) -> list[dict]:
        """umT5 loads once for all the (prompt, negative) pairs; I2V: the job's image (CLIP features and VAE
        latents) is encoded once and shared by them all."""
        per = 2 if "uncond" in branches else 1
        batches = self._text_contexts(encoder, [list(pair[:per]) for pair in texts])
        if not self.i2v:
            return [dict(zip(["cond", "uncond"], contexts)) for contexts in batches]
        dev, dtype = self._encoder_place(encoder)
        with torch.no_grad():
            clip_fea, y = self._encode_image(encoder.files, dev, dtype, encoder.device)
        return [{b: I2VCondition(c, clip_fea, y) for b, c in zip(["cond", "uncond"], contexts)} for contexts in batches]

    def _encoder_place(self, encoder: WanEncoders):
        return folders.encoder_place(self.cfg, encoder.device)

    def _text_contexts(self, encoder: WanEncoders, batches: list[list[str]]) -> list[list[torch.Tensor]]:
        """umT5 features [1, T'_i, C] of each text on the job device, batch by batch (a video's prompt and negative
        prompt are one batch, as in a single-video job, so a list's videos get the very same features); umT5 is
        loaded once for the call and freed."""
        from transformers import AutoTokenizer

        files, device = encoder.files, encoder.device
        dev, dtype = self._encoder_place(encoder)
        with torch.no_grad():
            tokenizer = AutoTokenizer.from_pretrained(files.tokenizer, local_files_only=True)
            t5 = wan_components.load_umt5(files.t5 if files.layout == "official" else os.path.dirname(files.t5),
                                          files.layout, dtype=dtype, device=dev)
            contexts = [[c[None].to(device) for c in encode_prompts(t5, tokenizer, texts, self.mcfg.text_len)]
                        for texts in batches]
            del t5  # run once and freed
            folders.free_memory(dev)
        return contexts

    def _encode_image(self, files: WanFiles, dev, dtype, device):
        cfg = self.cfg
        image = load_image(resolve_path(cfg.image))  # [1, 3, h0, w0]
        clip = wan_components.load_clip_vision(
            files.clip if files.layout == "official" else os.path.dirname(files.clip), files.layout, dtype=dtype,
            device=dev)
        clip_fea = wan_components.clip_features(clip, image).float().to(device)  # [1, I, image_dim]
        del clip
        folders.free_memory(dev)
        return clip_fea, self._image_latents(files, image, dev, device)

    def _image_latents(self, files: WanFiles, image: torch.Tensor, dev, device) -> torch.Tensor:
        """y = [first-frame mask (4) | normalised VAE latents of the image followed by zero frames (16)]."""
        cfg = self.cfg
        _, lat_f, lat_h, lat_w = self.latent_shape()
        h, w = lat_h * VAE_STRIDE[1], lat_w * VAE_STRIDE[2]
        first = torch.nn.functional.interpolate(image, size=(h, w), mode="bicubic")  # [1, 3, h, w]
        video = torch.cat([first[:, :, None], torch.zeros(1, 3, cfg.video.frames - 1, h, w)], dim=2)
        vae = self._load_vae(files, dev)
        param = next(vae.parameters())
        mu = vae.encode(video.to(device=param.device, dtype=param.dtype)).latent_dist.mode().float()
        mean, std = wan_components.latent_stats(vae)
        latents = (mu - mean.to(mu.device)) / std.to(mu.device)  # [1, 16, F', h', w']
        del vae
        folders.free_memory(dev)
        mask = torch.zeros(1, 4, lat_f, lat_h, lat_w)
        mask[:, :, 0] = 1  # the first latent frame (= the first 4 frames' slot) is the given image
        return torch.cat([mask.to(latents.device), latents], dim=1).to(device)  # [1, 20, F', h', w']

    def _load_vae(self, files: WanFiles, device):
        path = files.vae if files.layout == "official" else os.path.dirname(files.vae)
        return wan_components.load_wan_vae(path, files.layout, dtype=DTYPES[self.cfg.vae.dtype], device=device)

    def _decode_input(self, latents, model, tiled: bool):
        """(the VAE, tiled or not, the latents it decodes: de-normalised, in its dtype, on its device)."""
        cfg, device = self.cfg, latents.device
        folders.offload_for_decode(cfg, model, device)
        vae = self._load_vae(self.files, device)
        if tiled:
            t = cfg.vae
            vae.enable_tiling(tile_sample_min_height=t.tile_height, tile_sample_min_width=t.tile_width,
                              tile_sample_stride_height=t.tile_stride_height,
                              tile_sample_stride_width=t.tile_stride_width)
        mean, std = wan_components.latent_stats(vae)
        param = next(vae.parameters())
        z = latents.float().to(param.device) * std.to(param.device) + mean.to(param.device)
        return vae, z.to(param.dtype)

    def decode(self, latents: torch.Tensor, model=None) -> torch.Tensor:
        """Rank 0: [1, 16, F', H', W'] normalised latents -> [1, 3, F, H, W] in [-1, 1] (CPU, float32), decoded on
        the latents' device."""
        return folders.vae_decode(*self._decode_input(latents, model, self.cfg.vae.tiling), latents.device)

    def tile_decoder(self, latents, model, parts):
        """diffusers' tiled decode of AutoencoderKLWan, tile by tile (vae.tile_*)."""
        from magcache_dist.parallel.vae import Finished, WanTiles

        vae, z = self._decode_input(latents, model, tiled=True)
        return Finished(WanTiles(vae, z), lambda v: v.float().clamp(-1, 1))

    band_decode = True

    def band_decoder(self, latents, model):
        """The whole decode of AutoencoderKLWan in row bands with halo exchange (parallel/vae_bands.py)."""
        from magcache_dist.parallel.vae_bands import BandDecode

        vae, z = self._decode_input(latents, model, tiled=False)
        return BandDecode(vae, z, lambda v: v.float().clamp(-1, 1))
