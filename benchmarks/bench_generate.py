"""generate(negative_start=k) against the stock pipeline on the same inputs, side by side in one run.

Both calls make the same number of model evaluations (CFG on every step), so the ratio measures
negschedule's own overhead: planning, the per-pass callback, and one extra text encoding at the
switch. Runs alternate (stock, ours, stock, ours, ...) so machine noise hits both alike; the figure
is the ratio of medians. Target: <= 1.03.

    python benchmarks/bench_generate.py [--model PATH] [--steps 20] [--start 5] [--repeats 15]

``--start`` takes what ``negschedule generate --negative-start`` takes: ``percent:0.25`` measures a
noise-level start, which resolves to its step against a copy of the scheduler on every call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import negschedule as ns
from negschedule.schedule import parse_step_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--start", type=lambda text: parse_step_value(text, "start"), default=5,
                        help="a step, a fraction (0.25) or a noise level (percent:0.25, sigma:3.0)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output-type", default="pil", help="'latent' leaves the VAE out of both timings")
    args = parser.parse_args()

    pipe = ns.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt="a red circle and a blue square", num_inference_steps=args.steps, output_type=args.output_type)

    def stock():
        return pipe(negative_prompt="blue square", generator=torch.Generator().manual_seed(0), **common)

    def ours():
        return ns.generate(
            pipe, negative_prompt="blue square", negative_start=args.start, generator=torch.Generator().manual_seed(0), **common
        )

    stock(), ours()  # warm-up: first-call allocations and lazy imports out of the figures
    times = {"stock": [], "negschedule": []}
    for _ in range(args.repeats):
        for name, fn in (("stock", stock), ("negschedule", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model or "embedded default",
        "steps": args.steps,
        "negative_start": str(args.start),
        "repeats": args.repeats,
        "median_s": med,
        "ratio_of_medians": med["negschedule"] / med["stock"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
