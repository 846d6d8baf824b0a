"""Decode cache: preprocessed images kept in one HDF5 file between runs.

Decoding and resizing a 2000x2500 radiograph costs far more than the network
needs to look at the 224x224 result, and training reads every image once per
epoch. :class:`DecodeCache` stores each preprocessed float32 array under
(SHA-256 of the image file's bytes, ``Preprocessing.key()``), so a renamed
or moved file still hits, while an edited file or a change of preprocessing
(or of the pipeline version inside the key) misses.

File layout, format version 1::

    root attributes   format = "xraynet-decode-cache", format_version = 1
    /<prep key>       one group per Preprocessing.key(); attribute
                      preprocessing = the settings as JSON (for people reading the file)
    /<prep key>/<sha256 of the image file>
                      float32 (image_size, image_size); attribute sha256 =
                      SHA-256 of the array's little-endian bytes

Only the entries asked for are read; the file is never loaded whole.

Crashes. HDF5 updates the file in place, so instead of copying a possibly
large cache on every run xraynet accepts a rebuild after damage and makes
damage detectable:

* ``put`` writes the array under a temporary name (``.tmp-<sha>``), flushes,
  then links it under its real name and flushes again. A crash between the
  two leaves only a temporary entry, which the next open deletes.
* every entry carries the SHA-256 of its array, checked on every ``get``; a
  mismatching or unreadable entry is dropped (a miss) with a warning.
* a file that HDF5 cannot open (a crash inside HDF5's own metadata update,
  a truncated copy) is renamed to ``<name>.corrupt-<UTC time>`` and an empty
  cache is started, with a :class:`CacheRecoveredWarning`.

So a crash costs at most recomputing entries, never a wrong array. One
process should use a cache file at a time; HDF5's file lock refuses a second
writer, reported as :class:`~xraynet.errors.CacheError`.
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import secrets
import stat
import warnings
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError, ShapeError, message
from .imaging import Preprocessing

__all__ = ["DecodeCache", "CacheRecoveredWarning", "file_sha256", "FORMAT", "FORMAT_VERSION"]

FORMAT = "xraynet-decode-cache"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


class CacheRecoveredWarning(UserWarning):
    """A damaged cache file or entry was set aside; the affected images are decoded again."""


def file_sha256(path, chunk_size: int = _CHUNK) -> str:
    """SHA-256 hex digest of a file's bytes, read in ``chunk_size`` pieces (never whole)."""
    h = hashlib.sha256()
    # O_NONBLOCK: a FIFO swapped in under an image's name must not block the open.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


