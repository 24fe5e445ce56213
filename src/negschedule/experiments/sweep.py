"""Critical-step sweeps: one prompt (or several), the negative starting at each step, every seed.

This module owns the sweep of arXiv:2406.02965 and the seeds' ``critical_step``: for every prompt
and seed, the no-negative image and one image per start step ``k`` (the negative acting in
``[k, T)``) or per window ``[s, e)``. All columns of one prompt and seed are one *unit* of work,
sampled in one :class:`~negschedule.engine.Engine` call, so they share their no-negative prefixes
(a full start sweep costs about ``T + T(T+1)/2`` steps instead of ``T(T+1)``) and each image is
bit-identical to its own ``generate()`` call. Units are the grain of resuming (``store.py``) and
of sharing the work between processes (``accelerate launch``: process ``i`` of ``n`` takes units
``i, i+n, ...``; the merged folder equals a single-process run's).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..engine import Batching, Engine, EngineConfig, Run, guidance_kwargs
from ..errors import InputError
from ..generate import check_scale_with_negative
from . import metrics
from .store import ResultStore

NONE = "none"  # the column label of the no-negative image


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes; everything its results depend on (saved as settings.json)."""

    prompts: tuple[str, ...]  # rows: each prompt with each seed
    negative_prompt: str
    seeds: tuple[int, ...] = (0,)
    starts: tuple[int, ...] = ()  # columns: the negative acting in [k, T) for each k
    windows: tuple[tuple[int, int], ...] = ()  # further columns: the negative acting in [s, e)
    num_inference_steps: int = 20  # T
    guidance_scale: float | None = None  # None: the pipeline's own default, as generate() uses
    cfg_off: bool = False  # columns run without CFG while their negative is off (A1111's "Skip Early CFG")
    guidance_scale_with_negative: float | None = None  # CFG's scale where a column's negative acts (None: guidance_scale)
    concept: str | None = None  # what the detector looks for; None: no removal metrics
    detector: str = "toy"  # "toy" (exact, toy world) or "clip" (give the CLIP model to sweep())
    batching: str = "per_branch"  # engine.Batching: per_branch | calibrated (both bit-exact) | all (~1e-6)
    pipeline: dict = field(default_factory=dict)  # further pipeline keywords (height, width, eta, ...)

    def columns(self) -> list[str]:
        return [NONE] + [column_label(k) for k in self.starts] + [column_label(w) for w in self.windows]

    def runs(self) -> list[Run]:
        # The first column is always the stock no-negative image (CFG with the empty prompt).
        runs = [Run()]
        timing = dict(cfg_off=self.cfg_off, guidance_scale_with_negative=self.guidance_scale_with_negative)
        runs += [Run(self.negative_prompt, int(k), **timing) for k in self.starts]
        runs += [Run(self.negative_prompt, int(s), int(e), **timing) for s, e in self.windows]
        return runs

    def units(self) -> list[tuple[int, int]]:
        """(prompt index, seed) for every unit, in the order results list them."""
        return [(p, seed) for p in range(len(self.prompts)) for seed in self.seeds]

    def validate(self) -> None:
        T = self.num_inference_steps
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise InputError("num_inference_steps", T, "must be a positive integer")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise InputError("prompt", list(self.prompts), "give at least one non-empty prompt")
        if not isinstance(self.negative_prompt, str) or not self.negative_prompt.strip():
            raise InputError("negative_prompt", self.negative_prompt, "a sweep needs a negative prompt")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError("seeds", list(self.seeds), "give at least one seed, each once")
        for k in self.starts:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= T:
                raise InputError("starts", k, f"a start is a step in 0..{T}")
        if len(set(self.starts)) != len(self.starts):
            raise InputError("starts", list(self.starts), "each start once")
        for w in self.windows:
            if len(w) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in w) or not 0 <= w[0] < w[1] <= T:
                raise InputError("windows", w, f"a window is [start, end) with 0 <= start < end <= {T}")
        if not self.starts and not self.windows:
            raise InputError("starts", [], "give starts or windows to sweep")
        check_scale_with_negative(self.guidance_scale_with_negative)
        if self.batching not in {b.value for b in Batching}:
            raise InputError("batching", self.batching, f"choose one of {', '.join(b.value for b in Batching)}")
        if self.pipeline.get("num_images_per_prompt", 1) != 1:
            raise InputError("num_images_per_prompt", self.pipeline["num_images_per_prompt"], "a sweep makes one image per cell")


