"""The training recipe of the shipped shapes-world model: data, VAE, latents, text encoder + UNet, export.

Training runs in resumable phases inside one output folder: the fixed data set (scene seeds
0..n-1, pictures kept as uint8), the VAE, the VAE latents of the data set (cached, so the UNet
phase never runs the encoder), then the UNet and the text encoder trained together from scratch
with caption dropout (the empty caption is what CFG's unconditional branch sees), offset noise
(so that night's dark backgrounds can be drawn dark) and an EMA of the weights. Every phase
checkpoints; running the same command again continues where it stopped (with settings that would
change the model, it refuses). The result is a stock
``StableDiffusionPipeline`` saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .tokenizer import MAX_LENGTH, build_tokenizer
from .world import SHIPPED_WORLD, SIZE, WORLDS, WorldConfig, caption, make_scene, render, world_named

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toyworld"


@dataclass
class TrainConfig:
    """Everything that decides the trained model; the ``toy train`` options mirror these fields."""

    out: str = "runs/toyworld"  # working folder: data, checkpoints, log figures, exported pipeline
    seed: int = 0  # seeds model init, noise, caption wording and dropout
    world: str = field(default=SHIPPED_WORLD, metadata={"choices": tuple(WORLDS)})  # the scenes and captions trained on
    n_scenes: int = 30000  # fixed data set: scene seeds 0..n_scenes-1 (held-out captions use other seeds)
    threads: int = 2  # torch CPU threads: 2.4 UNet steps/s on a quiet 2-core machine vs 1.4 with 1; but 2 threads
    # collapse (to ~0.8 steps/s) while another process holds a core: keep the machine quiet, or pass --threads 1
    device: str = "cpu"  # where the models train ("cuda", "auto", ...): the recipe is the CPU's; random draws stay on
    # CPU generators, so a GPU run sees the same batches, captions and noise (its rounding, hence its weights, differ)
    # VAE: 32x32x3 pictures <-> 4x16x16 latents
    vae_channels: tuple[int, ...] = (16, 32)  # two levels (one 2x downsampling); wider was 4x slower for flat shapes
    vae_steps: int = 2000  # about 8 minutes on one core
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6  # tiny KL: latents stay near-deterministic yet bounded
    # text encoder: CLIP architecture, trained with the UNet
    text_width: int = 64  # hidden size (the UNet's cross-attention dim)
    text_layers: int = 2
    text_heads: int = 4
    # UNet: cross-attention only at the two low resolutions (8x8, 4x4), where it is cheap
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_heads: int = 4
    unet_steps: int = 9000  # ~62 minutes at the 2.4 steps/s of two quiet cores (5000 steps left the loss still falling)
    batch: int = 64
    lr: float = 1e-3  # AdamW, linear warm-up then cosine decay to 5% of it
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999  # the shipped weights are the EMA
    caption_dropout: float = 0.1  # share of captions replaced by "" to learn the unconditional branch
    offset_noise: float = 0.1  # per-channel constant added to the noise: lets the model shift mean brightness
    checkpoint_every: int = 250  # steps between checkpoints (both phases)
    log_every: int = 50  # steps between log lines
    export: str = ""  # also copy the final pipeline here ("" = only <out>/pipeline); "assets" = the package's folder

    @property
    def world_config(self) -> WorldConfig:
        """The world ``world`` names (an unknown name is an InputError naming --world)."""
        return world_named(self.world, "--world")


def _log(cfg: TrainConfig, message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(Path(cfg.out) / "train.log", "a") as f:
        f.write(line + "\n")


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")  # write then rename: a kill mid-save never leaves a broken checkpoint
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, cfg.vae_channels[0]),
        sample_size=SIZE,
    )


def build_text_encoder(cfg: TrainConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_width,
        intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=cfg.text_width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    # Full resolution without attention; every lower level with cross-attention.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=SIZE // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=min(32, cfg.unet_channels[0] // 2),
    )


def build_scheduler():
    """Stable Diffusion 1.x's noise schedule with DDIM; "trailing" spacing starts sampling at t=999."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


