"""Removal curves: for each start step s, the fewest steps of negative guidance that remove the concept.

This module owns arXiv:2406.02965's removal curve: for a prompt that draws a concept and a negative
prompt naming it, ``L(s)`` is the fewest consecutive steps ``L`` with the negative acting in
``[s, s + L)`` after which the concept detector no longer finds the concept. Plotted against ``s``
it is U-shaped; its minimum is the critical step.

Exhaustively that is ``T(T+1)/2`` full runs per seed. Two facts of the problem make it cheaper:

* *Monotone in L*: more steps of negative guidance from the same start do not bring the concept
  back (the assumption of the paper's curve; ``verify=True`` checks it exhaustively). So per start
  a binary search over ``L`` needs about ``log2(T - s) + 1`` runs, the first being ``L = T - s``
  (the negative to the end): if even that does not remove the concept, ``L(s)`` is undefined.
* *Shared prefixes*: all starts search in parallel rounds through one
  :class:`~negschedule.engine.Engine` whose prefix cache keeps every state it sampled, so a run
  ``[s, s + L)`` only samples the steps no earlier run already went through (the no-negative
  prefix ``0..s-1`` is sampled once for all starts and rounds).

The result says how many runs and model evaluations it took, next to the exhaustive counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..engine import Engine, EngineConfig, Run, guidance_kwargs
from ..errors import InputError
from .store import ResultStore


@dataclass(frozen=True)
class RemovalConfig:
    """What a removal curve computes (saved as settings.json)."""

    prompt: str
    negative_prompt: str
    concept: str  # what the detector looks for, e.g. "red circle"
    seeds: tuple[int, ...] = (0,)
    starts: tuple[int, ...] = ()  # the starts s to measure; () = every step 0..T-1
    num_inference_steps: int = 20
    guidance_scale: float | None = None  # None: the pipeline's own default, as generate() uses
    detector: str = "toy"  # "toy" or "clip"
    verify: bool = False  # also run every window and check that removal is monotone in L
    pipeline: dict = field(default_factory=dict)  # further pipeline keywords (height, width, ...)

    def all_starts(self) -> list[int]:
        return list(self.starts) if self.starts else list(range(self.num_inference_steps))

    def validate(self) -> None:
        T = self.num_inference_steps
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise InputError("num_inference_steps", T, "must be a positive integer")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt", self.prompt, "give a prompt")
        if not isinstance(self.negative_prompt, str) or not self.negative_prompt.strip():
            raise InputError("negative_prompt", self.negative_prompt, "a removal curve needs a negative prompt")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError("seeds", list(self.seeds), "give at least one seed, each once")
        for s in self.starts:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < T:
                raise InputError("starts", s, f"a start is a step in 0..{T - 1}")
        if len(set(self.starts)) != len(self.starts):
            raise InputError("starts", list(self.starts), "each start once")


def search_lengths(starts: Sequence[int], T: int, removes: Callable[[list[tuple[int, int]]], dict[tuple[int, int], bool]]) -> dict[int, int | None]:
    """Per start, the fewest L in 1..T-s with ``removes`` true, by parallel binary searches.

    ``removes(pairs)`` answers a whole round of ``(s, L)`` pairs at once (one engine call). Assumes
    removal is monotone in L; returns None where even ``L = T - s`` does not remove.
    """
    first = removes([(s, T - s) for s in starts])
    bounds = {s: [1, T - s] for s in starts if first[(s, T - s)]}
    lengths: dict[int, int | None] = {s: None for s in starts}
    while True:
        active = {s: b for s, b in bounds.items() if b[0] < b[1]}
        if not active:
            break
        mids = {s: (lo + hi) // 2 for s, (lo, hi) in active.items()}
        answers = removes([(s, m) for s, m in mids.items()])
        for s, m in mids.items():
            if answers[(s, m)]:
                bounds[s][1] = m
            else:
                bounds[s][0] = m + 1
    for s, (lo, hi) in bounds.items():
        lengths[s] = hi
    return lengths


@dataclass
class RemovalCurve:
    """Per seed: L(s) for each start, the critical step, and what the search cost."""

    config: RemovalConfig
    records: list[dict[str, Any]]  # one per seed
    settings: dict[str, Any] | None = None  # the config plus the pipeline, scheduler and context it ran with

    def lengths(self, seed: int) -> dict[int, int | None]:
        record = next(r for r in self.records if r["seed"] == seed)
        return {int(s): v for s, v in record["lengths"].items()}

    def critical_step(self, seed: int) -> int | None:
        """The start with the fewest steps needed (the earliest of equals); None if nothing removes."""
        defined = [(v, s) for s, v in self.lengths(seed).items() if v is not None]
        return min(defined)[1] if defined else None

    def mean_lengths(self) -> dict[int, float | None]:
        out = {}
        for s in self.config.all_starts():
            values = [r["lengths"][str(s)] for r in self.records if r["lengths"][str(s)] is not None]
            out[s] = sum(values) / len(values) if values else None
        return out

    @property
    def model_evaluations(self) -> int:
        return sum(r["model_evaluations"] for r in self.records)

    @property
    def runs_sampled(self) -> int:
        return sum(r["runs_sampled"] for r in self.records)

    @property
    def exhaustive_runs(self) -> int:
        return sum(r["exhaustive_runs"] for r in self.records)

    @property
    def exhaustive_evaluations(self) -> int:
        return sum(r["exhaustive_evaluations"] for r in self.records)

    def to_json(self) -> dict[str, Any]:
        settings = self.settings or _settings_of(self.config)
        mean = self.mean_lengths()
        defined = [(v, s) for s, v in mean.items() if v is not None]
        return {
            "settings": settings,
            "model_evaluations": self.model_evaluations,
            "runs_sampled": self.runs_sampled,
            "exhaustive_runs": self.exhaustive_runs,
            "exhaustive_evaluations": self.exhaustive_evaluations,
            "mean_lengths": {str(s): v for s, v in mean.items()},
            "critical_step": min(defined)[1] if defined else None,
            "seeds": self.records,
        }


def _settings_of(config: RemovalConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings["seeds"], settings["starts"] = list(config.seeds), list(config.starts)
    return settings


def _window(negative_prompt: str, s: int, L: int, T: int) -> Run:
    return Run(negative_prompt, s, None if s + L >= T else s + L)


def _curve_for_seed(engine: Engine, config: RemovalConfig, seed: int, detector,
                    on_round: Callable[[], None] = lambda: None) -> dict[str, Any]:
    T = config.num_inference_steps
    starts = config.all_starts()
    before = engine.model_evaluations
    tested: dict[tuple[int, int], bool] = {}

    baseline = engine.sample([Run()], [seed]).image(seed, 0)[0]
    on_round()
    baseline_present = bool(detector(baseline))

    def removes(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], bool]:
        new = [p for p in dict.fromkeys(pairs) if p not in tested]
        if new:
            result = engine.sample([_window(config.negative_prompt, s, L, T) for s, L in new], [seed])
            for r, pair in enumerate(new):
                tested[pair] = not detector(result.image(seed, r)[0])
            on_round()
        return {p: tested[p] for p in pairs}

    lengths: dict[int, int | None] = {s: None for s in starts}
    if baseline_present:
        lengths = search_lengths(starts, T, removes)
    runs_sampled = 1 + len(tested)
    evaluations = engine.model_evaluations - before
    monotone = None
    if config.verify and baseline_present:
        removes([(s, L) for s in starts for L in range(1, T - s + 1)])
        table = {s: [tested[(s, L)] for L in range(1, T - s + 1)] for s in starts}
        monotone = all(all(a <= b for a, b in zip(row, row[1:])) for row in table.values())
    per_run = 2 * T  # every run of the exhaustive search samples all T steps with CFG
    exhaustive_runs = 1 + sum(T - s for s in starts)
    return {
        "seed": seed,
        "baseline_present": baseline_present,
        "lengths": {str(s): v for s, v in lengths.items()},
        "critical_step": min(((v, s) for s, v in lengths.items() if v is not None), default=(None, None))[1],
        "runs_sampled": runs_sampled,
        "model_evaluations": evaluations,
        "exhaustive_runs": exhaustive_runs,
        "exhaustive_evaluations": exhaustive_runs * per_run,
        "tested": [[s, L, tested[(s, L)]] for s, L in sorted(tested)],
        "monotone": monotone,
    }


def rounds_bound(num_inference_steps: int, verify: bool = False) -> int:
    """Engine calls per seed at most: the baseline, L = T - s for every start, the halvings (and the check)."""
    return 2 + max(1, num_inference_steps - 1).bit_length() + int(verify)


def run_removal_curve(pipe, config: RemovalConfig, out: str | os.PathLike | None = None, detector=None,
                      clip: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
                      progress: bool = False) -> RemovalCurve:
    """Measure (or resume) the removal curve of ``config``; with ``out``, each seed is stored as it finishes."""
    from ..schedulers import scheduler_name
    from .detectors import make_detector

    config.validate()
    if detector is None:
        detector = make_detector(config.concept, config.detector, **(clip or {}))
    elif not callable(detector):
        raise InputError("detector", detector, "must be callable: image -> bool (concept present)")
    store = ResultStore(out) if out is not None else None
    settings = {**_settings_of(config), "pipeline_class": type(pipe).__name__,
                "scheduler": scheduler_name(pipe.scheduler), **(context or {})}
    if store is not None:
        store.open(settings)
    records = []
    engine = None
    todo = [seed for seed in config.seeds if store is None or not store.done(f"seed{seed}")]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        # Rounds of the search are what advance; their number per seed is bounded, so the ETA holds.
        per_seed = rounds_bound(config.num_inference_steps, config.verify)
        bar = tqdm(total=len(todo) * per_seed, unit="round", desc="removal curve", dynamic_ncols=True)
    for seed in config.seeds:
        name = f"seed{seed}"
        if store is not None and store.done(name):
            records.append(store.record(name))
            continue
        if engine is None:
            engine = Engine(pipe, EngineConfig(cache_prefixes=True), prompt=config.prompt,
                            num_inference_steps=config.num_inference_steps,
                            output_type="pil", **guidance_kwargs(config.guidance_scale), **config.pipeline)
            engine.step_keys(_window(config.negative_prompt, 0, 1, config.num_inference_steps))  # bad input fails now
        engine.clear_cache()  # states of another seed are never reused; keep memory to one seed's
        rounds = [0]

        def on_round() -> None:
            rounds[0] += 1
            if bar is not None:
                bar.update(1)

        record = _curve_for_seed(engine, config, seed, detector, on_round)
        if bar is not None:
            bar.update(max(0, rounds_bound(config.num_inference_steps, config.verify) - rounds[0]))
        if store is not None:
            store.commit(name, record)
        records.append(record)
    if bar is not None:
        bar.close()
    return RemovalCurve(config, records, settings=json.loads(json.dumps(settings)))


def removal_curve(
    pipe,
    *,
    prompt: str,
    negative_prompt: str,
    concept: str,
    seeds: Sequence[int] = (0,),
    starts: Sequence[int] | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float | None = None,
    detector: str | Callable = "toy",
    verify: bool = False,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    clip: dict[str, Any] | None = None,
    **pipeline_kwargs: Any,
) -> RemovalCurve:
    """L(s) for every start ``s``: the fewest steps of ``negative_prompt`` in ``[s, s + L)`` that remove ``concept``.

    ``detector``: "toy" (the toy world's exact detector), "clip" (with ``clip=dict(model=...,
    tokenizer=...)``) or any callable ``image -> bool`` (True: the concept is present).
    ``out``: a folder to store each seed in as it finishes (a rerun resumes) and to write
    ``curve.json``, ``curve.csv``, ``curve.png`` and ``report.html`` to.
    """
    config = RemovalConfig(
        prompt=prompt,
        negative_prompt=negative_prompt,
        concept=concept,
        seeds=tuple(seeds),
        starts=tuple(starts or ()),
        num_inference_steps=num_inference_steps,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
        detector=detector if isinstance(detector, str) else "callable",
        verify=verify,
        pipeline=dict(pipeline_kwargs),
    )
    result = run_removal_curve(pipe, config, out=out, detector=None if isinstance(detector, str) else detector, clip=clip,
                               progress=progress)
    if out is not None:
        from .report import write_removal_curve

        write_removal_curve(result, Path(out))
    return result
