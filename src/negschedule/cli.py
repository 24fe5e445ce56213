"""The negschedule command line: parse, call the library, save.

Verbs: ``generate`` (one image), ``compare`` (no negative | negative from step 0 | from step k, one
labelled image), and ``toy`` (train / evaluate the embedded toy-world model). Bad input prints one
line naming the argument and its value and exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .schedulers import SCHEDULER_NAMES


@dataclass
class RunSettings:
    """What one CLI generation needs; the flags below mirror it field for field."""

    prompt: str
    negative_prompt: str | None = None
    negative_prompt_2: str | None = None  # SDXL's second text encoder's negative, timed with negative_prompt
    negative_start: int | float | None = None  # int = step, float = fraction (a decimal point on the CLI)
    negative_end: int | float | None = None
    negative_windows: list[tuple[str, int | float, int | float | None]] = field(default_factory=list)
    cfg_off: bool = False  # no CFG at all while the negative is off (A1111's "Skip Early CFG")
    steps: int = 20  # num_inference_steps
    guidance_scale: float = 7.5
    guidance_scale_with_negative: float | None = None  # CFG scale at the steps where the negative acts (None: guidance_scale)
    seed: int = 0
    height: int | None = None  # None = the model's own size
    width: int | None = None
    scheduler: str | None = None  # None = the model's own scheduler
    model: str | None = None  # None = the embedded default
    config: str | None = None  # local config folder for a single-file checkpoint
    textual_inversions: list[tuple[str, str]] = field(default_factory=list)  # (path, token)
    loras: list[tuple[str, float]] = field(default_factory=list)  # (path, weight)
    guidance: str = "cfg"  # guidance.GuidanceRule name; rules other than cfg/timed run in the engine
    negative_scale: float | None = None  # negative_scale / perp_neg: n; dng: lambda (None: guidance_scale)
    sigma_min: float | None = None  # sigma_window bounds (None: open on that side)
    sigma_max: float | None = None
    sigma_min_every_other: bool = False  # sigma_window: below sigma_min, odd steps only (A1111's default)
    auto_signal: str | None = None  # with --negative-start auto: what it watches (an auto.Signal value; None = the default)
    auto_max_start: float | None = None  # with --negative-start auto: the latest start, a fraction (None = the default)
    auto_choice: str | None = None  # with --auto-signal rollout: midpoint, verified or gate (an AutoStart.choice; None = the default)
    auto_start: int | None = None  # with --negative-start auto: the step it chose (filled in after sampling)
    clip_skip: int | None = None  # diffusers' clip_skip: CLIP layers skipped from the end (1 = penultimate, A1111's "Clip skip: 2")
    init_image: str | None = None  # img2img: the picture to start from (None = text to image)
    strength: float | None = None  # img2img: share of the schedule redrawn, (0, 1] (None = the pipeline's 0.8)
    device: str = "auto"  # where the model runs; auto: the first GPU there is, else the CPU (negschedule.devices)
    dtype: str = "auto"  # torch dtype name; auto: float16 on a GPU, as stored on the CPU

    @property
    def denoising_strength(self) -> float | None:
        """The img2img strength the pipeline runs with (None: text to image)."""
        if self.init_image is None:
            return None
        return DEFAULT_STRENGTH if self.strength is None else self.strength


DEFAULT_STRENGTH = 0.8  # the img2img pipelines' own default strength


def _step_value(text: str, argument: str) -> int | float:
    from .schedule import parse_step_value

    return parse_step_value(text, argument=argument)


def textual_inversion_arg(text: str) -> tuple[str, str]:
    path, sep, token = text.rpartition(":")
    if not sep or not path or not token:
        raise argparse.ArgumentTypeError(f"expected PATH:TOKEN, got {text!r}")
    return path, token


def lora_arg(text: str) -> tuple[str, float]:
    """PATH or PATH:WEIGHT (weight 1 when left out)."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            return path, float(weight)
        except ValueError:
            pass  # a colon that is part of the path
    return text, 1.0


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="where the model runs: cuda, cuda:1, mps, cpu; auto: the first GPU there is, else the CPU")
    p.add_argument("--dtype", default="auto", help="float16, bfloat16, float32; auto: float16 on a GPU, as stored on the CPU "
                                                   "(seeds draw the same noise everywhere, but pictures differ slightly between devices and dtypes)")


