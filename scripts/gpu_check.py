"""The prepared GPU check (issue 19, item 3): one command that proves the GPU path in minutes on one H100/H200.

    bash scripts/gpu_check.sh                  # = python -m scripts.gpu_check --out outputs/gpu_check.json

Steps, each recorded in one JSON (a failing step records its error and the next one runs):
  env       torch / CUDA / device, which SDPA backends are enabled
  sdpa      bf16 attention at 480P-class size through the flash and the memory-efficient kernels, and which kernel
            the default call launches (profiler kernel names)
  load      a random Wan2.1-T2V-1.3B checkpoint written here (tools/make_wan_checkpoint.py), streamed onto the GPU in
            bf16 (models/loading.py): load time and peak device memory; then the shared read (parallel.shared_load,
            magcache_dist/parallel/load_share.py) on 2 simulated ranks of this GPU: each reads a row block, the
            blocks are gathered on the GPU, both copies equal the whole read bit for bit (bytes read per rank)
  sample    81 frames x 480 x 832 (32,760 tokens), bf16, cache off vs MagCache (the published 1.3B setting, joint
            branches): wall ratio against call ratio; peak device memory against the dry-run planner (h100/h200)
  vae       the Wan VAE (diffusers' AutoencoderKLWan at its published size, random weights) decoding those latents,
            whole and tiled: time and peak memory
  compile   model.compile's compiled blocks (magcache_dist.compile) vs eager on the loaded model, one model call at
            the sample step's size: first call (the compilation), best of 3 after, a call at another timestep
            compiles nothing; |compiled - eager| against the bf16 call's own error (|eager bf16 - eager fp32|,
            bound 1.5x: the precision policy's per-call bound)
  ring      ring attention on the fused kernel (magcache_dist.parallel.attention: flash / memory-efficient SDPA per
            block, fp32 merge) vs Ulysses, 2 simulated ranks (threads) on this GPU, bf16, the sample step's
            sequence: |ring - fp32 attention| <= 2 x |single kernel - fp32 attention| (the bound of
            tests/sim/test_ring_fused_precision.py), Ulysses equal to the single kernel bit for bit, and the time
            per op of each, and of ring on the fp32 math path it replaced
  ti2v      Wan2.2 TI2V-5B at real size (random bf16 weights), 17 x 352 x 640, 20 steps: off vs MagCache (the
            release's TI2V array), then the 48-channel Wan2.2 VAE decoding the latents
  switch    Wan2.2 A14B's expert trade without FSDP (families/expert_swap.py: pinned host memory, a side stream)
            on 8 of the 40 blocks of a real 14B expert at the 480P token count: the prefetched trade (during the
            last high-noise call), the streamed one (at the low-noise blocks) and the synchronous one, their
            exposed time beside the calls' compute, outputs equal to the untraded ones, extrapolated to 40 blocks
  decode    the decode dealt over ranks (magcache_dist/parallel/vae.py) on a 720P-class video (9 x 720 x 1280, the
            Wan VAE at its published size, random weights): each tile decoded and timed once, rank 0's blend, the
            result against diffusers' own tiled decode (max abs difference), the device peak of one tile against the
            tiled decode's, and the decode time on 1, 2 and 8 ranks as decode_split deals the measured tiles (one
            GPU: no communication counted; a machine with 2 GPUs is noted, not used). Then the whole decode in row
            bands with halo exchange (magcache_dist/parallel/vae_bands.py) on 2 and 8 simulated ranks of this GPU:
            rank 0's video against diffusers' whole decode, and rank 0's band alone (its neighbours' rows replayed):
            time and device peak against the whole decode's (``bands``)
  xfuser    xfuser imports, and one forward of the tiny DiT through parallel.backend=xfuser (a 1-rank NCCL group)
            equals the native forward
  profile   the planner's device profile measured here (magcache_dist.planner.measure: GEMM and SDPA FLOP/s per
            dtype at the 1.3B DiT's shapes, copy bandwidth, op overhead) against the shipped profile of this GPU
            (h100 / h200: datasheet peak x planning efficiency); the measured one is written beside the JSON
            (gpu_profile.json: pass it as planner.device=/path/gpu_profile.json)

Without CUDA it prints "skipped: no CUDA" and exits 0. ``--small --allow-cpu`` runs every step at toy size on the
CPU (tests/unit/test_gpu_check.py keeps the script from rotting). Budget: well under 10 minutes on one H100 (the
compile and ring steps are unverified on a GPU: written without one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Check:
    def __init__(self, device: torch.device, small: bool):
        self.device, self.small, self.out = device, small, {}

    def step(self, name, fn):
        t = time.perf_counter()
        try:
            self.out[name] = dict(ok=True, **fn())
        except Exception as e:  # noqa: BLE001 - recorded, and the next step runs
            self.out[name] = dict(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        self.out[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"[gpu_check] {name}: {'ok' if self.out[name]['ok'] else self.out[name]['error']} "
              f"({self.out[name]['seconds']} s)", flush=True)

    # ---- helpers ---------------------------------------------------------------------------------------------
    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    # ---- steps -----------------------------------------------------------------------------------------------
    def env(self):
        d = dict(torch=torch.__version__, cuda=torch.version.cuda, device=str(self.device))
        if self.device.type == "cuda":
            p = torch.cuda.get_device_properties(self.device)
            d.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 1e9, 1),
                     flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                     mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
        return d

    def sdpa(self):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        n, length, dh = (2, 256, 64) if self.small else (12, 32_760, 128)
        q, k, v = (torch.randn(1, n, length, dh, device=self.device, dtype=torch.bfloat16) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v)
        out = {}
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    self.sync()
                    t = time.perf_counter()
                    o = F.scaled_dot_product_attention(q, k, v)
                    self.sync()
                out[name] = dict(ok=True, seconds=time.perf_counter() - t,
                                 max_abs_diff_vs_default=float((o - ref).abs().max()))
            except RuntimeError as e:
                out[name] = dict(ok=False, error=str(e).splitlines()[0])
        with torch.profiler.profile() as prof:
            F.scaled_dot_product_attention(q, k, v)
            self.sync()
        names = sorted({e.name for e in prof.events() if "attention" in e.name.lower() or "fmha" in e.name.lower()
                        or "flash" in e.name.lower()})
        out["default_kernels"] = names
        out["default_uses_fused_kernel"] = any("flash" in n.lower() or "efficient" in n.lower() or "fmha" in n.lower()
                                               for n in names)
        return out

    def load(self):
        from models.loading import load_streaming
        from models.wan import get_config
        from models.wan_i2v import build_wan_model
        from tools.make_wan_checkpoint import make

        self.model_name = "tiny-wan-t2v" if self.small else "wan2.1-t2v-1.3b"
        self.tmp = tempfile.mkdtemp(prefix="gpu_check_")
        t = time.perf_counter()
        path = make(self.tmp, self.model_name, "official", "bfloat16")
        write_s = time.perf_counter() - t
        self.reset_peak()
        t = time.perf_counter()
        with torch.device("meta"):
            model = build_wan_model(get_config(self.model_name))
        model = model.to(dtype=torch.bfloat16).to_empty(device=self.device)
        load_streaming(model, path, "gpu_check")
        self.sync()
        self.model = model.eval().requires_grad_(False)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        out = dict(model=self.model_name, write_checkpoint_s=write_s, load_s=time.perf_counter() - t,
                   weights_bytes=weights, peak_device_bytes=self.peak())
        out["shared"] = self.shared_load(path, model)
        return out

    def shared_load(self, path: str, whole) -> dict:
        from magcache_dist.parallel.load_share import RowShare
        from magcache_dist.parallel.threads import run_on_comms
        from models.loading import load_streaming
        from models.wan import get_config
        from models.wan_i2v import build_wan_model

        ref, size = whole.state_dict(), os.path.getsize(path)

        def rank(comm):
            with torch.device("meta"):
                m = build_wan_model(get_config(self.model_name))
            m = m.to(dtype=torch.bfloat16).to_empty(device=self.device)
            t = time.perf_counter()
            read = load_streaming(m, path, "gpu_check", share=RowShare(comm, self.device))
            self.sync()
            load_s = time.perf_counter() - t
            equal = all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
            del m
            return dict(read_bytes=read, load_s=load_s, equal=equal)

        ranks = run_on_comms(rank, 2, timeout=600)
        return dict(ranks=ranks, file_bytes=size, equal=all(r["equal"] for r in ranks),
                    read_fraction=[r["read_bytes"] / size for r in ranks])

    def sample(self):
        from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache
        from magcache_dist.config import load_config
        from magcache_dist.planner import plan_job
        from magcache_dist.sampling import SamplerConfig, sample

        frames, h, w, steps = (5, 32, 48, 6) if self.small else (81, 480, 832, 30)
        cfg = self.model.cfg
        latent = (cfg.in_dim, (frames - 1) // 4 + 1, h // 8, w // 8)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(1, *latent, generator=g).to(self.device)
        texts = {b: torch.randn(1, 20, cfg.text_dim, generator=g).to(self.device, torch.bfloat16)
                 for b in ("cond", "uncond")}
        scfg = SamplerConfig(num_steps=steps, shift=5.0, guidance=5.0)
        sample(self.model, noise, texts, SamplerConfig(num_steps=2), NoCache())  # warm-up: kernels, allocator
        res = {}
        for name, policy in (("off", NoCache()), ("magcache", build_magcache(
                "wan2.1-t2v-1.3b", None, MagCacheConfig(0.12, 2, 0.2), steps, scfg.branches, branch_sync="joint"))):
            self.reset_peak()
            self.sync()
            t = time.perf_counter()
            r = sample(self.model, noise, texts, scfg, policy)
            self.sync()
            res[name] = dict(wall_s=time.perf_counter() - t, computed=sum(d["compute"] for d in r.decisions),
                             calls=len(r.decisions), peak_device_bytes=self.peak(), timings=r.timings.as_dict())
            self.latents = r.latents
        res["wall_ratio"] = res["magcache"]["wall_s"] / res["off"]["wall_s"]
        res["call_ratio"] = res["magcache"]["computed"] / res["off"]["computed"]
        if not self.small:
            device = "h200" if "H200" in torch.cuda.get_device_name(self.device) else "h100"
            plan = plan_job(load_config(None, [f"model.name={self.model_name}", "model.dtype=bfloat16",
                                               f"video.frames={frames}", f"video.height={h}", f"video.width={w}",
                                               f"sampler.num_steps={steps}", "cache.magcache.preset=wan2.1-t2v-1.3b",
                                               f"planner.device={device}"]))
            r = plan["per_rank"]
            res["planner"] = dict(device=device, memory_bytes=r["memory_bytes"]["total"],
                                  sampling_s=r["time_s"]["sampling"],
                                  measured_over_planned_memory=res["magcache"]["peak_device_bytes"]
                                  / r["memory_bytes"]["total"],
                                  measured_over_planned_time=res["magcache"]["wall_s"] / r["time_s"]["sampling"])
        return res

    def vae(self):
        from diffusers import AutoencoderKLWan

        kw = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1) if self.small else {}
        vae = AutoencoderKLWan(**kw).to(self.device, torch.float32).eval().requires_grad_(False)
        out = {}
        self.model.to("cpu")  # as vae.offload_dit does before rank 0 decodes
        for tiled in (False, True):
            if tiled:
                vae.enable_tiling(tile_sample_min_height=256, tile_sample_min_width=256,
                                  tile_sample_stride_height=192, tile_sample_stride_width=192)
            self.reset_peak()
            self.sync()
            t = time.perf_counter()
            try:
                with torch.no_grad():
                    video = vae.decode(self.latents.to(self.device, torch.float32)).sample
                self.sync()
                out["tiled" if tiled else "whole"] = dict(seconds=time.perf_counter() - t, shape=list(video.shape),
                                                          peak_device_bytes=self.peak())
            except torch.OutOfMemoryError as e:
                out["tiled" if tiled else "whole"] = dict(error=f"out of memory: {str(e).splitlines()[0]}")
        self.model.to(self.device)
        return out

    def compile(self):
        import copy

        import torch._dynamo
        from torch._dynamo.utils import counters

        from magcache_dist.compile import compile_blocks, compile_report

        frames, h, w = (5, 32, 48) if self.small else (81, 480, 832)
        cfg = self.model.cfg
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, cfg.in_dim, (frames - 1) // 4 + 1, h // 8, w // 8, generator=g).to(self.device)
        text = torch.randn(1, 20, cfg.text_dim, generator=g).to(self.device, torch.bfloat16)

        def call(model, t, cond):
            with torch.no_grad():
                tokens, ctx = model.embed(x, torch.tensor([t], device=self.device), cond)
                return model.forward_head(model.forward_blocks(tokens, ctx), ctx).float()

        def timed(fn, repeats):
            best = out = None
            for _ in range(repeats):
                self.sync()
                t = time.perf_counter()
                out = fn()
                self.sync()
                best = min(best or float("inf"), time.perf_counter() - t)
            return best, out

        eager = self.model
        with torch.no_grad():
            cond = eager.prepare_condition(text)
        eager_s, ref = timed(lambda: call(eager, 700.0, cond), 3)
        ref32 = copy.deepcopy(eager).float()  # the call's own bf16 error: against the same call in fp32
        with torch.no_grad():
            out32 = call(ref32, 700.0, ref32.prepare_condition(text.float()))
        del ref32
        model = eager  # compiled in place (the later steps do not use the model)
        torch._dynamo.reset()
        n = compile_blocks(model)
        f0 = counters["frames"]["total"]
        first_s, _ = timed(lambda: call(model, 700.0, cond), 1)
        f1 = counters["frames"]["total"]
        comp_s, out = timed(lambda: call(model, 700.0, cond), 3)
        call(model, 300.0, cond)  # another timestep: the modulation tensor changes, nothing recompiles
        self.sync()
        f2 = counters["frames"]["total"]
        diff, gap = float((out - ref).abs().max()), float((ref - out32).abs().max())
        return dict(blocks=n, report=compile_report(model), eager_s=eager_s, compiled_first_call_s=first_s,
                    compiled_s=comp_s, speedup=eager_s / comp_s, frames_compiled_first_call=f1 - f0,
                    frames_compiled_later=f2 - f1, max_abs_diff_vs_eager=diff, bf16_vs_fp32_gap=gap,
                    within_bound=diff <= 1.5 * gap, no_recompile=f2 == f1)

    def ring(self):
        import torch.nn.functional as F

        from magcache_dist.parallel import ParallelDims, build_thread_contexts
        from magcache_dist.parallel.apply import build_sp_attention
        from magcache_dist.parallel.attention import RingAttention, cpu_block_kernel, math_block_kernel
        from magcache_dist.parallel.threads import run_threads
        from models.attention import sdpa

        n, length, dh = (4, 250, 16) if self.small else (12, 32_760, 128)
        g = torch.Generator().manual_seed(2)
        q, k, v = (torch.randn(1, length, n, dh, generator=g).to(self.device, torch.bfloat16) for _ in range(3))
        lens = torch.tensor([length], device=self.device)
        # the path that runs on this device: CUDA's fused kernels; on a CPU (--allow-cpu) the CPU's fused kernel
        # stands in for them, so the toy run goes through the same fused-block code
        fused = None if self.device.type == "cuda" else cpu_block_kernel

        def sharded(dims, kernel, repeats):
            def one(par):
                chunk = -(-length // par.sp.size)
                lo = par.sp.rank * chunk
                shards = [F.pad(x, (0, 0, 0, 0, 0, chunk * par.sp.size - length))[:, lo:lo + chunk] for x in (q, k, v)]
                op = build_sp_attention(par)
                if isinstance(op, RingAttention):
                    op.block_kernel = kernel
                best = out = None
                for _ in range(repeats):
                    par.sp.all_reduce(torch.zeros(1, device=self.device))  # start together
                    self.sync()
                    t = time.perf_counter()
                    out = op(*shards, lens)
                    self.sync()
                    best = min(best or float("inf"), time.perf_counter() - t)
                gathered = torch.cat(par.sp.all_gather(out.contiguous()), dim=1)[:, :length]
                return best, gathered
            return run_threads(one, build_thread_contexts(dims), timeout=300.0)[0]

        self.sync()
        t = time.perf_counter()
        local = sdpa(q, k, v, None)
        self.sync()
        local_s = time.perf_counter() - t
        ref = sdpa(q.float(), k.float(), v.float(), None)  # fp32 statistics and accumulation, fp32 output
        uly_s, uly = sharded(ParallelDims(2, 1), None, 3)
        ring_s, ring = sharded(ParallelDims(1, 2), fused, 3)
        math_s, math_out = sharded(ParallelDims(1, 2), lambda qh, kh, vh: math_block_kernel(qh, kh, vh), 1)
        err = lambda o: float((o.float() - ref).abs().max())  # noqa: E731
        return dict(tokens=length, heads=n, head_dim=dh, single_kernel_s=local_s, ulysses2_s=uly_s,
                    ring2_fused_s=ring_s, ring2_math_s=math_s, ring_fused_over_ulysses=ring_s / uly_s,
                    ring_math_over_fused=math_s / ring_s, ulysses_equals_single_kernel=torch.equal(uly, local),
                    error_single_kernel=err(local), error_ring_fused=err(ring), error_ring_math=err(math_out),
                    within_bound=err(ring) <= 2 * err(local))
    def ti2v(self):
        """Wan2.2 TI2V-5B at its real size (random bf16 weights) at a small geometry: sampling off vs MagCache (the
        release's TI2V array with Wan2.1's rule, joint branches), then the Wan2.2 VAE (48 channels, random weights)
        decoding the latents."""
        from diffusers import AutoencoderKLWan

        from magcache_dist.cache import MagCacheConfig, NoCache, build_magcache
        from magcache_dist.sampling import SamplerConfig, sample
        from models.wan import get_config
        from models.wan_i2v import build_wan_model

        name = "tiny-wan22-ti2v" if self.small else "wan2.2-ti2v-5b"
        frames, h, w, steps = (5, 64, 64, 6) if self.small else (17, 352, 640, 20)
        with torch.device("meta"):
            model = build_wan_model(get_config(name)).to(dtype=torch.bfloat16)
        model = model.to_empty(device=self.device)
        g = torch.Generator(device=self.device).manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=g)
        model = model.eval().requires_grad_(False)
        cfg = model.cfg
        latent = (48, (frames - 1) // 4 + 1, h // 16, w // 16)
        gc = torch.Generator().manual_seed(0)
        noise = torch.randn(1, *latent, generator=gc).to(self.device)
        texts = {b: torch.randn(1, 20, cfg.text_dim, generator=gc).to(self.device, torch.bfloat16)
                 for b in ("cond", "uncond")}
        scfg = SamplerConfig(num_steps=steps, shift=5.0, guidance=5.0)
        sample(model, noise, texts, SamplerConfig(num_steps=2), NoCache())  # warm-up
        out = dict(model=name, video=[frames, h, w], latent=list(latent), steps=steps)
        for key, policy in (("off", NoCache()), ("magcache", build_magcache(
                "wan2.2-ti2v-5b-t2v", None, MagCacheConfig(0.06, 2, 0.2), steps, scfg.branches, branch_sync="joint"))):
            self.reset_peak()
            self.sync()
            t = time.perf_counter()
            r = sample(model, noise, texts, scfg, policy)
            self.sync()
            out[key] = dict(wall_s=time.perf_counter() - t, computed=sum(d["compute"] for d in r.decisions),
                            calls=len(r.decisions), peak_device_bytes=self.peak())
        del model
        kw = dict(base_dim=8, decoder_base_dim=12, num_res_blocks=1) if self.small else \
            dict(base_dim=160, decoder_base_dim=256)
        vae = AutoencoderKLWan(z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                               scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48, **kw)
        vae = vae.to(self.device, torch.float32).eval().requires_grad_(False)
        self.reset_peak()
        self.sync()
        t = time.perf_counter()
        with torch.no_grad():
            video = vae.decode(r.latents.to(self.device, torch.float32)).sample
        self.sync()
        out["vae_decode"] = dict(seconds=time.perf_counter() - t, shape=list(video.shape),
                                 params=sum(p.numel() for p in vae.parameters()), peak_device_bytes=self.peak())
        return out

    def switch(self):
        """Wan2.2 A14B's expert trade without FSDP on a GPU that holds one expert (families/wan22.py PlacedExperts,
        families/expert_swap.py: pinned host buffers, a side stream, block slots traded in place), on the first
        ``layers`` blocks of the real 14B expert (bf16), at the 480P sample step's token count: each expert's
        block stack alone; the prefetched trade (the high-noise call trading each block after it ran, then the
        low-noise call) against the two calls without a trade; the streamed trade (started when the low-noise
        call reaches its blocks, which wait one by one) against that call alone (the low-noise embed timed apart); the
        synchronous trade (the host waits); the low-noise output after each trade equal to the one without; the
        peak device memory against one expert's blocks. Extrapolated to 40 blocks (``*_full_s``) by blocks."""
        from magcache_dist.families.wan22 import PlacedExperts
        from models.wan import get_config
        from models.wan_i2v import build_wan_model

        name, layers, latent = ("tiny-wan22-t2v", 2, (2, 4, 6)) if self.small else ("wan2.2-t2v-a14b", 8, (21, 60, 104))
        cfg = get_config(name, num_layers=layers)
        experts = []
        for i, where in enumerate((self.device, "cpu")):  # random weights made on the device (fast), then placed
            with torch.device("meta"):
                m = build_wan_model(cfg).to(dtype=torch.bfloat16)
            m = m.to_empty(device=self.device)
            g = torch.Generator(device=self.device).manual_seed(i)
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, device=self.device, dtype=torch.float32) * 0.02)
            experts.append(m.to(where).eval().requires_grad_(False))
        model = PlacedExperts(*experts, boundary_t=875.0, device=self.device, offload_to="cpu")
        nbytes = sum(p.numel() * p.element_size() for b in experts[0].blocks for p in b.parameters())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, *latent, generator=gen).to(self.device)
        text = torch.randn(1, min(64, cfg.text_len), cfg.text_dim, generator=gen).to(self.device, torch.bfloat16)
        hi, lo = (torch.full((1,), v, device=self.device) for v in (900.0, 800.0))
        model.begin_generation(torch.tensor([900.0, 800.0]), 0, ["cond"])  # step 0 the last high-noise step

        def timed(fn):
            self.sync()
            t = time.perf_counter()
            r = fn()
            self.sync()
            return r, time.perf_counter() - t

        with torch.no_grad():
            tok_h, ctx_h = model.embed(x, hi, text)
            timed(lambda: model.forward_blocks(tok_h, ctx_h))  # warm-up
            _, high_s = timed(lambda: model.forward_blocks(tok_h, ctx_h))
            self.reset_peak()

            def prefetched():
                model.before_blocks(0, "cond")  # armed: each high-noise block traded after it has run
                model.forward_blocks(tok_h, ctx_h)
                tok, ctx = model.embed(x, lo, text)
                return model.forward_blocks(tok, ctx), tok, ctx
            (out_pre, tok_l, ctx_l), pre_s = timed(prefetched)
            peak = self.peak()
            _, embed_s = timed(lambda: model.embed(x, lo, text))  # the low-noise embed alone (resident)
            ref, low_s = timed(lambda: model.forward_blocks(tok_l, ctx_l))

            model.prefetch = False
            _, sync_s = timed(lambda: model.place("high"))  # the synchronous trade: the host waits
            model.prefetch = True

            def streamed():  # every slot traded as the low-noise call reaches its blocks, which wait one by one
                tok, ctx = model.embed(x, lo, text)
                return model.forward_blocks(tok, ctx)
            out_str, str_s = timed(streamed)
            model.prefetch = False
            _, sync_back_s = timed(lambda: model.place("high"))
            model.place("low")
            out_sync = model.forward_blocks(tok_l, ctx_l)
        full = get_config(name).num_layers / layers
        tokens = tok_h.shape[1]
        return dict(model=name, layers=layers, tokens=tokens, block_bytes=nbytes // layers, blocks_bytes=nbytes,
                    high_blocks_s=high_s, low_blocks_s=low_s, low_embed_s=embed_s,
                    prefetched=dict(seconds=pre_s, exposed_s=pre_s - high_s - embed_s - low_s,
                                    exposed_full_s=(pre_s - high_s - embed_s - low_s) * full),
                    streamed=dict(seconds=str_s, exposed_s=str_s - embed_s - low_s,
                                  exposed_full_s=(str_s - embed_s - low_s) * full),
                    synchronous=dict(seconds=sync_s, back_s=sync_back_s, full_s=sync_s * full,
                                     gbytes_per_s=2 * nbytes / sync_s / 1e9),
                    outputs_equal=dict(prefetched=bool(torch.equal(out_pre, ref)),
                                       streamed=bool(torch.equal(out_str, ref)),
                                       synchronous=bool(torch.equal(out_sync, ref))),
                    peak_device_bytes=peak, slots=model.swap.resident_blocks(),
                    trades=[dict(m) for m in model.moves])

    def decode(self):
        from diffusers import AutoencoderKLWan

        from magcache_dist.parallel.vae import WanTiles

        kw = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1) if self.small else {}
        vae = AutoencoderKLWan(**kw).to(self.device, torch.float32).eval().requires_grad_(False)
        tile, stride = (32, 24) if self.small else (256, 192)
        vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile, tile_sample_stride_height=stride,
                          tile_sample_stride_width=stride)
        shape = (1, 16, 2, 7, 9) if self.small else (1, 16, 3, 90, 160)  # 720P: 9 frames x 720 x 1280
        z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to("cpu")  # as vae.offload_dit does
        try:
            with torch.no_grad():
                self.reset_peak()
                self.sync()
                t = time.perf_counter()
                ref = vae.decode(z).sample.cpu()
                self.sync()
                ref_s, ref_peak = time.perf_counter() - t, self.peak()
                td, outs, times = WanTiles(vae, z), [], []
                self.reset_peak()
                for u in td.units:
                    self.sync()
                    t = time.perf_counter()
                    outs.append(td.run(u).cpu())
                    self.sync()
                    times.append(time.perf_counter() - t)
                tile_peak = self.peak()
                t = time.perf_counter()
                video = td.assemble(outs)
                blend_s = time.perf_counter() - t
            max_diff, video_shape = float((video - ref).abs().max()), list(video.shape)
            del ref, video, outs
            bands = self._bands(vae, z, (2, 3) if self.small else (2, 8))
        finally:
            if model is not None:
                model.to(self.device)
        per_rank = {n: max(sum(times[r::n]) for r in range(n)) + blend_s for n in (1, 2, 8)}
        return dict(video=video_shape, tiles=len(td.units), diffusers_tiled_s=ref_s,
                    diffusers_tiled_peak_device_bytes=ref_peak, one_tile_peak_device_bytes=tile_peak,
                    blend_s=blend_s, max_abs_diff=max_diff, decode_s_on_ranks=per_rank,
                    eight_over_one=per_rank[8] / per_rank[1], gpus_here=torch.cuda.device_count(), bands=bands)

    def _bands(self, vae, z, sizes) -> dict:
        """The whole decode in row bands with halo exchange (magcache_dist/parallel/vae_bands.py, vae.split=auto for
        the Wan VAEs) on N simulated ranks of this device: the N bands together (threads, ThreadComm), rank 0's video
        against diffusers' whole decode; then rank 0's band (the tallest) alone, replaying what its neighbours sent
        it: its time and device peak, as one rank of N GPUs would see them (the link's time not counted)."""
        import copy

        from magcache_dist.parallel.threads import run_on_comms
        from magcache_dist.parallel.vae_bands import BandDecode, band_rows, decode_band

        vae.use_tiling = False
        weights = sum(p.numel() * p.element_size() for p in vae.parameters())
        self.reset_peak()
        self.sync()
        t = time.perf_counter()
        with torch.no_grad():
            ref = vae.decode(z).sample.cpu()
        self.sync()
        out = dict(whole_s=time.perf_counter() - t, whole_peak_device_bytes=self.peak(), vae_bytes=weights, ranks={})
        for n in sizes:
            log = []

            def body(comm, log=log):
                rank0 = comm.rank == 0
                return BandDecode(vae if rank0 else copy.deepcopy(vae), z).run(_Recording(comm, log) if rank0 else comm)

            res = run_on_comms(body, n, timeout=900)
            diff = float((res[0] - ref).abs().max())
            del res
            self.reset_peak()
            self.sync()
            t = time.perf_counter()
            band = decode_band(vae, z, _Replay(n, log, self.device))
            self.sync()
            s, peak = time.perf_counter() - t, self.peak()
            whole_peak = out["whole_peak_device_bytes"]
            out["ranks"][n] = dict(
                max_abs_diff=diff, band_latent_rows=[b - a for a, b in band_rows(z.shape[3], n)], rank0_band_s=s,
                rank0_band_peak_device_bytes=peak, band_over_whole_s=s / out["whole_s"],
                activations_over_whole=(peak - weights) / (whole_peak - weights) if peak and whole_peak else None,
                band_shape=list(band.shape))
            del band, log
        return out

    def xfuser(self):
        try:
            import xfuser  # noqa: F401
        except Exception as e:  # noqa: BLE001 - not installed, or cannot import here
            return dict(imported=False, error=f"{type(e).__name__}: {e}")
        import torch.distributed as dist

        from magcache_dist.parallel import ParallelDims, apply_sequence_parallel, build_dist_context
        from magcache_dist.random_weights import tiny_model

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        if not dist.is_initialized():
            dist.init_process_group("nccl", rank=0, world_size=1)
        par = build_dist_context(ParallelDims(1, 1), "xfuser")
        ref = tiny_model(0).to(self.device)
        usp = apply_sequence_parallel(tiny_model(0).to(self.device), par)
        x, t, c = torch.randn(1, 3, 4, 16, 16, device=self.device), torch.tensor([500.0], device=self.device), \
            torch.randn(1, 6, 32, device=self.device)
        with torch.no_grad():
            diff = float((ref(x, t, c) - usp(x, t, c)).abs().max())
        return dict(imported=True, version=getattr(xfuser, "__version__", "?"), max_abs_diff_vs_native=diff)


    def profile(self):
        from magcache_dist.planner import measure
        from magcache_dist.planner.profiles import load_profile

        gpu = self.device.type == "cuda"
        dtypes = ["float32", "bfloat16", "float16"] if gpu else ["float32"]
        tokens, dim, ffn = (64, 64, 128) if self.small else (4096, 1536, 8960)
        got = measure.measure(str(self.device), dtypes, tokens, dim, ffn, threads=1,  # --small: a 16 MB read
                              read_mb=16 if self.small else 1024, vae=not self.small)
        name = torch.cuda.get_device_name(self.device).lower() if gpu else "cpu"
        shipped = "h200" if "h200" in name else "h100" if "h100" in name else None
        out = dict(measured=got, compared_with=shipped)
        if shipped:
            ref = load_profile(shipped)
            out["measured_over_planned"] = {
                d: dict(gemm=got["peak_flops"][d] / (ref.peak(d) * ref.efficiency("gemm", d)),
                        attention=got["peak_flops"][d] * got["attention_efficiency"][d]
                        / (ref.peak(d) * ref.efficiency("attention", d))) for d in dtypes if d in ref.peak_flops}
            out["bandwidth_measured_over_planned"] = got["memory_bandwidth"] / ref.memory_bandwidth
        h100 = load_profile("h100")  # one GPU measures no link: the shipped node's NVLink figures stand in
        self.profile_json = dict(name="gpu-measured", description=f"measured by scripts/gpu_check.py on {name}",
                                 **got, link_bandwidth=h100.link_bandwidth, link_efficiency=h100.link_efficiency,
                                 link_latency_s=h100.link_latency_s,
                                 source="magcache_dist.planner.measure (link figures: the h100 profile's)")
        return out


