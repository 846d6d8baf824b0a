"""Write a file so that a reader sees either the old one or the whole new one.

The content goes to a temporary file in the target's folder, is flushed to
disk, and is renamed over the target; on any error the temporary file is
removed and the target is untouched. (Model files and screening reports have
their own variants: h5py needs a path, and reports also sync their folder.)
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path, mode: str = "wb", **kwargs):
    """``with atomic_open(path, "w", newline="") as fh: ...`` -- ``open`` arguments
    apply to the temporary file; the parent folder is created if missing. The
    file gets mode 0644 (mkstemp's 0600 would hide reports and charts from
    other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
