"""Cross-attention heatmaps of chosen prompt and negative-prompt tokens, step by step.

This module owns capturing cross-attention through diffusers' own extension point, attention
processors: :class:`CrossAttentionCapture` wraps the processor of every cross-attention layer
(``attn2``) of a UNet. The wrapper first calls the original processor - whose output is returned
untouched, so sampling is bit-identical with and without capture (tested) - and then recomputes
the attention probabilities ``softmax(q k^T * scale)`` from the same inputs with the layer's own
``to_q`` / ``to_k`` / ``get_attention_scores``, keeping only the requested token columns.

Per step, the maps are averaged over heads, over the cross-attention layers (each resized to the
latent grid first) and over the loop passes of that step; they are resized to the image at the
end. In the CFG batch the negative half (the first rows) holds the negative prompt's tokens and
the positive half the prompt's, so a negative token's map is read from the negative half and is
only meaningful at steps where the negative is active (``AttentionMaps.active``).

:func:`attention_maps` samples one run through the engine with capture on; :func:`render_strip`
draws one strip per token (steps left to right), each cell the map overlaid on the final image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError


class _Sink:
    """Accumulates, per step, the head-averaged attention of the kept token columns."""

    def __init__(self, columns: Sequence[int], latent_hw: tuple[int, int]):
        self.columns = list(columns)
        self.latent_hw = latent_hw
        self.step: int | None = None
        self.sums: dict[int, torch.Tensor] = {}  # step -> (batch, columns, H, W)
        self.counts: dict[int, int] = {}

    def record(self, probs: torch.Tensor, heads: int) -> None:
        if self.step is None:
            return
        bh, hw, tokens = probs.shape
        batch = bh // heads
        probs = probs.reshape(batch, heads, hw, tokens).mean(dim=1)[..., self.columns].float()
        H, W = self.latent_hw
        factor = round((H * W / hw) ** 0.5)
        if factor < 1 or (H // factor) * (W // factor) != hw:
            raise InputError("latent_hw", self.latent_hw, f"does not match a cross-attention layer with {hw} queries")
        h, w = H // factor, W // factor
        maps = probs.permute(0, 2, 1).reshape(batch, len(self.columns), h, w)
        if (h, w) != (H, W):
            maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
        if self.step in self.sums and self.sums[self.step].shape[0] != batch:
            return  # a pass of the same step with another CFG layout: keep the first layout
        # Kept where the UNet runs: a copy to the CPU per layer would make a GPU wait on every layer.
        self.sums[self.step] = self.sums.get(self.step, 0) + maps
        self.counts[self.step] = self.counts.get(self.step, 0) + 1


class _CapturingProcessor:
    """Runs the original processor unchanged, then records the cross-attention probabilities."""

    def __init__(self, inner, sink: _Sink):
        self.inner = inner
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None and self.sink.step is not None:  # between probes: nothing to compute
            with torch.no_grad():
                self.sink.record(self._probabilities(attn, hidden_states, encoder_hidden_states, attention_mask), attn.heads)
        return out

    @staticmethod
    def _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask) -> torch.Tensor:
        """The layer's attention probabilities, (batch * heads, queries, tokens), as its processor computes them."""
        if attn.spatial_norm is not None:
            raise InputError("unet", type(attn).__name__, "cross-attention with spatial norm is not supported by the capture")
        if hidden_states.ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, tokens = encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query = query.reshape(batch * attn.heads, -1, head_dim)
        key = key.reshape(batch * attn.heads, -1, head_dim)
        return attn.get_attention_scores(query, key, attention_mask)


class CrossAttentionCapture:
    """Context manager: capture the cross-attention of ``columns`` (token positions) in ``unet``.

    ``with CrossAttentionCapture(unet, [3, 4], (64, 64)) as capture: ...``; set ``capture.step``
    before each UNet call; ``capture.maps()`` gives ``{step: (batch, columns, H, W)}`` averages.
    The UNet's own processors are restored on exit.
    """

    def __init__(self, unet, columns: Sequence[int], latent_hw: tuple[int, int]):
        self.unet = unet
        self.sink = _Sink(columns, latent_hw)
        self._saved: dict[str, Any] | None = None

    @property
    def step(self) -> int | None:
        return self.sink.step

    @step.setter
    def step(self, value: int | None) -> None:
        self.sink.step = value

    def __enter__(self) -> "CrossAttentionCapture":
        self._saved = dict(self.unet.attn_processors)
        wrapped = {
            name: _CapturingProcessor(proc, self.sink) if name.endswith("attn2.processor") else proc
            for name, proc in self._saved.items()
        }
        self.unet.set_attn_processor(wrapped)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._saved = None

    def maps(self) -> dict[int, torch.Tensor]:
        return {step: (total / self.sink.counts[step]).cpu() for step, total in sorted(self.sink.sums.items())}


