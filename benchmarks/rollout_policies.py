"""Score ROLLOUT search policies offline, on the answers ``study_rollout.py`` recorded.

``study_rollout.py`` records, per image and every start k in 0..max_start, the truth (does a
negative from step k remove the concept in the 20-step image?), the SSIM of that image to the
no-negative one, and the look-ahead's answer for 1, 2 and 3 jumps. A search policy only ever asks
the look-ahead at the steps it probes, so every policy can be replayed on those answers and scored
the way ``bench-guidance`` scores ``auto``: removal success (among images whose no-negative image
shows the concept), SSIM, the share of prompts within one step of the oracle (the start with the
most removals over the seeds, then the best SSIM), and the cost in model evaluations.

Policies: ``midpoint`` (``auto.rollout_decision``: the midpoint between the last probe that removes
and the first that does not) and ``verified`` (``auto.rollout_verified``: the last probe whose
look-ahead removes, i.e. a start the look-ahead checked), each per image or per prompt (the
earliest start of the prompt's images).

    python benchmarks/rollout_policies.py docs/results/rollout-study/bench-20x2.json [more.json ...] [--probes 0.2,0.5] [--jumps truth,2]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from negschedule.auto import pooled_start, probe_steps, rollout_decision, rollout_extra, rollout_extra_bound, rollout_gate, rollout_verified
from negschedule.experiments.bench_guidance import best_start


def lock_step(answer_lists, decide, probes, latest):
    """Replay ``guided._rollout`` on recorded answers: images in lock step, each searching as far as
    the steps sampled so far allow, until ``auto.pooled_start`` knows the start (one image: its own
    search). Returns the start, each image's asked probes and the step the start was known at."""
    asked = [dict() for _ in answer_lists]
    for step in range(latest + 1):
        for known, answers in zip(asked, answer_lists):
            while True:
                move, target = decide(probes, latest, known)
                if move == "start" or target > step:
                    break
                known[target] = bool(answers[target])
        start = pooled_start(probes, latest, asked, decide)
        if start is not None:
            return start, asked, step
    raise AssertionError("every search settles by the latest start")


def score(records, decide, probes, jumps, per_prompt, steps, truth=False, latest=None):
    """A policy's removal, SSIM, share of prompts within one step of the oracle, mean start and cost
    (in plain generations), replayed on the ``jumps``-jump answers, or on the truth. ``latest``: the
    latest start the policy may take (``AutoStart.max_start`` times the steps; default: the last
    recorded); the oracle is always taken over every recorded start, as ``bench-guidance`` does."""
    recorded = len(records[0]["truth"]) - 1
    latest = recorded if latest is None else latest
    by_prompt = defaultdict(list)
    for r in records:
        by_prompt[r["prompt"]].append(r)
    removed, ssims, hits, starts, costs = [], [], [], [], []
    for rs in by_prompt.values():
        answers = [r["truth"] if truth else r["predicted"][str(jumps)] for r in rs]
        groups = [list(range(len(rs)))] if per_prompt else [[i] for i in range(len(rs))]
        chosen = [0] * len(rs)
        for group in groups:
            start, asked, now = lock_step([answers[i] for i in group], decide, probes, latest)
            for i, known in zip(group, asked):
                chosen[i] = start
                costs.append(1 + rollout_extra(len(known), start, now, jumps) / (2 * steps))
        absent = [float(np.mean([r["truth"][k] for r in rs])) for k in range(recorded + 1)]
        mean_ssim = [float(np.mean([r["ssim"][k] for r in rs])) for k in range(recorded + 1)]
        oracle = best_start(absent, mean_ssim)
        hits.append(abs(round(float(np.mean(chosen))) - oracle) <= 1)
        for r, k in zip(rs, chosen):
            if r["baseline_present"]:
                removed.append(r["truth"][k])
            ssims.append(r["ssim"][k])
            starts.append(k)
    return dict(removal=np.mean(removed), ssim=np.mean(ssims), within=np.mean(hits), start=np.mean(starts), cost=np.mean(costs))


def fixed(records, k):
    present = [r for r in records if r["baseline_present"]]
    return dict(removal=np.mean([r["truth"][k] for r in present]), ssim=np.mean([r["ssim"][k] for r in records]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--probes", action="append", default=None, help="fractions of the latest start, e.g. 0.3,0.7 (repeatable)")
    parser.add_argument("--jumps", default="truth,2,3", help="the answers to replay: truth (a perfect look-ahead), 1, 2, 3")
    parser.add_argument("--gate-latest", default="6,10", help="the gate rule's latest starts to replay (max_start 0.3 and 0.5 at 20 steps)")
    args = parser.parse_args()
    probe_sets = [tuple(float(f) for f in p.split(",")) for p in (args.probes or ["0.3,0.7", "0.2,0.5", "0.2,0.5,0.8", "0.2,0.4,0.7"])]
    for path in args.studies:
        study = json.load(open(path))
        records, steps = study["records"], study["args"]["steps"]
        latest = len(records[0]["truth"]) - 1
        print(f"\n{path}: {len(records)} images, starts 0..{latest}")
        for k in (0, 2, 4):
            f = fixed(records, k)
            print(f"  start {k:<2}                                   removal {f['removal']:.3f}  SSIM {f['ssim']:.3f}")
        def rows(label, decide, probes, policy_latest):
            """One line per pooling and look-ahead: the policy replayed and its cost bound."""
            for per_prompt in (False, True):
                for jumps in [j if j == "truth" else int(j) for j in args.jumps.split(",")]:
                    j = 2 if jumps == "truth" else jumps
                    s = score(records, decide, probes, j, per_prompt, steps, truth=jumps == "truth", latest=policy_latest)
                    bound = 1 + rollout_extra_bound(probes, policy_latest, j, decide) / (2 * steps)
                    print(f"  {label} {'prompt' if per_prompt else 'image ':6} {str(jumps):5} removal {s['removal']:.3f}  "
                          f"SSIM {s['ssim']:.3f}  within {s['within']:.2f}  start {s['start']:.2f}  cost {s['cost']:.2f}x "
                          f"(at most {bound:.2f}x per image)")

        for fractions in probe_sets:
            probes = probe_steps(fractions, latest)
            for name, decide in (("midpoint", rollout_decision), ("verified", rollout_verified)):
                rows(f"{name:8} probes {str(probes):12}", decide, probes, latest)
        # The gate (auto.rollout_gate) asks one look-ahead, from step 0; its probes do not matter.
        for gate_latest in (int(v) for v in args.gate_latest.split(",")):
            rows(f"gate     latest {gate_latest:<5}      ", rollout_gate, (), gate_latest)

if __name__ == "__main__":
    main()
