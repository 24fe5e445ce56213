"""The ``toy`` command: ``toy train`` (the training recipe) and ``toy eval`` (the quality figures).

Options are generated from the configuration dataclasses (``TrainConfig``, ``EvalConfig``), so the
command line mirrors them field for field and is not a second source of truth. ``register`` hooks
the command into the project CLI; ``main`` runs it alone (``python -m negschedule.toyworld.commands``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from ..cli import RESUMABLE
from ..errors import InputError


def _parser_for(value_type: Any):
    def parse(text: str):
        try:
            if value_type in ("int", int):
                return int(text)
            if value_type in ("float", float):
                return float(text)
            if "tuple" in str(value_type):
                return tuple(int(v) for v in text.split(","))
            return text
        except ValueError:
            # argparse prints an ArgumentTypeError's own message (it would hide an InputError's).
            raise argparse.ArgumentTypeError(f"{text!r}: expected {value_type}") from None

    return parse


def _add_fields(parser: argparse.ArgumentParser, config_cls) -> None:
    for f in dataclasses.fields(config_cls):
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        shown = '""' if shown == "" else shown
        # A field naming one of a fixed set (--world) lists it in its help; a wrong name is refused by
        # the run itself, in one line naming the option (argparse's choices would print the usage too).
        choices = f.metadata.get("choices")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                            type=_parser_for(f.type),
                            help=(f"one of {', '.join(choices)}; " if choices else "") + f"default: {shown}")


def _config(config_cls, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    return config_cls(**values)


def _check_at_least_one(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise InputError("--" + name.replace("_", "-"), getattr(cfg, name), "must be at least 1")


def _run_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = _config(TrainConfig, args)
    _check_at_least_one(cfg, ("n_scenes", "vae_steps", "unet_steps", "batch", "vae_batch", "threads"))
    if not 0 <= cfg.caption_dropout < 1:
        raise InputError("--caption-dropout", cfg.caption_dropout, "must be in [0, 1)")
    print(train(cfg))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from ..generate import require_cfg
    from ..schedulers import check_scheduler_name
    from .evaluate import EvalConfig, evaluate

    cfg = _config(EvalConfig, args)
    # Checked before the model loads and before the output folder is made.
    _check_at_least_one(cfg, ("n", "steps", "batch", "threads"))
    require_cfg(cfg.guidance_scale, "--guidance-scale")
    check_scheduler_name(cfg.scheduler, "--scheduler")
    from ..devices import resolve_device, resolve_dtype

    resolve_dtype(cfg.dtype or None, resolve_device(cfg.device, argument="--device"), argument="--dtype")
    bad = [k for k in cfg.starts if not 0 <= k <= cfg.steps]
    if not cfg.starts or bad:
        raise InputError("--starts", ",".join(map(str, cfg.starts)), f"each start must lie in 0..{cfg.steps}")
    began = time.time()

    def progress(done: int, total: int, name: str, resumed: bool) -> None:
        how = "read back from an earlier run" if resumed else f"{time.time() - began:.0f}s"
        print(f"toy eval: {done}/{total} {name} ({how})", file=sys.stderr)

    figures = evaluate(cfg, progress)
    print(json.dumps(figures["summary"], indent=2))
    return 0


def register(subparsers) -> None:
    """Add the ``toy`` command (``train``, ``eval``) to the project CLI's subparsers."""
    from .evaluate import EvalConfig
    from .train import TrainConfig

    toy = subparsers.add_parser("toy", help="the shapes world: train the embedded default model, measure it")
    sub = toy.add_subparsers(dest="toy_command", required=True)
    train_parser = sub.add_parser("train", help="train the shapes-world model from scratch (resumable)")
    _add_fields(train_parser, TrainConfig)
    train_parser.set_defaults(func=_run_train, interrupted=RESUMABLE)
    eval_parser = sub.add_parser("eval", help="measure a shapes-world model; writes OUT/eval.json")
    _add_fields(eval_parser, EvalConfig)
    eval_parser.set_defaults(func=_run_eval, interrupted=RESUMABLE)


def main(argv: list[str] | None = None) -> int:
    from ..cli import ArgumentParser, run

    parser = ArgumentParser(prog="negschedule")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