def device_dtype(args) -> Any:
    """--device and --dtype checked (a GPU that is not there fails in one line, naming the flag, before
    anything loads); the dtype load_pipeline gets."""
    from .devices import resolve_device, resolve_dtype

    return resolve_dtype(args.dtype, resolve_device(args.device), argument="dtype")


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="what to draw; A1111 emphasis works, e.g. '(red:1.2) circle'")
    p.add_argument("--negative-prompt", default=None, help="may use A1111 prompt editing, e.g. '[:glasses:0.2]'")
    p.add_argument("--negative-prompt-2", default=None, help="SDXL only: the second text encoder's negative, on exactly when --negative-prompt is")
    p.add_argument("--negative-start", default=None, help="step (5) or fraction of steps (0.2); '1' is step 1, '1.0' all steps; 'auto' finds it while sampling; "
                        "percent:0.2 or sigma:3.0, a noise level (ComfyUI's start_percent)")
    p.add_argument("--negative-end", default=None, help="exclusive end: step, fraction, percent:P or sigma:S")
    p.add_argument("--auto-signal", default=None,
                   help="with --negative-start auto, what decides the start: attention, alignment, detector, "
                        "negative_preview, rollout (the last three read the toy world's detector; docs/guidance.md); "
                        "default: the model's best rule - rollout, shared by the seeds, on a toy-world model with a negative "
                        "its detector reads, attention everywhere else")
    p.add_argument("--auto-max-start", type=float, default=None,
                   help="with --negative-start auto, the latest start as a fraction of the steps (default 0.5)")
    p.add_argument("--auto-choice", default=None,
                   help="with --auto-signal rollout, where the search starts: midpoint (default: between the last probe that "
                        "removes and the first that does not), verified (the last probe whose look-ahead removed the concept) "
                        "or gate (one look-ahead from step 0: start there if it removes, else at --auto-max-start)")
    p.add_argument(
        "--negative-window",
        nargs=3,
        action="append",
        default=[],
        metavar=("PROMPT", "START", "END"),
        help="a further negative acting in [START, END) (END may be 'none'); repeatable",
    )
    p.add_argument("--cfg-off", action="store_true", help="no CFG while the negative is off (one model evaluation)")
    p.add_argument("--guidance", default="cfg", help="cfg|timed|negative_scale|perp_neg|sigma_window|dng (see docs/guidance.md)")
    p.add_argument("--negative-scale", type=float, default=None, help="negative_scale/perp_neg: weight n; dng: lambda")
    p.add_argument("--sigma-min", type=float, default=None, help="sigma_window: guidance only at sigma >= this")
    p.add_argument("--sigma-max", type=float, default=None, help="sigma_window: guidance only at sigma <= this")
    p.add_argument("--sigma-min-every-other", action="store_true",
                   help="sigma_window: below --sigma-min drop the negative on odd steps only, as A1111's "
                        "Negative Guidance minimum sigma does unless 'NGMS all steps' is on")
    p.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    p.add_argument("--guidance-scale", "--cfg-scale", type=float, default=7.5, dest="guidance_scale", help="classifier-free guidance scale")
    p.add_argument("--guidance-scale-with-negative", "--cfg-scale-with-negative", type=float, default=None,
                   dest="guidance_scale_with_negative",
                   help="the CFG scale at the steps where the negative acts (default: --guidance-scale); a late "
                        "--negative-start with a higher scale removes about as much as the negative from step 0 "
                        "and keeps more of the picture (docs/guidance.md)")
    p.add_argument("--seed", type=int, default=0, help="torch generator seed")
    p.add_argument("--height", type=int, default=None, help="pixels; default: the model's own size")
    p.add_argument("--width", type=int, default=None, help="pixels; default: the model's own size")
    p.add_argument("--scheduler", default=None, help=f"{SCHEDULER_NAMES}; default: the model's own")
    p.add_argument("--model", default=None, help="folder, .safetensors file or hub id; default: embedded toy model")
    p.add_argument("--config", default=None, help="local diffusers config folder for a single-file checkpoint")
    p.add_argument(
        "--textual-inversion",
        type=textual_inversion_arg,
        action="append",
        default=[],
        metavar="PATH:TOKEN",
        help="load an embedding under TOKEN (e.g. easynegative.safetensors:EasyNegativeV2); repeatable",
    )
    p.add_argument("--lora", type=lora_arg, action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="load a LoRA file at WEIGHT (default 1), as A1111's <lora:name:WEIGHT>; repeatable")
    p.add_argument("--clip-skip", type=int, default=None,
                   help="CLIP layers to skip from the end, as diffusers counts them: 1 uses the penultimate layer, "
                        "A1111's 'Clip skip: 2' (the PNG records A1111's number)")
    p.add_argument("--init-image", default=None, metavar="PATH",
                   help="img2img: start from this picture (resized to --width x --height when both are given)")
    p.add_argument("--strength", type=float, default=None,
                   help=f"img2img: how much of the picture is redrawn, in (0, 1]; the run makes int(strength * steps) "
                        f"steps, counted from 0 for --negative-start (default: {DEFAULT_STRENGTH}, diffusers')")
    add_device_flags(p)
    p.add_argument("--from-png", default=None, metavar="PATH",
                   help="start from the settings in a PNG's A1111 'parameters' text (ours or A1111's); flags given "
                        "as well override them")
    p.add_argument("--out", required=True, help="output PNG path (its folder must exist)")


