"""The picture of the shapes world at the top of docs/toyworld.md: scenes 0..15, captioned.

    python benchmarks/plot_world_scenes.py --out docs/img/toyworld_scenes.png
"""

from __future__ import annotations

import argparse

from PIL import Image

from negschedule.toyworld import caption, make_scene, render


SEEDS = range(16)


def scene_grid(seeds, columns: int = 8, scale: int = 3, gap: int = 6) -> Image.Image:
    """The scenes of ``seeds``, ``scale`` times enlarged (nearest neighbour), ``columns`` to a row on white."""
    tiles = [render(make_scene(s)).resize((32 * scale, 32 * scale), Image.Resampling.NEAREST) for s in seeds]
    side = 32 * scale
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * side + (columns - 1) * gap, rows * side + (rows - 1) * gap), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * (side + gap), (i // columns) * (side + gap)))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/img/toyworld_scenes.png")
    args = parser.parse_args()
    scene_grid(SEEDS).save(args.out)
    for s in SEEDS:
        print(s, caption(make_scene(s), s))


if __name__ == "__main__":
    main()
