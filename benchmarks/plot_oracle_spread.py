"""Picture of a bench-guidance run's starts per prompt: each seed's own best start, the prompt oracle, auto.

    python benchmarks/plot_oracle_spread.py runs/bench-guidance-40x4/summary.json docs/img/guidance_oracle_spread.png

One column per prompt (two-shape prompts, then the moon's): grey dots are the seeds' own best
starts (each image's sweep), the black bar the prompt's oracle, red crosses auto's starts. Where the
dots of one column scatter, no rule that decides per image can land on the prompt's oracle.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(summary: dict, path: str) -> None:
    prompts = sorted(summary["prompts"], key=lambda p: p["negative"] == "moon")
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(prompts)), 3.2), dpi=120)
    for x, p in enumerate(prompts):
        own, auto = p["image_oracles"], p["auto_starts"]["auto"]
        ax.scatter([x - 0.15] * len(own), own, s=22, color="0.6", label="each seed's own best start" if x == 0 else None)
        ax.scatter([x + 0.15] * len(auto), auto, s=22, marker="x", color="tab:red", label="auto" if x == 0 else None)
        ax.hlines(p["oracle"], x - 0.35, x + 0.35, color="black", lw=2, label="prompt oracle" if x == 0 else None)
    moon_from = next((i for i, p in enumerate(prompts) if p["negative"] == "moon"), len(prompts))
    ax.axvline(moon_from - 0.5, color="0.8", lw=1)
    ax.set_xticks([moon_from / 2 - 0.5, (moon_from + len(prompts)) / 2 - 0.5], ["negative names a requested shape", 'negative "moon"'])
    ax.set_ylabel("start step")
    ax.set_xlim(-0.7, len(prompts) - 0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_oracle_spread.py SUMMARY_JSON OUT_PNG")
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
