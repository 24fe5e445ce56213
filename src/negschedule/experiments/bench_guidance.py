"""``negschedule bench-guidance``: every negative-guidance method on the same toy-world work, one table.

This module owns the head-to-head comparison of issue 6. On held-out toy-world captions (scene
seeds far above the training set's, as ``toy eval`` makes them) and fixed image seeds, it samples:

* a critical-step sweep per prompt (the engine, prefix-shared): no negative and the negative from
  every step ``0..max_start``. The fixed starts 0 / 10 % / 20 % / 33 % are read off it, and the
  per-prompt **oracle** (the start with the highest removal rate over the seeds, ties broken by
  the highest SSIM to the no-negative image) too;
* ``auto`` (``auto.py``'s default: on the toy world the look-ahead shared by a prompt's seeds), and
  the attention rule it falls back to where no detector reads the negative (with ``--study`` also
  its other candidate signals and thresholds);
* the other rules of ``guidance.py``: negative_scale, perp_neg, sigma_window, dng.

Two kinds of prompt: two-shape captions whose negative names one of the two shapes (removal of a
requested object), and night captions that do not name the moon, with the negative "moon" (the
implied object: the case where early negatives reverse-activate). Per method, over all images:
removal success (concept gone, among the images whose no-negative image shows it), reverse
activation (concept drawn, among those whose no-negative image lacks it), structure preservation
(SSIM to the no-negative image, ``metrics.ssim``), positive fidelity (share of the caption's other
requested objects the detector finds) and model evaluations per image (the oracle's are its sweep's).

Writes ``DIR/table.csv`` (a row per method), ``DIR/summary.json`` (``auto_within_one_step`` - the
share of prompts whose auto start, averaged over the seeds and rounded, is within one step of the
oracle - the per-image share, ``fixed_start_within_one_step``: the same share for one start used
for every prompt, the bar a per-prompt rule must clear - the starts, the settings, the wall time)
and ``DIR/examples.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli import RESUMABLE
from ..errors import InputError
from .store import write_text_atomic


@dataclass
class BenchConfig:
    """What ``bench-guidance`` runs; the command's flags mirror these fields."""

    out: str = "runs/bench-guidance"  # folder for table.csv, summary.json, examples.png
    model: str | None = None  # None = the embedded toy-world model
    prompts: int = 20  # held-out captions: half two-shape removals, half night/moon
    seeds: tuple[int, ...] = (0, 1)  # image seeds, the same for every method
    steps: int = 20  # num_inference_steps
    guidance_scale: float = 7.5
    scene_seed: int = 3_000_000  # first held-out scene seed (training uses 0..n_scenes-1; toy eval 1e6..)
    max_start: float = 0.5  # the sweep (and auto) cover starts 0..int(max_start * steps)
    study: bool = False  # also run auto's candidate signals / thresholds (docs/guidance.md's study)
    threads: int = 2  # torch CPU threads
    examples: int = 4  # prompts shown in examples.png
    only: tuple[str, ...] = ()  # run just these methods besides the sweep and "auto" (empty: all); saves time in a study


FIXED = (0.0, 0.1, 0.2, 0.33)  # the fixed starts, fractions of the steps


