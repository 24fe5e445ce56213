"""Tiny Stable Diffusion pipelines built offline from configs, with seeded random weights.

They are stock diffusers pipelines (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``)
whose parts are small enough to run a 20-step sample in a fraction of a second on a CPU. The tests
use them for bit-exact comparisons against the stock pipeline, and they are the fallback default
model when the toy-world weights are not installed. Their tokenizer is a character-level CLIP BPE
tokenizer written from a vocabulary built here, so nothing is downloaded.
"""

from __future__ import annotations

import torch

# Printable ASCII: every prompt in the tests tokenizes to single characters (no merges needed).
_CHARS = [chr(c) for c in range(33, 127)]


def tiny_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer over single characters, built in memory (no files, no hub)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _text_encoder(vocab_size: int, hidden: int, projection_dim: int | None, seed: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def _unet(seed: int, **config):
    """A two-level UNet on 16x16 latents, cross-attention at the lower level only; ``config`` adds the rest."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **config,
    ).eval()


def build_tiny_sd(seed: int = 0, scheduler: str = "ddim"):
    """A random-weight ``StableDiffusionPipeline`` (32x32 images, 16x16 latents), deterministic in ``seed``."""
    from diffusers import StableDiffusionPipeline

    from .schedulers import make_scheduler

    tokenizer = tiny_tokenizer()
    unet = _unet(seed, cross_attention_dim=32, attention_head_dim=8)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=_vae(seed + 1),
        text_encoder=_text_encoder(len(tokenizer), 32, None, seed + 2, with_projection=False),
        tokenizer=tokenizer,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl(seed: int = 0, scheduler: str = "euler", force_zeros_for_empty_prompt: bool = True):
    """A random-weight ``StableDiffusionXLPipeline`` with two text encoders, deterministic in ``seed``."""
    from diffusers import StableDiffusionXLPipeline

    from .schedulers import make_scheduler

    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer()
    text_encoder = _text_encoder(len(tokenizer), 32, None, seed + 2, with_projection=False)
    text_encoder_2 = _text_encoder(len(tokenizer_2), 32, 32, seed + 3, with_projection=True)
    unet = _unet(
        seed,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled text
        cross_attention_dim=64,  # both encoders' hidden states concatenated
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(seed + 1),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=make_scheduler(scheduler),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
