"""A result store on disk that a killed experiment resumes from, recomputing nothing finished.

This module owns the files of an experiment folder and the rules that make them safe:

* Every file is written atomically: to a temporary name in the same folder, flushed and fsynced,
  then ``os.replace``-d onto its name, so a reader (or a restarted run) sees the old file or the
  new one, never a torn one.
* Work is split into *units* (one prompt and seed); a unit's record, ``units/<name>.json``, is
  written only after all its images, so its presence is the commit mark. A restarted run skips
  every unit with a record and redoes the others from scratch (a half-written unit leaves at most
  some images, which are rewritten bit for bit).
* ``settings.json`` holds what the results depend on; a restart with other settings in the same
  folder is refused instead of mixing two experiments.
* Nothing that depends on the clock goes into the results, so a resumed run ends with exactly the
  files an uninterrupted one writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from ..images import png_bytes
from ..errors import InputError


def json_ready(value: Any) -> Any:
    """``value`` as its JSON record reads back: numpy scalars as Python ones, tuples as lists."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        return value.item()
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


class ResultStore:
    """The folder of one experiment: settings, per-unit records and images, merged results."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError("out", str(root), "exists and is not a folder")

    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    def open(self, settings: dict[str, Any], clean: bool = True) -> None:
        """Start or resume: write ``settings.json``, or check that the folder holds the same experiment.

        ``clean``: remove temporary files a killed run left behind (only the first process of a
        shared run may, before the others start writing).
        """
        path = self.root / "settings.json"
        if clean and self.root.is_dir():
            for stale in self.root.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        normalized = json.loads(json.dumps(settings))
        if path.exists():
            held = json.loads(path.read_text())
            if held != normalized:
                changed = sorted(k for k in set(held) | set(normalized) if held.get(k) != normalized.get(k))
                raise InputError("out", str(self.root), f"holds another experiment (settings differ in {', '.join(changed)}); use a new folder")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, normalized)

    def done(self, unit: str) -> bool:
        return (self.units_dir / f"{unit}.json").exists()

    def record(self, unit: str) -> dict[str, Any]:
        return json.loads((self.units_dir / f"{unit}.json").read_text())

    def save_image(self, relative: str, image) -> str:
        write_bytes_atomic(self.root / relative, png_bytes(image))
        return relative

    def load_image(self, relative: str):
        from PIL import Image

        with Image.open(self.root / relative) as im:
            return im.convert("RGB")

    def save_array(self, relative: str, array) -> str:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_bytes_atomic(self.root / relative, buffer.getvalue())
        return relative

    def load_array(self, relative: str):
        import numpy as np

        return np.load(self.root / relative, allow_pickle=False)

    def commit(self, unit: str, record: dict[str, Any]) -> None:
        """Mark ``unit`` finished: call only after everything it refers to is written. Numpy scalars
        in ``record`` are stored as Python numbers (what ``record`` gives back)."""
        write_json_atomic(self.units_dir / f"{unit}.json", json_ready(record))