def _settings(args: argparse.Namespace) -> RunSettings:
    windows = []
    for prompt, start, end in args.negative_window:
        end_value = None if end.lower() == "none" else _step_value(end, "negative_window")
        windows.append((prompt, _step_value(start, "negative_window"), end_value))
    return RunSettings(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        negative_prompt_2=args.negative_prompt_2,
        negative_start=None if args.negative_start is None else (
            "auto" if args.negative_start.strip().lower() == "auto" else _step_value(args.negative_start, "negative_start")
        ),
        negative_end=None if args.negative_end is None else _step_value(args.negative_end, "negative_end"),
        negative_windows=windows,
        cfg_off=args.cfg_off,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_scale_with_negative=args.guidance_scale_with_negative,
        seed=args.seed,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
        model=args.model,
        config=args.config,
        textual_inversions=list(args.textual_inversion),
        loras=list(args.lora),
        guidance=args.guidance,
        negative_scale=args.negative_scale,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        sigma_min_every_other=args.sigma_min_every_other,
        auto_signal=args.auto_signal,
        auto_max_start=args.auto_max_start,
        auto_choice=args.auto_choice,
        clip_skip=args.clip_skip,
        init_image=args.init_image,
        strength=args.strength,
        device=args.device,
        dtype=args.dtype,
    )


