"""A tiny HunyuanVideo folder in the diffusers layout (hunyuanvideo-community/HunyuanVideo), built locally.

The real library classes at toy sizes, seeded random weights, saved by diffusers' ``HunyuanVideoPipeline
.save_pretrained``: transformers' LlamaModel (3 layers, width 32) and CLIPTextModel (width 24, 77 positions),
word-level tokenizers saved as fast tokenizers (the LLaMA one knows the template's header tokens; the CLIP one pads
with its end token, as CLIP's does), diffusers' AutoencoderKLHunyuanVideo (4 levels: 4x temporal, 8x spatial, 4
latent channels) and HunyuanVideoTransformer3DModel at the ``tiny-hunyuanvideo`` size (models/hunyuan_video.py).
"""
from __future__ import annotations

import torch

from magcache_dist.random_weights import randomize
from models.hunyuan_video import hunyuan_config

WORDS = ("a an the and of on in to with is red green blue yellow white black cat dog bird car boat tree house "
         "runs walks flies swims moves jumps sits over under near river road sky city night day slowly fast "
         "camera pans zooms static video describe main content theme color shape size").split()
HEADERS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA_SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
CLIP_SIZE = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=24)
VAE_SIZE = dict(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
# 9 frames -> 3 latent frames; 48 x 48 px -> 6 x 6 latents -> 3 x 3 patches: 27 image tokens (odd: SP pads)
VIDEO = ["video.frames=9", "video.height=48", "video.width=48", "video.fps=8"]
PROMPT = "a red car moves on the road"


def build_llama_tokenizer():
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(h, special=True, normalized=False) for h in HEADERS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # LLaMA: BOS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="right")


def build_clip_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|startoftext|>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<unk>")


def build_components(name: str = "tiny-hunyuanvideo", seed: int = 0, **sizes) -> dict:
    """The pipeline's components by diffusers' names; ``sizes`` override parts of a component's size
    (``llama=``, ``clip=``, ``vae=``, ``transformer=`` dicts) to build mismatched folders."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = build_llama_tokenizer(), build_clip_tokenizer()
    torch.manual_seed(seed)
    llama = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, **{**LLAMA_SIZE, **sizes.get("llama", {})}))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer_2), eos_token_id=0, bos_token_id=1, pad_token_id=0,
                                        **{**CLIP_SIZE, **sizes.get("clip", {})}))
    vae = AutoencoderKLHunyuanVideo(**{**VAE_SIZE, **sizes.get("vae", {})})
    dit = HunyuanVideoTransformer3DModel(**{**hunyuan_config(name), **sizes.get("transformer", {})})
    return dict(text_encoder=randomize(llama, seed + 1, std=0.1).eval(), tokenizer=tokenizer,
                text_encoder_2=randomize(clip, seed + 2, std=0.1).eval(), tokenizer_2=tokenizer_2,
                vae=vae.eval(), transformer=randomize(dit, seed + 3).eval(),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def build_folder(name: str, root: str, seed: int = 0, **sizes) -> str:
    from diffusers import HunyuanVideoPipeline

    HunyuanVideoPipeline(**build_components(name, seed, **sizes)).save_pretrained(root)
    return root


def pipeline_overrides(name: str, folder: str, out: str, *extra: str) -> list[str]:
    return [f"model.name={name}", f"ckpt_dir={folder}", f"output_dir={out}", "progress=false", "save_video=false",
            "model.dtype=float32", "text_encoder.dtype=float32", "vae.dtype=float32", "sampler.num_steps=8",
            "sampler.solver=euler", "sampler.shift=7.0", "sampler.guidance=6.0",
            "cache.magcache.preset=hunyuanvideo-t2v-544p", "cache.magcache.thresh=0.24", "cache.magcache.K=6",
            "cache.magcache.retention=0.2", f"prompt={PROMPT}", *VIDEO, *extra]