def prompt_set(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Held-out (caption, negative, requested objects) rows: two-shape removals, then night/moon."""
    from ..toyworld.evaluate import night_scenes_unnamed_moon
    from ..toyworld.world import caption, make_scene

    rows: list[dict[str, Any]] = []
    seed = cfg.scene_seed
    n_two = (cfg.prompts + 1) // 2
    while len(rows) < n_two:
        scene = make_scene(seed, n_objects=2, night=False)
        rng = np.random.default_rng(seed)
        seed += 1
        names = [o.name for o in scene.objects]
        if len(names) != 2 or names[0] == names[1]:
            continue
        negative = names[int(rng.integers(2))]
        rows.append({"kind": "two_shapes", "prompt": caption(scene, rng), "negative": negative, "requested": names})
    for scene, text in night_scenes_unnamed_moon(cfg.scene_seed + 500_000, cfg.prompts - len(rows)):
        rows.append({"kind": "night_moon", "prompt": text, "negative": "moon", "requested": [o.name for o in scene.objects]})
    return rows


def methods(cfg: BenchConfig) -> dict[str, Any]:
    """The non-sweep methods: name -> (guidance, negative_start, AutoStart or None[, further sample_guided keywords])."""
    from ..auto import AutoStart, Signal
    from ..guidance import Guidance, GuidanceRule

    out: dict[str, Any] = {
        # The default: on this toy world, the look-ahead shared by a prompt's seeds (AutoStart.resolve).
        "auto": (None, "auto", AutoStart(max_start=cfg.max_start)),
        # What the default is where no detector reads the negative (a real checkpoint's "blurry").
        "auto[attention 0.16]": (None, "auto", AutoStart(signal=Signal.ATTENTION, max_start=cfg.max_start)),
        "negative_scale": (Guidance(GuidanceRule.NEGATIVE_SCALE), None, None),
        "perp_neg": (Guidance(GuidanceRule.PERP_NEG), None, None),
        # The guidance interval the paper reports for SD-XL, (0.28, 5.42]; the toy model shares SD's schedule.
        "sigma_window": (Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=0.28, sigma_max=5.42), None, None),
        # The reference implementation's defaults (prior 0.01, T 0.2) never act at 20 DDIM steps on
        # the toy model (removal 0 on the study prompts); prior 0.1, T 1 was the study's best balance.
        "dng (prior 0.1, T 1)": (Guidance(GuidanceRule.DNG, prior=0.1, temperature=1.0), None, None),
    }
    if cfg.study:
        # The other candidates of the study (docs/guidance.md), for the record on the held-out prompts.
        out["auto[detector, +4]"] = (None, "auto", AutoStart(signal=Signal.DETECTOR, delay=4, max_start=cfg.max_start))
        out["auto[negative_preview, run 3, +2]"] = (None, "auto", AutoStart(signal=Signal.NEGATIVE_PREVIEW, min_step=3, run=3, delay=2, max_start=cfg.max_start))
        for threshold in (0.14, 0.15, 0.16, 0.17, 0.18):
            out[f"auto[attention {threshold}]"] = (None, "auto", AutoStart(signal=Signal.ATTENTION, attention_threshold=threshold, max_start=cfg.max_start))
        for jumps in (1, 2, 3):
            out[f"auto[rollout, {jumps} jumps]"] = (None, "auto", AutoStart(signal=Signal.ROLLOUT, jumps=jumps, max_start=cfg.max_start))
        # One start per prompt, shared by its seeds (docs/guidance.md, "Per image or per prompt").
        for jumps in (2, 3):
            out[f"auto[rollout, {jumps} jumps, per prompt]"] = (
                None, "auto", AutoStart(signal=Signal.ROLLOUT, jumps=jumps, per_prompt=True, max_start=cfg.max_start))
        # Starts only where a look-ahead said "removed" (docs/guidance.md, "Verified starts").
        for per_prompt in (False, True):
            out["auto[rollout, 2 jumps, verified" + (", per prompt]" if per_prompt else "]")] = (
                None, "auto", AutoStart(signal=Signal.ROLLOUT, choice="verified", per_prompt=per_prompt, max_start=cfg.max_start))
        # Removal first: one look-ahead from step 0, then 0 or the latest start 0.3 (docs/guidance.md, "A removal-first gate").
        out["auto[rollout gate, latest 0.3, per prompt]"] = (
            None, "auto", AutoStart(signal=Signal.ROLLOUT, choice="gate", per_prompt=True, max_start=min(0.3, cfg.max_start)))
        # A stronger negative once it starts (guidance_scale_with_negative; docs/guidance.md, "A stronger
        # negative from a later start"): the default auto, whose look-ahead previews that scale, and a fixed start.
        for scale in (10.0, 12.5):
            out[f"auto[scale {scale:g} with the negative]"] = (
                None, "auto", AutoStart(max_start=cfg.max_start), {"guidance_scale_with_negative": scale})
        k = int(0.2 * cfg.steps)
        out[f"start {k}, scale 10 with the negative"] = (None, k, None, {"guidance_scale_with_negative": 10.0})
    if cfg.only:
        unknown = [name for name in cfg.only if name not in out]
        if unknown:
            raise InputError("only", unknown[0], "not a method of this bench; known: " + ", ".join(out))
        out = {name: v for name, v in out.items() if name == "auto" or name in cfg.only}
    return out


def _measure(image, baseline, baseline_objects, row) -> dict[str, Any]:
    from ..toyworld import detect, present
    from .metrics import ssim

    objects = detect(image)
    concept = row["negative"]
    others = [name for name in row["requested"] if name != concept]
    return {
        "baseline_present": present(baseline, concept, baseline_objects),
        "present": present(image, concept, objects),
        "ssim": ssim(image, baseline),
        "fidelity": float(np.mean([present(image, name, objects) for name in others])) if others else None,
    }


def best_start(absent: list[float], ssim: list[float]) -> int:
    """The oracle's choice among starts 0..len-1: the most removals, then the best SSIM, then the earliest."""
    return max(range(len(absent)), key=lambda k: (absent[k], ssim[k], -k))


def within_one_step(starts: list[list[int]], oracles: list[int]) -> tuple[float, float]:
    """Shares of prompts (mean start over the seeds, rounded) and of images whose start is within one step of the oracle."""
    prompt_hits = [abs(round(float(np.mean(s))) - o) <= 1 for s, o in zip(starts, oracles)]
    image_hits = [abs(k - o) <= 1 for s, o in zip(starts, oracles) for k in s]
    return float(np.mean(prompt_hits)), float(np.mean(image_hits))


def within_one_step_of_own(starts: list[list[int]], own: list[list[int]]) -> float:
    """Share of images whose start is within one step of the image's own best start (its own sweep's ``best_start``)."""
    return float(np.mean([abs(k - b) <= 1 for s, o in zip(starts, own) for k, b in zip(s, o)]))


def _summarize(method: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    from .metrics import mean, rate

    return {
        "method": method,
        "images": len(cells),
        "removal_success": rate(not c["present"] for c in cells if c["baseline_present"]),
        "reverse_activation": rate(c["present"] for c in cells if not c["baseline_present"]),
        "ssim_to_no_negative": mean(c["ssim"] for c in cells),
        "positive_fidelity": mean(c["fidelity"] for c in cells),
        "evaluations_per_image": mean(c["evaluations"] for c in cells),
        "mean_start": mean(c.get("start") for c in cells),
    }


def _settings(cfg: BenchConfig) -> dict[str, Any]:
    """What the results depend on: a rerun into the same folder resumes only with these unchanged
    (the model's weights too: a model retrained at the same path is another experiment)."""
    from ..models import weights_fingerprint

    return {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "threads")}, "weights": weights_fingerprint(cfg.model)}


