"""What do ``auto``'s cheap signals look like, step by step, next to the oracle start?

For each prompt of a ``bench-guidance`` run (its summary.json names the prompts, the seeds and the
oracle starts), samples with the negative off up to ``max_start`` while recording the signals
``negative_start="auto"`` computes from the negative's own pass: the attention concentration of
the negative's tokens (share on the top 10% of the latent's pixels; uniform attention gives 0.10)
and the alignment ``cos(eps_neg - eps_u, eps_pos - eps_u)``. The attention rule is made never to
fire (threshold above 1), so every probed step is recorded. Prints one line per prompt and seed
(the oracle start, the image's own best start, the attention by step) and writes the traces to
``--out`` as JSON. Reads a model's statistics, not a rule's score: the rules are scored by
``bench-guidance --study``.

    python benchmarks/trace_auto_signals.py runs/bench-guidance/summary.json [--model DIR] [--out runs/auto-traces.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from negschedule.auto import AutoStart, Signal
from negschedule.guided import sample_guided
from negschedule.models import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", help="a bench-guidance summary.json (prompts, seeds, oracles)")
    parser.add_argument("--model", default=None, help="pipeline folder; default: the summary's model (the embedded one if none)")
    parser.add_argument("--out", default="runs/auto-traces.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    summary = json.load(open(args.summary))
    config = summary["config"]
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model or config["model"])
    pipe.set_progress_bar_config(disable=True)
    never = AutoStart(signal=Signal.ATTENTION, attention_threshold=2.0, max_start=config["max_start"])
    records = []
    for row in summary["prompts"]:
        res = sample_guided(pipe, None, config["seeds"], negative_prompt=row["negative"], negative_start="auto", auto=never,
                            prompt=row["prompt"], num_inference_steps=config["steps"],
                            guidance_scale=config["guidance_scale"], output_type="pil")
        for seed, own in zip(config["seeds"], row["image_oracles"]):
            trace = res.traces[seed]
            records.append({"prompt": row["prompt"], "negative": row["negative"], "kind": row["kind"], "seed": seed,
                            "oracle": row["oracle"], "own_best_start": own, "trace": trace})
            attention = " ".join(f"{t['attention']:.3f}" for t in trace if "attention" in t)
            print(f"{row['negative']:>14} seed {seed}  oracle {row['oracle']:>2}  own {own:>2}  attention: {attention}", flush=True)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
