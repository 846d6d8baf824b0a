"""Screen a folder of X-rays into a CSV report that a nightly cron job can trust.

:func:`screen` finds every image under a folder, runs the model on the files
that are new or changed since the last run, and appends one row per file to a
CSV report. The report stays a valid CSV whatever moment the run is killed at
(``kill -9`` included), and after a run that completes every image in the
folder appears in it exactly once, with the SHA-256 of its current bytes.

Which files
-----------
The rules of :mod:`xraynet.discovery` -- the same ones training and
evaluation use. In short: every regular file under the folder (recursively
unless ``recursive=False``) whose name ends in ``.png .jpg .jpeg .jpe .jfif
.jls .jp2 .j2k .j2c .jpc .jpx .bmp .tif .tiff .gif .webp .dcm .dicom`` (any
case, :data:`IMAGE_SUFFIXES`), or, for any
other name (none, ``IM0001``, a DICOM UID such as ``1.2.840.113619.2.55.3.9``),
whose content :func:`~xraynet.imaging.is_dicom_file` says is DICOM. FIFOs,
sockets and devices are never opened. Names starting with ``.`` (hidden files
and folders) are skipped, and so are the report and its ``.lock`` and ``.tmp``
companions when they sit inside the folder. Directory symlinks are followed
once: a folder reached a second time (a symlink loop, two links to one folder)
is not entered again; a broken symlink with an image ending gets an
``unreadable`` error row. Rows are sorted by their ``path`` text.

What could not be seen is not changed: a folder (the folder itself included)
that cannot be listed, or an entry that cannot be ``stat``-ed (permissions,
I/O error), keeps its earlier rows exactly as they were -- they are neither
re-screened nor dropped -- gets a message on stderr, and the run exits ``5``.
The listing taken at the start is the run's snapshot: every file in it gets
exactly one row this run. A file deleted after the listing gets an
``unreadable`` error row (its old row, if any, is replaced), and the next run,
which no longer lists it, drops that row like any deleted file's. A folder
that vanishes between being seen in its parent and being listed counts as
not listable for this run (rows kept, exit ``5``); the next run, which no
longer sees it, drops its rows.

Report columns (in this order)
------------------------------
==================  ==========================================================
``path``            file path relative to the folder, ``/`` separators,
                    encoded by :func:`~xraynet.discovery.encode_path`
``sha256``          SHA-256 of the file's bytes (empty when it cannot be read)
``status``          ``ok`` or ``error``
``error``           error rows: ``<reason>: <message>``, where reason is
                    :attr:`ImageError.reason <xraynet.errors.ImageError>`
                    (``empty``, ``truncated``, ``not_an_image``...) or
                    ``internal_error`` for an unexpected failure
``label``           predicted class (highest probability); empty on errors
``p_<class>``       one column per model class, in the model's class order:
                    the probability, as a plain decimal; empty on errors
``flagged``         ``1`` if ``p_<screening class> >= threshold`` else ``0``;
                    empty on errors
``threshold``       the threshold used for ``flagged``
``warnings``        :data:`xraynet.imaging.WARNING_CODES` codes joined by ``;``
``width``           decoded image width in pixels (empty on errors)
``height``          decoded image height in pixels (empty on errors)
``model``           ``<architecture name> (<model file name>)``
``model_sha256``    the model file's ``weights_sha256``
``xraynet_version`` the xraynet that wrote the row
``screened_at``     UTC time of screening, ISO 8601 with ``Z``
``heatmap``         with ``heatmaps=DIR``: the Grad-CAM overlay PNG written
                    for a flagged image (``DIR/<path>.png``, DIR made
                    absolute); else empty
==================  ==========================================================

The file is UTF-8, written by the :mod:`csv` module with ``\\r\\n`` line ends
(RFC 4180), so commas, quotes, newlines and non-ASCII in names survive. Text
cells (path, error, label, warnings, model) that start with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return get a leading ``'`` so that a
spreadsheet shows them as text instead of running them as formulas; so do
cells that start with ``'`` itself, which keeps the ``path`` cell unique and
reversible (:func:`path_of_cell`: drop one leading ``'``, then
:func:`~xraynet.discovery.decode_path`).

Path encoding: names are bytes on Linux and need not be UTF-8. ``path`` is
the name read as UTF-8, with each undecodable byte written ``\\xNN`` and each
literal backslash written ``\\\\``; two different names never share a
``path``. Reports written by earlier versions wrote a backslash as itself
and a name starting with ``'`` without the extra ``'``: such a file no longer
matches its old row and is screened again, once, on the first run after the
upgrade (its old row is dropped then).

Crash safety
------------
* One run at a time per report: ``<report>.lock`` is held with ``flock``
  (``on_lock="fail"``: give up at once with :class:`ReportLockedError`;
  ``"wait"``: block until the other run ends). The kernel drops the lock when
  the process dies, however it dies. The lock file is left in place.
* A new report is created whole: header to ``<report>.tmp``, ``fsync``,
  ``os.replace``. So a report, once it exists, always has its header.
* Rows are appended a batch at a time with one ``write()`` of complete lines
  followed by ``fsync``. A kill can therefore only leave an incomplete last
  record. On start (under the lock) the report is parsed; from the first
  incomplete or malformed record on, the file is truncated back to the end
  of the last good record. Those files are simply screened again.
* A file is skipped when the report has a row for its path with the same
  ``sha256``, ``model_sha256`` and ``threshold`` (error rows whose reason
  depends on the machine, not the bytes -- ``unreadable``,
  ``dicom_needs_pydicom``, ``unsupported_codec`` -- are always retried).
  When any existing row must go (its file changed, was deleted, or is a
  duplicate), the kept rows are first written to ``<report>.tmp``, synced and
  ``os.replace``-d over the report (*compaction*); only then are new rows
  appended. Hence at every moment no path has two rows: the report after
  compaction has none for the files about to be screened, and each of those
  is appended once.
* When the run ends, if the appended rows do not sort after the kept ones,
  the report is rewritten in sorted order the same atomic way.
* A report whose header is not the one this model needs (other classes,
  another column layout, not an xraynet report) is refused with
  :class:`~xraynet.errors.ScreenError`; write to a new ``--out`` or move the
  old report aside.

A file that changes between being hashed and being decoded is the one race
left: its row holds the older hash, so the next run screens it again.

When something cannot be written -- a read-only report folder, a full disk
(``ENOSPC``), an I/O error -- at any write point (the lock file, creating the
report, the repair cut, compaction, an append + ``fsync``, the final sorted
rewrite, a heatmap PNG), the run stops with :class:`ReportWriteError` (exit
``4``) and one line saying what failed and what to do. Nothing durable is
lost: a rewrite that fails removes its ``.tmp`` and leaves the report as it
was; an append that fails is cut back to the end of the last synced batch
(or, if even that fails, the next run's repair cuts it). The report always
parses, and running the same command again continues.

Exit codes (``xraynet screen``)
-------------------------------
=======  =====================================================================
``0``    every file of the folder has an ``ok`` row
``1``    the report has ``error`` rows for some files of the folder (the run
         itself completed)
``2``    usage error: bad options, missing folder, unusable model or report,
         a cluster batch that failed for good
``3``    another run holds the report's lock (``--on-lock fail``)
``4``    the report, its lock or temp file, or a heatmap could not be written
         (read-only folder, disk full, I/O error); rows durable before are kept
``5``    some folder or entry could not be listed: its earlier rows are kept
         unchanged and it was not screened (takes precedence over ``1``);
         also a folder with no images at all while the report has rows (an
         unmounted share looks like that), unless ``allow_empty``
``130``  interrupted (Ctrl-C); rows written so far are kept
=======  =====================================================================

Threads
-------
Decoding (Pillow releases the GIL) runs in a pool of ``workers`` threads a
batch ahead of the network, which runs on the calling thread only (the Numba
workqueue layer must not be entered from two threads). At most two batches
of images are in memory.

Across machines (``cluster=``, ``--cluster``)
---------------------------------------------
With a Dask scheduler address (``tcp://host:8786``) or ``local:N`` (a
LocalCluster of N one-thread worker processes started here and closed at the
end; it is started only when some file needs screening), only the per-batch
work -- decode, preprocess, network, heatmaps of flagged images -- runs on
the workers (:mod:`xraynet.cluster`). This process stays the one writer:
listing, hashing, lock, repair, compaction, skip rule, the row text, the
one-write()+fsync append per batch and the sorted rewrite are the code above,
shared with the local path (:class:`_Writer`). Tasks carry paths, not pixels:
workers must see the folder, the model file and the ``heatmaps`` folder at
the same absolute paths (shared file system); a worker whose model file has
another ``weights_sha256`` fails the run. At most two batches per worker are
in flight. Batches complete out of order, so rows are appended out of order
and the final sorted rewrite restores path order. A worker that dies has its
task re-run elsewhere; a batch's rows are written once, when its result
arrives, so every file still gets exactly one row. A batch that fails for
good raises :class:`ScreenError` (exit 2) with the finished batches' rows kept;
a heatmap a worker cannot write raises :class:`ReportWriteError` (exit 4) the
same way.
Needs ``pip install "xraynet[cluster]"``; ``import xraynet.screen`` never
imports Dask.
"""
from __future__ import annotations

