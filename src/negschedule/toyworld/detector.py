"""An exact detector for the shapes world: ``detect`` lists the objects, ``present`` tests one concept.

How it decides. The background is the per-channel median of the border pixels. Each pixel goes to
the nearest of the world's colours (the five shape colours, the moon's) when that colour is nearer
than the background and within ``MAX_COLOUR_DISTANCE``; off colours from a model still land on
their nearest colour. Antialiased (or blurry) edges blend two colours, and a blend can look like a
third colour (white on slate is close to the moon's colour), so each colour mask is eroded once
(4-neighbourhood): one-pixel blend rings vanish, a shape's core stays. Each surviving connected
core is one object; mask pixels within three pixels go to their nearest core, and the box
holds them. The shape is the
template (square, circle, triangle pointing up, drawn into that box) whose mask best matches the
colour mask there (intersection over union), holes filled; a moon-coloured object is the moon
whatever its outline. A poor fit (IoU < 0.7) is retried with a deeper erosion, which splits two
same-colour shapes whose edges touch. A square has a dot when a pixel inside it is much darker
than its colour; the dot's hole is filled before erosion so that it never splits the square.
Regions under 12 pixels, and shapes that fit no template with IoU >= 0.5, are not objects: a
blurry or noisy picture yields nothing rather than false objects.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import InputError
from .world import COLOURS, MOON_RGB, SHAPES, Object

MAX_COLOUR_DISTANCE = 110.0  # RGB distance beyond which a pixel is no colour of the world
MIN_CORE_PIXELS = 2  # smaller eroded cores are noise or blend rings
MAX_GROW_PIXELS = 3.0  # how far a core grows back: the eroded rim and a triangle's thin apex
MIN_OBJECT_PIXELS = 12  # smaller regions are not objects (the smallest triangle covers about 20 pixels)
MIN_FIT = 0.5  # a region that fits no shape template better than this is a smudge, not a shape
SPLIT_BELOW_FIT = 0.7  # template IoU under which an object is tried as two touching ones
DOT_DARKNESS = 0.55  # a dot: some pixel inside a square darker than this share of the square's brightness
_CROSS = ndimage.generate_binary_structure(2, 1)
_NAMES = list(COLOURS) + ["moon"]
_RGB = np.array(list(COLOURS.values()) + [MOON_RGB], dtype=np.float32)


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError("image", getattr(array, "shape", None), "expected an RGB image (H x W x 3)")
    if array.dtype != np.uint8:  # floats in [0, 1], as pipelines return with output_type="np"
        array = np.clip(array, 0, 1) * 255.0
    return array.astype(np.float32)


def _background(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0)


def _template(shape: str, width: int, height: int) -> np.ndarray:
    """Pixel coverage (0..1) of ``shape`` filling a ``width`` x ``height`` box, drawn as the world draws it."""
    s = 4
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = width * s - 1, height * s - 1
    if shape == "circle":
        draw.ellipse((0, 0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, x1, y1), fill=255)
    else:
        draw.polygon([(width * s / 2, 0), (x1, y1), (0, y1)], fill=255)
    return np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _classify(mask: np.ndarray) -> tuple[str, float]:
    """The best-matching shape for an object's pixel mask (cropped to its box), and its IoU."""
    height, width = mask.shape
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = _template(shape, width, height) >= 0.5
        iou = float((template & mask).sum() / max(1, (template | mask).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def _regions(mask: np.ndarray, erosions: int) -> list[np.ndarray]:
    """One pixel mask per object in a colour mask: eroded cores, each grown back over its nearest pixels."""
    cores, n = ndimage.label(ndimage.binary_erosion(mask, _CROSS, iterations=erosions), _CROSS)
    if n == 0:
        return []
    # Give every mask pixel to its nearest core (within a few pixels): this grows each core back
    # to its shape (a triangle's eroded apex included) and splits two touching same-colour shapes.
    distance, (iy, ix) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    owner = np.where(mask & (distance <= MAX_GROW_PIXELS + erosions - 1), cores[iy, ix], 0)
    sizes = ndimage.sum_labels(np.ones_like(cores), cores, index=np.arange(1, n + 1))
    regions = [owner == k for k in range(1, n + 1) if sizes[k - 1] >= MIN_CORE_PIXELS]
    return [r for r in regions if r.sum() >= MIN_OBJECT_PIXELS]


def _box(region: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(region)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _shape_objects(pixels: np.ndarray, mask: np.ndarray, name: str) -> list[Object]:
    found = []
    for region in _regions(mask, 1):
        x0, y0, x1, y1 = _box(region)
        shape, fit = _classify(region[y0:y1, x0:x1])
        if fit < SPLIT_BELOW_FIT:
            # A poor fit is usually two same-colour shapes whose blurred edges touch: erode harder.
            parts = _regions(region, 2)
            if len(parts) > 1:
                found += _shape_objects(pixels, parts[0], name) + [
                    o for part in parts[1:] for o in _shape_objects(pixels, part, name)]
                continue
        if fit < MIN_FIT:
            continue
        dot = False
        if shape == "square" and min(x1 - x0, y1 - y0) >= 5:
            luminance = pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean(-1)
            dot = float(luminance.min()) < DOT_DARKNESS * float(np.mean(COLOURS[name]))
        found.append(Object(shape, name, (x0, y0, x1, y1), dot))
    return found


def detect(image) -> list[Object]:
    """The objects in ``image`` (PIL image, or H x W x 3 array: uint8, or floats in [0, 1])."""
    pixels = _as_array(image)
    background = _background(pixels)
    distances = np.linalg.norm(pixels[:, :, None, :] - _RGB[None, None], axis=-1)  # H x W x colours
    nearest = distances.argmin(-1)
    nearest_distance = distances.min(-1)
    is_colour = (nearest_distance < MAX_COLOUR_DISTANCE) & (nearest_distance < np.linalg.norm(pixels - background, axis=-1))
    masks = [is_colour & (nearest == c) for c in range(len(_NAMES))]
    # A square's dot is a hole in its colour: fill it (erosion would widen it until the square splits)
    # and keep the dot's blended rim, which can look like another colour, out of every other mask.
    filled = [ndimage.binary_fill_holes(m) for m in masks]
    holes = [f & ~m for f, m in zip(filled, masks)]
    found: list[Object] = []
    for c, (name, mask) in enumerate(zip(_NAMES, filled)):
        mask = mask & ~np.logical_or.reduce([h for o, h in enumerate(holes) if o != c])
        if name == "moon":
            found += [Object("moon", "moon", _box(r)) for r in _regions(mask, 1)]
        elif mask.any():
            found += _shape_objects(pixels, mask, name)
    found.sort(key=lambda o: (o.box[1], o.box[0]))
    return found


def _parse_concept(concept: str) -> tuple[str | None, str | None]:
    words = concept.lower().replace(",", " ").split()
    words = [w for w in words if w not in ("a", "the", "an")]
    if words == ["moon"]:
        return None, "moon"
    if words == ["dot"]:
        return None, "dot"
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    unknown = [w for w in words if w not in COLOURS and w not in SHAPES]
    if unknown or (colour is None and shape is None) or len(words) > 2:
        raise InputError("concept", concept, 'expected "<colour> <shape>", a colour, a shape, "moon" or "dot"')
    return colour, shape


def present(image, concept: str, objects: list[Object] | None = None) -> bool:
    """Whether ``concept`` ("red circle", "circle", "red", "moon", "dot") is in ``image``.

    ``objects`` (a ``detect`` result for the same image) saves detecting again.
    """
    colour, shape = _parse_concept(concept)
    objects = detect(image) if objects is None else objects
    if shape == "moon":
        return any(o.shape == "moon" for o in objects)
    if shape == "dot":
        return any(o.dot for o in objects)
    return any(o.shape != "moon" and (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
               for o in objects)
