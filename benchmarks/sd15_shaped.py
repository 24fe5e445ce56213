"""A Stable Diffusion 1.5-shaped pipeline with random weights, built offline from configs.

Real checkpoints cannot be downloaded on the machines this project is built on, but speed on a GPU
depends on the shapes, not the weights: this pipeline has SD 1.5's UNet (860M parameters, channels
320/640/1280/1280, 8 heads, cross-attention width 768), its VAE (channels 128/256/512/512) and a
ViT-L/14-sized 12-layer text encoder, so a benchmark on it costs what one on the real model costs.
Its tokenizer is the tiny character-level one (the text encoder's cost does not depend on the words).

    from sd15_shaped import build_sd15_shaped
    pipe = build_sd15_shaped().to("cuda", torch.float16)
"""

from __future__ import annotations

import torch


def build_sd15_shaped(seed: int = 0):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from negschedule.schedulers import make_scheduler
    from negschedule.tiny import tiny_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # diffusers' defaults are SD 1.x's
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_benchmark_pipeline(model: str | None, device: str | None = None, dtype: str | None = None, scheduler: str | None = None):
    """What the benchmarks' ``--model`` names: "sd15-shaped" (above) or anything ``load_pipeline`` takes."""
    import negschedule as ns

    if model == "sd15-shaped":
        pipe = build_sd15_shaped()
        if scheduler is not None:
            from negschedule.schedulers import set_scheduler

            set_scheduler(pipe, scheduler)
        pipe.to(device or "cpu", getattr(torch, dtype) if dtype else None)
    else:
        pipe = ns.load_pipeline(model, scheduler=scheduler, device=device, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