class _Recording:
    """A rank's Comm that keeps what it receives (on the host), for ``_Replay``."""

    def __init__(self, comm, log: list):
        self.comm, self.log, self.rank, self.size = comm, log, comm.rank, comm.size

    def exchange_edges(self, top, bottom):
        got = self.comm.exchange_edges(top, bottom)
        self.log.append(tuple(None if g is None else g.cpu() for g in got))
        return got

    def all_gather(self, t):
        got = self.comm.all_gather(t)
        self.log.append([g.cpu() for g in got])
        return got

    def gather_to(self, obj, dst=0):
        return self.comm.gather_to(obj, dst)


class _Replay:
    """Rank 0 of ``size`` alone: its neighbours' halo rows and keys/values as ``_Recording`` kept them."""

    def __init__(self, size: int, log: list, device):
        self.rank, self.size, self.log, self.device = 0, size, list(log), device

    def exchange_edges(self, top, bottom):
        return tuple(None if g is None else g.to(self.device) for g in self.log.pop(0))

    def all_gather(self, t):
        return [g.to(t.device) for g in self.log.pop(0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "gpu_check.json"))
    ap.add_argument("--small", action="store_true", help="toy sizes (a smoke test of the script itself)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA")
    ap.add_argument("--only", default=None, help="comma-separated steps to run (default: all)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("skipped: no CUDA")
        return 0
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    c = Check(device, args.small)
    t0 = time.perf_counter()
    for name in ("env", "sdpa", "load", "sample", "vae", "decode", "compile", "ring", "ti2v", "switch", "xfuser",
                 "profile"):
        if args.only and name not in args.only.split(","):
            continue
        if name in ("sample", "vae", "compile") and not getattr(c, "model", None):
            c.out[name] = dict(ok=False, error="skipped: the load step failed")
            continue
        if name == "vae" and not hasattr(c, "latents"):
            c.out[name] = dict(ok=False, error="skipped: the sample step failed")
            continue
        c.step(name, getattr(c, name))
    c.out["total_seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(c.out, f, indent=1, default=str)
    os.replace(args.out + ".tmp", args.out)
    if getattr(c, "profile_json", None):
        with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "gpu_profile.json"), "w") as f:
            json.dump(c.profile_json, f, indent=1)
    print(f"[gpu_check] wrote {args.out} ({c.out['total_seconds']} s)")
    return 0 if all(v.get("ok", True) for v in c.out.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
