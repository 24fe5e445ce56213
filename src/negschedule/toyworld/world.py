"""The shapes world: its vocabulary, seeded scenes (what is where) and their pictures and captions.

A scene is a background and one to three coloured shapes, drawn antialiased at 32x32. Two
correlations mimic the cases of arXiv:2406.02965: the scene word "night" gives a dark background
and, 90% of the time, a moon top right that only 30% of captions name (Paris and the Eiffel tower);
squares carry a dark dot 80% of the time that only 30% of captions name (glasses on a face).
How often each thing happens is a ``WorldConfig``; named variants of it (``WORLDS``) were
probed as remedies for weak negatives (docs/toyworld.md, benchmarks/probe_world.py). The shipped
model's world is "moon-alone": the first world plus 5% of scenes that show the moon alone,
captioned by its word, so that the negative "moon" has pictures of its own (with them, the
negative removes the implied moon in 84% of night pictures instead of 40.5%). "alone-big" (lone
shapes as close-ups too) and "alone-mid" (milder close-ups) were also trained in full and not
shipped (docs/toyworld.md).
Everything is a pure function of the world and an integer seed, so the training set, the held-out
evaluation captions and the tests' ground truth are reproducible anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # image side in pixels
_SS = 4  # supersampling factor: shapes are drawn 4x larger and box-filtered down, for soft edges

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
}
# The moon has a colour of its own so that the detector tells it from a white or blue shape.
MOON_RGB = (160, 185, 225)
DOT_RGB = (15, 15, 15)
NIGHT_RGB = (14, 18, 42)
DAY_BACKGROUNDS = ((128, 128, 128), (95, 120, 140), (140, 122, 96))

SIZES = {"small": (3.5, 4.5), "big": (5.5, 7.0)}  # half-width range in pixels
MOON_BOX = (21, 2, 30, 11)  # where the moon sits (x0, y0, x1, y1): top right
IMPLIED_WORDS = ("moon", "dot")  # words for objects that a scene implies without naming them


@dataclass(frozen=True)
class WorldConfig:
    """How often things happen in the world: the data set is a pure function of this and the scene seed.

    The defaults are the first model's world ("first"). The fields after ``p_name_moon`` are variants
    probed as remedies for weak negatives (``WORLDS``, docs/toyworld.md); at their defaults they draw
    nothing, so the defaults' scenes are the first model's data set, draw for draw.
    """

    p_night: float = 0.35  # share of night scenes
    p_moon_at_night: float = 0.9  # the implied object: a moon in 90% of night scenes
    p_name_moon: float = 0.3  # share of captions with a moon that name it
    p_moon_alone: float = 0.0  # share of scenes that show only the moon, captioned by its word ("the moon", "moon")
    moon_alone_scale: float = 1.0  # that lone moon's size relative to MOON_BOX (anchored at its top-right corner)
    p_big: tuple[float, float, float] = (0.5, 0.5, 0.5)  # share of big shapes in scenes of one, two, three shapes
    big_alone: tuple[float, float] = SIZES["big"]  # half-width range of a big shape alone in its scene (a close-up)
    p_day_moon: float = 0.0  # a moon in the day sky, always named: gives the word "moon" a meaning of its own
    p_partial: float = 0.0  # share of captions that name only part of the scene (real captions are incomplete)
    p_name_absent: float = 0.0  # share of shape captions that also name a shape the picture lacks (untruthful captions)
    p_dot_on_square: float = 0.8  # the usual attribute: most squares wear a dot
    p_name_dot: float = 0.3  # share of captions with a dotted square that name the dot
    object_count_p: tuple[float, float, float] = (0.35, 0.5, 0.15)  # probabilities of one, two, three shapes


# The worlds by name (``toy train --world``, benchmarks/probe_world.py); each is "first" plus its changes.
WORLDS: dict[str, WorldConfig] = {
    "first": WorldConfig(),  # the first model's world (benchmarks/models/toyworld-first)
    "day-moon": WorldConfig(p_day_moon=0.1, p_big=(0.85, 0.5, 0.3)),
    "day-moon-rates": WorldConfig(p_day_moon=0.1, p_big=(0.85, 0.5, 0.3), p_moon_at_night=0.85, p_name_moon=0.4),
    "partial": WorldConfig(p_day_moon=0.1, p_big=(0.85, 0.5, 0.3), p_partial=0.2),
    "no-singles": WorldConfig(object_count_p=(0.0, 0.75, 0.25)),
    "moon-alone": WorldConfig(p_moon_alone=0.05),  # the shipped model's world
    "moon-alone-10": WorldConfig(p_moon_alone=0.1),
    "moon-closeup": WorldConfig(p_moon_alone=0.05, moon_alone_scale=1.6),
    "alone-big": WorldConfig(p_moon_alone=0.05, p_big=(0.85, 0.5, 0.5), big_alone=(8.0, 11.0)),
    "alone-mid": WorldConfig(p_moon_alone=0.05, p_big=(0.85, 0.5, 0.5), big_alone=(7.0, 9.0)),  # a milder close-up
    # moon-alone, and 10% of shape captions name one more shape that is not drawn: a prompt's shape may
    # then be missing, which is what lets a negative naming it remove it (docs/toyworld.md, "Limits")
    "absent-named": WorldConfig(p_moon_alone=0.05, p_name_absent=0.1),
    "absent-named-5": WorldConfig(p_moon_alone=0.05, p_name_absent=0.05),  # the same at half the rate (trained in full)
}
SHIPPED_WORLD = "moon-alone"  # the world of the model in src/negschedule/assets/toyworld


def world_named(name: str, argument: str = "world") -> WorldConfig:
    """The world called ``name``; an unknown name is an InputError naming ``argument``."""
    if name not in WORLDS:
        from ..errors import InputError

        raise InputError(argument, name, "unknown world; known: " + ", ".join(WORLDS))
    return WORLDS[name]


VOCABULARY = (
    ("a", "the", "and", "with", "at", "in", "of", "day", "night", "moon", "dot", "small", "big")
    + tuple(COLOURS)
    + SHAPES
)


@dataclass(frozen=True)
class Object:
    """One thing in a picture: ``shape`` (a shape name or "moon"), ``colour``, pixel ``box`` (x0, y0, x1, y1)."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    dot: bool = False  # a square's dot (the attribute that usually comes with squares)

    @property
    def name(self) -> str:
        return "moon" if self.shape == "moon" else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """What a picture shows: its background, its shapes, whether it is night and has a moon."""

    seed: int
    background: tuple[int, int, int]
    objects: tuple[Object, ...]
    night: bool
    moon: bool
    size_words: tuple[str, ...] = field(default=())  # "small"/"big" per object, for captions
    moon_scale: float = 1.0  # the moon's size relative to MOON_BOX (a lone moon may be bigger)

    @property
    def truth(self) -> list[Object]:
        """Every object the detector should find, the moon included."""
        found = list(self.objects)
        if self.moon:
            found.append(Object("moon", "moon", moon_pixel_box(self.moon_scale)))
        return found