def _data(cfg: TrainConfig) -> torch.Tensor:
    path = Path(cfg.out) / "data.pt"
    if path.exists():
        return torch.load(path)
    t0 = time.time()
    world = cfg.world_config
    images = np.stack([np.asarray(render(make_scene(s, world=world))) for s in range(cfg.n_scenes)])
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 N x 3 x 32 x 32
    _save(data, path)
    _log(cfg, f"data: {cfg.n_scenes} scenes rendered in {time.time() - t0:.0f}s")
    return data


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB, 8-bit scale) of the VAE's reconstructions of uint8 ``images`` (posterior mean)."""
    with torch.no_grad():
        x = _to_unit(images).to(vae.device)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((rec + 1) * 127.5, (x + 1) * 127.5).item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def train_vae(cfg: TrainConfig, data: torch.Tensor, device: torch.device):
    path = Path(cfg.out) / "vae.pt"
    vae = build_vae(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=False, map_location="cpu")  # copied to the device on loading
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step = state["step"]
    t0, losses = time.time(), []
    while step < cfg.vae_steps:
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, cfg.vae_steps, min(100, cfg.vae_steps))
        idx = torch.randint(0, len(data), (cfg.vae_batch,), generator=gen)
        x = _to_unit(data[idx]).to(device)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample  # diffusers draws on the CPU generator, then moves
        loss = F.mse_loss(rec, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            rate = len(losses) / (time.time() - t0)
            _log(cfg, f"vae step {step}/{cfg.vae_steps} loss {np.mean(losses[-cfg.log_every:]):.5f} ({rate:.2f} steps/s)")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step}, path)
    vae.eval()
    return vae


def _latents(cfg: TrainConfig, vae, data: torch.Tensor) -> torch.Tensor:
    """Scaled latents of the whole data set (posterior means), cached; sets the VAE's scaling factor."""
    path = Path(cfg.out) / "latents.pt"
    if path.exists():
        cached = torch.load(path)
        vae.register_to_config(scaling_factor=cached["scaling_factor"])
        return cached["latents"]
    with torch.no_grad():
        means = torch.cat([vae.encode(_to_unit(data[i : i + 512]).to(vae.device)).latent_dist.mean
                           for i in range(0, len(data), 512)]).cpu()  # batches are drawn on the CPU
    scaling = float(1.0 / means.std())  # unit-variance latents, as SD's 0.18215 does for its VAE
    vae.register_to_config(scaling_factor=scaling)
    latents = means * scaling
    _save({"latents": latents, "scaling_factor": scaling}, path)
    figures = {"vae_psnr_db": psnr(vae, data[-512:]), "scaling_factor": scaling}
    _log(cfg, f"latents cached: {tuple(latents.shape)}, {figures}")
    _update_figures(cfg, figures)
    return latents


def _device(cfg: TrainConfig) -> torch.device:
    from ..devices import resolve_device

    return torch.device(resolve_device(cfg.device, argument="--device"))


def _update_figures(cfg: TrainConfig, new: dict) -> None:
    path = Path(cfg.out) / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures.update(new)
    path.write_text(json.dumps(figures, indent=2))


def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    with torch.no_grad():
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, params, alpha=1 - decay)


