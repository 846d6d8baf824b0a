"""Decode cache: preprocessed images kept in one HDF5 file between runs.

Decoding and resizing a 2000x2500 radiograph costs far more than the network
needs to look at the 224x224 result, and training reads every image once per
epoch (:mod:`xraynet.training.films`). :class:`DecodeCache` stores each
preprocessed float32 array under (SHA-256 of the image file's bytes,
``Preprocessing.key()``), so a renamed or moved file still hits, while an
edited file or a change of preprocessing (or of the pipeline version inside
the key) misses.

File layout, format version 2::

    root attributes     format = "xraynet-decode-cache", format_version = 2
    /<prep key>         one group per Preprocessing.key(); attribute
                        preprocessing = the settings as JSON (for people reading the file)
    /<prep key>/images  float32 (R, S, S), S = image_size: one preprocessed image per
                        row, one row per HDF5 chunk (a read touches one image);
                        R grows 64 rows at a time
    /<prep key>/files   |S64 (R,): SHA-256 (hex) of the image file whose image the row
                        holds; empty: a free row
    /<prep key>/sha256  |S64 (R,): SHA-256 (hex) of the row's little-endian float32 bytes

The row index (``files``) and the checksums are read once when the cache
opens (about 200 bytes of memory per image); images are read a row at a time,
the file is never loaded whole.

Why rows of one dataset, not one dataset per image as in format 1: HDF5 keeps
each object it opens in its metadata cache, several kilobytes of memory
apiece, so a training run that read 3,000 one-image datasets every epoch grew
by 20 MB, and more with more films (up to the metadata cache's own bound); and
opening a dataset and its checksum attribute cost ~0.3 ms per image against
~0.03 ms for a row. A format-1 file is converted when opened: each entry whose
checksum holds is copied into a new file beside it, which then replaces it
(``os.replace``), so a crash during the conversion leaves the old file as it
was (an error during it sets the old file aside as a damaged one).

Crashes. HDF5 updates the file in place, so instead of copying a possibly
large cache on every run xraynet accepts a rebuild after damage and makes
damage detectable:

* ``put`` of a new image writes the row's image and checksum, flushes, then
  writes the file's SHA-256 into ``files`` and flushes again. A crash between
  the two leaves a row nothing points to: free again at the next open.
  Storing an image stored before overwrites its row (same bytes in, same
  array out); a crash between image and checksum leaves a mismatch, caught
  when the row is read.
* every row's checksum is checked on every read; a mismatching or unreadable
  entry is dropped (its row freed, a miss) with a warning.
* a file that HDF5 cannot open or whose tables cannot be read (a crash
  inside HDF5's own metadata update, a truncated copy) is renamed to
  ``<name>.corrupt-<UTC time>`` and an empty cache is started, with a
  :class:`CacheRecoveredWarning`.

So a crash costs at most recomputing entries, never a wrong array. One
process should use a cache file at a time; HDF5's file lock refuses a second
writer, reported as :class:`~xraynet.errors.CacheError`.

Threads: h5py serialises its calls behind one lock and releases the GIL while
HDF5 reads raw data (``H5Dread``), so a reader thread can fetch rows while
the training thread computes; one thread at a time may use a DecodeCache.

(Over 400 lines: the layout, the crash rules that order its writes, recovery
and the format-1 conversion are one contract and stay in one module.)
"""
from __future__ import annotations

import datetime
import hashlib
import heapq
import json
import os
import secrets
import warnings
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError, ShapeError, message
from .fileversion import file_sha256, file_version, hash_file  # noqa: F401 -- re-exported: this module's API
from .imaging import Preprocessing

