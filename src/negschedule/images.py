"""Images as people in this field expect them: labelled side-by-side rows, PNGs with settings inside.

PNGs carry their generation settings in the text chunk ``parameters``, laid out the way
AUTOMATIC1111 writes them (prompt, ``Negative prompt: ...``, then ``Key: value`` pairs), so that
tools which read A1111 metadata read ours. Files are written atomically: a temporary file in the
target folder, then a rename, so an interrupted run never leaves half an image.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .atomic import write_bytes_atomic

# Tiny models draw 32x32 images: show them at least this big, pixels kept sharp.
MIN_TILE = 256
LABEL_HEIGHT = 22


def _quoted(value: Any) -> str:
    """A value as A1111 writes it: a JSON string when it holds a comma, a colon or a newline, so its
    reader (which splits the last line at commas) gets it back whole."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(prompt: str, negative_prompt: str | None, settings: dict[str, Any]) -> str:
    """The ``parameters`` text A1111 writes: prompt, negative prompt line, then ``Key: value, ...``."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quoted(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def read_a1111_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """``(prompt, negative prompt, fields)`` of a ``parameters`` text, read as A1111's PNG Info reads it.

    The last line holds the ``Key: value`` fields when it has at least three (else it is prompt
    text); the lines before are the prompt, and from ``Negative prompt:`` on the negative prompt.
    Quoted values are JSON strings.
    """
    *lines, last = text.strip().split("\n")
    if len(_FIELD.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {}
    for key, value in _FIELD.findall(last):
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass  # A1111 keeps such a value as it is
        fields[key] = value
    return "\n".join(prompt), "\n".join(negative), fields


def open_image(path: str | os.PathLike, argument: str) -> Image.Image:
    """The picture at ``path``, read in full; a missing or unreadable file is one error naming ``argument``."""
    from PIL import UnidentifiedImageError

    from .errors import InputError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise InputError(argument, str(path), "no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(argument, str(path), f"not a readable image ({err.__class__.__name__})") from None


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """PNG bytes of ``image``, with ``parameters`` (if any) as its only metadata: equal pixels and
    parameters give equal files."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write ``image`` to ``path`` atomically, with ``parameters`` in its PNG text chunk."""
    return write_bytes_atomic(path, png_bytes(image, parameters), make_folder=False)


def upscale(image: Image.Image, min_size: int = MIN_TILE) -> Image.Image:
    """Enlarge small images by an integer factor with nearest-neighbour, so pixels stay visible."""
    factor = max(1, -(-min_size // max(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def labelled_row(images: Sequence[Image.Image], labels: Sequence[str], min_tile: int = MIN_TILE) -> Image.Image:
    """One image: ``images`` side by side, each with its label in a bar above it."""
    tiles = [upscale(image.convert("RGB"), min_tile) for image in images]
    width = sum(t.width for t in tiles)
    height = max(t.height for t in tiles) + LABEL_HEIGHT
    row = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default()
    x = 0
    for tile, label in zip(tiles, labels):
        row.paste(tile, (x, LABEL_HEIGHT))
        draw.text((x + 4, 4), label, fill="black", font=font)
        x += tile.width
    return row
