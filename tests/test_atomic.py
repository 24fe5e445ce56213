"""Atomic writes: whole files with the mode a plain open() gives, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from negschedule.atomic import write_bytes_atomic
from negschedule.images import save_png


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_bytes_atomic(tmp_path / "sub" / "x.bin", b"abc")
        png = save_png(Image.new("RGB", (4, 4), "red"), tmp_path / "x.png", parameters="a cat")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 == stat.S_IMODE(png.stat().st_mode)
    assert Image.open(png).text["parameters"] == "a cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.png"]  # no temporary file left
    assert _umask() == old


def test_save_png_does_not_make_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "missing" / "x.png")
    assert not (tmp_path / "missing").exists()
