"""Writing a file so that no reader, and no interrupted run, ever sees half of it.

The bytes go to a temporary file in the target's folder, are flushed to disk, and the file is
renamed over the target (atomic on one file system). The temporary file gets the mode a plain
``open(path, "w")`` would give (0666 less the umask): ``mkstemp`` creates it 0600, and an image or
a result readable only by its writer is a surprise on a shared machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, make_folder: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path. ``make_folder``: create a missing
    folder (else a missing folder is an error, as for ``open``)."""
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


__all__ = ["write_bytes_atomic"]
