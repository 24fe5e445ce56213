"""The experiment verbs of the ``negschedule`` command line: ``sweep``, ``removal-curve``, ``attention``.

``register(subparsers)`` adds the verbs to the main parser (``cli.py``); ``main(argv)`` runs them
on their own. Flags mirror :class:`~negschedule.experiments.sweep.SweepConfig` and
:class:`~negschedule.experiments.removal.RemovalConfig` field for field.
Bad input prints one line naming the argument and exits with code 2 before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..cli import RESUMABLE, add_device_flags, lora_arg, textual_inversion_arg
from ..errors import InputError
from ..schedulers import SCHEDULER_NAMES


def parse_steps(text: str, argument: str, upper: int | None = None) -> list[int]:
    """``"0:20"`` (Python slice: 0..19), ``"0:20:5"``, ``"3"``, or a comma list of those, as ints."""
    out: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        parts = item.split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise InputError(argument, text, "expected steps like 0:20, 0:20:2 or 0,5,10") from None
        if len(numbers) == 1:
            out.append(numbers[0])
        elif len(numbers) in (2, 3):
            step = numbers[2] if len(numbers) == 3 else 1
            if step <= 0 or numbers[0] < 0 or numbers[1] <= numbers[0]:
                raise InputError(argument, text, f"{item!r} is empty or decreasing")
            out.extend(range(numbers[0], numbers[1], step))
        else:
            raise InputError(argument, text, "expected steps like 0:20, 0:20:2 or 0,5,10")
    for n in out:
        if n < 0 or (upper is not None and n > upper):
            raise InputError(argument, text, f"step {n} is outside 0..{upper}")
    if len(set(out)) != len(out):
        raise InputError(argument, text, "names a step twice")
    return out


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise InputError("prompts_file", str(path), "no such file")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise InputError("prompt", None, "give --prompt (repeatable) or --prompts-file")
    return prompts


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="folder, .safetensors file or hub id; default: the embedded toy model")
    p.add_argument("--config", default=None, help="local diffusers config folder for a single-file checkpoint")
    p.add_argument("--scheduler", default=None, help=SCHEDULER_NAMES)
    p.add_argument("--steps", type=int, default=20, help="num_inference_steps (T)")
    # 7.5 like `negschedule generate`; the Python API defaults to the pipeline's own (SDXL: 5).
    p.add_argument("--guidance-scale", "--cfg-scale", type=float, default=7.5, dest="guidance_scale")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--textual-inversion", type=textual_inversion_arg, action="append", default=[], metavar="PATH:TOKEN",
                   help="load an embedding under TOKEN (e.g. easynegative.safetensors:EasyNegativeV2); repeatable")
    p.add_argument("--lora", type=lora_arg, action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="load a LoRA file at WEIGHT (default 1); repeatable")
    add_device_flags(p)


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line")
    p.add_argument("--negative-prompt", required=True)
    p.add_argument("--starts", default=None, help="start steps: 0:20 (every step), 0:20:2, 0,5,10; default every step")
    p.add_argument("--window", nargs=2, type=int, action="append", default=[], metavar=("START", "END"),
                   help="a column with the negative acting in [START, END) (repeatable)")
    p.add_argument("--seeds", default="0", help="0,1,2 or 0:8")
    p.add_argument("--cfg-off", action="store_true", help="no CFG while a column's negative is off (one model evaluation)")
    p.add_argument("--guidance-scale-with-negative", "--cfg-scale-with-negative", type=float, default=None,
                   dest="guidance_scale_with_negative",
                   help="CFG's scale at the steps where a column's negative acts (default: --guidance-scale)")
    p.add_argument("--concept", default=None, help="what the detector looks for, e.g. 'red circle'")
    p.add_argument("--detector", default="toy", choices=["toy", "clip"])
    p.add_argument("--clip-model", default=None, help="a local CLIPModel folder (with its tokenizer) for --detector clip")
    p.add_argument("--batching", default="per_branch", choices=["per_branch", "calibrated", "all"],
                   help="how branches share UNet calls: per_branch and calibrated are bit-exact, all is fastest "
                        "(equal to ~1e-6 on a CPU, less on a GPU with TF32)")
    p.add_argument("--out", required=True, help="folder for images, results.json, report.html (a rerun resumes)")
    p.add_argument("--no-progress", action="store_true")
    add_model_flags(p)


def load_model(args: argparse.Namespace):
    from .. import load_pipeline
    from ..cli import announce, device_dtype
    from .sweep import _shard

    state = _shard()[2]
    # Under `accelerate launch` each process takes its own accelerator; --device is for one process.
    device = str(state.device) if state is not None and state.device.type != "cpu" else args.device
    pipe = load_pipeline(args.model, scheduler=args.scheduler, config=args.config,
                         textual_inversions=args.textual_inversion, loras=args.lora, device=device, torch_dtype=device_dtype(args))
    pipe.set_progress_bar_config(disable=True)
    announce(pipe)
    return pipe


def clip_detector_parts(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.detector != "clip" or args.concept is None:
        return None
    if args.clip_model is None:
        raise InputError("clip_model", None, "--detector clip needs --clip-model FOLDER")
    if not Path(args.clip_model).is_dir():
        raise InputError("clip_model", args.clip_model, "no such folder")
    from transformers import AutoTokenizer, CLIPModel

    return {"model": CLIPModel.from_pretrained(args.clip_model), "tokenizer": AutoTokenizer.from_pretrained(args.clip_model)}


def cmd_sweep(args: argparse.Namespace) -> int:
    from .report import write_sweep
    from .sweep import SweepConfig, _shard, run_sweep

    if args.steps <= 0:
        raise InputError("steps", args.steps, "must be a positive integer")
    windows = tuple((int(s), int(e)) for s, e in args.window)
    starts = parse_steps(args.starts, "starts", args.steps) if args.starts else ([] if windows else list(range(args.steps)))
    pipeline = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    config = SweepConfig(
        prompts=tuple(_prompts(args)),
        negative_prompt=args.negative_prompt,
        seeds=tuple(parse_steps(args.seeds, "seeds")),
        starts=tuple(starts),
        windows=windows,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        cfg_off=args.cfg_off,
        guidance_scale_with_negative=args.guidance_scale_with_negative,
        concept=args.concept,
        detector=args.detector,
        batching=args.batching,
        pipeline=pipeline,
    )
    config.validate()  # before the model loads
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("out", str(out), "exists and is not a folder")
    pipe = load_model(args)
    began = time.perf_counter()
    result = run_sweep(pipe, config, out=out, progress=not args.no_progress, clip=clip_detector_parts(args), context=_model_context(args))
    if _shard()[0] == 0:
        write_sweep(result, out)
        print(f"{out / 'report.html'}: {len(result.records)} units ({len(result.computed_units)} sampled now), "
              f"{result.model_evaluations} model evaluations ({result.independent_evaluations} as independent runs), "
              f"{time.perf_counter() - began:.1f} s")
    return 0


def cmd_removal_curve(args: argparse.Namespace) -> int:
    from .removal import RemovalConfig, run_removal_curve
    from .report import write_removal_curve

    if args.steps <= 0:
        raise InputError("steps", args.steps, "must be a positive integer")
    pipeline = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    config = RemovalConfig(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        concept=args.concept,
        seeds=tuple(parse_steps(args.seeds, "seeds")),
        starts=tuple(parse_steps(args.starts, "starts", args.steps - 1)) if args.starts else (),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        detector=args.detector,
        verify=args.verify,
        pipeline=pipeline,
    )
    config.validate()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("out", str(out), "exists and is not a folder")
    clip = clip_detector_parts(args)
    pipe = load_model(args)
    curve = run_removal_curve(pipe, config, out=out, clip=clip, context=_model_context(args),
                              progress=not args.no_progress)
    write_removal_curve(curve, out)
    data = curve.to_json()
    print(f"{out / 'report.html'}: critical step {data['critical_step']}; {curve.runs_sampled} runs "
          f"({curve.exhaustive_runs} exhaustive), {curve.model_evaluations} model evaluations ({curve.exhaustive_evaluations} exhaustive)")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from ..attention import attention_maps
    from ..schedule import parse_step_value

    words = [w.strip() for w in (args.tokens or "").split(",") if w.strip()]
    negative_words = [w.strip() for w in (args.negative_tokens or "").split(",") if w.strip()]
    start = parse_step_value(args.negative_start, "negative_start") if args.negative_start is not None else None
    end = parse_step_value(args.negative_end, "negative_end") if args.negative_end is not None else None
    if not words and not negative_words:
        raise InputError("tokens", args.tokens, "name at least one word (--tokens or --negative-tokens)")
    if args.steps <= 0:
        raise InputError("steps", args.steps, "must be a positive integer")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("out", str(out), "exists and is not a folder")
    pipe = load_model(args)
    pipeline = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    maps = attention_maps(pipe, prompt=args.prompt, tokens=words, negative_prompt=args.negative_prompt,
                          negative_tokens=negative_words, negative_start=start, negative_end=end, seed=args.seed,
                          num_inference_steps=args.steps, guidance_scale=args.guidance_scale, **pipeline)
    for path in maps.save(out):
        print(path)
    return 0


def register(subparsers) -> None:
    """Add the experiment verbs to the ``negschedule`` parser's subparsers."""
    sweep = subparsers.add_parser("sweep", help="critical-step sweep: the negative starting at every step, every seed")
    add_sweep_flags(sweep)
    sweep.set_defaults(func=cmd_sweep, interrupted=RESUMABLE)
    curve = subparsers.add_parser("removal-curve", help="fewest steps of negative that remove a concept, per start step")
    curve.add_argument("--prompt", required=True)
    curve.add_argument("--negative-prompt", required=True)
    curve.add_argument("--concept", required=True, help="what the detector looks for, e.g. 'red circle'")
    curve.add_argument("--seeds", default="0", help="0,1,2 or 0:8")
    curve.add_argument("--starts", default=None, help="start steps to measure (default every step)")
    curve.add_argument("--detector", default="toy", choices=["toy", "clip"])
    curve.add_argument("--clip-model", default=None, help="a local CLIPModel folder (with its tokenizer) for --detector clip")
    curve.add_argument("--verify", action="store_true", help="also run every window and check monotonicity")
    curve.add_argument("--out", required=True, help="folder for curve.json, curve.png, report.html (a rerun resumes)")
    curve.add_argument("--no-progress", action="store_true")
    add_model_flags(curve)
    curve.set_defaults(func=cmd_removal_curve, interrupted=RESUMABLE)
    att = subparsers.add_parser("attention", help="per-step cross-attention heatmaps of prompt and negative-prompt words")
    att.add_argument("--prompt", required=True)
    att.add_argument("--tokens", default=None, help="comma-separated words of the prompt")
    att.add_argument("--negative-prompt", default=None)
    att.add_argument("--negative-tokens", default=None, help="comma-separated words of the negative prompt")
    att.add_argument("--negative-start", default=None, help="step (5), fraction (0.2), percent:P or sigma:S (a noise level)")
    att.add_argument("--negative-end", default=None, help="exclusive end, in the same units")
    att.add_argument("--seed", type=int, default=0)
    att.add_argument("--out", required=True)
    add_model_flags(att)
    att.set_defaults(func=cmd_attention)
    from .bench_guidance import register as register_bench_guidance

    register_bench_guidance(subparsers)


