"""A full critical-step sweep through the prefix-sharing engine against a loop of generate() calls.

Both produce the same images, bit for bit: the no-negative image and one image per start step
0..T-1 (T + 1 images, one seed). The loop evaluates the model 2T times per image; the sweep shares
every no-negative prefix, about 2(T + T(T+1)/2) evaluations in all. Runs alternate (loop, sweep,
loop, sweep, ...) so machine noise hits both alike; the figure is the ratio of medians of wall
time. Target: <= 0.6. Peak memory is measured in a fresh child process per mode (peak resident
set on CPU, next to a process that only loads the model; peak allocated CUDA memory on a GPU), so
the modes do not share one high-water mark. ``--batched`` also times the engine's two batching
modes: ``calibrated`` (groups of branches per UNet call, in sizes checked bit-identical here) and
``all`` (one call per pass, equal to ~1e-6 only).

    python benchmarks/bench_sweep.py [--model PATH] [--steps 20] [--repeats 5] [--batched] [--device cuda]
    python benchmarks/bench_sweep.py --model sd15-shaped --device cuda --dtype float16 --batched   # SD 1.5's shapes (sd15_shaped.py)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

import negschedule as ns

PROMPT = "a red circle and a blue square"
NEGATIVE = "blue square"


def load(args):
    from sd15_shaped import load_benchmark_pipeline

    return load_benchmark_pipeline(args.model, args.device, args.dtype, args.scheduler)


def loop(pipe, steps: int, output_type: str):
    """The baseline: one generate() call per image."""
    common = dict(prompt=PROMPT, num_inference_steps=steps, output_type=output_type)
    images = [ns.generate(pipe, generator=torch.Generator().manual_seed(0), **common).images[0]]
    for k in range(steps):
        images.append(ns.generate(pipe, negative_prompt=NEGATIVE, negative_start=k,
                                  generator=torch.Generator().manual_seed(0), **common).images[0])
    return images, (steps + 1) * 2 * steps


def sweep(pipe, steps: int, output_type: str, batching: str = "per_branch"):
    """The engine: the same images from one sweep."""
    from negschedule.engine import Batching, Engine, EngineConfig, start_sweep_runs

    engine = Engine(pipe, EngineConfig(batching=Batching(batching)), prompt=PROMPT, num_inference_steps=steps,
                    output_type=output_type)
    result = engine.sample(start_sweep_runs(NEGATIVE, range(steps), steps), [0])
    return [result.image(0, r)[0] for r in range(steps + 1)], result.model_evaluations


def _same(a, b) -> bool:
    import numpy as np

    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def peak_memory(args, mode: str) -> float:
    """Peak memory in MiB of one run of ``mode`` in a fresh process."""
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--output-type", args.output_type]
    for flag, value in (("--model", args.model), ("--scheduler", args.scheduler), ("--device", args.device), ("--dtype", args.dtype)):
        if value:
            cmd += [flag, value]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def child(args) -> None:
    import resource

    pipe = load(args)
    cuda = bool(args.device) and args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Loading (imports, weights) sets a high-water mark of its own: on Linux, reset it so the
    # figure is this mode's peak (writing 5 to clear_refs resets VmHWM to the current RSS).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    if args.child == "loop":
        loop(pipe, args.steps, args.output_type)
    elif args.child != "load":
        sweep(pipe, args.steps, args.output_type, batching=args.child.removeprefix("sweep_") if "_" in args.child else "per_branch")
    if cuda:
        print(torch.cuda.max_memory_allocated() / 2**20)
    elif reset:
        status = open("/proc/self/status").read()
        print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--scheduler", default=None, help="default: the model's own")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-type", default="pil", help="'latent' leaves the VAE out of both timings")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads")
    parser.add_argument("--dtype", default=None, help="e.g. float16; default: as the model is stored")
    parser.add_argument("--batched", action="store_true",
                        help="also time Batching.CALIBRATED (bit-exact where checked) and Batching.ALL (~1e-6)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    pipe = load(args)
    T = args.steps
    reference, loop_evals = loop(pipe, T, args.output_type)  # warm-up, and the images to compare with
    images, sweep_evals = sweep(pipe, T, args.output_type)
    modes = {"loop": lambda: loop(pipe, T, args.output_type), "sweep": lambda: sweep(pipe, T, args.output_type)}
    if args.batched:
        modes["sweep_calibrated"] = lambda: sweep(pipe, T, args.output_type, batching="calibrated")
        modes["sweep_all"] = lambda: sweep(pipe, T, args.output_type, batching="all")
    times = {name: [] for name in modes}
    sync = torch.cuda.synchronize if args.device and args.device.startswith("cuda") else (lambda: None)
    for _ in range(args.repeats):
        for name, fn in modes.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model or "embedded default",
        "scheduler": type(pipe.scheduler).__name__,
        "device": torch.cuda.get_device_name() if pipe.device.type == "cuda" else str(pipe.device),
        "dtype": str(pipe.unet.dtype),
        "steps": T,
        "images": T + 1,
        "repeats": args.repeats,
        "bit_identical": _same(images, reference),
        "model_evaluations": {"loop": loop_evals, "sweep": sweep_evals, "ratio": sweep_evals / loop_evals},
        "median_s": med,
        "ratio_of_medians": med["sweep"] / med["loop"],
        "target": 0.6,
        # "load": a process that only loads the model, the floor the others stand on.
        "peak_memory_mib": {name: peak_memory(args, name) for name in ["load", *modes]},
        "torch_threads": torch.get_num_threads(),
    }
    if args.batched:
        calibrated, _ = sweep(pipe, T, args.output_type, batching="calibrated")
        result["bit_identical_calibrated"] = _same(calibrated, reference)
        result["ratio_of_medians_calibrated"] = med["sweep_calibrated"] / med["loop"]
        result["ratio_of_medians_all"] = med["sweep_all"] / med["loop"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