def _check_out(path: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise InputError("out", path, f"folder {str(out.parent)!r} does not exist")
    if out.suffix.lower() != ".png":
        raise InputError("out", path, "must end in .png")
    return out


def _model_json(model: str | None, name: str) -> dict | None:
    """A JSON file of a model folder (``model_index.json``, ``text_encoder/config.json``), None where
    it cannot be read before loading (a single file, a hub id)."""
    import json

    from .models import default_model_path

    folder = default_model_path() if model is None else Path(model)
    try:
        data = json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _pipeline_class(model: str | None) -> str | None:
    """The pipeline class a model folder declares (``model_index.json``), None where it cannot be read before loading."""
    return (_model_json(model, "model_index.json") or {}).get("_class_name")


@functools.lru_cache(maxsize=4)
def _read_init_image(path: str, width: int | None, height: int | None):
    from PIL import Image

    from .images import open_image

    image = open_image(path, "init_image").convert("RGB")
    if width and height and image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _init_image(s: RunSettings):
    """The img2img starting picture, RGB, resized to --width x --height when both are given (A1111's
    "just resize"); read once for the check, the runs and the PNG's size."""
    return _read_init_image(s.init_image, s.width, s.height)


def _check_image_to_image(s: RunSettings) -> None:
    if s.init_image is None:
        if s.strength is not None:
            raise InputError("strength", s.strength, "needs --init-image")
        return
    strength = s.denoising_strength
    if not 0 < strength <= 1:
        raise InputError("strength", strength, "must be in (0, 1]")
    if int(strength * s.steps) < 1:
        raise InputError("strength", strength, f"makes no step of {s.steps} (int(strength * steps) = 0)")
    if s.negative_start == "auto" or s.guidance not in ("cfg", "timed"):
        raise InputError("init_image", s.init_image, "works with --guidance cfg and a fixed --negative-start "
                                                     "(the other rules and auto draw text to image only)")
    if bool(s.width) != bool(s.height):
        raise InputError("width" if s.width else "height", s.width or s.height, "with --init-image give both --width and --height, or neither")
    from .noise_levels import refuse_on_image_to_image

    refuse_on_image_to_image(s.negative_start, s.negative_end, s.negative_windows)
    _init_image(s)


def _text_encoder_layers(model: str | None) -> int | None:
    """The fewest layers among a model folder's text encoders (their configs), None where they cannot be read before loading."""
    configs = [_model_json(model, f"{name}/config.json") for name in ("text_encoder", "text_encoder_2")]
    layers = [c["num_hidden_layers"] for c in configs if c is not None and isinstance(c.get("num_hidden_layers"), int)]
    return min(layers) if layers else None


def _check_clip_skip(clip_skip: int | None, layers: int | None) -> None:
    if clip_skip is None:
        return
    if clip_skip < 1:
        raise InputError("clip_skip", clip_skip, "must be >= 1 (1 = the penultimate layer, A1111's 'Clip skip: 2'); leave it out for the last layer")
    if layers is not None and clip_skip >= layers:  # diffusers would index past the encoder's hidden states
        raise InputError("clip_skip", clip_skip, f"the text encoder has {layers} layers: skip at most {layers - 1}")


def _check_before_loading(s: RunSettings) -> None:
    """Everything that can be checked without the model, so bad input costs no loading time."""
    from .generate import require_cfg
    from .schedulers import check_scheduler_name

    if s.steps <= 0:
        raise InputError("steps", s.steps, "must be at least 1")
    device_dtype(s)
    from .models import check_loras

    check_loras(s.loras)
    _check_clip_skip(s.clip_skip, None if s.clip_skip is None else _text_encoder_layers(s.model))
    if s.scheduler is not None:
        check_scheduler_name(s.scheduler)
    has_negative = s.negative_prompt is not None or bool(s.negative_windows)
    if has_negative:
        require_cfg(s.guidance_scale)
    if s.guidance_scale_with_negative is not None:
        from .generate import check_scale_with_negative

        check_scale_with_negative(s.guidance_scale_with_negative)
        if not has_negative:
            raise InputError("guidance_scale_with_negative", s.guidance_scale_with_negative, "needs a --negative-prompt to act with")
    rule = _guidance(s).rule  # an unknown rule name fails here
    if s.guidance_scale_with_negative is not None and rule.value not in ("cfg", "timed"):
        raise InputError("guidance_scale_with_negative", s.guidance_scale_with_negative, f"scales CFG's negative; not combined with --guidance {rule.value}")
    if s.negative_prompt_2 is not None:
        pipeline_class = _pipeline_class(s.model)
        if pipeline_class is not None and "XL" not in pipeline_class:
            raise InputError("negative_prompt_2", s.negative_prompt_2, f"is for SDXL pipelines; the model is a {pipeline_class}")
    _auto(s)  # bad --auto-* values, or --auto-* without --negative-start auto, fail here
    _check_image_to_image(s)
    if has_negative:
        from .generate import plan_negatives

        from .schedule import NoiseLevel

        # A noise-level bound becomes a step against the model's scheduler (after loading); the rest is checked now.
        def steps_only(bound):
            return None if isinstance(bound, NoiseLevel) or bound == "auto" else bound

        windows = [(prompt, steps_only(start) or 0, steps_only(end)) for prompt, start, end in s.negative_windows]
        plan_negatives(s.negative_prompt, s.steps, 1, steps_only(s.negative_start), steps_only(s.negative_end), windows)
    elif s.negative_start is not None or s.negative_end is not None:
        raise InputError("negative_start", s.negative_start, "needs a --negative-prompt to time")


def _auto(s: RunSettings):
    """``negative_start`` as generate() takes it: "auto" with --auto-* settings becomes an AutoStart."""
    from .auto import AutoStart

    fields = {"signal": s.auto_signal, "max_start": s.auto_max_start, "choice": s.auto_choice}  # AutoStart's field -> --auto-<field>
    given = {name: value for name, value in fields.items() if value is not None}
    if not given:
        return s.negative_start
    if s.negative_start != "auto":
        name, value = next(iter(given.items()))
        raise InputError(f"auto_{name}", value, "needs --negative-start auto")
    try:
        auto = AutoStart(**given)
    except InputError as err:  # name the flag the user typed, not AutoStart's field
        raise InputError(f"auto_{err.argument}", err.value, err.reason) from None
    if auto.reads_detector and s.negative_prompt is not None:
        from .experiments.detectors import ToyDetector

        try:  # the command line has no other detector: say so before the model loads
            ToyDetector(s.negative_prompt)
        except InputError as err:
            raise InputError("auto_signal", s.auto_signal, f"reads the toy world's detector, which cannot test the negative "
                                                           f"prompt ({err.reason}); use attention or alignment") from None
    return auto


def _guidance(s: RunSettings):
    from .guidance import Guidance, GuidanceRule

    g = Guidance(GuidanceRule.parse(s.guidance), negative_scale=s.negative_scale, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                 sigma_min_every_other=s.sigma_min_every_other)
    g.validate()
    return g


def _load(s: RunSettings):
    from .models import load_pipeline

    pipe = load_pipeline(s.model, scheduler=s.scheduler, config=s.config, textual_inversions=s.textual_inversions, loras=s.loras,
                         device=s.device, torch_dtype=device_dtype(s))
    if s.init_image is not None:
        from .models import image_to_image

        pipe = image_to_image(pipe)
    if s.clip_skip is not None:  # a single-file or hub model shows its encoders only now
        encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e is not None]
        _check_clip_skip(s.clip_skip, min(e.config.num_hidden_layers for e in encoders))
    pipe.set_progress_bar_config(disable=False, leave=True, file=sys.stderr)
    announce(pipe)
    return pipe


