"""What the 2-jump look-ahead allows at best: start rules that ask it at every start, at no cost.

``auto``'s rollout asks the look-ahead ("if the negative starts at step k, is the concept gone?")
at two or three probed steps. The records of ``study_scale_with_negative.py`` hold its answer at
every start 0..max_start, per image and scale, beside the truth. This replays rules that read all
of those answers for a prompt's images (a cost no rule within budget can pay), so their figures
bound what a better search over the same look-ahead could reach; and rules that raise the scale
with the start (``guidance_scale_with_negative = g N / (N - k)``: the negative's total weight of a
start at 0, spread over the steps left; the nearest recorded scale, or the next one up). Prints,
per rule and set, removal and SSIM minus those of the negative from step 0 at the standard scale
(issue 6's second target: removal >= 0 and SSIM > 0), and the share of prompts within one step of
the standard scale's oracle.

    python benchmarks/lookahead_bound.py docs/results/scale-with-negative/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_policies import lock_step  # noqa: E402  (the replay of guided._rollout on recorded answers)

from negschedule.auto import probe_steps, rollout_verified  # noqa: E402
from negschedule.experiments.bench_guidance import best_start  # noqa: E402


def last_run_from_zero(removed: np.ndarray) -> int | None:
    """The end of the run of starts, from step 0 on, where ``removed`` holds (None: not at step 0)."""
    if not removed[0]:
        return None
    k = 0
    while k + 1 < len(removed) and removed[k + 1]:
        k += 1
    return k


def last_true(removed: np.ndarray) -> int | None:
    hits = np.flatnonzero(removed)
    return int(hits[-1]) if len(hits) else None


def earlier(rule, steps: int):
    """``rule``'s start moved ``steps`` earlier (not before 0)."""
    return lambda a: None if (k := rule(a)) is None else max(0, k - steps)


def latest_every(a):
    return last_true(a.all(0))


def latest_any(a):
    return last_true(a.any(0))


# Rules on a prompt's answers (seeds x starts): the start, or None for "no start removes it" (then the latest).
RULES = {
    "every image, from 0 on": lambda a: last_run_from_zero(a.all(0)),
    "any image, from 0 on": lambda a: last_run_from_zero(a.any(0)),
    "latest where every image": latest_every,
    "latest where any image": latest_any,
    "latest where every image, - 1": earlier(latest_every, 1),
    "latest where any image, - 1": earlier(latest_any, 1),
    "latest where any image, - 2": earlier(latest_any, 2),
    "majority of images, latest": lambda a: last_true(a.mean(0) >= 0.5),
    "step 0 if it removes, else latest": lambda a: 0 if a[:, 0].any() else None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", help="study_scale_with_negative.py's JSON files")
    args = parser.parse_args()
    sets = []
    for path in args.records:
        data = json.loads(Path(path).read_text())
        records, base = data["records"], str(data["args"]["guidance_scale"])
        by_prompt = defaultdict(list)
        for r in records:
            by_prompt[r["prompt"]].append(r)
        sets.append((Path(path).stem, records, by_prompt, base, float(data["args"]["guidance_scale"]), int(data["args"]["steps"])))
    print("removal / SSIM minus start 0's at the standard scale, within one step of its oracle; * = the second target met on every set")

    def row(label: str, choose) -> None:
        """``choose(by_prompt, base, scales, latest)`` -> {prompt: (start, scale key)}."""
        cells_text, met = [], True
        for name, records, by_prompt, base, g, steps in sets:
            latest = len(records[0]["cells"][base]) - 1
            chosen = choose(by_prompt, base, [float(s) for s in records[0]["cells"]], latest, g, steps)
            cells = [r["cells"][chosen[r["prompt"]][1]][chosen[r["prompt"]][0]] for r in records]
            ref = [r["cells"][base][0] for r in records]
            removal = np.mean([not c["present"] for c in cells if c["baseline_present"]]) - np.mean([not c["present"] for c in ref if c["baseline_present"]])
            ssim = np.mean([c["ssim"] for c in cells]) - np.mean([c["ssim"] for c in ref])
            within = []
            for prompt, rs in by_prompt.items():
                absent = [float(np.mean([not r["cells"][base][k]["present"] for r in rs])) for k in range(latest + 1)]
                ssims = [float(np.mean([r["cells"][base][k]["ssim"] for r in rs])) for k in range(latest + 1)]
                within.append(abs(chosen[prompt][0] - best_start(absent, ssims)) <= 1)
            met &= bool(removal >= 0 and ssim > 0)
            cells_text.append(f"{name} {removal:+.3f} / {ssim:+.3f} / {np.mean(within):.2f}")
        print(f"  {label:52}{'*' if met else ' '} " + "  ".join(cells_text))

    for scale in ("standard", "12.5"):
        for label, rule in RULES.items():
            def choose(by_prompt, base, scales, latest, g, steps, rule=rule, scale=scale):
                key = base if scale == "standard" else str(float(scale))
                out = {}
                for prompt, rs in by_prompt.items():
                    start = rule(np.array([r["lookahead"][key] for r in rs], dtype=bool))
                    out[prompt] = (latest if start is None else start, key)
                return out
            row(f"{label}, at {scale}", choose)

    for rounding in ("nearest", "next up"):
        def compensated(by_prompt, base, scales, latest, g, steps, rounding=rounding):
            """The verified per-prompt rollout (look-ahead at the standard scale), then g N / (N - k)."""
            out = {}
            for prompt, rs in by_prompt.items():
                start, _, _ = lock_step([r["lookahead"][base] for r in rs], rollout_verified, probe_steps((0.3, 0.7), latest), latest)
                want = g * steps / (steps - start)
                up = [s for s in scales if s >= want - 1e-9]
                scale = min(scales, key=lambda s: abs(s - want)) if rounding == "nearest" or not up else min(up)
                out[prompt] = (start, str(scale))
            return out
        row(f"verified, per prompt, g N / (N - k) ({rounding})", compensated)


if __name__ == "__main__":
    main()