import csv
import datetime
import errno
import io
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .atomic import special_file_kind, write_all, write_atomic
from .discovery import decode_path, display_path, find_images as _list_images
from .errors import ImageError, ReportLockedError, ReportWriteError, ScreenError
from .imaging import IMAGE_SUFFIXES

__all__ = ["screen", "Summary", "find_images", "report_columns", "path_of_cell", "exit_code_for", "IMAGE_SUFFIXES",
           "RETRY_REASONS", "EXIT_OK", "EXIT_ERRORS", "EXIT_USAGE", "EXIT_LOCKED", "EXIT_WRITE", "EXIT_UNLISTED"]

#: Error reasons that depend on this machine rather than on the file's bytes: retried on every run.
RETRY_REASONS = frozenset({"unreadable", "dicom_needs_pydicom", "unsupported_codec"})
#: Exit codes of ``xraynet screen`` (the table is in the module docstring).
EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_LOCKED, EXIT_WRITE, EXIT_UNLISTED = 0, 1, 2, 3, 4, 5


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error :func:`screen` raised: 3 locked, 4 an output could not be
    written, 2 any other (usage) error."""
    if isinstance(error, ReportWriteError):
        return EXIT_WRITE
    if isinstance(error, ReportLockedError):
        return EXIT_LOCKED
    return EXIT_USAGE

_HEAD = ("path", "sha256", "status", "error", "label")
_TAIL = ("flagged", "threshold", "warnings", "width", "height", "model", "model_sha256", "xraynet_version",
         "screened_at", "heatmap")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_LINE_END = "\r\n"


def report_columns(classes) -> list[str]:
    """The report header for a model with these class names."""
    return [*_HEAD, *(f"p_{c}" for c in classes), *_TAIL]


@dataclass
class Summary:
    """What one :func:`screen` run did. ``files``: images in the folder now;
    ``screened``: rows written this run; ``skipped_unchanged``: files whose row
    was kept; ``errors`` / ``flagged``: error rows / flagged rows among the
    folder's files in the report after the run (``*_new``: among this run's
    rows); ``labels_new``: predicted label counts of this run's ok rows;
    ``dropped_rows``: old rows removed (changed, deleted or duplicate files);
    ``unlisted``: folders or entries that could not be listed (their ``path`` text,
    ``""`` for the folder itself), whose ``kept_unlisted`` old rows were kept unchanged;
    times in seconds (``decode_seconds`` sums the worker threads' time,
    ``network_seconds`` is the model on the calling thread)."""

    folder: str
    out: str
    model: str
    model_sha256: str
    screening_class: str
    threshold: float
    files: int = 0
    screened: int = 0
    skipped_unchanged: int = 0
    errors: int = 0
    errors_new: int = 0
    flagged: int = 0
    flagged_new: int = 0
    labels_new: dict = field(default_factory=dict)
    dropped_rows: int = 0
    unlisted: list = field(default_factory=list)
    kept_unlisted: int = 0
    repaired_bytes: int = 0
    seconds: float = 0.0
    hash_seconds: float = 0.0
    decode_seconds: float = 0.0
    network_seconds: float = 0.0
    images_per_s: float = 0.0
    dry_run: bool = False
    would_screen: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """5 when something could not be listed, else 1 when some files have error rows, else 0."""
        if self.unlisted:
            return EXIT_UNLISTED
        return EXIT_ERRORS if self.errors else EXIT_OK

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


@dataclass(frozen=True)
class _File:
    key: str     # path relative to the folder, discovery.encode_path text (the report's path before _cell)
    path: str    # where to open it


# ------------------------------------------------------------------ discovery
def find_images(folder, *, recursive: bool = True, exclude=()) -> tuple[list[tuple[str, str]], list[str]]:
    """([(report path text, path to open)] sorted by path text, [messages]).

    :func:`xraynet.discovery.find_images` (see its rules) with a message for each
    folder or entry that cannot be listed. ``exclude``: files never listed."""
    listing = _list_images(folder, recursive=recursive, exclude=exclude)
    return listing.files, [_unlisted_note(u, None) for u in listing.unlisted]


def _unlisted_note(u, kept) -> str:
    rows = "" if kept is None else f" Its {kept} earlier report row(s) are kept unchanged."
    return (f"{display_path(u.path)}: cannot be listed ({u.reason}), so nothing under it was screened. "
            f"Expected a folder or file this user can read, got {u.error_name}.{rows} Fix its permissions or "
            f"mount and run again (until then the run exits {EXIT_UNLISTED}).")


# ------------------------------------------------------------------ CSV cells
def _cell(text: str) -> str:
    """Neutralise spreadsheet formulas: text starting with = + - @ tab or CR gets a leading '.
    So does text starting with ' itself, so that a cell maps back to one text (:func:`_uncell`)."""
    return "'" + text if text.startswith(_FORMULA_START) or text.startswith("'") else text


