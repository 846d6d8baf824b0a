"""The review page's thumbnails: ``<page>_files/<sha256 of the film>.jpg``,
made once per film content from :func:`xraynet.imaging.decode`, by worker
threads, under the page's lock; stale ones removed (see :mod:`xraynet.review`,
"Thumbnails")."""
from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 160
_THUMB_QUALITY = 80
_SHA = re.compile(r"[0-9a-f]{64}")
_THUMB_NAME = re.compile(r"([0-9a-f]{64})\.jpg")
# A thumbnail write killed midway leaves write_atomic's hidden temp file: cleaned like a stale thumbnail.
_THUMB_TMP = re.compile(r"\.[0-9a-f]{64}\.jpg\.[0-9a-f]{12}\.tmp")


def files_folder(html_path) -> Path:
    """The thumbnails folder of a page: ``review.html`` -> ``review_files``."""
    p = Path(html_path)
    return p.with_name(p.stem + "_files")


def _source_path(folder, row_path: str) -> str | None:
    """Where the film of a report path lies under ``folder`` (None for a path no listing gives:
    absolute, or climbing out with ``..``; a hand-edited report must not point us elsewhere)."""
    from ..discovery import decode_path

    try:
        rel = decode_path(row_path)
    except ValueError:
        return None
    parts = rel.split(b"/")
    if rel.startswith(b"/") or b".." in parts or b"" in parts:
        return None
    return os.fsdecode(os.path.join(os.fsencode(folder), rel))


def _thumbnail_jpeg(pixels) -> bytes:
    """JPEG bytes of a film (float32 (h, w) in [0, 1]) shrunk to at most THUMB_SIDE a side."""
    import numpy as np
    from PIL import Image

    h, w = pixels.shape
    scale = min(1.0, THUMB_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # BOX: each thumbnail pixel is the mean of the film pixels it covers (no aliasing of fine lines).
    small = Image.fromarray(pixels, mode="F").resize(size, Image.Resampling.BOX)
    gray = np.clip(np.rint(np.asarray(small) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="JPEG", quality=_THUMB_QUALITY)
    return buf.getvalue()


class ThumbnailWriteError(Exception):
    """A thumbnail file could not be written (carries the OSError and the path to the caller)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(str(error))
        self.path, self.error = path, error


def _make_one(sources: list, sha: str, dest: Path) -> bool:
    """Worker job: write ``dest`` from the first of ``sources`` whose bytes still hash to ``sha``.
    True when made. A file that is gone, changed or undecodable is passed over (its row gets a
    placeholder); a thumbnail that cannot be written raises :class:`ThumbnailWriteError`."""
    from ..atomic import write_atomic
    from ..decodecache import hash_file
    from ..errors import ImageError
    from ..imaging import decode

    for src in sources:
        try:
            digest, version = hash_file(src)
            if digest != sha or version is None:
                continue  # changed since it was screened: the next screening run gives it a row
            # the version ties the decoded pixels to the bytes just hashed (a file renamed over
            # the name in between would give its picture to this row's name, for good)
            data = _thumbnail_jpeg(decode(src, version=version).pixels)
        except (OSError, ImageError):
            continue  # gone, unreadable or not decodable now: a placeholder
        except Exception:  # noqa: BLE001 -- one odd film must never stop the page (MemoryError included)
            continue
        try:
            write_atomic(dest, data)
        except OSError as e:
            raise ThumbnailWriteError(dest, e) from None
        return True
    return False


def lock_page(files_dir: Path):
    """Hold ``files_dir/.lock`` (flock, waiting) so that two page builds of one page do not remove
    each other's thumbnails. A file system without locks builds unlocked (only a rare race)."""
    import errno
    import fcntl

    files_dir.mkdir(exist_ok=True)
    fd = os.open(files_dir / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno != errno.ENOLCK:
            os.close(fd)
            raise
    return fd


def update_thumbnails(rows, folder, files_dir: Path, workers: int, progress) -> tuple[set, int, int]:
    """Make the missing thumbnails (when ``folder`` is known) and remove the stale ones.
    Returns (shas that have a thumbnail now, made, removed)."""
    wanted: dict[str, list] = {}  # sha256 -> report paths of the films with those bytes
    for r in rows:
        if r.ok and _SHA.fullmatch(r.sha256):
            wanted.setdefault(r.sha256, []).append(r.path)
    present, stale = set(), []
    for name in sorted(os.listdir(files_dir)):
        m = _THUMB_NAME.fullmatch(name)
        if m and m.group(1) in wanted:
            present.add(m.group(1))
        elif m or _THUMB_TMP.fullmatch(name):
            stale.append(name)
    removed = 0
    for name in stale:
        try:
            os.unlink(files_dir / name)
            removed += 1
        except FileNotFoundError:
            pass  # removed by hand meanwhile
    todo = []
    if folder is not None:
        for sha, paths in wanted.items():
            sources = [] if sha in present else [s for s in (_source_path(folder, p) for p in paths) if s]
            if sources:
                todo.append((sources, sha))
    made = 0
    if todo:
        if progress:
            progress(0, len(todo))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_make_one, sources, sha, files_dir / f"{sha}.jpg") for sources, sha in todo]
            try:
                for i, fu in enumerate(futures):
                    if fu.result():
                        present.add(todo[i][1])
                        made += 1
                    if progress:
                        progress(i + 1, len(todo))
            except BaseException:
                for fu in futures:
                    fu.cancel()  # a full disk fails every later write too: stop at the first
                raise
    return present, made, removed