def _model_context(args: argparse.Namespace) -> dict[str, Any]:
    """The model an experiment ran on, for its settings: a rerun on other weights at the same path is refused."""
    from ..models import file_fingerprint, weights_fingerprint

    context = {"model": args.model, "model_config": args.config, "weights": weights_fingerprint(args.model)}
    # Only when given, so that folders written before these flags existed still resume.
    if args.textual_inversion:
        context["textual_inversions"] = [[path, token, file_fingerprint(path)] for path, token in args.textual_inversion]
    if args.lora:
        context["loras"] = [[path, weight, file_fingerprint(path)] for path, weight in args.lora]
    # Pictures differ slightly between devices and precisions: a folder begun on a GPU in float16 is
    # not resumed on the CPU in float32. Only off the CPU defaults, so that older folders still resume.
    from ..cli import device_dtype
    from ..devices import resolve_device

    device, dtype = resolve_device(args.device), device_dtype(args)
    if device is not None and device != "cpu":
        context["device"] = device.split(":")[0]
    if dtype is not None:
        context["dtype"] = str(dtype).removeprefix("torch.")
    return context


def build_parser() -> argparse.ArgumentParser:
    from ..cli import ArgumentParser

    parser = ArgumentParser(prog="negschedule", description="negschedule experiments")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..cli import run

    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