def _moon_box(scale: float = 1.0) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = MOON_BOX
    return x1 - scale * (x1 - x0), y0, x1, y0 + scale * (y1 - y0)


def _draw_moon(draw: ImageDraw.ImageDraw, background, scale: float = 1.0) -> None:
    x0, y0, x1, y1 = (v * _SS for v in _moon_box(scale))
    draw.ellipse((x0, y0, x1, y1), fill=MOON_RGB)
    bite = 0.38 * (x1 - x0)  # a crescent: the disc minus a disc shifted to the lower left
    draw.ellipse((x0 - bite, y0 + bite * 0.5, x1 - bite, y1 + bite * 0.5), fill=background)


def moon_pixel_box(scale: float = 1.0) -> tuple[int, int, int, int]:
    """The box of the pixels the crescent covers at least half of (what a detector can see)."""
    big = Image.new("RGB", (SIZE * _SS, SIZE * _SS), (0, 0, 0))
    _draw_moon(ImageDraw.Draw(big), (0, 0, 0), scale)
    coverage = np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BOX))[:, :, 0] / MOON_RGB[0]
    ys, xs = np.nonzero(coverage >= 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlaps(a, b, gap: int = 1) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _place(rng: np.random.Generator, size_word: str, taken: list,
           half_range: tuple[float, float] | None = None) -> tuple[int, int, int, int] | None:
    """A free pixel box for a shape of ``size_word``, by rejection sampling; None when the scene is too full.

    ``half_range`` overrides the size word's half-width range (a lone shape's close-up). Boxes are
    compared as the pixels they touch, with one whole free pixel between any two, so that
    two shapes never share a blended edge pixel.
    """
    for _ in range(100):
        half = float(rng.uniform(*(half_range or SIZES[size_word])))
        cx, cy = rng.uniform(half + 1, SIZE - half - 1, size=2)
        box = (int(np.floor(cx - half)), int(np.floor(cy - half)), int(np.ceil(cx + half)), int(np.ceil(cy + half)))
        if not any(_overlaps(box, t) for t in taken):
            return box
    return None


def make_scene(seed: int, n_objects: int | None = None, night: bool | None = None,
               world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> Scene:
    """The scene of ``seed`` in ``world``; ``n_objects`` and ``night`` force those choices (for evaluation sets)."""
    rng = np.random.default_rng(seed)
    # The lone-moon variant draws only when on (and never for the evaluation sets, which force n_objects).
    if world.p_moon_alone and n_objects is None and night is None and rng.random() < world.p_moon_alone:
        return Scene(seed, NIGHT_RGB, (), True, True, (), world.moon_alone_scale)
    if night is None:
        night = bool(rng.random() < world.p_night)
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3], p=world.object_count_p))
    # A day scene draws for a moon only when that variant is on: off, the draws are the shipped data set's.
    moon = (night or world.p_day_moon > 0) and bool(
        rng.random() < (world.p_moon_at_night if night else world.p_day_moon))
    background = NIGHT_RGB if night else DAY_BACKGROUNDS[int(rng.integers(len(DAY_BACKGROUNDS)))]
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    picks = rng.choice(len(kinds), size=n_objects, replace=False)
    taken = [MOON_BOX] if moon else []
    objects, size_words = [], []
    for k in picks:
        colour, shape = kinds[int(k)]
        size_word = "small" if rng.random() < 1 - world.p_big[n_objects - 1] else "big"
        alone = world.big_alone if n_objects == 1 and size_word == "big" else None
        box = _place(rng, size_word, taken, alone) or _place(rng, "small", taken)
        if box is None:  # no room left: the scene keeps the shapes it already has
            continue
        if box[2] - box[0] < 2 * SIZES["big"][0]:  # the fallback placed a small one
            size_word = "small"
        taken.append(box)
        dot = shape == "square" and bool(rng.random() < world.p_dot_on_square)
        objects.append(Object(shape, colour, box, dot))
        size_words.append(size_word)
    return Scene(seed, background, tuple(objects), night, moon, tuple(size_words))