class DecodeCache:
    """Preprocessed images for one :class:`~xraynet.imaging.Preprocessing` in an HDF5 file.

    ``DecodeCache(path, prep)`` opens ``path`` (created if missing, with its
    folder). Use it as a context manager, or call :meth:`close`. ``hits`` and
    ``misses`` count lookups since opening.
    """

    def __init__(self, path, prep: Preprocessing):
        if not isinstance(prep, Preprocessing):
            raise TypeError(f"DecodeCache: prep must be a Preprocessing, got {type(prep).__name__}")
        self.path = Path(path)
        self.prep = prep
        self.key = prep.key()
        self.hits = 0
        self.misses = 0
        self._file: h5py.File | None = None
        self._open()

    # ------------------------------------------------------------ opening
    def _error(self, what: str, expected: str, got: str, todo: str) -> CacheError:
        return CacheError(message(self.path, what, expected, got, todo))

    def _open(self) -> None:
        path = self.path
        if path.is_dir():
            raise self._error("cannot be used as a decode cache", "a file path", "a directory",
                              "Give a file name such as cache.h5")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(f"the cache folder cannot be created ({e.strerror or e})", "a writable folder",
                              str(path.parent), "Choose another cache path") from e
        if path.exists():
            with open(path, "rb") as fh:
                head = fh.read(len(HDF5_SIGNATURE))
            if head and head != HDF5_SIGNATURE:
                # Not damage xraynet could have caused (HDF5 writes the
                # signature first): probably a wrong path, so leave it alone.
                raise self._error("is not an xraynet decode cache", "an HDF5 file or a new path",
                                  f"a file starting {head!r}", "Choose another cache path")
            if not head:
                self._set_aside("the file is empty")
        try:
            f = h5py.File(path, "a")
        except OSError as e:
            text = str(e).lower()
            # HDF5's words for a lock held elsewhere ("sblock" in its damage
            # messages must not match).
            if "unable to lock" in text or "file locking" in text:
                raise self._error("is in use by another process (HDF5 file lock)", "one process per cache file",
                                  "a locked file",
                                  "Wait for the other run to finish or give each run its own cache") from e
            if "permission" in text or not os.access(path.parent, os.W_OK):
                raise self._error("cannot be written", "a writable cache file", "permission denied",
                                  "Choose another cache path or fix the permissions") from e
            self._set_aside(f"HDF5 cannot open it ({e})")
            f = h5py.File(path, "a")
        try:
            self._check_header(f)
            self._drop_temporaries(f)
        except CacheError:
            f.close()
            raise
        except Exception as e:  # noqa: BLE001 -- damaged metadata surfaces as many h5py error types
            f.close()
            self._set_aside(f"its contents cannot be read ({type(e).__name__}: {e})")
            f = h5py.File(path, "a")
            self._check_header(f)
        self._file = f

    def _check_header(self, f: h5py.File) -> None:
        fmt = f.attrs.get("format")
        if fmt is None and len(f) == 0:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.flush()
            return
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt != FORMAT:
            raise self._error("is an HDF5 file but not an xraynet decode cache", f"format {FORMAT!r}",
                              repr(fmt), "Choose another cache path (is this a model file?)")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise self._error("was written by another xraynet version", f"decode cache format {FORMAT_VERSION}",
                              f"format {version}", "Delete the cache file or choose another path")

    def _set_aside(self, why: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{secrets.token_hex(3)}")
        os.replace(self.path, aside)
        warnings.warn(f"{self.path}: decode cache damaged ({why}); moved to {aside.name} and starting an "
                      f"empty cache. Images will be decoded again; delete {aside.name} when no longer needed.",
                      CacheRecoveredWarning, stacklevel=4)

    @staticmethod
    def _drop_temporaries(f: h5py.File) -> None:
        for group in f.values():
            if isinstance(group, h5py.Group):
                for name in [n for n in group if n.startswith(_TMP_PREFIX)]:
                    del group[name]  # left by a crash between write and link

    # ------------------------------------------------------------- access
    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise CacheError(f"{self.path}: the decode cache is closed. Expected an open cache, got a closed one. "
                             f"Open a new DecodeCache.")
        return self._file

    def get(self, file_path, digest: str | None = None) -> np.ndarray | None:
        """The cached array for this image file's bytes and this preprocessing, or None.
        ``digest``: the file's :func:`file_sha256`, when the caller has it already."""
        return self._get(digest or file_sha256(file_path))

    def put(self, file_path, array, digest: str | None = None) -> None:
        """Store ``array`` (float32 (image_size, image_size)) for this image file's bytes
        (``digest`` as in :meth:`get`)."""
        self._put(digest or file_sha256(file_path), array)

    def _get(self, digest: str) -> np.ndarray | None:
        f = self._require_open()
        name = f"{self.key}/{digest}"
        try:
            ds = f.get(name)
            if ds is None:
                self.misses += 1
                return None
            a = ds[()]
            stored = ds.attrs.get("sha256")
        except Exception as e:  # noqa: BLE001 -- a damaged entry reads as one of many h5py errors
            return self._drop(name, f"unreadable ({type(e).__name__}: {e})")
        s = self.prep.image_size
        if a.dtype != np.float32 or a.shape != (s, s):
            return self._drop(name, f"dtype {a.dtype} shape {a.shape}, expected float32 ({s}, {s})")
        if isinstance(stored, bytes):
            stored = stored.decode("ascii", "replace")
        if stored != _array_sha256(a):
            return self._drop(name, "its checksum does not match")
        self.hits += 1
        return a

    def _drop(self, name: str, why: str) -> None:
        warnings.warn(f"{self.path}: cache entry {name} dropped: {why}. The image will be decoded again.",
                      CacheRecoveredWarning, stacklevel=4)
        self.misses += 1
        try:
            del self._file[name]
            self._file.flush()
        except Exception:  # noqa: BLE001 -- best effort; the entry is overwritten on the next put anyway
            pass
        return None

    def _put(self, digest: str, array) -> None:
        f = self._require_open()
        a = np.asarray(array)
        s = self.prep.image_size
        if a.shape != (s, s) or not np.issubdtype(a.dtype, np.number):
            raise ShapeError(f"{self.path}: cannot cache this array. Expected a numeric ({s}, {s}) array "
                             f"(the preprocessed image), got shape {a.shape} dtype {a.dtype}. "
                             f"Cache the output of xraynet.imaging.preprocess.")
        a = np.ascontiguousarray(a, dtype=np.float32)
        group = f.get(self.key)
        if group is None:
            group = f.create_group(self.key)
            group.attrs["preprocessing"] = json.dumps(self.prep.to_dict(), sort_keys=True)
        tmp = f"{_TMP_PREFIX}{digest}"
        if tmp in group:
            del group[tmp]
        ds = group.create_dataset(tmp, data=a)
        ds.attrs["sha256"] = _array_sha256(a)
        f.flush()
        if digest in group:
            del group[digest]
        group.move(tmp, digest)
        f.flush()

    def __len__(self) -> int:
        """Entries stored for this preprocessing."""
        group = self._require_open().get(self.key)
        return 0 if group is None else sum(1 for n in group if not n.startswith(_TMP_PREFIX))

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Flush and close the file (safe to call twice)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self) -> "DecodeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