__all__ = ["DecodeCache", "CacheRecoveredWarning", "file_sha256", "hash_file", "file_version", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "xraynet-decode-cache"
FORMAT_VERSION = 2
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TMP_PREFIX = ".tmp-"   # format 1: an entry written but not yet linked
_GROW = 64              # rows added to a table at a time


class CacheRecoveredWarning(UserWarning):
    """A damaged cache file or entry was set aside; the affected images are decoded again."""


def _array_sha256(a: np.ndarray) -> str:
    # hashlib reads the little-endian float32 buffer in place (no bytes copy) and drops the GIL.
    return hashlib.sha256(memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B")).hexdigest()



class _Table:
    """The rows of one preprocessing in an open cache file (``images``, ``files``,
    ``sha256``: see the module docstring). ``rows`` maps an image file's SHA-256 to
    ``(row, checksum of the row's array)``; ``free`` is a heap of the free rows.
    Raises KeyError, ValueError or an h5py error when the tables are not whole."""

    def __init__(self, group: h5py.Group, size: int):
        self.group, self.size = group, size
        images, files, sums = group["images"], group["files"][()], group["sha256"][()]
        n = len(files)
        if images.dtype != np.float32 or images.shape[1:] != (size, size) or len(images) < n or len(sums) < n:
            raise ValueError(f"tables of {n} rows: images {images.dtype} {images.shape}, {len(sums)} checksums")
        self.rows: dict[str, tuple[int, str]] = {}
        self.free: list[int] = []
        for row, (name, checksum) in enumerate(zip(files.tolist(), sums[:n].tolist())):
            name = name.decode("ascii", "replace")
            if name and name not in self.rows:
                self.rows[name] = (row, checksum.decode("ascii", "replace"))
            else:
                self.free.append(row)  # heap order: ascending
        self._images = images
        self._refresh()

    @classmethod
    def create(cls, parent: h5py.Group, key: str, size: int, preprocessing: str) -> "_Table":
        group = parent.create_group(key)
        group.attrs["preprocessing"] = preprocessing
        group.create_dataset("images", shape=(0, size, size), maxshape=(None, size, size), dtype="<f4",
                             chunks=(1, size, size))
        for name in ("files", "sha256"):
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype="S64", chunks=(1024,))
        return cls(group, size)

    def _refresh(self) -> None:
        """Low-level handles for :meth:`read` (the file space changes when the table grows)."""
        self._space = self._images.id.get_space()
        self._memory = h5py.h5s.create_simple((self.size, self.size))

    def read(self, row: int, out: np.ndarray) -> None:
        """Row ``row`` into ``out`` (float32 (S, S), C-contiguous), without a Dataset object
        or a selection built in Python: about 0.03 ms for a 128 px image."""
        self._space.select_hyperslab((row, 0, 0), (1, self.size, self.size))
        self._images.id.read(self._memory, self._space, out)

    def write(self, name: str, array: np.ndarray, checksum: str, flush: bool = True) -> None:
        """Store ``array`` (float32 (S, S)) with its ``checksum`` for image file ``name``, in
        the order the module docstring's crash rules need."""
        known = self.rows.get(name)
        row = known[0] if known else (heapq.heappop(self.free) if self.free else self._grow())
        self._images[row] = array
        self.group["sha256"][row] = checksum.encode("ascii")
        if flush:
            self.group.file.flush()
        if not known:
            self.group["files"][row] = name.encode("ascii")
            if flush:
                self.group.file.flush()
        self.rows[name] = (row, checksum)

    def forget(self, name: str) -> None:
        """Free ``name``'s row (no error when it has none)."""
        known = self.rows.pop(name, None)
        if known:
            self.group["files"][known[0]] = b""
            self.group.file.flush()
            heapq.heappush(self.free, known[0])

    def _grow(self) -> int:
        """Add ``_GROW`` free rows (``files`` last, so a crash leaves no row marked in use);
        returns the first."""
        files = self.group["files"]
        first = len(files)
        for name in ("images", "sha256", "files"):
            ds = self.group[name]
            ds.resize(max(len(ds), first + _GROW), axis=0)
        self._refresh()
        for row in range(first + 1, first + _GROW):
            heapq.heappush(self.free, row)
        return first


class DecodeCache:
    """Preprocessed images for one :class:`~xraynet.imaging.Preprocessing` in an HDF5 file.

    ``DecodeCache(path, prep)`` opens ``path`` (created if missing, with its
    folder; a format-1 file is converted). Use it as a context manager, or call
    :meth:`close`. ``hits`` and ``misses`` count lookups since opening.
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
        self._table: _Table | None = None
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
        f = self._open_hdf5()
        try:
            if self._check_header(f) == 1:
                f.close()
                self._convert_format_1()
                f = self._open_hdf5()
                self._check_header(f)
            self._file = f
            self._load_table()
        except CacheError:
            self.close()
            f.close()
            raise
        except Exception as e:  # noqa: BLE001 -- damaged metadata surfaces as many h5py error types
            self.close()
            f.close()
            self._set_aside(f"its contents cannot be read ({type(e).__name__}: {e})")
            self._file = self._open_hdf5()
            self._check_header(self._file)

    def _open_hdf5(self, mode: str = "a", recover: bool = True) -> h5py.File:
        """``h5py.File(path, mode)``; CacheError for a lock held elsewhere or no permission.
        When HDF5 cannot open the file: with ``recover``, a fresh file (the damaged one set
        aside), else the OSError."""
        try:
            # No chunk cache: each image is one chunk, read once per epoch; HDF5 then reads a
            # whole-chunk selection straight into the caller's array (and a damaged disk
            # block is seen, not served from memory).
            return h5py.File(self.path, mode, rdcc_nbytes=0)
        except OSError as e:
            text = str(e).lower()
            # HDF5's words for a lock held elsewhere ("sblock" in its damage
            # messages must not match).
            if "unable to lock" in text or "file locking" in text:
                raise self._error("is in use by another process (HDF5 file lock)", "one process per cache file",
                                  "a locked file",
                                  "Wait for the other run to finish or give each run its own cache") from e
            if "permission" in text or not os.access(self.path.parent, os.W_OK):
                raise self._error("cannot be written", "a writable cache file", "permission denied",
                                  "Choose another cache path or fix the permissions") from e
            if not recover:
                raise
            self._set_aside(f"HDF5 cannot open it ({e})")
            return h5py.File(self.path, mode, rdcc_nbytes=0)

    def _check_header(self, f: h5py.File) -> int:
        """The file's format version (writing the header into an empty file); CacheError for
        a file that is not a decode cache or of a version this xraynet cannot read."""
        fmt = f.attrs.get("format")
        if fmt is None and len(f) == 0:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.flush()
            return FORMAT_VERSION
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt != FORMAT:
            raise self._error("is an HDF5 file but not an xraynet decode cache", f"format {FORMAT!r}",
                              repr(fmt), "Choose another cache path (is this a model file?)")
        version = int(f.attrs.get("format_version", -1))
        if version not in (1, FORMAT_VERSION):
            raise self._error("was written by another xraynet version",
                              f"decode cache format {FORMAT_VERSION} (or 1, converted)", f"format {version}",
                              "Delete the cache file or choose another path")
        return version

    def _load_table(self) -> None:
        group = self._file.get(self.key)
        self._table = None if group is None else _Table(group, self.prep.image_size)

    def _convert_format_1(self) -> None:
        """Replace the format-1 file at ``path`` by a format-2 copy of its sound entries."""
        tmp = self.path.with_name(f".{self.path.name}.converting-{secrets.token_hex(3)}")
        try:
            # "r+": HDF5's exclusive lock keeps a second process from converting it too.
            with self._open_hdf5("r+", recover=False) as old, h5py.File(tmp, "w") as new:
                new.attrs["format"] = FORMAT
                new.attrs["format_version"] = np.int64(FORMAT_VERSION)
                for key, group in old.items():
                    if isinstance(group, h5py.Group):
                        _copy_format_1_group(group, new, key)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _set_aside(self, why: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{secrets.token_hex(3)}")
        os.replace(self.path, aside)
        warnings.warn(f"{self.path}: decode cache damaged ({why}); moved to {aside.name} and starting an "
                      f"empty cache. Images will be decoded again; delete {aside.name} when no longer needed.",
                      CacheRecoveredWarning, stacklevel=4)

    # ------------------------------------------------------------- access
    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise CacheError(f"{self.path}: the decode cache is closed. Expected an open cache, got a closed one. "
                             f"Open a new DecodeCache.")
        return self._file

    def get(self, file_path, digest: str | None = None) -> np.ndarray | None:
        """The cached array for this image file's bytes and this preprocessing, or None.
        ``digest``: the file's :func:`file_sha256`, when the caller has it already."""
        s = self.prep.image_size
        out = np.empty((s, s), np.float32)
        return out if self.read_into(digest or file_sha256(file_path), out) else None

    def put(self, file_path, array, digest: str | None = None) -> None:
        """Store ``array`` (float32 (image_size, image_size)) for this image file's bytes
        (``digest`` as in :meth:`get`)."""
        self._put(digest or file_sha256(file_path), array)

    def read_into(self, digest: str, out: np.ndarray) -> bool:
        """Read the entry of the image file whose :func:`file_sha256` is ``digest`` into
        ``out`` (float32 (image_size, image_size), C-contiguous, writeable: a row of a
        batch); True on a hit. False on a miss, and for an entry that is damaged (unreadable,
        or its checksum does not match), which is dropped with a
        :class:`CacheRecoveredWarning`; ``out`` then holds no useful values. ShapeError for
        another ``out``; CacheError when the cache is closed."""
        self._require_open()
        s = self.prep.image_size
        if out.shape != (s, s) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ShapeError(f"{self.path}: cannot read a cache entry into this array. Expected a C-contiguous "
                             f"float32 ({s}, {s}) array, got shape {out.shape} dtype {out.dtype}. "
                             "Pass a row of a float32 (N, S, S) batch.")
        entry = None if self._table is None else self._table.rows.get(digest)
        if entry is None:
            self.misses += 1
            return False
        row, checksum = entry
        try:
            self._table.read(row, out)
        except Exception as e:  # noqa: BLE001 -- a damaged row reads as one of many h5py errors
            return self._drop(digest, f"unreadable ({type(e).__name__}: {e})")
        if checksum != _array_sha256(out):
            return self._drop(digest, "its checksum does not match")
        self.hits += 1
        return True

    def _drop(self, digest: str, why: str) -> bool:
        warnings.warn(f"{self.path}: cache entry {self.key}/{digest} dropped: {why}. The image will be decoded "
                      "again.", CacheRecoveredWarning, stacklevel=4)
        self.misses += 1
        try:
            self._table.forget(digest)
        except Exception:  # noqa: BLE001 -- best effort; the row is overwritten on the next put anyway
            self._table.rows.pop(digest, None)
        return False

    def _put(self, digest: str, array) -> None:
        f = self._require_open()
        a = np.asarray(array)
        s = self.prep.image_size
        if a.shape != (s, s) or not np.issubdtype(a.dtype, np.number):
            raise ShapeError(f"{self.path}: cannot cache this array. Expected a numeric ({s}, {s}) array "
                             f"(the preprocessed image), got shape {a.shape} dtype {a.dtype}. "
                             f"Cache the output of xraynet.imaging.preprocess.")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if self._table is None:
            self._table = _Table.create(f, self.key, s, json.dumps(self.prep.to_dict(), sort_keys=True))
        self._table.write(digest, a, _array_sha256(a))

    def __len__(self) -> int:
        """Entries stored for this preprocessing."""
        self._require_open()
        return 0 if self._table is None else len(self._table.rows)

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Flush and close the file (safe to call twice)."""
        self._table = None
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


def _copy_format_1_group(group: h5py.Group, new: h5py.File, key: str) -> None:
    """Copy the entries of format-1 group ``group`` (one dataset per image, its checksum in
    an attribute) into a format-2 table ``key`` of ``new``; entries that are half-written,
    of another shape, or whose checksum fails are left behind (decoded again when needed)."""
    table = None
    for name in group:
        if name.startswith(_TMP_PREFIX) or len(name) != 64:
            continue
        try:
            ds = group[name]
            a, stored = ds[()], ds.attrs.get("sha256")
        except Exception:  # noqa: BLE001 -- a damaged entry: left behind
            continue
        stored = stored.decode("ascii", "replace") if isinstance(stored, bytes) else stored
        if a.dtype != np.float32 or a.ndim != 2 or a.shape[0] != a.shape[1] or stored != _array_sha256(a):
            continue
        if table is None:
            table = _Table.create(new, key, a.shape[0], str(group.attrs.get("preprocessing", "{}")))
        if a.shape[0] == table.size:
            table.write(name, a, stored, flush=False)
