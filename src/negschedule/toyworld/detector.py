"""An exact detector for the shapes world: ``detect`` lists the objects, ``present`` tests one concept.

How it decides. The background is the per-channel median of the border pixels. Antialiasing and
a decoder's blur mix a shape's colour with the background linearly, so for each of the world's
colours (five shape colours, the moon's) a pixel's coverage is its position on the line from the
background to that colour (0..1). A pixel belongs to its nearest colour when that colour is within
``MAX_COLOUR_DISTANCE`` and covers at least half of it; off colours from a model still land on
their nearest colour. A blend of two colours can look like a third (white on slate is close to the
moon's colour), so each colour mask is eroded once (4-neighbourhood): one-pixel blend rings vanish,
a shape's core stays. Each core is one object; mask pixels within three pixels go to their nearest
core. A region under 12 pixels, or one that no shape template covers with IoU >= 0.5, is not an
object (a noisy picture yields nothing rather than false objects); an IoU under 0.7 is retried with
a deeper erosion, which splits two same-colour shapes whose edges touch. The shape is the template
(square, circle, triangle pointing up), slightly blurred and drawn in the region's box with each
side moved by -1..+2 pixels, that best matches the coverage map near the region (least squares):
a blurred triangle's faint apex falls out of the mask, so the mask's box is searched around, not
trusted. A moon-coloured object is the moon whatever its outline. A square has a dot when a pixel
inside it is much darker than its colour; the dot's hole is filled before erosion (it would split
the square) and kept out of the other colours' masks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import InputError
from .world import COLOURS, IMPLIED_WORDS, MOON_RGB, SHAPES, Object

MAX_COLOUR_DISTANCE = 110.0  # RGB distance beyond which a pixel is no colour of the world
MIN_CORE_PIXELS = 2  # smaller eroded cores are noise or blend rings
MAX_GROW_PIXELS = 3.0  # how far a core grows back: the eroded rim and a triangle's thin apex
TEMPLATE_BLUR = 0.6  # pixels: the blur of the decoder's edges that templates are compared with
MIN_COVERAGE = 0.5  # a pixel belongs to a colour when that colour covers this share of it (blurred edges count)
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


def _coverage(pixels: np.ndarray, background: np.ndarray, rgb) -> np.ndarray:
    """Per pixel, the share of colour ``rgb`` in a linear mix with the background (0..1).

    Antialiasing and blur mix a shape's colour with the background linearly, so this estimates how
    much of each pixel the shape covers, edges included.
    """
    direction = np.asarray(rgb, dtype=np.float32) - background
    alpha = (pixels - background) @ direction / max(float(direction @ direction), 1e-6)
    return np.clip(alpha, 0.0, 1.0)


@lru_cache(maxsize=4096)
def _soft_template(shape: str, width: int, height: int, pad: int) -> np.ndarray:
    """``shape``'s coverage in a ``width`` x ``height`` box, blurred like a decoder blurs, with ``pad`` pixels around."""
    canvas = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.float32)
    canvas[pad : pad + height, pad : pad + width] = _template(shape, width, height)
    return ndimage.gaussian_filter(canvas, TEMPLATE_BLUR)


def _classify_soft(alpha: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """The shape (and box, each side moved by up to two pixels) whose blurred coverage best matches ``alpha``.

    The mask of a blurred shape loses its faint parts (a triangle's apex), so the box is searched
    around the mask's box rather than trusted.
    """
    x0, y0, x1, y1 = box
    pad = 3
    height, width = alpha.shape
    window = np.zeros((y1 - y0 + 2 * pad, x1 - x0 + 2 * pad), dtype=np.float32)
    ya, yb, xa, xb = max(0, y0 - pad), min(height, y1 + pad), max(0, x0 - pad), min(width, x1 + pad)
    window[ya - (y0 - pad) : yb - (y0 - pad), xa - (x0 - pad) : xb - (x0 - pad)] = alpha[ya:yb, xa:xb]
    best, best_error = SHAPES[0], np.inf
    moves = range(-1, 3)  # grow a side by up to 2 pixels, or shrink it by 1
    for top in moves:
        for bottom in moves:
            for left in moves:
                for right in moves:
                    w, h = x1 - x0 + left + right, y1 - y0 + top + bottom
                    if w < 3 or h < 3:
                        continue
                    for shape in SHAPES:
                        drawn = _soft_template(shape, w, h, pad)  # placed at (pad - left, pad - top) in window
                        oy, ox = pad - top - pad, pad - left - pad
                        error = _placed_error(window, drawn, oy, ox)
                        if error < best_error:
                            best, best_error = shape, error
    return best


def _placed_error(window: np.ndarray, drawn: np.ndarray, oy: int, ox: int) -> float:
    """Squared error between ``window`` and ``drawn`` placed with its corner at (oy, ox) (zero elsewhere)."""
    canvas = np.zeros((window.shape[0] + 8, window.shape[1] + 8), dtype=np.float32)
    canvas[4 + oy : 4 + oy + drawn.shape[0], 4 + ox : 4 + ox + drawn.shape[1]] = drawn
    return float(((canvas[4:-4, 4:-4] - window) ** 2).sum())


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


def region_halo(region: np.ndarray) -> np.ndarray:
    """The region grown by three pixels: where its faint blurred parts can be (other objects stay out)."""
    return ndimage.binary_dilation(region, _CROSS, iterations=3).astype(np.float32)


def _box(region: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(region)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _shape_objects(pixels: np.ndarray, mask: np.ndarray, name: str, alpha: np.ndarray) -> list[Object]:
    found = []
    for region in _regions(mask, 1):
        x0, y0, x1, y1 = _box(region)
        _, fit = _classify(region[y0:y1, x0:x1])  # the mask IoU only guards; the coverage fit decides
        if fit < SPLIT_BELOW_FIT:
            # A poor fit is usually two same-colour shapes whose blurred edges touch: erode harder.
            parts = _regions(region, 2)
            if len(parts) > 1:
                found += [o for part in parts for o in _shape_objects(pixels, part, name, alpha)]
                continue
        if fit < MIN_FIT:
            continue
        shape = _classify_soft(alpha * region_halo(region), (x0, y0, x1, y1))
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
    alphas = np.stack([_coverage(pixels, background, rgb) for rgb in _RGB], axis=-1)
    alpha = np.take_along_axis(alphas, nearest[..., None], -1)[..., 0]
    is_colour = (nearest_distance < MAX_COLOUR_DISTANCE) & (alpha >= MIN_COVERAGE)
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
            found += _shape_objects(pixels, mask, name, _coverage(pixels, background, COLOURS[name]))
    found.sort(key=lambda o: (o.box[1], o.box[0]))
    return found


def _parse_concept(concept: str) -> tuple[str | None, str | None]:
    words = concept.lower().replace(",", " ").split()
    words = [w for w in words if w not in ("a", "the", "an")]
    if len(words) == 1 and words[0] in IMPLIED_WORDS:  # "moon", "dot": implied objects have their own word
        return None, words[0]
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