def _uncell(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def path_of_cell(cell: str) -> bytes:
    """The file's path relative to the folder, as bytes, from a report's ``path`` cell: the
    inverse of how rows are written (ValueError for a cell no file name gives)."""
    return decode_path(_uncell(cell))


def _num(x: float) -> str:
    """Shortest round-tripping plain decimal (no exponent)."""
    return np.format_float_positional(float(x), trim="-")


def _rows_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=_LINE_END).writerows(rows)
    return buf.getvalue()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------- reading a report
@dataclass
class _Existing:
    rows: list            # the good records, header excluded
    good_bytes: int       # file length up to the end of the last good record
    size: int             # file length now
    empty: bool           # no header at all: the report must be (re)created


def _read_report(path: Path, columns: list[str]) -> _Existing:
    """Parse the report; everything from the first incomplete or malformed record on is 'bad'."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _Existing([], 0, 0, True)
    except OSError as e:
        raise ScreenError(f"{path}: the report cannot be read ({e.strerror or e}). Expected a readable CSV "
                          f"report, got {type(e).__name__}. Check the permissions or choose another --out.") from None
    if not data:
        return _Existing([], 0, 0, True)
    text = data.decode("utf-8", "surrogateescape")
    pieces = text.split("\n")
    lines = [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    consumed = [0]

    def feed():
        for line in lines:
            consumed[0] += len(line)
            yield line

    records = []  # (record, end offset in characters)
    try:
        for rec in csv.reader(feed(), strict=True):
            end = consumed[0]
            if not text[end - 1:end] == "\n":  # a kill mid-write: no line end yet
                break
            records.append((rec, end))
    except csv.Error:
        pass  # a cut inside a quoted cell; records so far stand
    if not records or records[0][0] != columns:
        got = ",".join(records[0][0]) if records else repr(text[:80])
        raise ScreenError(f"{path}: the existing report does not have the columns this model writes. Expected "
                          f"header {','.join(columns)}, got {got}. "
                          "Write to a new --out file, or move the old report aside (another model or "
                          "another program wrote it).")
    rows, good_end = [], records[0][1]
    n = len(columns)
    i_status = columns.index("status")
    for rec, end in records[1:]:
        if len(rec) != n or rec[i_status] not in ("ok", "error") or not rec[0]:
            break
        rows.append(rec)
        good_end = end
    good_bytes = len(text[:good_end].encode("utf-8", "surrogateescape"))
    return _Existing(rows, good_bytes, len(data), False)


# ------------------------------------------------------------- durable files
def _write_error(path, e: OSError, failed: str, state: str, option: str = "--out") -> ReportWriteError:
    """The one-line error for a write that failed: what, why, what is kept, what to do."""
    name = errno.errorcode.get(e.errno, type(e).__name__)
    folder = display_path(Path(path).parent)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"Free disk space (or quota) where {folder} lives"
    elif e.errno == errno.ENOLCK:
        todo = "Put the report on a file system that supports flock (a local disk)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = f"Make {folder} writable for this user, or pass another {option}"
    else:
        todo = "Check the disk and the system log"
    return ReportWriteError(f"{display_path(path)}: {failed} failed ({e.strerror or e}). Expected a writable "
                            f"folder with free space, got {name}. {state} {todo}, then run the same command again.")


def _replace_report(out_p: Path, tmp_p: Path, rows, failed: str, state: str) -> None:
    """Write the header and ``rows`` to ``<report>.tmp``, sync, and replace the report with it."""
    try:
        write_atomic(out_p, _rows_text(rows).encode("utf-8", "surrogateescape"), tmp=tmp_p)
    except OSError as e:
        raise _write_error(out_p, e, failed, state) from None


class _Lock:
    """``flock`` on ``<report>.lock``; released on close or when the process dies."""

    def __init__(self, path: Path, wait: bool, report: Path):
        import fcntl

        existed = path.exists()
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if existed and e.errno in (errno.EACCES, errno.EPERM):
                raise ReportWriteError(
                    f"{display_path(path)}: opening the report's lock file failed ({e.strerror}). Expected a lock "
                    f"file this user can read and write, got one it cannot (another user's, or its mode). Nothing "
                    f"was written. Give it to this user (chown / chmod u+rw) or remove it, then run the same "
                    f"command again.") from None
            raise _write_error(path, e, "creating the report's lock file", "Nothing was written.") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise ReportLockedError(
                f"{report}: another xraynet screen run is writing this report (lock {path.name} is held). "
                f"Expected no other run, got a held lock. Wait for it to finish, or pass --on-lock wait "
                f"to queue behind it.") from None
        except OSError as e:  # ENOLCK: a file system without locks
            os.close(self.fd)
            raise _write_error(path, e, "locking the report", "Nothing was written.") from None
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


# ------------------------------------------------------------------ decoding
def _decode_one(f: _File, prep):
    """Worker-thread job: (array or None, (width, height, warnings) or None, error cell or None, seconds)."""
    from .imaging import load

    t0 = time.perf_counter()
    try:
        x, d = load(f.path, prep)
        return x, (d.width, d.height, d.warnings), None, time.perf_counter() - t0
    except ImageError as e:
        # Messages start with the path the decoder was given; the report shows the relative one.
        msg = str(e).replace(str(Path(f.path)), f.key)
        return None, None, f"{e.reason}: {msg}", time.perf_counter() - t0
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- one odd file must not stop the night's screening
        return None, None, (f"internal_error: {f.key}: decoding failed unexpectedly ({type(e).__name__}: {e}). "
                            f"Expected a decodable image or an ImageError, got an exception. Report this "
                            f"file to the xraynet maintainers."), time.perf_counter() - t0


def _hash_one(f: _File) -> str:
    from .decodecache import file_sha256

    try:
        return file_sha256(f.path)
    except OSError:
        return ""  # decoding reports why it cannot be read


# -------------------------------------------------------------------- screen
def _resolve_threshold(info: dict, threshold, screening_class, model_path) -> tuple[str, float]:
    classes = info["classes"]
    stored = info["metadata"].get("threshold") if isinstance(info["metadata"].get("threshold"), dict) else {}
    cls = screening_class or stored.get("class") or ("covid" if "covid" in classes else classes[-1])
    if cls not in classes:
        raise ScreenError(f"{model_path}: screening class {cls!r} is not a class of this model. Expected one of "
                          f"{classes}, got {cls!r}. Pass a class the model predicts.")
    value = threshold if threshold is not None else stored.get("value")
    if value is None:
        raise ScreenError(f"{model_path}: no screening threshold stored in the model. Expected metadata "
                          f"threshold.value or a threshold option, got neither. Pass --threshold.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                             and 0.0 <= value <= 1.0):
        raise ScreenError(f"threshold: not a probability. Expected a number from 0 to 1, got {value!r}. "
                          f"Pass --threshold between 0 and 1.")
    return cls, float(value)


def screen(folder, out, *, model_path=None, threshold: float | None = None, screening_class: str | None = None,
           batch_size: int = 32, workers: int = 2, recursive: bool = True, on_lock: str = "fail",
           dry_run: bool = False, progress: Callable[[int, int], None] | None = None, heatmaps=None,
           device: str = "cpu", cluster: str | None = None, cluster_timeout: float = 30.0,
           allow_empty: bool = False) -> Summary:
    """Screen the images under ``folder`` into the CSV report ``out``; see the module docstring.

    ``model_path``: a model file (default: the bundled model). ``threshold`` /
    ``screening_class``: default to the model's stored
    ``metadata["threshold"]``. ``on_lock``: ``"fail"`` or ``"wait"``.
    ``dry_run``: list in ``Summary.would_screen`` what would be screened and
    write nothing (not even the lock file). ``heatmaps``: a folder; each
    flagged image gets a Grad-CAM overlay PNG there (``<path>.png``, computed
    with the model's own backward pass) and its path in the ``heatmap`` column.
    ``device``: where the network runs, 'auto', 'cpu' or 'gpu' (see :mod:`xraynet.devices`;
    with ``cluster``, each worker resolves it for itself). ``progress(done, total)`` is
    called from the calling thread after each batch. ``cluster``: a Dask scheduler address
    (``tcp://host:8786``) or ``local:N``; the batches then run on its workers (see "Across
    machines" in the module docstring); ``cluster_timeout``: seconds to wait for the scheduler.

    Raises :class:`ScreenError` for unusable options, folder or report,
    :class:`ReportLockedError` when another run holds the lock,
    :class:`~xraynet.errors.ModelFileError` for a bad model file, and
    :class:`~xraynet.errors.BackendError` for an unknown device or a GPU that cannot be used.
    """
    from .modelfile import bundled_model_path, read_info

    t_start = time.perf_counter()
    folder_p, out_p = Path(folder), Path(out)
    if not folder_p.is_dir():
        got = "a file" if folder_p.exists() else "nothing at that path"
        raise ScreenError(f"{display_path(folder)}: cannot screen it. Expected a folder of images, got {got}. "
                          f"Check the path.")
    if out_p.is_dir():
        raise ScreenError(f"{display_path(out)}: cannot write the report there. Expected a file path such as "
                          f"report.csv, got a directory. Give a file name.")
    for p, what in ((out_p, "the report"), (out_p.with_name(out_p.name + ".lock"), "the report's lock file")):
        if special_file_kind(p) is not None:
            # A device, FIFO or socket: replacing it would destroy it (as root, /dev/null), reading it
            # could block or never end (/dev/zero).
            raise ScreenError(f"{display_path(p)}: cannot use it as {what}. Expected a regular file or no file, got "
                              f"{special_file_kind(p)}. Give another --out.")
    if not out_p.parent.is_dir():
        got = f"the file {display_path(out_p.parent)}" if out_p.parent.exists() else f"missing {display_path(out_p.parent)}"
        raise ScreenError(f"{display_path(out)}: the report's folder does not exist. Expected an existing folder, got {got}. "
                          f"Create it first.")
    if heatmaps is not None:
        # The heatmap column then names each overlay by an absolute path: a page or a person
        # reading the report from another working folder still finds them.
        heatmaps = os.path.abspath(heatmaps)
        inside, top = Path(os.path.realpath(heatmaps)), Path(os.path.realpath(folder_p))
        if inside == top or top in inside.parents:
            raise ScreenError(f"{display_path(heatmaps)}: the heatmaps folder lies inside the screened folder "
                              f"{display_path(folder_p)}. Expected a folder outside it, got one inside (the "
                              f"overlays would be screened as films the next night). Pass --heatmaps beside "
                              f"the report.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScreenError(f"batch_size: invalid. Expected an integer >= 1, got {batch_size!r}. Pass --batch-size 32.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ScreenError(f"workers: invalid. Expected an integer >= 1, got {workers!r}. Pass --workers 2.")
    if on_lock not in ("fail", "wait"):
        raise ScreenError(f"on_lock: invalid. Expected 'fail' or 'wait', got {on_lock!r}. Pass one of them.")
    from .devices import normalise

    device = normalise(device)  # 'cuda' -> 'gpu'; an unknown name fails here, before anything is written
    if cluster is None:
        from .backend import get_backend

        # A GPU that cannot be used fails now, not after the report is created and files hashed.
        # With --cluster the workers make their own backend: this machine may have no GPU.
        get_backend(device)
    spec = None
    if cluster is not None:
        from .cluster import ClusterSpec

        spec = ClusterSpec.parse(cluster, cluster_timeout, check_installed=not dry_run)

    model_file = Path(model_path) if model_path is not None else bundled_model_path()
    info = read_info(model_file)
    classes = list(info["classes"])
    cls, thr = _resolve_threshold(info, threshold, screening_class, model_file)
    model_text = f"{info['architecture'].get('name', 'model')} ({model_file.name})"
    model_sha = info["weights_sha256"]
    columns = report_columns(classes)
    summary = Summary(folder=display_path(folder), out=display_path(out), model=model_text, model_sha256=model_sha,
                      screening_class=cls, threshold=thr, dry_run=dry_run)

    lock_p = out_p.with_name(out_p.name + ".lock")
    tmp_p = out_p.with_name(out_p.name + ".tmp")
    lock = None if dry_run else _Lock(lock_p, on_lock == "wait", out_p)
    try:
        return _run(folder_p, out_p, tmp_p, lock_p, model_file, classes, columns, cls, thr, model_text, model_sha,
                    batch_size, workers, recursive, dry_run, progress, summary, t_start, heatmaps, device, spec,
                    allow_empty)
    finally:
        if lock is not None:
            lock.close()


def _file_identity(path: Path):
    """(device, inode) of ``path``, or None when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _under(key: str, prefixes) -> bool:
    """``key`` is one of ``prefixes`` or below one (``""``: the whole folder)."""
    return any(not p or key == p or key.startswith(p + "/") for p in prefixes)


def _run(folder_p, out_p, tmp_p, lock_p, model_file, classes, columns, cls, thr, model_text, model_sha,
         batch_size, workers, recursive, dry_run, progress, summary: Summary, t_start, heatmaps=None,
         device="cpu", cluster=None, allow_empty=False) -> Summary:
    existing = _read_report(out_p, columns)
    if not dry_run:
        try:
            tmp_p.unlink(missing_ok=True)  # left by a run killed during a compaction
        except OSError as e:
            raise _write_error(tmp_p, e, "removing the temp file a stopped run left", "The report is unchanged.") \
                from None
        if existing.empty:
            _replace_report(out_p, tmp_p, [columns], "creating the report", "Nothing was written.")
        elif existing.good_bytes < existing.size:
            # A kill mid-append: cut back to the last complete record (under the lock).
            try:
                fd = os.open(out_p, os.O_WRONLY)
                try:
                    os.ftruncate(fd, existing.good_bytes)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _write_error(out_p, e, "cutting the incomplete last record off the report",
                                   "Every complete row is kept.") from None
            summary.repaired_bytes = existing.size - existing.good_bytes

    listing = _list_images(folder_p, recursive=recursive, exclude=(out_p, lock_p, tmp_p))
    files = [_File(key, path) for key, path in listing.files]
    summary.files = len(files)
    first: dict[str, list] = {}  # path cell -> its first row
    for row in existing.rows:
        first.setdefault(row[0], row)
    # What could not be listed keeps its rows as they are: unseen is not deleted.
    frozen: dict[str, list] = {}
    if listing.unlisted:
        listed = {f.key for f in files}
        blind = [u.key for u in listing.unlisted]
        frozen = {c: r for c, r in first.items() if _uncell(c) not in listed and _under(_uncell(c), blind)}
        summary.unlisted = blind
        summary.kept_unlisted = len(frozen)
        for u in listing.unlisted:
            summary.warnings.append(_unlisted_note(u, sum(_under(_uncell(c), [u.key]) for c in frozen)))
    elif not files and first and not allow_empty:
        # An empty folder where the report has rows is what an unmounted share or a wrong path
        # looks like: keep every row and say so, rather than empty the report.
        frozen = dict(first)
        summary.unlisted = [""]
        summary.kept_unlisted = len(frozen)
        summary.warnings.append(
            f"{display_path(folder_p)}: holds no images now, but the report has {len(frozen)} row(s) from "
            f"earlier runs. Expected the folder's films, got none (an unmounted share or a wrong path looks "
            f"like this). The rows are kept unchanged and the run exits {EXIT_UNLISTED}; if the folder "
            f"really is empty now, run again with --allow-empty to clear the report.")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        t0 = time.perf_counter()
        hashes = list(pool.map(_hash_one, files))
        summary.hash_seconds = time.perf_counter() - t0

        # Plan: keep the first row of each file whose bytes, model and threshold match.
        i_sha, i_status, i_error = columns.index("sha256"), columns.index("status"), columns.index("error")
        i_model, i_thr, i_flag = columns.index("model_sha256"), columns.index("threshold"), columns.index("flagged")
        thr_text = _num(thr)
        kept: dict[str, list] = dict(frozen)  # path cell -> row
        todo: list[tuple[_File, str]] = []
        for f, digest in zip(files, hashes):
            cell = _cell(f.key)
            row = first.get(cell)
            reusable = (row is not None and digest and row[i_sha] == digest and row[i_model] == model_sha
                        and row[i_thr] == thr_text
                        and not (row[i_status] == "error" and row[i_error].split(":", 1)[0] in RETRY_REASONS))
            if reusable:
                kept[cell] = row
            else:
                todo.append((f, digest))
        summary.skipped_unchanged = len(kept) - len(frozen)
        summary.dropped_rows = len(existing.rows) - len(kept)
        if dry_run:
            summary.would_screen = [f.key for f, _ in todo]
            summary.errors = sum(1 for r in kept.values() if r[i_status] == "error")
            summary.flagged = sum(1 for r in kept.values() if r[i_flag] == "1")
            summary.seconds = time.perf_counter() - t_start
            return summary

        if summary.dropped_rows:
            # Compaction: no row of a file about to be screened (or gone) may survive, so that
            # appending its new row can never make a duplicate, at any kill point.
            on_disk = sorted(kept, key=_uncell)
            _replace_report(out_p, tmp_p, [columns, *(kept[c] for c in on_disk)], "rewriting the report without "
                            "its outdated rows", "The report is unchanged, every old row still in it.")
        else:
            on_disk = [r[0] for r in existing.rows]  # the same rows, in the file's own order

        report_id = _file_identity(out_p)
        new_rows: dict[str, list] = {}
        if todo:
            _screen_files(todo, pool, out_p, model_file, classes, cls, thr, thr_text, model_text, model_sha,
                          batch_size, progress, summary, new_rows, heatmaps, device, cluster)
    on_disk_cells = on_disk + [_cell(k) for k in new_rows]  # in append order (--cluster: completion order)
    final = {**kept, **{_cell(k): r for k, r in new_rows.items()}}
    final_cells = sorted(final, key=_uncell)
    if _file_identity(out_p) != report_id:
        # Removed, moved or replaced while this run appended to it: the rows went with that file.
        # Every row is still in memory, so the report is written again whole at --out.
        summary.warnings.append(f"{display_path(out_p)}: the report was removed, moved or replaced during the "
                                "run; it has been written again with every row.")
        _replace_report(out_p, tmp_p, [columns, *(final[c] for c in final_cells)], "writing the report again "
                        "after it was removed or moved during the run", "Its rows are not at --out (the next "
                        "run screens the files again).")
    elif on_disk_cells != final_cells:
        # New rows were appended after kept rows that sort later: restore the sorted order atomically.
        _replace_report(out_p, tmp_p, [columns, *(final[c] for c in final_cells)], "rewriting the report in "
                        "sorted order", "Every row is in the report, only not sorted (the next run sorts it).")

    summary.errors = sum(1 for r in final.values() if r[i_status] == "error")
    summary.flagged = sum(1 for r in final.values() if r[i_flag] == "1")
    summary.seconds = time.perf_counter() - t_start
    summary.images_per_s = summary.screened / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _write_heatmaps(folder, model, ci, thr, keys, x, ok, p_of) -> set:
    """Grad-CAM overlays for the flagged images of one batch, written to ``folder/<key>.png``:
    the set of their indices in the batch (:func:`_heatmap_path` names the file).

    The overlay is drawn on the network's own input (the preprocessed film), so
    it shows exactly what the model looked at."""
    if folder is None or x is None:
        return set()
    from .heatmap import write_overlay_png

    flagged = [j for j, i in enumerate(ok) if p_of[i][ci] >= thr]
    if not flagged:
        return set()
    cams = model.gradcam(x[flagged], ci)
    out = set()
    for j, cam in zip(flagged, cams):
        i = ok[j]
        path = _heatmap_path(folder, keys[i])
        try:
            write_overlay_png(path, x[j, 0], cam)
        except OSError as e:
            raise _write_error(path, e, "writing the heatmap PNG", "The rows of the batches finished before are "
                               "in the report; this batch's rows were not written.", "--heatmaps folder") from None
        out.add(i)
    return out


def _heatmap_path(folder, key: str) -> Path:
    return Path(folder) / (key + ".png")


@dataclass
class _BatchResult:
    """What running the network on one batch gives, per file in batch order: ``proba`` (array or
    None), ``meta`` ((width, height, warnings) or None), ``error`` (error cell or None),
    ``decode_seconds``; plus the indices with a heatmap and the batch's network seconds. Computed on
    the calling thread (local) or on a Dask worker (``--cluster``); small and picklable."""

    proba: list
    meta: list
    error: list
    decode_seconds: list
    heat: set
    network_seconds: float


def _infer(model, ci: int, thr: float, keys, decoded, heatmaps=None) -> _BatchResult:
    """Run the network on one batch of :func:`_decode_one` results (and write its heatmaps)."""
    ok = [i for i, r in enumerate(decoded) if r[2] is None]
    proba, x, net_s = None, None, 0.0
    if ok:
        x = np.stack([decoded[i][0] for i in ok])[:, None]
        t0 = time.perf_counter()
        proba = model.predict_proba(x, batch_size=len(ok))
        net_s = time.perf_counter() - t0
    p_of = {i: proba[j] for j, i in enumerate(ok)}
    heat = _write_heatmaps(heatmaps, model, ci, thr, keys, x, ok, p_of)
    return _BatchResult([p_of.get(i) for i in range(len(decoded))], [r[1] for r in decoded],
                        [r[2] for r in decoded], [r[3] for r in decoded], heat, net_s)


@dataclass
class _Writer:
    """The one writer of new rows (local and --cluster alike): builds a batch's rows from its
    :class:`_BatchResult` and appends them with one write() + fsync."""

    fd: int
    classes: list
    ci: int
    thr: float
    thr_text: str
    model_text: str
    model_sha: str
    heatmaps: object
    summary: Summary
    new_rows: dict
    total: int
    progress: Callable[[int, int], None] | None = None
    done: int = 0

    def rows(self, batch, res: _BatchResult) -> list:
        """One CSV row per file of ``batch`` ([(_File, sha256)]), in batch order."""
        s, classes, now = self.summary, self.classes, _utc_now()
        s.decode_seconds += sum(res.decode_seconds)
        s.network_seconds += res.network_seconds
        rows = []
        for i, (f, digest) in enumerate(batch):
            if res.error[i] is not None:
                row = [_cell(f.key), digest, "error", _cell(res.error[i]), "", *([""] * len(classes)), "",
                       self.thr_text, "", "", "", _cell(self.model_text), self.model_sha, __version__, now, ""]
                s.errors_new += 1
            else:
                p = res.proba[i]
                label = classes[int(np.argmax(p))]
                flagged = int(p[self.ci] >= self.thr)
                w, h, warns = res.meta[i]
                heat = str(_heatmap_path(self.heatmaps, f.key)) if i in res.heat else ""
                row = [_cell(f.key), digest, "ok", "", _cell(label), *(_num(v) for v in p), str(flagged),
                       self.thr_text, _cell(";".join(warns)), str(w), str(h), _cell(self.model_text),
                       self.model_sha, __version__, now, _cell(heat)]
                s.flagged_new += flagged
                s.labels_new[label] = s.labels_new.get(label, 0) + 1
            rows.append(row)
        return rows

    def append(self, batch, res: _BatchResult) -> None:
        rows = self.rows(batch, res)
        # One write of whole records, then fsync: a kill leaves at most one cut record at the end.
        start = os.lseek(self.fd, 0, os.SEEK_END)  # O_APPEND: this batch starts at the end
        try:
            write_all(self.fd, _rows_text(rows).encode("utf-8", "surrogateescape"))
            os.fsync(self.fd)
        except OSError as e:
            # Disk full mid-write, or fsync failed: this batch is not durable. Cut it back so the
            # report ends with the last synced batch (ftruncate frees space, it needs none).
            try:
                os.ftruncate(self.fd, start)
                os.fsync(self.fd)
                state = "this batch was cut back"
            except OSError:
                state = "the next run cuts this batch's incomplete record"
            raise _write_error(self.summary.out, e, "appending rows to the report",
                               f"The {self.done} row(s) appended earlier in this run and all older rows are "
                               f"kept; {state}.") from None
        for (f, _), row in zip(batch, rows):
            self.new_rows[f.key] = row
        self.summary.screened += len(rows)
        self.done += len(rows)
        if self.progress:
            self.progress(self.done, self.total)


def _screen_files(todo, pool, out_p, model_file, classes, cls, thr, thr_text, model_text, model_sha, batch_size,
                  progress, summary: Summary, new_rows: dict, heatmaps=None, device="cpu", cluster=None) -> None:
    """Decode a batch ahead in the pool while this thread runs the network (or hand the batches to a
    Dask cluster, ``cluster``: a :class:`xraynet.cluster.ClusterSpec`); append each batch durably."""
    ci = classes.index(cls)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    if progress:
        progress(0, len(todo))
    try:
        fd = os.open(out_p, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise _write_error(out_p, e, "opening the report to append rows", "No row was lost.") from None
    try:
        writer = _Writer(fd, classes, ci, thr, thr_text, model_text, model_sha, heatmaps, summary, new_rows,
                         len(todo), progress)
        if cluster is not None:
            from .cluster import screen_batches

            screen_batches(cluster, batches, writer, model_file, model_sha, device, heatmaps)
        else:
            _screen_local(batches, pool, writer, model_file, heatmaps, device)
    finally:
        os.close(fd)


def _screen_local(batches, pool, writer: _Writer, model_file, heatmaps, device) -> None:
    from .imaging import Preprocessing
    from .modelfile import load_model

    loaded = load_model(model_file, device=device)
    model = loaded.model
    prep = Preprocessing.from_dict(loaded.preprocessing)

    def submit(batch):
        return [pool.submit(_decode_one, f, prep) for f, _ in batch]

    ahead = submit(batches[0])
    for k, batch in enumerate(batches):
        current = ahead
        ahead = submit(batches[k + 1]) if k + 1 < len(batches) else None  # decoded while the net runs
        decoded = [fu.result() for fu in current]
        writer.append(batch, _infer(model, writer.ci, writer.thr, [f.key for f, _ in batch], decoded, heatmaps))