def token_positions(tokenizer, text: str, word: str, argument: str = "tokens") -> list[int]:
    """Positions of ``word``'s tokens in ``text`` as the pipeline tokenizes it (BOS at 0).

    A1111 emphasis is taken out first (``(hat:1.3)`` reads as ``hat``), as the text encoding does;
    positions are those of the first 75-token chunk.
    """
    from .emphasis import plain_text

    ids = tokenizer(plain_text(text), truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    piece = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not piece:
        raise InputError(argument, word, "tokenizes to nothing")
    for start in range(len(ids) - len(piece) + 1):
        if ids[start : start + len(piece)] == piece:
            return list(range(start, start + len(piece)))
    # CLIP marks a word's last token as word-final ("</w>"): a word inside a longer word still counts.
    raise InputError(argument, word, f"is not a word of {text!r} as the tokenizer splits it")


@dataclass
class AttentionMaps:
    """Per token label ("+word" for the prompt, "-word" for the negative): (steps, height, width) maps."""

    maps: dict[str, np.ndarray]
    active: dict[str, list[bool]]  # per label and step: whether the map means anything then
    image: Any  # the final image (PIL)
    steps: int
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | Path) -> list[Path]:
        """maps.npz (one array per label), one strip PNG per label, attention.json; written atomically."""
        import io
        import json

        from .experiments.store import write_bytes_atomic, write_json_atomic
        from .images import png_bytes

        out = Path(out)
        buffer = io.BytesIO()
        np.savez(buffer, **{_safe(label): m for label, m in self.maps.items()})
        write_bytes_atomic(out / "maps.npz", buffer.getvalue())
        written = [out / "maps.npz"]
        for label, m in self.maps.items():
            path = out / f"attention_{_safe(label)}.png"
            write_bytes_atomic(path, png_bytes(render_strip(self.image, m, label, self.active[label])))
            written.append(path)
        write_bytes_atomic(out / "image.png", png_bytes(self.image))
        write_json_atomic(out / "attention.json", {
            "settings": json.loads(json.dumps(self.settings, default=str)),
            "labels": {label: _safe(label) for label in self.maps},
            "active": self.active,
        })
        return written + [out / "image.png", out / "attention.json"]


def _safe(label: str) -> str:
    sign = "pos" if label.startswith("+") else "neg"
    word = "".join(c if c.isalnum() else "_" for c in label[1:])
    return f"{sign}_{word}"


