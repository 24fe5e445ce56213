"""What a start decided once per prompt, from all of its images, would score on a bench-guidance run.

`auto` decides per image; the oracle of `bench-guidance` is per prompt (the best start over the
prompt's seeds). This reads the `summary.json` of one or more runs and scores, against that
oracle, rules that pool the per-image starts of a prompt after the fact:

* ``mean``: the rounded mean of the seeds' starts (how the bench scores `auto` today);
* ``min``: the earliest start any seed asked for - what one start shared by the prompt's images,
  taken as soon as the first image calls for it, would be;

for every auto candidate the run recorded, and the same two for the images' own best starts
(each seed's sweep known in advance: the ceilings of a per-image and of a pooled rule). With the
removal rate and SSIM that the pooled start gives (read from the run's own sweep of starts), next
to start 0's. Nothing is sampled: the figures are the run's.

    python benchmarks/pooled_starts.py runs/bench-guidance-moon-alone/summary.json [more ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pooled(starts: list[int], how: str) -> int:
    return min(starts) if how == "min" else round(sum(starts) / len(starts))


def score(prompts: list[dict], start_of) -> tuple[float, float, float]:
    """Share of prompts within one step of the oracle; removal and SSIM at the chosen starts (sweep means)."""
    chosen = [start_of(p) for p in prompts]
    within = sum(abs(s - p["oracle"]) <= 1 for s, p in zip(chosen, prompts)) / len(prompts)
    removal = sum(p["sweep_absent"][s] for s, p in zip(chosen, prompts)) / len(prompts)
    ssim = sum(p["sweep_ssim"][s] for s, p in zip(chosen, prompts)) / len(prompts)
    return within, removal, ssim


def report(path: Path) -> str:
    summary = json.loads(path.read_text())
    prompts = summary["prompts"]
    cfg = summary["config"]
    lines = [f"## {path} ({len(prompts)} prompts, seeds {cfg['seeds']}, model {cfg.get('model') or 'the embedded default'})", "",
             "| rule | pooled | within one step of the oracle | removal | SSIM to no negative |", "|---|---|---|---|---|"]
    row = lambda name, how, s: lines.append(f"| {name} | {how} | {s[0]:.2f} | {s[1]:.3f} | {s[2]:.3f} |")
    row("start 0", "-", score(prompts, lambda p: 0))
    row("oracle (sweep per prompt)", "-", score(prompts, lambda p: p["oracle"]))
    for how in ("mean", "min"):
        row("each image's own best start", how, score(prompts, lambda p: pooled(p["image_oracles"], how)))
    for name in prompts[0]["auto_starts"]:
        for how in ("mean", "min"):
            row(name, how, score(prompts, lambda p: pooled(p["auto_starts"][name], how)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="summary.json files of bench-guidance runs")
    args = parser.parse_args(argv)
    print("\n\n".join(report(p) for p in args.summaries))


if __name__ == "__main__":
    main()