def column_label(column: int | tuple[int, int] | None) -> str:
    """``None`` -> "none", start ``k`` -> "k", window ``(s, e)`` -> "s-e"."""
    if column is None or column == NONE:
        return NONE
    if isinstance(column, tuple):
        return f"{column[0]}-{column[1]}"
    return str(int(column))


def unit_name(prompt_index: int, seed: int) -> str:
    return f"p{prompt_index:03d}_seed{seed}"


@dataclass
class SweepResult:
    """The images and measurements of a sweep; ``image(seed, start)`` gives one cell as a PIL image."""

    config: SweepConfig
    records: list[dict[str, Any]]  # one per unit, in config.units() order
    store: ResultStore | None = None
    computed_units: list[str] = field(default_factory=list)  # sampled by this call (not resumed)
    settings: dict[str, Any] | None = None  # the config plus the pipeline, scheduler and context it ran with
    _images: dict[tuple[int, int, str], Any] = field(default_factory=dict, repr=False)

    @property
    def columns(self) -> list[str]:
        return self.config.columns()

    @property
    def model_evaluations(self) -> int:
        return sum(r["model_evaluations"] for r in self.records)

    @property
    def independent_evaluations(self) -> int:
        """What the same images would cost as independent ``generate()`` calls."""
        return sum(r["independent_evaluations"] for r in self.records)

    def image(self, seed: int, start: int | tuple[int, int] | None = None, prompt: int = 0):
        """The image of ``prompt`` (index) and ``seed`` with the negative from ``start`` (None: no negative)."""
        label = column_label(start)
        key = (prompt, seed, label)
        if key not in self._images:
            if self.store is None:
                raise KeyError(key)
            record = self.records[self.config.units().index((prompt, seed))]
            cell = next(c for c in record["cells"] if c["column"] == label)
            self._images[key] = self.store.load_image(cell["image"])
        return self._images[key]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per image: prompt, seed, column and its measurements (for CSV / JSON)."""
        out = []
        for record in self.records:
            for cell in record["cells"]:
                out.append({"prompt_index": record["prompt_index"], "prompt": record["prompt"], "seed": record["seed"], **cell})
        return out

    def summary(self) -> list[dict[str, Any]]:
        return metrics.summarize(self.rows(), self.columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings or settings_of(self.config),
            "columns": self.columns,
            "model_evaluations": self.model_evaluations,
            "independent_evaluations": self.independent_evaluations,
            "summary": self.summary(),
            "images": self.rows(),
        }


def settings_of(config: SweepConfig) -> dict[str, Any]:
    settings = asdict(config)
    if settings["guidance_scale_with_negative"] is None:
        del settings["guidance_scale_with_negative"]  # unset, a folder swept before the setting existed still resumes
    settings["prompts"] = list(config.prompts)
    settings["seeds"] = list(config.seeds)
    settings["starts"] = list(config.starts)
    settings["windows"] = [list(w) for w in config.windows]
    return settings


def _shard() -> tuple[int, int, Any]:
    """(process index, process count, accelerate state or None): ``accelerate launch`` sets WORLD_SIZE.

    On machines without GPUs, launch with ``accelerate launch --multi_gpu --num_processes N``
    (torchrun underneath; ``--cpu`` alone starts a single process).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # Without accelerators accelerate only forms a (gloo) process group when told it runs on CPUs.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def _measure(cells: list[dict[str, Any]], images: list[Any], detector, concept: str | None) -> None:
    baseline = images[0]
    baseline_present = detector(baseline) if detector is not None else None
    baseline_objects = detector.objects(baseline) if detector is not None and hasattr(detector, "objects") else None
    for cell, image in zip(cells, images):
        present = detector(image) if detector is not None else None
        cell["ssim"] = metrics.ssim(baseline, image)
        cell["present"] = present
        cell["baseline_present"] = baseline_present
        cell["removed"] = metrics.removed(baseline_present, present)
        cell["reverse_activated"] = metrics.reverse_activated(baseline_present, present)
        found = detector.objects(image) if baseline_objects is not None else None
        cell["objects_preserved"] = None if found is None else metrics.objects_preserved(baseline_objects, found, concept)


