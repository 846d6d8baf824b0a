"""The CSV report: its columns and cells, reading and repairing it, its lock, and writing it durably.

The format and the crash-safety rules are in the :mod:`xraynet.screening`
docstring ("Report columns", "Crash safety"). Everything here runs in the one
process that writes the report; no function here knows about models or
images.
"""
from __future__ import annotations

import csv
import datetime
import errno
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_all, write_atomic
from ..discovery import decode_path, display_path
from ..errors import ReportLockedError, ReportWriteError, ScreenError

__all__ = ["HEAD_COLUMNS", "TAIL_COLUMNS", "report_columns", "cell", "uncell", "path_of_cell", "format_number",
           "utc_now", "ReportFiles", "ExistingReport", "read_report", "scan_records", "repair_report", "replace_report",
           "append_rows", "write_error", "file_identity", "ReportLock"]

#: The columns before the ``p_<class>`` ones, and after them.
HEAD_COLUMNS = ("path", "sha256", "status", "error", "label")
TAIL_COLUMNS = ("flagged", "threshold", "warnings", "width", "height", "model", "model_sha256", "xraynet_version",
                "screened_at", "heatmap")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_LINE_END = "\r\n"


def report_columns(classes) -> list[str]:
    """The report header for a model with these class names."""
    return [*HEAD_COLUMNS, *(f"p_{c}" for c in classes), *TAIL_COLUMNS]


# ------------------------------------------------------------------ cells
def cell(text: str) -> str:
    """Neutralise spreadsheet formulas: text starting with = + - @ tab or CR gets a leading '.
    So does text starting with ' itself, so that a cell maps back to one text (:func:`uncell`)."""
    return "'" + text if text.startswith(_FORMULA_START) or text.startswith("'") else text


def uncell(text: str) -> str:
    """The text a cell was written from: the inverse of :func:`cell`."""
    return text[1:] if text.startswith("'") else text


def path_of_cell(text: str) -> bytes:
    """The file's path relative to the folder, as bytes, from a report's ``path`` cell: the
    inverse of how rows are written (ValueError for a cell no file name gives)."""
    return decode_path(uncell(text))


def format_number(x: float) -> str:
    """Shortest round-tripping plain decimal (no exponent)."""
    return np.format_float_positional(float(x), trim="-")


def utc_now() -> str:
    """The ``screened_at`` text: UTC now, ISO 8601 to the second, with ``Z``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows_bytes(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=_LINE_END).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ files
@dataclass(frozen=True)
class ReportFiles:
    """The report ``out`` and its two companions: ``<out>.lock`` (the flock) and ``<out>.tmp``
    (every whole-file rewrite goes there first)."""

    out: Path
    lock: Path
    tmp: Path

    @classmethod
    def of(cls, out) -> "ReportFiles":
        out = Path(out)
        return cls(out, out.with_name(out.name + ".lock"), out.with_name(out.name + ".tmp"))


def file_identity(path: Path):
    """(device, inode) of ``path``, or None when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# ---------------------------------------------------------- reading a report
@dataclass
class ExistingReport:
    """A report as found at the start of a run. ``rows``: the good records, header excluded;
    ``good_bytes``: file length up to the end of the last good record; ``size``: file length
    now; ``empty``: no header at all, the report must be (re)created; ``dropped``: malformed
    records found before good ones (a hand edit, disk damage), and ``untidy``: a byte order
    mark before the header (a spreadsheet's "CSV UTF-8") or blank lines between rows, all left
    out when the report is next rewritten (:attr:`needs_rewrite`); ``suspect``: the path cells
    of rows read after such damage, and of paths with more than one row, whose files are
    screened again."""

    rows: list
    good_bytes: int
    size: int
    empty: bool
    dropped: int = 0
    untidy: bool = False
    suspect: set = field(default_factory=set)

    @property
    def needs_rewrite(self) -> bool:
        return bool(self.dropped or self.untidy)


_BOM = b"\xef\xbb\xbf"


def _lines(text: str) -> list[str]:
    pieces = text.split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


class _Feed:
    """The report's lines to a csv.reader, from line ``pos`` on; ``pos`` may be set back."""

    def __init__(self, lines: list[str], pos: int = 0):
        self.lines, self.pos = lines, pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def scan_records(text: str, columns: list[str]) -> tuple[list, int, int, int, int]:
    """(good rows, end of the last good record in characters, malformed records before it,
    index of the first row after one, blank lines between rows); end -1 when the first
    record is not the header ``columns``.

    One csv.reader reads the records while they are good. A malformed one (cut short, wrong
    number of cells, no path, a status other than ok/error) is skipped a line at a time, with
    a new reader, until a good record starts again, so damage in the middle costs only the
    damaged rows; what follows the last good record is an append a kill cut short
    (:func:`repair_report` cuts it off). A blank line between records costs nothing."""
    lines = _lines(text)
    feed = _Feed(lines)
    reader = csv.reader(feed, strict=True)
    n, i_status = len(columns), columns.index("status")
    rows, end, good_end, dropped, bad_run, after, blanks = [], 0, -1, 0, False, None, 0
    while feed.pos < len(lines):
        start = feed.pos
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error:  # a quoted cell still open at the end of the text
            rec = None
        width = len(lines[start]) if feed.pos == start + 1 else sum(map(len, lines[start:feed.pos]))
        whole = rec is not None and lines[feed.pos - 1].endswith("\n")
        if good_end < 0:  # the header
            if not whole or rec != columns:
                return [], -1, 0, 0, 0
            end = good_end = width
        elif whole and rec == [] and feed.pos < len(lines):
            end += width  # a blank line: nothing lost (the report is rewritten without it)
            blanks += 1
        elif whole and len(rec) == n and rec[i_status] in ("ok", "error") and rec[0]:
            dropped += bad_run
            bad_run = False
            if dropped and after is None:
                after = len(rows)
            rows.append(rec)
            end += width
            good_end = end
        else:
            bad_run = True  # skip one line and look for the next good record, with a fresh reader
            end += len(lines[start])
            feed.pos = start + 1
            reader = csv.reader(feed, strict=True)
    return rows, good_end, dropped, len(rows) if after is None else after, blanks


