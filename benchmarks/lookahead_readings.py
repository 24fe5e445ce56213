"""Read the rollout's look-ahead pictures with a more sensitive detector, offline.

A look-ahead of a few DDIM jumps is blurrier than the 20-step image, so a concept that the
finished image still shows can be too faint in it for the detector (a false "removed", which sends
a search past the critical step). This reads the pictures ``study_rollout.py --images`` saved with
the toy world's detector at lower thresholds (``MIN_COVERAGE``: the share of a pixel a colour must
cover; ``MIN_OBJECT_PIXELS``: the smallest object) and scores each reading the way
``rollout_policies.py`` scores a search: agreement with the truth, then the verified and midpoint
rules per prompt.

    python benchmarks/lookahead_readings.py STUDY.json IMAGES.npz [STUDY.json IMAGES.npz ...]
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager

import numpy as np

from negschedule.auto import probe_steps, rollout_decision, rollout_verified
from negschedule.toyworld import detector as toy_detector
from negschedule.toyworld import present

READINGS = {  # name -> (MIN_COVERAGE, MIN_OBJECT_PIXELS); the first is the detector's own
    "standard (0.5, 12)": (0.5, 12),
    "coverage 0.4": (0.4, 12),
    "coverage 0.3": (0.3, 12),
    "coverage 0.4, 8 px": (0.4, 8),
    "coverage 0.3, 8 px": (0.3, 8),
}


@contextmanager
def thresholds(coverage: float, pixels: int):
    saved = toy_detector.MIN_COVERAGE, toy_detector.MIN_OBJECT_PIXELS
    toy_detector.MIN_COVERAGE, toy_detector.MIN_OBJECT_PIXELS = coverage, pixels
    try:
        yield
    finally:
        toy_detector.MIN_COVERAGE, toy_detector.MIN_OBJECT_PIXELS = saved


def main() -> None:
    from rollout_policies import score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="STUDY.json IMAGES.npz, repeated")
    parser.add_argument("--jumps", type=int, default=2)
    args = parser.parse_args()
    for path, images in zip(args.pairs[::2], args.pairs[1::2]):
        study = json.load(open(path))
        records, steps = study["records"], study["args"]["steps"]
        data = np.load(images)
        pictures = data["lookaheads"][:, list(data["jumps"]).index(args.jumps)]  # images x starts x H x W x 3
        latest = len(records[0]["truth"]) - 1
        print(f"\n{path}: {len(records)} images, {args.jumps}-jump look-aheads")
        for name, (coverage, pixels) in READINGS.items():
            with thresholds(coverage, pixels):
                answers = [[not present(pictures[i, k], r["negative"]) for k in range(latest + 1)] for i, r in enumerate(records)]
            pairs = [(a, t) for r, row in zip(records, answers) for a, t in zip(row, r["truth"])]
            agree = np.mean([a == t for a, t in pairs])
            false_removed = np.mean([a and not t for a, t in pairs])
            missed = np.mean([t and not a for a, t in pairs])
            replayed = [{**r, "predicted": {str(args.jumps): row}} for r, row in zip(records, answers)]
            line = f"  {name:20} agrees {agree:.3f} (removed wrongly {false_removed:.3f}, misses {missed:.3f})"
            for label, decide, fractions in (("verified", rollout_verified, (0.2, 0.5)), ("midpoint", rollout_decision, (0.3, 0.7))):
                s = score(replayed, decide, probe_steps(fractions, latest), args.jumps, True, steps)
                line += f" | {label} per prompt {s['removal']:.3f} / {s['ssim']:.3f} / {s['within']:.2f} / {s['cost']:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