def announce(pipe) -> None:
    """Say on stderr what runs where: whether the GPU is used is the first thing a user wonders about
    (stdout stays the output path)."""
    print(f"negschedule: {type(pipe).__name__} on {pipe.device}, {str(pipe.unet.dtype).removeprefix('torch.')}", file=sys.stderr)


def _generate(pipe, s: RunSettings, **timing: Any):
    import torch

    from .generate import generate

    kwargs: dict[str, Any] = dict(
        prompt=s.prompt,
        num_inference_steps=s.steps,
        guidance_scale=s.guidance_scale,
        generator=torch.Generator().manual_seed(s.seed),
        negative_prompt=s.negative_prompt,
        negative_start=_auto(s),
        negative_end=s.negative_end,
        negative_windows=s.negative_windows,
        cfg_off=s.cfg_off,
        guidance=_guidance(s),
        negative_prompt_2=s.negative_prompt_2,
        guidance_scale_with_negative=s.guidance_scale_with_negative,
    )
    if s.init_image is not None:  # the picture sets the size; img2img pipelines take no height/width
        kwargs.update(image=_init_image(s), strength=s.denoising_strength)
    else:
        if s.height:
            kwargs["height"] = s.height
        if s.width:
            kwargs["width"] = s.width
    kwargs.update(timing)
    if kwargs["negative_prompt"] is None and not kwargs["negative_windows"]:
        kwargs["guidance_scale_with_negative"] = None  # no negative, nothing to scale (compare's first image)
    if s.clip_skip is not None:
        kwargs["clip_skip"] = s.clip_skip
    if kwargs["negative_prompt_2"] is None:
        del kwargs["negative_prompt_2"]  # SD 1.x pipelines do not take the argument at all
    out = generate(pipe, **kwargs)
    if s.negative_start == "auto" and "negative_start" not in timing:
        s.auto_start = getattr(out, "negative_start", None)
    return out.images[0]