def train_unet(cfg: TrainConfig, latents: torch.Tensor, tokenizer, device: torch.device):
    """Train the UNet and the text encoder together (on ``device``); returns their EMA copies."""
    from diffusers import DDPMScheduler

    path = Path(cfg.out) / "unet.pt"
    torch.manual_seed(cfg.seed)
    unet, text = build_unet(cfg).to(device), build_text_encoder(cfg, len(tokenizer)).to(device)
    params = list(unet.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    noise_schedule = DDPMScheduler.from_config(build_scheduler().config)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    wording = np.random.default_rng(cfg.seed + 2)
    world = cfg.world_config
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=False, map_location="cpu")  # copied to the device on loading
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        wording.bit_generator.state = state["wording"]
        step = state["step"]
    scenes = {}
    unet.train()
    text.train()
    t0, losses = time.time(), []
    while step < cfg.unet_steps:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.unet_steps, cfg.warmup)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=gen)
        captions = []
        for i in idx.tolist():
            if wording.random() < cfg.caption_dropout:
                captions.append("")
            else:
                scene = scenes.get(i) or scenes.setdefault(i, make_scene(i, world=world))
                captions.append(caption(scene, wording, world))
        ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        noise += cfg.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.batch,), generator=gen)
        xt = noise_schedule.add_noise(x0, noise, t)  # on the CPU: the same draws wherever the models are
        xt, noise, t, ids = xt.to(device), noise.to(device), t.to(device), ids.to(device)
        pred = unet(xt, t, encoder_hidden_states=text(ids).last_hidden_state).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        # EMA warm-up: early averages would otherwise be dominated by the random init
        _ema_update(ema, [p.detach() for p in params], min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            rate = len(losses) / (time.time() - t0)
            eta = (cfg.unet_steps - step) / rate / 60
            _log(cfg, f"unet step {step}/{cfg.unet_steps} loss {np.mean(losses[-cfg.log_every:]):.4f} "
                 f"lr {opt.param_groups[0]['lr']:.2e} ({rate:.2f} steps/s, {eta:.0f} min left)")
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _save({"unet": unet.state_dict(), "text": text.state_dict(), "ema": ema, "opt": opt.state_dict(),
                   "gen": gen.get_state(), "wording": wording.bit_generator.state, "step": step}, path)
    if losses:
        _update_figures(cfg, {"unet_final_loss": float(np.mean(losses[-200:])), "unet_steps": step})
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval(), text.eval()


def assemble(vae, text, tokenizer, unet):
    """The stock ``StableDiffusionPipeline`` of the trained parts."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Fields a resume may change: how a run goes, not what it computes, and the step counts (to train longer).
_MAY_CHANGE_ON_RESUME = ("out", "threads", "device", "checkpoint_every", "log_every", "export", "vae_steps", "unet_steps")


def check_resume(cfg: TrainConfig) -> None:
    """Refuse to resume a run folder with settings that would change its model (a mixed run, silently).

    A field missing from the folder's config.json (written before the field existed) is not checked.
    """
    saved_path = Path(cfg.out) / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as the JSON lists they were saved as
    for name, value in now.items():
        if name in saved and name not in _MAY_CHANGE_ON_RESUME and saved[name] != value:
            raise InputError("--" + name.replace("_", "-"), value,
                             f"the run in {cfg.out} was started with {saved[name]}; resume with it or use another --out")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) every phase; returns the folder of the saved pipeline."""
    cfg.world_config  # an unknown world is refused before anything is written
    device = _device(cfg)  # and a device that is not there
    check_resume(cfg)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    start = time.time()
    _log(cfg, f"config {asdict(cfg)}")
    tokenizer = build_tokenizer()
    data = _data(cfg)
    t = time.time()
    vae = train_vae(cfg, data, device)
    latents = _latents(cfg, vae, data)
    _update_figures(cfg, {"vae_phase_s": round(time.time() - t)})
    t = time.time()
    unet, text = train_unet(cfg, latents, tokenizer, device)
    _update_figures(cfg, {"unet_phase_s_this_run": round(time.time() - t), "total_s_this_run": round(time.time() - start)})
    pipe = assemble(vae, text, tokenizer, unet).to("cpu")  # saved from the CPU wherever it trained
    target = out / "pipeline"
    pipe.save_pretrained(target, safe_serialization=True)
    if cfg.export:
        export = ASSET_DIR if cfg.export == "assets" else Path(cfg.export)
        pipe.save_pretrained(export, safe_serialization=True)
        _log(cfg, f"exported to {export}")
    _log(cfg, f"done in {time.time() - start:.0f}s; pipeline at {target}")
    return target