def run_sweep(pipe, config: SweepConfig, out: str | os.PathLike | None = None, progress: bool = False,
              detector=None, clip: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> SweepResult:
    """Run (or resume) ``config`` on ``pipe``; with ``out``, every unit is stored there as it finishes.

    ``context``: further settings the results depend on (the model's path, say), stored with the
    sweep's own so that a restart in the same folder with another model is refused.
    """
    from ..schedulers import scheduler_name
    from .detectors import make_detector

    config.validate()
    if detector is None:
        detector = make_detector(config.concept, config.detector, **(clip or {}))
    store = ResultStore(out) if out is not None else None
    index, count, state = _shard()
    if count > 1 and store is None:
        raise InputError("out", None, "a sweep shared between processes needs an output folder to merge in")
    settings = {**settings_of(config), "pipeline_class": type(pipe).__name__,
                "scheduler": scheduler_name(pipe.scheduler), **(context or {})}
    if store is not None:
        if index == 0:
            store.open(settings)
        if state is not None:
            state.wait_for_everyone()
            store.open(settings, clean=False)

    units = config.units()
    mine = [u for i, u in enumerate(units) if i % count == index]
    todo = [u for u in mine if store is None or not store.done(unit_name(*u))]
    engines: dict[int, Engine] = {}

    def engine_for(p: int) -> Engine:
        if p not in engines:
            engines[p] = Engine(
                pipe,
                EngineConfig(batching=Batching(config.batching)),
                prompt=config.prompts[p],
                num_inference_steps=config.num_inference_steps,
                output_type="pil",
                **guidance_kwargs(config.guidance_scale),
                **config.pipeline,
            )
        return engines[p]

    runs = config.runs()
    for p in dict.fromkeys(p for p, _ in todo):  # every bad input fails here, before any sampling
        for run in runs:
            engine_for(p).step_keys(run)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        total = sum(engine_for(p).planned_evaluations(runs, [seed])[0] for p, seed in todo)
        bar = tqdm(total=total, unit="eval", desc="sweep", dynamic_ncols=True)
    result = SweepResult(config, [], store, settings=json.loads(json.dumps(settings)))
    columns = config.columns()
    try:
        for p, seed in todo:
            engine = engine_for(p)
            if bar is not None:
                engine.on_evaluations = lambda n, _total: bar.update(n)
            sampled = engine.sample(runs, [seed])
            images = [sampled.image(seed, r)[0] for r in range(len(runs))]
            name = unit_name(p, seed)
            cells = []
            for label, run, image in zip(columns, runs, images):
                cell: dict[str, Any] = {
                    "column": label,
                    "start": run.negative_start,
                    "end": run.negative_end,
                    "image": f"images/{name}_{label}.png",
                }
                cells.append(cell)
                if store is not None:
                    store.save_image(cell["image"], image)  # read back on demand: long sweeps stay small in memory
                else:
                    result._images[(p, seed, label)] = image
            _measure(cells, images, detector, config.concept)
            record = {
                "unit": name,
                "prompt_index": p,
                "prompt": config.prompts[p],
                "seed": seed,
                "model_evaluations": sampled.model_evaluations,
                "independent_evaluations": sampled.independent_evaluations,
                "cells": cells,
            }
            if store is not None:
                store.commit(name, record)
            result.computed_units.append(name)
            result.records.append(record)
    finally:
        if bar is not None:
            bar.close()

    if state is not None:
        state.wait_for_everyone()
    by_name = {r["unit"]: r for r in result.records}
    records = []
    for p, seed in units:
        name = unit_name(p, seed)
        if name in by_name:
            records.append(by_name[name])
        elif store is not None and store.done(name):
            records.append(store.record(name))
    result.records = records
    return result


def _as_tuple(values: Iterable, argument: str) -> tuple:
    if isinstance(values, (str, bytes)):
        raise InputError(argument, values, "expected a sequence")
    try:
        return tuple(values)
    except TypeError:
        raise InputError(argument, values, "expected a sequence") from None


def sweep(
    pipe,
    *,
    prompt: str | Sequence[str],
    negative_prompt: str,
    starts: Iterable[int] | None = None,
    seeds: Iterable[int] = (0,),
    num_inference_steps: int = 20,
    windows: Iterable[tuple[int, int]] = (),
    guidance_scale: float | None = None,
    cfg_off: bool = False,
    guidance_scale_with_negative: float | None = None,
    concept: str | None = None,
    detector: str = "toy",
    out: str | os.PathLike | None = None,
    batching: str | Batching = "per_branch",
    progress: bool = False,
    clip: dict[str, Any] | None = None,
    **pipeline_kwargs: Any,
) -> SweepResult:
    """Sweep the step where ``negative_prompt`` starts, for every prompt and seed.

    ``starts`` defaults to every step ``range(num_inference_steps)`` (unless ``windows`` are given);
    ``windows`` add columns with the negative acting in ``[s, e)``. ``cfg_off``: those columns run
    without CFG while their negative is off (the first column stays the stock no-negative image);
    ``guidance_scale_with_negative``: CFG's scale at the steps where a column's negative acts.
    ``concept`` turns on removal
    and reverse-activation metrics through ``detector`` ("toy", or "clip" with
    ``clip=dict(model=CLIPModel, tokenizer=...)``). ``out``: a folder to store every image and
    record in as it finishes (a rerun resumes) and to write the results and report to.
    ``batching``: how branches share UNet calls (``engine.Batching``; "calibrated" is faster and
    still bit-exact on the machines it checks, "all" fastest and exact to ~1e-6 only).
    ``pipeline_kwargs`` are further keywords of the pipeline (``height``, ``width``, ``eta``, ...).
    Returns a :class:`SweepResult`: ``.image(seed, start)``, ``.model_evaluations``, ``.summary()``.
    """
    prompts = (prompt,) if isinstance(prompt, str) else _as_tuple(prompt, "prompt")
    windows = tuple(tuple(w) for w in _as_tuple(windows, "windows"))
    if starts is None:
        starts = () if windows else range(num_inference_steps)
    config = SweepConfig(
        prompts=prompts,
        negative_prompt=negative_prompt,
        seeds=tuple(int(s) if not isinstance(s, bool) else s for s in _as_tuple(seeds, "seeds")),
        starts=_as_tuple(starts, "starts"),
        windows=windows,
        num_inference_steps=num_inference_steps,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
        cfg_off=bool(cfg_off),
        guidance_scale_with_negative=guidance_scale_with_negative,
        concept=concept,
        detector=detector,
        batching=batching.value if isinstance(batching, Batching) else batching,
        pipeline=dict(pipeline_kwargs),
    )
    result = run_sweep(pipe, config, out=out, progress=progress, clip=clip)
    if out is not None and _shard()[0] == 0:
        from .report import write_sweep

        write_sweep(result, Path(out))
    return result
