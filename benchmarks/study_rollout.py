"""How well does a look-ahead predict whether a negative starting at step k removes its concept?

The ``rollout`` signal of ``negative_start="auto"`` (``negschedule.auto``) asks, at a few probed
steps, "if the negative starts here, is the concept gone at the end?" and answers it with a
look-ahead of a few DDIM jumps read by the detector. This study measures that answer against the
truth on the toy world: for held-out bench prompts (``bench-guidance``'s prompt set, its scene
seeds apart from the bench's own), each image seed and every start k in 0..max_start, the truth is
the detector on the image a negative from step k really gives (the engine's prefix-shared sweep),
and the prediction is the detector on the look-ahead from the no-negative trajectory's latents at
step k, for 1, 2 and 3 jumps; also the same look-ahead with the negative off, as a control.
Prints per jump count the agreement, its one-sided errors, the per-image critical step within
one, and the agreement when "removed" also needs the control to show the concept; writes the raw
answers to ``--out`` as JSON.

    python benchmarks/study_rollout.py [--prompts 16] [--scene-seed 5000000] [--out runs/study-rollout.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from negschedule.auto import AutoStart, Signal
from negschedule.engine import Batching, Engine, EngineConfig, start_sweep_runs
from negschedule.experiments.bench_guidance import BenchConfig, prompt_set
from negschedule.experiments.detectors import ToyDetector
from negschedule.experiments.metrics import ssim
from negschedule.guided import GuidedSampler
from negschedule.models import load_pipeline

JUMPS = (1, 2, 3)


def walk_no_negative(sampler: GuidedSampler, seed: int, guidance_scale: float, last: int, read) -> None:
    """Sample ``sampler``'s prompt without the negative for steps 0..``last`` and call
    ``read(latents, step, eps_pos)`` at each: where ``auto``'s look-ahead starts when it asks
    "if the negative starts here, is the concept gone?" (the positive prediction is the step's own)."""
    eng = sampler.engine
    state = eng._root(seed, sampler.keys[0][2])
    cond_off = eng._condition(sampler.off_key)
    extra = eng.pipe.prepare_extra_step_kwargs(None, eng.eta)
    with torch.no_grad():
        for p, t in enumerate(eng.timesteps[: last + 1]):
            x = state.latents
            eps_u, eps_pos = sampler._pass(x, state.scheduler, t, cond_off, 2)
            read(x, p, eps_pos)
            state.latents = state.scheduler.step(eps_u + guidance_scale * (eps_pos - eps_u), t, x, **extra, return_dict=False)[0]


def truth_and_predictions(pipe, row, seed: int, steps: int, last: int, guidance_scale: float) -> dict:
    detector = ToyDetector(row["negative"])
    common = dict(prompt=row["prompt"], num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pil")
    engine = Engine(pipe, EngineConfig(batching=Batching.ALL), **common)
    result = engine.sample(start_sweep_runs(row["negative"], range(last + 1), steps), [seed])
    truth = [not detector(result.image(seed, 1 + k)[0]) for k in range(last + 1)]  # removed with a start at k
    baseline = result.image(seed, 0)[0]
    baseline_present = detector(baseline)
    ssims = [ssim(result.image(seed, 1 + k)[0], baseline) for k in range(last + 1)]  # structure kept with a start at k

    sampler = GuidedSampler(pipe, None, negative_prompt=row["negative"], negative_start="auto", auto=AutoStart(signal=Signal.ROLLOUT), **common)
    decider = sampler.auto.decider(sampler, seed)
    predicted = {j: [] for j in JUMPS}
    control = {j: [] for j in JUMPS}  # the concept seen in the same look-ahead with the negative off
    pictures = {j: [] for j in JUMPS}  # the look-aheads themselves (--images), to try other readings offline

    def read(x, p, eps_pos):
        for j in JUMPS:
            picture = decider.decode(sampler._lookahead(x, p, eps_pos, j))
            pictures[j].append(np.asarray(picture.convert("RGB")))
            predicted[j].append(not decider.detector(picture))
            control[j].append(decider.detector(decider.decode(sampler._lookahead(x, p, eps_pos, j, negative=False))))

    walk_no_negative(sampler, seed, guidance_scale, last, read)
    return {"truth": truth, "ssim": ssims, "predicted": predicted, "control": control, "baseline_present": baseline_present,
            "_pictures": np.stack([np.stack(pictures[j]) for j in JUMPS])}


def critical(removed: list[bool]) -> int | None:
    """The latest start that removes the concept (None: no start does)."""
    hits = [k for k, r in enumerate(removed) if r]
    return max(hits) if hits else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", default="0,1", help="a list (0,1) or a range (0:4)")
    parser.add_argument("--scene-seed", type=int, default=5_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/study-rollout.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", default=None, help="also save the look-ahead pictures here (.npz: images x jumps x starts x H x W x 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    cfg = BenchConfig(prompts=args.prompts, scene_seed=args.scene_seed, steps=args.steps)
    last = int(cfg.max_start * args.steps)
    seeds = list(range(*map(int, args.seeds.split(":")))) if ":" in args.seeds else [int(s) for s in args.seeds.split(",")]
    records, t0 = [], time.time()
    for i, row in enumerate(prompt_set(cfg)):
        for seed in seeds:
            records.append({**row, "seed": seed, **truth_and_predictions(pipe, row, seed, args.steps, last, cfg.guidance_scale)})
        print(f"prompt {i + 1}/{args.prompts} ({time.time() - t0:.0f}s)", flush=True)
    print(f"{len(records)} images, starts 0..{last}")
    for j in JUMPS:
        agree = np.mean([p == t for r in records for p, t in zip(r["predicted"][j], r["truth"])])
        crit_hits = [critical(r["predicted"][j]) == critical(r["truth"]) or
                     (critical(r["predicted"][j]) is not None and critical(r["truth"]) is not None and abs(critical(r["predicted"][j]) - critical(r["truth"])) <= 1)
                     for r in records]
        false_removed = np.mean([p and not t for r in records for p, t in zip(r["predicted"][j], r["truth"])])
        missed = np.mean([t and not p for r in records for p, t in zip(r["predicted"][j], r["truth"])])
        controlled = [[p and c for p, c in zip(r["predicted"][j], r["control"][j])] for r in records]
        agree_c = np.mean([p == t for r, pc in zip(records, controlled) for p, t in zip(pc, r["truth"])])
        false_c = np.mean([p and not t for r, pc in zip(records, controlled) for p, t in zip(pc, r["truth"])])
        print(f"{j} jump(s): answer agrees with the truth {agree:.3f} (says removed wrongly {false_removed:.3f}, "
              f"misses a removal {missed:.3f}); per-image critical step within one {np.mean(crit_hits):.3f}; "
              f"with the no-negative control (removed = seen there, not with the negative): agrees {agree_c:.3f}, "
              f"says removed wrongly {false_c:.3f}")
    pictures = np.stack([r.pop("_pictures") for r in records])
    if args.images:
        np.savez_compressed(args.images, lookaheads=pictures, jumps=np.array(JUMPS))
    with open(args.out, "w") as f:
        json.dump({"records": records, "args": vars(args)}, f, indent=1, default=bool)


if __name__ == "__main__":
    main()
