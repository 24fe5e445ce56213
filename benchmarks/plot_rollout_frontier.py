"""Plot removal against structure kept: the constant starts, the rollout rules, and their ceiling.

One panel per recorded ``study_rollout.py`` set: the line of constant starts 0..max_start (start 0
is the stock negative prompt), the rollout rules per prompt (midpoint and verified, 2-jump
look-ahead), and the same rules replayed on the truth (a perfect look-ahead: the ceiling of the
search itself). A rule above and to the right of start 0 would meet the second target of
``bench-guidance``.

    python benchmarks/plot_rollout_frontier.py docs/results/rollout-study/*.json --out docs/img/rollout_frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from negschedule.auto import probe_steps, rollout_decision, rollout_verified

RULES = (  # label, decision, probes as fractions of the latest start, marker
    ("midpoint", rollout_decision, (0.3, 0.7), "o"),
    ("verified", rollout_verified, (0.3, 0.7), "s"),
    ("verified, probes 0.2/0.5", rollout_verified, (0.2, 0.5), "D"),
)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rollout_policies import fixed, score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--out", default="rollout_frontier.png")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(args.studies), figsize=(4.2 * len(args.studies), 4), squeeze=False)
    for ax, path in zip(axes[0], args.studies):
        study = json.load(open(path))
        records, steps = study["records"], study["args"]["steps"]
        latest = len(records[0]["truth"]) - 1
        line = [fixed(records, k) for k in range(latest + 1)]
        ax.plot([p["ssim"] for p in line], [p["removal"] for p in line], "-", color="0.6", marker=".", label="constant start k")
        for k in (0, 2, 4, latest):
            ax.annotate(str(k), (line[k]["ssim"], line[k]["removal"]), textcoords="offset points", xytext=(3, 3), fontsize=7, color="0.4")
        for (label, decide, fractions, marker), colour in zip(RULES, ("tab:blue", "tab:orange", "tab:green")):
            probes = probe_steps(fractions, latest)
            real = score(records, decide, probes, 2, True, steps)
            ideal = score(records, decide, probes, 2, True, steps, truth=True)
            ax.plot(real["ssim"], real["removal"], marker, color=colour, label=f"{label} (2-jump look-ahead)")
            ax.plot(ideal["ssim"], ideal["removal"], marker, mfc="none", color=colour, label=f"{label} (perfect look-ahead)")
            ax.annotate("", (ideal["ssim"], ideal["removal"]), (real["ssim"], real["removal"]),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=0.8))
        ax.axhline(line[0]["removal"], color="0.8", lw=0.8, ls="--")
        ax.set_title(f"{Path(path).stem} ({len(records)} images)", fontsize=9)
        ax.set_xlabel("SSIM to the no-negative image")
        ax.set_ylabel("removal success")
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.suptitle("Per-prompt rollout starts against constant starts (dashed: start 0's removal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