def _bench_prompt(pipe, cfg: BenchConfig, row: dict[str, Any], todo: dict[str, Any], fixed: dict[str, int], example: bool):
    """One prompt's work, every method on every seed: (cells by method, the prompt's record, the example row or None)."""
    from ..engine import Batching, Engine, EngineConfig, start_sweep_runs
    from ..guided import sample_guided
    from ..images import labelled_row
    from ..toyworld import detect

    n = cfg.steps
    last = int(cfg.max_start * n)
    common = dict(num_inference_steps=n, guidance_scale=cfg.guidance_scale, output_type="pil")
    cells: dict[str, list[dict[str, Any]]] = {name: [] for name in ["no negative", *fixed, "oracle", *todo]}
    # All live branches in one UNet call: several times faster on CPU; equal to independent runs to ~1e-6.
    engine = Engine(pipe, EngineConfig(batching=Batching.ALL), prompt=row["prompt"], **common)
    runs = start_sweep_runs(row["negative"], range(last + 1), n)
    result = engine.sample(runs, cfg.seeds)
    sweep_cost = result.model_evaluations / len(cfg.seeds)
    baselines = {s: result.image(s, 0)[0] for s in cfg.seeds}
    base_objects = {s: detect(baselines[s]) for s in cfg.seeds}
    sweep = {s: [_measure(result.image(s, 1 + k)[0], baselines[s], base_objects[s], row) for k in range(last + 1)] for s in cfg.seeds}
    # Oracle: the start with the most removals over the seeds (fewest appearances), then the best SSIM.
    absent = {s: [float(not c["present"]) for c in sweep[s]] for s in cfg.seeds}
    ssims = {s: [c["ssim"] for c in sweep[s]] for s in cfg.seeds}
    mean_absent = [float(np.mean([absent[s][k] for s in cfg.seeds])) for k in range(last + 1)]
    mean_ssim = [float(np.mean([ssims[s][k] for s in cfg.seeds])) for k in range(last + 1)]
    oracle = best_start(mean_absent, mean_ssim)
    for s in cfg.seeds:
        cells["no negative"].append({**_measure(baselines[s], baselines[s], base_objects[s], row), "evaluations": 2 * n, "start": None})
        for name, k in fixed.items():
            cells[name].append({**sweep[s][k], "evaluations": 2 * n, "start": k})
        cells["oracle"].append({**sweep[s][oracle], "evaluations": sweep_cost, "start": oracle})
    record = {**row, "oracle": oracle, "image_oracles": [best_start(absent[s], ssims[s]) for s in cfg.seeds], "auto_starts": {},
              "sweep_absent": mean_absent, "sweep_ssim": mean_ssim}
    shown = {}
    for name, (guidance, start, auto, *further) in todo.items():
        res = sample_guided(pipe, guidance, cfg.seeds, negative_prompt=row["negative"], negative_start=start, auto=auto, prompt=row["prompt"],
                            **common, **(further[0] if further else {}))
        for s in cfg.seeds:
            image = res.images[s][0]
            cell = {**_measure(image, baselines[s], base_objects[s], row), "evaluations": res.evaluations_per_seed[s], "start": res.starts.get(s)}
            cells[name].append(cell)
            if s == cfg.seeds[0]:
                shown[name] = image
        if name.startswith("auto"):
            record["auto_starts"][name] = [res.starts[s] for s in cfg.seeds]
    tile = None
    if example:
        s = cfg.seeds[0]
        others = {"negative_scale": "neg. scale", "perp_neg": "perp-neg", "sigma_window": "sigma win.", "dng (prior 0.1, T 1)": "dng"}
        tiles = [baselines[s], result.image(s, 1)[0], result.image(s, 1 + oracle)[0], shown["auto"], *(shown[m] for m in others if m in shown)]
        labels = ["no negative", "start 0", f"oracle {oracle}", f"auto {record['auto_starts']['auto'][0]}", *(label for m, label in others.items() if m in shown)]
        tile = labelled_row(tiles, labels, min_tile=96)
    return cells, record, tile