def read_report(path: Path, columns: list[str]) -> ExistingReport:
    """Parse the report (see :func:`scan_records`). Raises :class:`ScreenError` when it cannot be read
    or has another header than ``columns``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ExistingReport([], 0, 0, True)
    except OSError as e:
        raise ScreenError(f"{path}: the report cannot be read ({e.strerror or e}). Expected a readable CSV "
                          f"report, got {type(e).__name__}. Check the permissions or choose another --out.") from None
    if not data:
        return ExistingReport([], 0, 0, True)
    bom = data.startswith(_BOM)
    text = data[len(_BOM) if bom else 0:].decode("utf-8", "surrogateescape")
    rows, good_end, dropped, after, blanks = scan_records(text, columns)
    if good_end < 0:
        got = repr(text.split("\n", 1)[0][:200])
        raise ScreenError(f"{path}: the existing report does not have the columns this model writes. Expected "
                          f"header {','.join(columns)}, got {got}. "
                          "Write to a new --out file, or move the old report aside (another model or "
                          "another program wrote it).")
    good_bytes = len(text[:good_end].encode("utf-8", "surrogateescape")) + (len(_BOM) if bom else 0)
    # Rows read past damage may be text from inside a damaged record (a quoted path cell with a
    # line break holds anything), and a path with two rows has at most one true one: never reused.
    seen, suspect = set(), {r[0] for r in rows[after:]}
    for r in rows:
        (suspect if r[0] in seen else seen).add(r[0])
    return ExistingReport(rows, good_bytes, len(data), False, dropped, bom or blanks > 0, suspect)


# ------------------------------------------------------------- durable writes
def write_error(path, e: OSError, failed: str, state: str, option: str = "--out") -> ReportWriteError:
    """The one-line error for a write that failed: what (``failed``), why (``e``), what is kept
    (``state``), what to do (fix the folder named by ``option``, then run again)."""
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


def replace_report(files: ReportFiles, rows, failed: str, state: str) -> None:
    """Write ``rows`` (the header first) to ``<report>.tmp``, sync, and replace the report with it
    (:func:`xraynet.atomic.write_atomic`); :class:`ReportWriteError` saying ``failed`` and ``state``."""
    try:
        write_atomic(files.out, _rows_bytes(rows), tmp=files.tmp)
    except OSError as e:
        raise write_error(files.out, e, failed, state) from None


def repair_report(files: ReportFiles, columns: list[str], existing: ExistingReport) -> int:
    """Make the report ready for appends (under the lock): remove a ``.tmp`` a stopped run left,
    create a missing or empty report with its header, cut an incomplete last record off.
    Returns the number of bytes cut."""
    try:
        files.tmp.unlink(missing_ok=True)  # left by a run killed during a compaction
    except OSError as e:
        raise write_error(files.tmp, e, "removing the temp file a stopped run left", "The report is unchanged.") \
            from None
    if existing.empty:
        replace_report(files, [columns], "creating the report", "Nothing was written.")
        return 0
    if existing.good_bytes == existing.size:
        return 0
    # A kill mid-append: cut back to the last complete record.
    try:
        fd = os.open(files.out, os.O_WRONLY)
        try:
            os.ftruncate(fd, existing.good_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(files.out, e, "cutting the incomplete last record off the report",
                          "Every complete row is kept.") from None
    return existing.size - existing.good_bytes


def append_rows(fd: int, rows, report_text: str, done: int) -> None:
    """Append ``rows`` to the report open at ``fd`` (``O_APPEND``) with one ``write()`` of whole
    records, then ``fsync``: a kill leaves at most one cut record at the end. On failure the
    rows are cut back off and :class:`ReportWriteError` names ``report_text`` and the ``done``
    rows appended earlier in this run."""
    start = os.lseek(fd, 0, os.SEEK_END)  # O_APPEND: this batch starts at the end
    try:
        write_all(fd, _rows_bytes(rows))
        os.fsync(fd)
    except OSError as e:
        # Disk full mid-write, or fsync failed: this batch is not durable. Cut it back so the
        # report ends with the last synced batch (ftruncate frees space, it needs none).
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
            state = "this batch was cut back"
        except OSError:
            state = "the next run cuts this batch's incomplete record"
        raise write_error(report_text, e, "appending rows to the report",
                          f"The {done} row(s) appended earlier in this run and all older rows are "
                          f"kept; {state}.") from None


# ------------------------------------------------------------------ the lock
class ReportLock:
    """``flock`` on ``<report>.lock``: one run at a time per report. Released by :meth:`close`
    or when the process dies, however it dies; the lock file is left in place.

    ``wait``: block until another run ends, else raise :class:`ReportLockedError` at once.
    :class:`ReportWriteError` when the lock file cannot be created, opened or locked."""

    def __init__(self, files: ReportFiles, wait: bool):
        import fcntl

        path = files.lock
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
            raise write_error(path, e, "creating the report's lock file", "Nothing was written.") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise ReportLockedError(
                f"{files.out}: another xraynet screen run is writing this report (lock {path.name} is held). "
                f"Expected no other run, got a held lock. Wait for it to finish, or pass --on-lock wait "
                f"to queue behind it.") from None
        except OSError as e:  # ENOLCK: a file system without locks
            os.close(self.fd)
            raise write_error(path, e, "locking the report", "Nothing was written.") from None
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