def png_parameters(pipe, s: RunSettings, **extra: Any) -> str:
    """The A1111-style ``parameters`` text for an image made with settings ``s`` (CLI and UI)."""
    import diffusers

    from . import __version__
    from .models import default_model_name
    from .schedulers import scheduler_name

    if s.init_image is not None:
        size = "x".join(map(str, _init_image(s).size))
    else:
        size = (f"{s.width or pipe.unet.config.sample_size * pipe.vae_scale_factor}x"
                f"{s.height or pipe.unet.config.sample_size * pipe.vae_scale_factor}")
    settings = {
        "Steps": s.steps,
        "Sampler": s.scheduler or scheduler_name(pipe.scheduler),
        "CFG scale": s.guidance_scale,
        "CFG scale with negative": s.guidance_scale_with_negative,
        "Seed": s.seed,
        "Size": size,
        "Clip skip": None if s.clip_skip is None else s.clip_skip + 1,  # A1111 counts the last layer as 1
        "Denoising strength": s.denoising_strength,
        "Model": s.model or default_model_name(),
        "Negative prompt 2": s.negative_prompt_2,
        "Negative start": s.negative_start,
        "Negative end": s.negative_end,
        "Negative windows": "; ".join(f"{p} [{a}, {b})" for p, a, b in s.negative_windows) or None,
        "CFG off while negative off": True if s.cfg_off else None,
        "Textual inversion": "; ".join(f"{t}={p}" for p, t in s.textual_inversions) or None,
        "Lora": "; ".join(f"{Path(p).stem}:{w:g}" for p, w in s.loras) or None,
        "Guidance": None if s.guidance in ("cfg", "timed") else s.guidance,
        "Negative scale": s.negative_scale,
        "Sigma window": None if s.sigma_min is None and s.sigma_max is None else f"[{s.sigma_min}, {s.sigma_max}]",
        "Sigma min every other step": True if s.sigma_min_every_other else None,
        "Auto start": s.auto_start,
        "Auto signal": s.auto_signal,
        "Auto max start": s.auto_max_start,
        "Auto choice": s.auto_choice,
        **extra,
        "negschedule": __version__,
        "diffusers": diffusers.__version__,
    }
    from .images import a1111_parameters

    return a1111_parameters(s.prompt, s.negative_prompt, settings)


