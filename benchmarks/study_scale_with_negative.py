"""A stronger negative from a later start: how removal and structure move with ``guidance_scale_with_negative``.

A negative that starts late keeps the picture's composition but has fewer steps to act in, so it
removes less. ``guidance_scale_with_negative`` raises CFG's scale at the steps where the negative
acts. This study records, on ``bench-guidance``'s held-out toy-world prompts, for every image seed,
every start k in 0..max_start and every scale: whether the concept is gone from the 20-step image,
its SSIM to the no-negative image, the positive fidelity (the caption's other objects found), and
what the rollout look-ahead of ``negative_start="auto"`` (2 DDIM jumps, guided at that scale, read by
the detector) answers at step k. Then it replays, on those records, the constant starts and the
rollout rules of ``auto`` per prompt (``benchmarks/rollout_policies.py``'s replay), on the
look-ahead's answers and on the truth, and prints removal / SSIM / fidelity / within one step of
the oracle (the oracle of the standard scale, as ``bench-guidance`` takes it, and that of the same
scale).

    python benchmarks/study_scale_with_negative.py --prompts 20 --scene-seed 3000000 --out bench-20x2.json   # record, then replay
    python benchmarks/study_scale_with_negative.py --replay bench-20x2.json study-16x2.json                   # replay only

Each image is a ``negschedule.engine`` run (prefix-shared, per-branch batching: bit-exact to
``generate()``), so the records equal what ``generate(..., guidance_scale_with_negative=g)`` draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_policies import lock_step  # noqa: E402  (the replay of guided._rollout on recorded answers)
from study_rollout import walk_no_negative  # noqa: E402  (where auto's look-ahead starts, step by step)

from negschedule.auto import AutoStart, Signal, probe_steps, rollout_decision, rollout_verified  # noqa: E402
from negschedule.engine import Engine, EngineConfig, Run  # noqa: E402
from negschedule.experiments.bench_guidance import BenchConfig, _measure, best_start, prompt_set  # noqa: E402
from negschedule.experiments.detectors import ToyDetector  # noqa: E402
from negschedule.guided import GuidedSampler  # noqa: E402
from negschedule.models import load_pipeline  # noqa: E402
from negschedule.toyworld import detect  # noqa: E402


def record(pipe, row, seed: int, scales: list[float], steps: int, last: int, guidance_scale: float) -> dict:
    """One image's cells (per scale, per start) and look-ahead answers (per scale, per start)."""
    common = dict(prompt=row["prompt"], num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pil")
    runs = [Run()] + [Run(row["negative"], k, guidance_scale_with_negative=None if g == guidance_scale else g)
                      for g in scales for k in range(last + 1)]
    result = Engine(pipe, EngineConfig(), **common).sample(runs, [seed])
    baseline = result.image(seed, 0)[0]
    objects = detect(baseline)
    cells, answers = {}, {}
    for i, g in enumerate(scales):
        cells[str(g)] = [_measure(result.image(seed, 1 + i * (last + 1) + k)[0], baseline, objects, row) for k in range(last + 1)]
        # The look-ahead from the no-negative trajectory's latents at each step, guided at g (what auto asks there).
        sampler = GuidedSampler(pipe, None, negative_prompt=row["negative"], negative_start="auto",
                                auto=AutoStart(signal=Signal.ROLLOUT, detector=ToyDetector(row["negative"])),
                                guidance_scale_with_negative=g, **common)
        decider = sampler.auto.decider(sampler, seed)
        said = []
        walk_no_negative(sampler, seed, guidance_scale, last,
                         lambda x, p, eps_pos: said.append(not decider.detector(decider.decode(sampler._lookahead(x, p, eps_pos, 2)))))
        answers[str(g)] = said
    return {**row, "seed": seed, "cells": cells, "lookahead": answers}


def replay(path: str) -> None:
    data = json.loads(Path(path).read_text())
    records, base = data["records"], str(data["args"]["guidance_scale"])
    last = len(records[0]["cells"][base]) - 1
    by_prompt = defaultdict(list)
    for r in records:
        by_prompt[r["prompt"]].append(r)

    def oracle_hits(chosen: dict, g: str) -> float:
        hits = []
        for rs in by_prompt.values():
            absent = [float(np.mean([not r["cells"][g][k]["present"] for r in rs])) for k in range(last + 1)]
            ssims = [float(np.mean([r["cells"][g][k]["ssim"] for r in rs])) for k in range(last + 1)]
            hits.append(abs(round(float(np.mean([chosen[(r["prompt"], r["seed"])] for r in rs]))) - best_start(absent, ssims)) <= 1)
        return float(np.mean(hits))

    def line(label: str, g: str, chosen: dict, within: bool) -> None:
        cells = [r["cells"][g][chosen[(r["prompt"], r["seed"])]] for r in records]
        removal = np.mean([not c["present"] for c in cells if c["baseline_present"]])
        fidelity = np.mean([c["fidelity"] for c in cells if c["fidelity"] is not None])
        extra = f"  within one step: {oracle_hits(chosen, base):.2f} ({base} oracle), {oracle_hits(chosen, g):.2f} (own)" if within else ""
        print(f"  {label:40} scale {g:5}: removal {removal:.3f}  SSIM {np.mean([c['ssim'] for c in cells]):.3f}  fidelity {fidelity:.3f}{extra}")

    print(f"\n{path}: {len(records)} images, starts 0..{last}")
    probes = probe_steps((0.3, 0.7), last)
    for g in records[0]["cells"]:
        agree = np.mean([r["lookahead"][g][k] == (not r["cells"][g][k]["present"]) for r in records for k in range(last + 1)])
        print(f" scale {g}: look-ahead agrees with the 20-step image on {agree:.3f} of (image, start) pairs")
        for k in range(min(last, 6) + 1):
            line(f"start {k}", g, {(r["prompt"], r["seed"]): k for r in records}, False)
        for name, decide in (("midpoint", rollout_decision), ("verified", rollout_verified)):
            for source in ("look-ahead", "truth"):
                chosen = {}
                for rs in by_prompt.values():
                    answers = [r["lookahead"][g] if source == "look-ahead" else [not c["present"] for c in r["cells"][g]] for r in rs]
                    start, _, _ = lock_step(answers, decide, probes, last)
                    chosen.update({(r["prompt"], r["seed"]): start for r in rs})
                line(f"auto {name}, per prompt ({source})", g, chosen, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--seeds", default="0,1", help="a list (0,1) or a range (0:4)")
    parser.add_argument("--scene-seed", type=int, default=3_000_000)
    parser.add_argument("--scales", default="7.5,10,12.5", help="guidance_scale_with_negative values (7.5: the plain negative)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/scale-with-negative.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replay", nargs="+", default=None, help="only replay these recorded files")
    args = parser.parse_args()
    if args.replay:
        for path in args.replay:
            replay(path)
        return
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cfg = BenchConfig(prompts=args.prompts, scene_seed=args.scene_seed, steps=args.steps)
    last = int(cfg.max_start * args.steps)
    seeds = list(range(*map(int, args.seeds.split(":")))) if ":" in args.seeds else [int(s) for s in args.seeds.split(",")]
    scales = [float(g) for g in args.scales.split(",")]
    records, t0 = [], time.time()
    for i, row in enumerate(prompt_set(cfg)):
        for seed in seeds:
            records.append(record(pipe, row, seed, scales, args.steps, last, cfg.guidance_scale))
        print(f"prompt {i + 1}/{args.prompts} ({time.time() - t0:.0f}s)", flush=True)
    Path(args.out).write_text(json.dumps({"records": records, "args": {**vars(args), "guidance_scale": cfg.guidance_scale}}, default=bool))
    replay(args.out)


if __name__ == "__main__":
    main()