def run(cfg: BenchConfig, progress=None) -> dict[str, Any]:
    """Run the bench; writes the table, the summary and the examples, returns the summary.

    Each prompt is a unit of ``store.ResultStore`` in ``cfg.out``: its figures are on disk as soon
    as it is done, and a rerun of the same settings into the same folder picks up after the last
    finished prompt and writes the same table and summary an uninterrupted run does (all but
    ``wall_s``, the clock of the run that finished it).
    """
    from ..models import load_pipeline
    from .store import ResultStore

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    store = ResultStore(cfg.out)
    pipe = load_pipeline(cfg.model)  # before the folder is made: a bad --model leaves nothing on disk
    pipe.set_progress_bar_config(disable=True)
    store.open(_settings(cfg))
    out = Path(cfg.out)
    n = cfg.steps
    last = int(cfg.max_start * n)
    fixed = {f"start {int(f * n)} ({f:.0%})": int(f * n) for f in FIXED}
    rows = prompt_set(cfg)
    todo = methods(cfg)
    cells: dict[str, list[dict[str, Any]]] = {name: [] for name in ["no negative", *fixed, "oracle", *todo]}
    per_prompt: list[dict[str, Any]] = []
    examples = []
    for i, row in enumerate(rows):
        unit = f"prompt-{i:04d}"
        resumed = store.done(unit)
        if not resumed:
            unit_cells, record, tile = _bench_prompt(pipe, cfg, row, todo, fixed, example=i < cfg.examples)
            done = {"cells": unit_cells, "record": record}
            if tile is not None:
                done["example"] = store.save_image(f"examples/{unit}.png", tile)
            store.commit(unit, done)
        # Finished and resumed prompts alike are read back from their record: one path to the table.
        done = store.record(unit)
        for name, unit_cells in done["cells"].items():
            cells[name].extend(unit_cells)
        per_prompt.append(done["record"])
        if "example" in done:
            examples.append(store.load_image(done["example"]))
        if progress is not None:
            progress(i + 1, len(rows), time.time() - t0, resumed)

    table = [_summarize(name, c) for name, c in cells.items()]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    for r in table:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(out / "table.csv", buffer.getvalue())

    oracles = [p["oracle"] for p in per_prompt]
    image_oracles = [p["image_oracles"] for p in per_prompt]

    def within(name: str) -> tuple[float, float]:
        return within_one_step([p["auto_starts"][name] for p in per_prompt], oracles)

    auto_names = [m for m in todo if m.startswith("auto")]
    by_method = {r["method"]: r for r in table}
    summary = {
        "auto_within_one_step": within("auto")[0],
        "auto_within_one_step_images": within("auto")[1],
        "candidates_within_one_step": {m: dict(zip(("prompts", "images"), within(m))) for m in auto_names},
        # The bar a per-prompt rule has to clear: one start for every prompt, chosen knowing all the oracles.
        "fixed_start_within_one_step": {k: within_one_step([[k]] * len(oracles), oracles)[0] for k in range(last + 1)},
        # The ceiling of a per-image rule: each image's own best start (its sweep, read by the detector), known in advance.
        "image_oracle_within_one_step": within_one_step(image_oracles, oracles)[0],
        # Per image against its own best start: the question a per-image rule can answer, free of seed-to-seed spread.
        "within_one_step_of_own_best_start": {
            **{m: within_one_step_of_own([p["auto_starts"][m] for p in per_prompt], image_oracles) for m in auto_names},
            **{f"start {k}": within_one_step_of_own([[k] * len(cfg.seeds)] * len(per_prompt), image_oracles) for k in range(last + 1)},
        },
        "auto_beats_start0_structure": (by_method["auto"]["ssim_to_no_negative"] or 0) > (by_method[next(iter(fixed))]["ssim_to_no_negative"] or 0),
        "auto_removal_at_least_start0": (by_method["auto"]["removal_success"] or 0) >= (by_method[next(iter(fixed))]["removal_success"] or 0),
        "auto_removal_vs_start0": [by_method["auto"]["removal_success"], by_method[next(iter(fixed))]["removal_success"]],
        "table": table,
        "prompts": per_prompt,
        "config": asdict(cfg),
        "wall_s": round(time.time() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float))
    if examples:
        from PIL import Image

        width = max(im.width for im in examples)
        grid = Image.new("RGB", (width, sum(im.height for im in examples)), "white")
        y = 0
        for im in examples:
            grid.paste(im, (0, y))
            y += im.height
        store.save_image("examples.png", grid)
    return summary