def render(scene: Scene) -> Image.Image:
    """The 32x32 RGB picture of ``scene``, drawn at 4x and box-filtered down (soft edges)."""
    big = Image.new("RGB", (SIZE * _SS, SIZE * _SS), scene.background)
    draw = ImageDraw.Draw(big)
    s = _SS
    if scene.moon:
        _draw_moon(draw, scene.background, scene.moon_scale)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * s for v in obj.box)
        rgb = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)
        if obj.dot:
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 0.2 * (x1 - x0)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=DOT_RGB)
    return big.resize((SIZE, SIZE), Image.Resampling.BOX)


def _object_phrase(obj: Object, size_word: str, rng: np.random.Generator, name_dot: bool) -> str:
    words = []
    if rng.random() < 0.7:
        words.append("a")
    if rng.random() < 0.4:
        words.append(size_word)
    words += [obj.colour, obj.shape]
    if obj.dot and name_dot:
        words += ["with", "a", "dot"]
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator | int = 0, world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> str:
    """A caption of ``scene`` with varied wording; ``rng`` picks the wording (and whether implied things are named)."""
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    if not scene.objects and scene.moon:  # the lone-moon variant: its word, bare in three wordings, with "night" in two
        return ("moon", "the moon", "a moon", "night, the moon", "the moon at night")[int(rng.integers(5))]
    order = list(range(len(scene.objects)))
    rng.shuffle(order)
    name_dot = bool(rng.random() < world.p_name_dot)
    phrases = [_object_phrase(scene.objects[i], scene.size_words[i], rng, name_dot) for i in order]
    joiner = " and " if rng.random() < 0.6 else ", "
    name_moon = scene.moon and (not scene.night or rng.random() < world.p_name_moon)  # a day moon is always named
    if world.p_partial and rng.random() < world.p_partial:  # an incomplete caption: a random, non-empty part of the things
        things = len(phrases) + name_moon  # the moon is thing number len(phrases)
        keep = set(rng.choice(things, size=int(rng.integers(1, things + 1)), replace=False).tolist())
        name_moon = name_moon and (len(phrases) in keep or not scene.night)
        phrases = [ph for i, ph in enumerate(phrases) if i in keep]
    if world.p_name_absent and rng.random() < world.p_name_absent:  # one more shape, not in the picture
        drawn = {(o.colour, o.shape) for o in scene.objects}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in drawn]
        colour, shape = absent[int(rng.integers(len(absent)))]
        phrase = _object_phrase(Object(shape, colour, (0, 0, 0, 0)), ("small", "big")[int(rng.integers(2))], rng, False)
        phrases.insert(int(rng.integers(len(phrases) + 1)), phrase)
    text = joiner.join(phrases)
    if name_moon:
        text = f"{text} and the moon" if text else "the moon"
    if scene.night:
        text = f"night, {text}" if rng.random() < 0.6 else f"{text} at night"
    elif rng.random() < 0.25:
        text = f"day, {text}" if rng.random() < 0.5 else f"{text} in the day"
    return text


def sample(seed: int, world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> tuple[Image.Image, str]:
    """The picture and a caption of scene ``seed`` (the generator's one-call form)."""
    scene = make_scene(seed, world=world)
    return render(scene), caption(scene, seed, world)