def cmd_generate(args: argparse.Namespace) -> int:
    from .images import save_png

    s = _settings(args)
    out = _check_out(args.out)
    _check_before_loading(s)
    pipe = _load(s)
    image = _generate(pipe, s)
    save_png(image, out, png_parameters(pipe, s))
    if s.negative_start == "auto":  # the step it chose, for the person at the terminal (stdout stays the path)
        print(f"negschedule generate: auto started the negative at step {s.auto_start} of {s.steps}", file=sys.stderr)
    print(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .images import labelled_row, save_png

    s = _settings(args)
    out = _check_out(args.out)
    if s.negative_prompt is None:
        raise InputError("negative_prompt", None, "compare needs a --negative-prompt")
    if s.negative_start is None:
        raise InputError("negative_start", None, "compare needs a --negative-start (step, fraction or auto)")
    _check_before_loading(s)
    pipe = _load(s)
    from .schedule import resolve_step

    images = [
        _generate(pipe, s, negative_prompt=None, negative_prompt_2=None, negative_start=None, negative_end=None, negative_windows=[]),
        _generate(pipe, s, negative_start=0),
        _generate(pipe, s),
    ]
    if s.negative_start == "auto":
        third = f"negative from step {s.auto_start} (auto)"
    else:
        third = f"negative from step {resolve_step(s.negative_start, s.steps, 'negative_start')}"
    labels = ["no negative", "negative from step 0", third]
    if s.guidance_scale_with_negative is not None:
        labels[1:] = [f"{label} at CFG {s.guidance_scale_with_negative:g}" for label in labels[1:]]
    save_png(labelled_row(images, labels), out, png_parameters(pipe, s, Comparison=" | ".join(labels)))
    print(out)
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; a flag's default after its help when it has a real one
    (argparse's own defaults formatter also prints "(default: None)" and "(default: False)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


class _SubParsers(argparse._SubParsersAction):
    """Sub-commands whose ``--help`` opens with their one-line help when they give no description
    (argparse shows it only in the parent's list). argparse's own class, stable since Python 2.7."""

    def add_parser(self, name, **kwargs):
        if kwargs.get("help"):
            kwargs.setdefault("description", kwargs["help"][0].upper() + kwargs["help"][1:] + ".")
        return super().add_parser(name, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its own errors (a value of the wrong type, a missing flag) on one line, like an
    InputError's, instead of the usage block above it, and :class:`HelpFormatter`; sub-commands'
    parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


EXAMPLES = """examples:
  negschedule generate --prompt "girl eating pizza" --negative-prompt glasses --negative-start 5 --out pizza.png
  negschedule compare --prompt "a red circle and a blue square" --negative-prompt "blue square" --negative-start 5 --out cmp.png
  negschedule sweep --prompt "night, a red square" --negative-prompt moon --out runs/moon
  negschedule serve

'negschedule VERB --help' lists a verb's flags; without --model every verb uses the embedded toy model."""

GENERATE_HELP = """One image with a timed negative prompt, saved as a PNG that carries its settings (A1111's
'parameters' text key). --negative-start 5 runs steps 0-4 with the empty prompt and the negative
from step 5 on; 0.25 is a fraction of the steps; 'auto' decides while sampling."""

COMPARE_HELP = """Three images of one seed side by side, labelled: no negative | negative from step 0 | negative
from the step you give (or the one 'auto' finds)."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(prog="negschedule", description=__doc__.splitlines()[0], epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"negschedule {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="one image with a timed negative prompt", description=GENERATE_HELP)
    _add_generation_flags(gen)
    gen.set_defaults(func=cmd_generate)
    cmp = sub.add_parser("compare", help="no negative | negative from step 0 | negative from step k", description=COMPARE_HELP)
    _add_generation_flags(cmp)
    cmp.set_defaults(func=cmd_compare)
    import importlib

    # Verbs owned by other modules (toy world, experiments, web UI) register themselves.
    for module in ("negschedule.toyworld.commands", "negschedule.experiments.commands", "negschedule.app"):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as err:  # a missing optional dependency (gradio) hides that verb only
            if module.startswith(err.name or "") or not (err.name or "").startswith("negschedule"):
                continue
            raise
    return parser


# What a verb whose work is stored as it finishes says when interrupted (its parser's ``interrupted`` default).
RESUMABLE = "interrupted; run the same command again to resume"


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen verb: bad input is one line on stderr and exit code 2; an
    interrupt one line too, telling a resumable verb's user how to go on."""
    # transformers warns at import that torchvision is absent; it does not concern our users.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("generate", "compare"):
        from .from_png import with_png_arguments

        try:
            argv = with_png_arguments(argv)
        except InputError as err:
            print(f"negschedule {argv[0]}: error: {err}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except InputError as err:
        print(f"negschedule {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"negschedule: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
