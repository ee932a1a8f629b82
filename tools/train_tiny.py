"""Train the embedded ``tiny-video`` DiT and its TinyTextEncoder from scratch on the procedural video set.

    python -m tools.train_tiny --threads 2 --compile --work /tmp/tiny_train --out models/weights/tiny-video.safetensors

The DiT works on 2x-downsampled pixels (the fixed autoencoder of models/tiny_ae.py). Flow matching as Wan
trains: x_t = (1 - sigma) x0 + sigma noise, target v = noise - x0, t = 1000 sigma, with
sigma = shift(u) for u ~ uniform(0, 1) (or logit-normal with --sigma-dist), Wan's shift mapping u to
shift*u / (1 + (shift-1) u). The default shift 3 puts a quarter of the draws above sigma 0.9, where sampling
from noise has to lay the video out, and ~7% at sigma 0.2-0.35, where the demo's last steps evaluate it. The caption is
replaced by the empty prompt (an all-zero context) with probability ``--drop`` so classifier-free guidance works.
Seeded and resumable: every batch and noise draw is a function of (seed, step), so ``--resume`` continues from the
last checkpoint in ``--work`` bit for bit. The shipped file holds the EMA weights: DiT keys at the top level and
the text encoder under ``text_encoder.`` (what magcache_dist/families/tiny.py loads).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from models.tiny_ae import PixelAutoencoder
from models.tiny_text import TinyTextEncoder
from models.wan import get_config
from models.wan_i2v import build_wan_model
from tools.tinydata import ProceduralVideos

TEXT_ENCODER_PREFIX = "text_encoder."


def sample_sigmas(batch: int, shift: float, dist: str, g: torch.Generator) -> torch.Tensor:
    """u ~ uniform(0, 1) or logit-normal(0, 1), then Wan's shift: sigma = shift*u / (1 + (shift-1)*u)."""
    u = torch.rand(batch, generator=g) if dist == "uniform" else torch.sigmoid(torch.randn(batch, generator=g))
    return shift * u / (1.0 + (shift - 1.0) * u)


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def export(path: str, model: torch.nn.Module, text: TinyTextEncoder, dtype: torch.dtype) -> int:
    from safetensors.torch import save_file

    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    sd.update({TEXT_ENCODER_PREFIX + k: v.detach().to(dtype).contiguous() for k, v in text.state_dict().items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=dict(model="tiny-video", trainer="tools/train_tiny.py"))
    os.replace(tmp, path)
    return os.path.getsize(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-video")
    ap.add_argument("--steps", type=int, default=10000)  # the shipped weights: the defaults of this parser
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--shift", type=float, default=3.0, help="Wan's sigma shift applied to u")
    ap.add_argument("--stride", type=int, default=2, help="pixel autoencoder stride (models/tiny_ae.py)")
    ap.add_argument("--sigma-dist", default="uniform", choices=["uniform", "logit-normal"], help="law of u")
    ap.add_argument("--drop", type=float, default=0.1, help="probability of the empty caption (CFG)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the DiT's forward (inductor, C++ codegen; ~1.3x faster per step on CPU)")
    ap.add_argument("--work", default="/tmp/tiny_train", help="checkpoints and the resumable state")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--out", default="models/weights/tiny-video.safetensors")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="storage dtype of the shipped file (loading casts back to the model dtype)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = get_config(args.model)
    model = build_wan_model(cfg)
    text = TinyTextEncoder.for_model(args.model)
    ema_model = build_wan_model(cfg)
    ema_text = TinyTextEncoder.for_model(args.model)
    ema_model.load_state_dict(model.state_dict())
    ema_text.load_state_dict(text.state_dict())
    params = list(model.parameters()) + list(text.parameters())
    ema_params = list(ema_model.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    n_params = sum(p.numel() for p in params)
    print(f"model {args.model}: {cfg}\nparameters: DiT {sum(p.numel() for p in model.parameters()):,} + text "
          f"{sum(p.numel() for p in text.parameters()):,} = {n_params:,}", flush=True)

    os.makedirs(args.work, exist_ok=True)
    state_path = os.path.join(args.work, "state.pt")
    start = 0
    if args.resume and os.path.isfile(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"]), text.load_state_dict(st["text"])
        ema_model.load_state_dict(st["ema_model"]), ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"])
        start = int(st["step"])
        print(f"resumed at step {start}", flush=True)

    forward = torch.compile(model) if args.compile else model  # shares the parameters: state_dict is unchanged
    data = ProceduralVideos(seed=args.seed)
    ae = PixelAutoencoder(args.stride)
    t0, seen_t0, loss_avg = time.time(), start, None
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        video, captions = data.batch(step * args.batch, args.batch)  # [B, 3, F, H, W] in [-1, 1]
        x0 = ae.encode(video)  # [B, 3, F, H/s, W/s]
        noise = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(args.batch, args.shift, args.sigma_dist, g)
        keep = (torch.rand(args.batch, generator=g) >= args.drop).float()  # 0 -> empty prompt
        s = sigma[:, None, None, None, None]
        xt = (1.0 - s) * x0 + s * noise
        context = text.encode(captions) * keep[:, None, None]  # the empty prompt's context is all zero
        pred = forward(xt, sigma * 1000.0, context)
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        done = step + 1
        if done % 50 == 0 or done == args.steps:
            rate = (time.time() - t0) / (done - seen_t0)
            print(f"step {done}/{args.steps} loss {loss.item():.4f} (ema {loss_avg:.4f}) lr "
                  f"{opt.param_groups[0]['lr']:.2e} {rate:.3f} s/step eta {rate * (args.steps - done) / 60:.1f} min",
                  flush=True)
        if done % args.ckpt_every == 0 or done == args.steps:
            st = dict(model=model.state_dict(), text=text.state_dict(), ema_model=ema_model.state_dict(),
                      ema_text=ema_text.state_dict(), opt=opt.state_dict(), step=done)
            torch.save(st, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
            export(os.path.join(args.work, f"tiny-video-{done:06d}.safetensors"), ema_model, ema_text,
                   torch.float32)
    size = export(args.out, ema_model, ema_text, getattr(torch, args.dtype))
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {args.dtype}); training wall time "
          f"{(time.time() - t0) / 60:.1f} min for steps {start}..{args.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