def render_strip(image, maps: np.ndarray, label: str, active: Sequence[bool] | None = None, cell: int = 96):
    """One row: a cell per step, the map (min-max scaled over the strip's active steps) overlaid on ``image``."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from .experiments.report import _font

    steps = maps.shape[0]
    base = np.asarray(image.convert("RGB").resize((cell, cell), Image.BILINEAR), dtype=np.float32) / 255.0
    shown = [maps[s] for s in range(steps) if (active is None or active[s]) and np.isfinite(maps[s]).all()]
    # One scale for the whole strip, so that growing or fading attention across steps shows.
    low = float(min(m.min() for m in shown)) if shown else 0.0
    span = (float(max(m.max() for m in shown)) - low) if shown else 1.0
    jet = colormaps["jet"]
    font = _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(8 + probe.textlength(label, font=font))
    strip = Image.new("RGB", (left + steps * (cell + 2), cell + 18), "white")
    draw = ImageDraw.Draw(strip)
    draw.text((4, 18 + cell // 2 - 6), label, fill="black", font=font)
    for s in range(steps):
        x = left + s * (cell + 2)
        draw.text((x + 2, 2), f"step {s}", fill="black", font=font)
        if active is not None and not active[s]:
            tile = base * 0.35 + 0.65  # greyed out: the token is not in play at this step
        else:
            scaled = np.nan_to_num((maps[s] - low) / (span or 1.0)).astype(np.float32)
            m = np.asarray(Image.fromarray(scaled).resize((cell, cell), Image.BILINEAR))
            tile = 0.5 * base + 0.5 * jet(np.clip(m, 0, 1))[..., :3]
        strip.paste(Image.fromarray((tile * 255).round().astype(np.uint8)), (x, 18))
    return strip


def attention_maps(
    pipe,
    *,
    prompt: str,
    tokens: Sequence[str] = (),
    negative_prompt: str | None = None,
    negative_tokens: Sequence[str] = (),
    negative_start: int | float | None = None,
    negative_end: int | float | None = None,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float | None = None,
    **pipeline_kwargs: Any,
) -> AttentionMaps:
    """Sample one run (the same image ``generate()`` gives for these arguments) and capture its cross-attention.

    ``tokens``: words of ``prompt``; ``negative_tokens``: words of ``negative_prompt``. Each gets a
    ``(steps, height, width)`` map, averaged over heads, cross-attention layers and the word's tokens.
    """
    from .engine import Engine, Run, guidance_kwargs

    if not isinstance(prompt, str):
        raise InputError("prompt", prompt, "attention maps are taken for one prompt (a string)")
    if not tokens and not negative_tokens:
        raise InputError("tokens", list(tokens), "name at least one word of the prompt or the negative prompt")
    if negative_tokens and negative_prompt is None:
        raise InputError("negative_tokens", list(negative_tokens), "need a negative_prompt")
    if pipeline_kwargs.get("num_images_per_prompt", 1) != 1:
        raise InputError("num_images_per_prompt", pipeline_kwargs["num_images_per_prompt"], "attention maps are taken for one image")
    engine = Engine(pipe, prompt=prompt, num_inference_steps=num_inference_steps, output_type="pil",
                    **guidance_kwargs(guidance_scale), **pipeline_kwargs)
    run = Run(negative_prompt, negative_start, negative_end)
    keys = engine.step_keys(run)
    tokenizer = pipe.tokenizer
    wanted: list[tuple[str, list[int], bool]] = []
    for word in tokens:
        wanted.append((f"+{word}", token_positions(tokenizer, prompt, word, "tokens"), False))
    for word in negative_tokens:
        wanted.append((f"-{word}", token_positions(tokenizer, negative_prompt, word, "negative_tokens"), True))
    columns = sorted({p for _, positions, _ in wanted for p in positions})
    index = {p: i for i, p in enumerate(columns)}
    latent_hw = (engine.height // pipe.vae_scale_factor, engine.width // pipe.vae_scale_factor)

    with CrossAttentionCapture(pipe.unet, columns, latent_hw) as capture:
        engine.on_branch_pass = lambda _seed, _runs, step: setattr(capture, "step", step)
        result = engine.sample([run], [seed])
        per_step = capture.maps()
    image = result.image(seed, 0)[0]

    maps: dict[str, np.ndarray] = {}
    active: dict[str, list[bool]] = {}
    H, W = engine.height, engine.width
    for label, positions, negative in wanted:
        frames = []
        flags = []
        for step in range(num_inference_steps):
            negative_key, cfg, _ = keys[step]
            batch_maps = per_step[step]
            # CFG batch: [negative rows; positive rows]; without CFG only the positive rows exist.
            if negative:
                on = cfg and any(text is not None for text in negative_key)
                row = 0 if cfg else None
            else:
                on, row = True, batch_maps.shape[0] // 2 if cfg else 0
            flags.append(bool(on))
            if row is None:
                frames.append(torch.full((1, 1, H, W), float("nan")))
                continue
            m = batch_maps[row : row + 1, [index[p] for p in positions]].mean(dim=1, keepdim=True)
            # On the CPU in float32: the maps go to numpy, and the NaN frames of steps without a negative are made there.
            frames.append(F.interpolate(m.float().cpu(), size=(H, W), mode="bilinear", align_corners=False))
        maps[label] = torch.cat(frames)[:, 0].numpy().astype(np.float32)
        active[label] = flags
    settings = dict(prompt=prompt, tokens=list(tokens), negative_prompt=negative_prompt, negative_tokens=list(negative_tokens),
                    negative_start=negative_start, negative_end=negative_end, seed=seed,
                    num_inference_steps=num_inference_steps, guidance_scale=engine.guidance_scale, **pipeline_kwargs)
    return AttentionMaps(maps=maps, active=active, image=image, steps=num_inference_steps, settings=settings)


__all__ = ["AttentionMaps", "CrossAttentionCapture", "attention_maps", "render_strip", "token_positions"]
