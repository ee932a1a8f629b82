"""Tiny random FLUX.1 pipelines in the diffusers folder layout (what ``black-forest-labs/FLUX.1-dev`` ships), built
locally: diffusers' FluxTransformer2DModel (``tiny-flux-dev`` / ``tiny-flux-schnell`` of models/flux.py),
transformers' CLIPTextModel and T5EncoderModel at width 32 with word-level fast tokenizers, diffusers' AutoencoderKL
with FLUX's 4 levels (stride 8, no quant convs, 4 latent channels here instead of 16), and the scheduler config of
the published folder. Geometry: 48 x 80 pixels -> 6 x 10 latents -> 3 x 5 = 15 image tokens (odd: SP pads)."""
from __future__ import annotations

import json
import os

import torch

from magcache_dist.random_weights import randomize
from tests.support.wan_tiny import WORDS

CLIP_SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=16)
T5_SIZE = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
VAE_SIZE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
SCHEDULER = {"tiny-flux-dev": dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                   max_image_seq_len=4096, shift=3.0),
             "tiny-flux-schnell": dict(use_dynamic_shifting=False, shift=1.0)}
FLUX_VIDEO = ["video.frames=1", "video.height=48", "video.width=80", "video.fps=1"]
# an 8-step job whose published preset (interpolated) skips some calls
JOBS = {"tiny-flux-dev": ["sampler.guidance=3.5", "cache.magcache.preset=flux.1-dev", "cache.magcache.thresh=0.24",
                          "cache.magcache.K=5", "cache.magcache.retention=0.1"],
        "tiny-flux-schnell": ["sampler.guidance=1", "sampler.num_steps=4", "cache.mode=off"]}
STEPS = 8


def word_tokenizer(template: str, max_len: int, bos: bool):
    """A lowercase word-level fast tokenizer over tests.support.wan_tiny.WORDS: ids 0 pad, 1 </s>, 2 <s> (when
    ``bos``), then the words; ``template`` is the single-sequence post-processor (e.g. "<s> $A </s>")."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": 0, "</s>": 1, **({"<s>": 2} if bos else {}), "<unk>": 2 + bos}
    vocab = {**special, **{w: i + len(special) for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in ("<s>", "</s>") if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   **({"bos_token": "<s>"} if bos else {}), model_max_length=max_len)


def build_components(name: str, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from models.flux import flux_config

    vocab = len(WORDS) + 4
    torch.manual_seed(seed)
    transformer = randomize(FluxTransformer2DModel(**flux_config(name)), seed).eval()
    clip = randomize(CLIPTextModel(CLIPTextConfig(vocab_size=vocab, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                                  hidden_act="quick_gelu", **CLIP_SIZE)), seed + 1, std=0.1).eval()
    t5 = randomize(T5EncoderModel(T5Config(vocab_size=vocab, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                           relative_attention_num_buckets=8, tie_word_embeddings=False,
                                           pad_token_id=0, eos_token_id=1, **T5_SIZE)), seed + 2, std=0.3).eval()
    t5.encoder.embed_tokens.weight = t5.shared.weight
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**VAE_SIZE).eval()
    return dict(transformer=transformer, text_encoder=clip, tokenizer=word_tokenizer("<s> $A </s>", 16, bos=True),
                text_encoder_2=t5, tokenizer_2=word_tokenizer("$A </s>", 10_000, bos=False), vae=vae,
                scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER[name]))


def save_folder(comps: dict, root: str) -> str:
    os.makedirs(root, exist_ok=True)
    index = {"_class_name": "FluxPipeline"}
    for key, obj in comps.items():
        obj.save_pretrained(os.path.join(root, key))
        index[key] = ["diffusers" if key in ("transformer", "vae", "scheduler") else "transformers",
                      type(obj).__name__]
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(index, f)
    return root


def build_folder(name: str, root: str) -> str:
    return save_folder(build_components(name), root)


def pipeline_overrides(name: str, folder: str, out: str, *extra: str) -> list[str]:
    return [f"model.name={name}", f"ckpt_dir={folder}", f"output_dir={out}", "progress=false", "save_video=false",
            "sampler.solver=euler", f"sampler.num_steps={STEPS}", "prompt=a red car on the road", *FLUX_VIDEO,
            *JOBS[name], *extra]
