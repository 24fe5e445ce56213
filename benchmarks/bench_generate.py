"""generate(negative_start=k) against the stock pipeline on the same inputs, side by side in one run.

Both calls make the same number of model evaluations (CFG on every step), so the ratio measures
negschedule's own overhead: planning, the per-pass callback, and one extra text encoding at the
switch. Runs alternate (stock, ours, stock, ours, ...) so machine noise hits both alike; the figure
is the ratio of medians. Target: <= 1.03.

    python benchmarks/bench_generate.py [--model PATH] [--steps 20] [--start 5] [--repeats 15]
    python benchmarks/bench_generate.py --model sd15-shaped --device cuda --dtype float16 --also auto --also perp_neg

``--start`` takes what ``negschedule generate --negative-start`` takes: ``percent:0.25`` measures a
noise-level start, which resolves to its step against a copy of the scheduler on every call.
``--model sd15-shaped`` is SD 1.5's architecture with random weights (``sd15_shaped.py``: what a GPU
figure on the real model would be, without downloading it). ``--also`` adds rows that run in the
engine, timed in the same alternation: ``auto`` (``negative_start="auto"``, the attention rule),
``perp_neg`` and ``negative_scale`` (three branches: 1.5x the evaluations of CFG by design).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import negschedule as ns
from negschedule.guidance import Guidance, GuidanceRule
from negschedule.schedule import parse_step_value
from sd15_shaped import load_benchmark_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--start", type=lambda text: parse_step_value(text, "start"), default=5,
                        help="a step, a fraction (0.25) or a noise level (percent:0.25, sigma:3.0)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output-type", default="pil", help="'latent' leaves the VAE out of both timings")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--dtype", default=None, help="e.g. float16 (default: as the model is stored)")
    parser.add_argument("--also", action="append", default=[], choices=["auto", "perp_neg", "negative_scale", "scale_with_negative"],
                        help="further rows, run in the engine (repeatable)")
    args = parser.parse_args()

    pipe = load_benchmark_pipeline(args.model, args.device, args.dtype)
    common = dict(prompt="a red circle and a blue square", num_inference_steps=args.steps, output_type=args.output_type)

    def stock():
        return pipe(negative_prompt="blue square", generator=torch.Generator().manual_seed(0), **common)

    def ours(**settings):
        settings.setdefault("negative_start", args.start)
        return ns.generate(pipe, negative_prompt="blue square", generator=torch.Generator().manual_seed(0), **common, **settings)

    rows = {"stock": stock, "negschedule": ours}
    for name in args.also:
        if name == "auto":
            rows[name] = lambda: ours(negative_start="auto")
        elif name == "scale_with_negative":  # the stock path with the scale changed where the negative starts
            rows[name] = lambda: ours(guidance_scale_with_negative=12.5)
        else:
            rows[name] = lambda rule=GuidanceRule.parse(name): ours(guidance=Guidance(rule), negative_start=0)

    cuda = args.device.startswith("cuda")

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()  # a latent output may still be in flight
        return time.perf_counter() - t0

    peak = {}
    for name, fn in rows.items():  # warm-up: first-call allocations, kernel selection and lazy imports out of the figures
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        fn()
        if cuda:
            peak[name] = torch.cuda.max_memory_allocated() / 2**20
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model or "embedded default",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "dtype": str(pipe.unet.dtype),
        "size": f"{pipe.unet.config.sample_size * pipe.vae_scale_factor}px",
        "steps": args.steps,
        "negative_start": str(args.start),
        "repeats": args.repeats,
        "median_s": med,
        "ratio_of_medians": med["negschedule"] / med["stock"],
        "ratios_to_stock": {name: med[name] / med["stock"] for name in rows if name != "stock"},
        "peak_cuda_memory_mib": peak or None,  # each row's first call, the weights included
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
