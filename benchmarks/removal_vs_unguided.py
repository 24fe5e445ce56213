"""Does a negative naming a requested shape remove it where the model, unguided, would not draw it?

`toy eval`'s named-shape figure (a negative naming one of the two requested shapes, CFG from step 0)
varies between training seeds and trades against drawing both shapes (docs/toyworld.md). One
reading of `eps_neg + w (eps_pos - eps_neg)`: where the negative names a requested shape, the two
predictions agree on it, the guided difference carries little of it, and what is left to draw it
is roughly the negative's own prediction at weight 1 - the model *unguided*. This script checks
that reading on `toy eval`'s first caption set and seeds: for each two-shape caption it samples the
image at guidance 1 (the prompt alone), at the model's guidance with no negative, and with the
negative from step 0, and reports how often the named shape is removed where the unguided image
draws it and where it does not, and by the kind of pair and the named colour.

    python benchmarks/removal_vs_unguided.py [--model FOLDER] [--n 200] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from negschedule.toyworld.detector import detect
from negschedule.toyworld.evaluate import EvalConfig, _load, sample, two_object_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="pipeline folder; default: the shipped model")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--scene-seed", type=int, default=1_000_000)
    parser.add_argument("--image-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = EvalConfig(model=args.model, n=args.n, scene_seed=args.scene_seed, image_seed=args.image_seed)
    pipe = _load(cfg)
    rows = two_object_set(cfg)
    prompts = [r[0] for r in rows]
    negated = [r[1][i % 2] for i, r in enumerate(rows)]  # as toy eval names them
    seeds = [cfg.image_seed + i for i in range(cfg.n)]

    def named_present(images):
        return np.array([name in {o.name for o in detect(im)} for name, im in zip(negated, images)])

    unguided = named_present(sample(pipe, prompts, seeds, replace(cfg, guidance_scale=1.0)))
    guided = named_present(sample(pipe, prompts, seeds, cfg))
    removed = ~named_present(sample(pipe, prompts, seeds, cfg, negative=negated, start=0))
    # Where the misses are: the kind of pair (two shapes of one kind, of one colour, or neither) and the named colour.
    kinds = ["same shape" if x.split()[1] == y.split()[1] else "same colour" if x.split()[0] == y.split()[0] else "differ"
             for x, y in (r[1] for r in rows)]
    groups = {f"{label}: {value}": np.array([k == value for k in keys])
              for label, keys in (("pair", kinds), ("named colour", [n.split()[0] for n in negated]))
              for value in sorted(set(keys))}
    figures = {
        "model": args.model or "shipped",
        "n": cfg.n,
        "named_present_unguided": float(unguided.mean()),
        "named_present_guided": float(guided.mean()),
        "named_removed": float(removed.mean()),
        "removed_where_unguided_draws_it": float(removed[unguided].mean()) if unguided.any() else None,
        "removed_where_unguided_does_not": float(removed[~unguided].mean()) if (~unguided).any() else None,
        "removed_by": {name: float(removed[members].mean()) for name, members in groups.items()},
        "images_by": {name: int(members.sum()) for name, members in groups.items()},
    }
    print(json.dumps(figures, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