def _seeds(text: str) -> tuple[int, ...]:
    from .commands import parse_steps

    return tuple(parse_steps(text, "seeds"))


def cmd_bench_guidance(args: argparse.Namespace) -> int:
    import sys

    if args.prompts < 1:
        raise InputError("prompts", args.prompts, "must be at least 1")
    if args.scene_seed < 1_000_000:
        raise InputError("scene_seed", args.scene_seed, "must be >= 1000000 (lower seeds are training scenes)")
    if args.steps < 2:
        raise InputError("steps", args.steps, "must be at least 2")
    cfg = BenchConfig(out=args.out, model=args.model, prompts=args.prompts, seeds=_seeds(args.seeds), steps=args.steps,
                      guidance_scale=args.guidance_scale, study=args.study, threads=args.threads, examples=args.examples,
                      scene_seed=args.scene_seed, only=tuple(args.only))
    methods(cfg)  # an unknown --only name fails here, before the model loads

    def progress(done: int, total: int, elapsed: float, resumed: bool = False) -> None:
        how = "read back from an earlier run" if resumed else f"{elapsed:.0f}s"
        print(f"bench-guidance: prompt {done}/{total} ({how})", file=sys.stderr)

    summary = run(cfg, progress)
    for row in summary["table"]:
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    best = max(summary["fixed_start_within_one_step"].items(), key=lambda kv: kv[1])
    print(f"auto_within_one_step={summary['auto_within_one_step']:.2f} (best single start: {best[0]}, "
          f"{best[1]:.2f}) wall_s={summary['wall_s']}")
    print(Path(cfg.out) / "table.csv")
    return 0


def register(subparsers) -> None:
    """Add ``bench-guidance`` to the ``negschedule`` parser's subparsers."""
    p = subparsers.add_parser("bench-guidance", help="every negative-guidance method on held-out toy-world prompts: one table")
    p.add_argument("--out", required=True, help="folder for table.csv, summary.json, examples.png (a rerun resumes)")
    p.add_argument("--model", default=None, help="toy-world pipeline folder; default: the embedded model")
    p.add_argument("--prompts", type=int, default=20, help="held-out captions (half two-shape, half night/moon)")
    p.add_argument("--seeds", default="0,1", help="0,1 or 0:4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--study", action="store_true", help="also run auto's candidate signals and thresholds")
    p.add_argument("--scene-seed", type=int, default=BenchConfig.scene_seed,
                   help="first held-out scene seed (the docs' study of auto's signals used 5000000, apart from the bench's prompts)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--examples", type=int, default=4, help="prompts shown in examples.png")
    p.add_argument("--only", action="append", default=[], help="a method to run besides the sweep and auto, once per method "
                                                               "(default: all), e.g. --study --only 'auto[rollout, 2 jumps, per prompt]'")
    p.set_defaults(func=cmd_bench_guidance, interrupted=RESUMABLE)


__all__ = ["BenchConfig", "methods", "prompt_set", "register", "run"]
