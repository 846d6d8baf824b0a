"""One screening run: check the job, take the lock, plan from the report, screen, finish the report.

:class:`ScreenJob` says what to screen and how; :func:`run_screen` runs it and
:func:`screen` is the same with keyword arguments. The rules a run keeps (which
files, the skip rule, compaction, the final sorted rewrite, exit codes) are in
the :mod:`xraynet.screening` docstring; the report's own reading and writing is
:mod:`~xraynet.screening.report`, the per-batch work
:mod:`~xraynet.screening.batch`, the rows :mod:`~xraynet.screening.writer`.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..discovery import display_path, find_images
from .batch import BatchSettings, ImageFile
from .checks import check_device, check_heatmaps, check_options, check_paths, read_model
from .decodepool import DecodePool, pool_kind, refuse_in_starting_worker, screen_local
from .report import (ExistingReport, ReportFiles, ReportLock, cell, file_identity, format_number, read_report,
                     repair_report, replace_report, report_columns, uncell, write_error)
from .summary import EXIT_UNLISTED, Summary
from .writer import ROW_VERSION, BatchWriter

if TYPE_CHECKING:
    from .cluster import ClusterSpec

__all__ = ["ScreenJob", "run_screen", "screen", "RETRY_REASONS"]

#: Error reasons that depend on this machine rather than on the file's bytes: retried on every run.
RETRY_REASONS = frozenset({"unreadable", "dicom_needs_pydicom", "unsupported_codec", "changed"})

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ScreenJob:
    """What to screen and how: screen the images under ``folder`` into the CSV report ``out``.

    ``model_path``: a model file (default: the bundled model). ``threshold`` /
    ``screening_class``: default to the model's stored
    ``metadata["threshold"]``. ``batch_size``: images per network batch;
    ``workers``: threads hashing, and threads or processes decoding;
    ``pool``: how files are decoded, ``"threads"``, ``"processes"`` or
    ``"auto"`` (processes from 64 files on, with 3 or more workers and cores;
    :mod:`~xraynet.screening.decodepool`); ``recursive``: descend into
    subfolders. ``on_lock``: ``"fail"`` or ``"wait"`` when another run holds
    the report. ``dry_run``: list in ``Summary.would_screen`` what would be
    screened and write nothing (not even the lock file). ``heatmaps``: a
    folder; each flagged image gets a Grad-CAM overlay PNG there
    (``<path>.png``, computed with the model's own backward pass) and its path
    in the ``heatmap`` column. ``device``: where the network runs, 'auto',
    'cpu' or 'gpu' (see :mod:`xraynet.devices`; with ``cluster``, each worker
    resolves it for itself). ``cluster``: a Dask scheduler address
    (``tcp://host:8786``) or ``local:N``; the batches then run on its workers;
    ``cluster_timeout``: seconds to wait for the scheduler. ``allow_empty``:
    let a folder with no images at all clear the report's rows.

    Checked when run (:func:`run_screen`), not when built."""

    folder: str | os.PathLike
    out: str | os.PathLike
    model_path: str | os.PathLike | None = None
    threshold: float | None = None
    screening_class: str | None = None
    batch_size: int = 32
    workers: int = 2
    pool: str = "auto"
    recursive: bool = True
    on_lock: str = "fail"
    dry_run: bool = False
    heatmaps: str | os.PathLike | None = None
    device: str = "cpu"
    cluster: str | None = None
    cluster_timeout: float = 30.0
    allow_empty: bool = False


def screen(folder, out, *, progress: Progress | None = None, **options) -> Summary:
    """``screen(folder, out, model_path=..., ...)``: :func:`run_screen` of
    ``ScreenJob(folder, out, **options)`` (the options are :class:`ScreenJob`'s fields)."""
    return run_screen(ScreenJob(folder, out, **options), progress)


def run_screen(job: ScreenJob, progress: Progress | None = None) -> Summary:
    """Screen ``job.folder`` into the report ``job.out``; see the :mod:`xraynet.screening` docstring.

    ``progress(done, total)`` is called from the calling thread after each batch.

    Raises :class:`ScreenError` for unusable options, folder or report,
    :class:`~xraynet.errors.ReportLockedError` when another run holds the lock,
    :class:`~xraynet.errors.ReportWriteError` when the report, its lock or a heatmap
    cannot be written, :class:`~xraynet.errors.ModelFileError` for a bad model file, and
    :class:`~xraynet.errors.BackendError` for an unknown device or a GPU that cannot be used.
    """
    t_start = time.perf_counter()
    refuse_in_starting_worker()
    if os.path.islink(job.out):
        # Rewrites replace the report by rename: done on a link they would replace the link by a
        # file and leave the file it points to stale. Lock, temp file and report go beside the target.
        job = replace(job, out=os.path.realpath(job.out))
    check_paths(job)
    heatmaps = check_heatmaps(job)
    check_options(job)
    device, cluster = check_device(job)
    settings = read_model(job, device, heatmaps)
    files = ReportFiles.of(job.out)
    summary = Summary(folder=display_path(job.folder), out=display_path(job.out), model=settings.model_name,
                      model_sha256=settings.model_sha256, screening_class=settings.screening_class,
                      threshold=settings.threshold, dry_run=job.dry_run)
    lock = None if job.dry_run else ReportLock(files, wait=job.on_lock == "wait")
    try:
        return _Run(job, settings, files, cluster, summary, progress).execute(t_start)
    finally:
        if lock is not None:
            lock.close()


# ------------------------------------------------------------------ the run
def _hash_one(f: ImageFile) -> tuple[ImageFile, str]:
    """``f`` with the :func:`~xraynet.decodecache.file_version` its bytes were hashed at, and
    their SHA-256: (ImageFile, digest); digest "" when it cannot be read (decoding says why)."""
    from ..decodecache import hash_file

    try:
        digest, version = hash_file(f.path)
    except OSError:
        return f, ""
    # A file that changed while it was hashed keeps a version no file has: decoding calls it changed.
    return replace(f, version=version or ()), digest


def _under(key: str, prefixes) -> bool:
    """``key`` is one of ``prefixes`` or below one (``""``: the whole folder)."""
    return any(not p or key == p or key.startswith(p + "/") for p in prefixes)


def _unlisted_note(u, kept: int) -> str:
    return (f"{display_path(u.path)}: cannot be listed ({u.reason}), so nothing under it was screened. "
            f"Expected a folder or file this user can read, got {u.error_name}. Its {kept} earlier report row(s) "
            f"are kept unchanged. Fix its permissions or mount and run again (until then the run exits "
            f"{EXIT_UNLISTED}).")


@dataclass
class _Run:
    """One run after its job was checked and the lock taken (under the lock, unless a dry run)."""

    job: ScreenJob
    settings: BatchSettings
    files: ReportFiles
    cluster: ClusterSpec | None
    summary: Summary
    progress: Progress | None

    def __post_init__(self):
        self.retried: dict[str, tuple[str, str]] = {}  # file key -> (sha256, reason) of its retried error row
        self.columns = report_columns(self.settings.classes)
        self.col = {name: self.columns.index(name) for name in
                    ("sha256", "status", "error", "model_sha256", "threshold", "flagged", "xraynet_version")}

    def execute(self, t_start: float) -> Summary:
        job, files, summary = self.job, self.files, self.summary
        existing = read_report(files.out, self.columns)
        if not job.dry_run:
            summary.repaired_bytes = repair_report(files, self.columns, existing)
        if existing.dropped:
            summary.warnings.append(f"{display_path(files.out)}: {existing.dropped} malformed record(s) stood between "
                                    f"good rows (edited by hand or damaged on disk). Expected whole report rows, got "
                                    f"damaged ones. They were left out and the rows around them kept; files that had "
                                    f"no other row are screened again.")
        listing = find_images(job.folder, recursive=job.recursive, exclude=(files.out, files.lock, files.tmp))
        images = [ImageFile(key, path) for key, path in listing.files]
        summary.files = len(images)
        first: dict[str, list] = {}  # path cell -> its first row
        for row in existing.rows:
            first.setdefault(row[0], row)
        frozen = self._keep_unseen(listing, images, first)
        with ThreadPoolExecutor(max_workers=job.workers) as pool:  # hashing releases the GIL: threads
            kept, todo = self._plan(pool, images, first, frozen, existing.suspect)
        summary.skipped_unchanged = len(kept) - len(frozen)
        summary.dropped_rows = len(existing.rows) - len(kept)
        if job.dry_run:
            summary.would_screen = [f.key for f, _ in todo]
            self._count(kept, t_start)
            return summary
        on_disk = self._compact(kept, existing)
        report_id = file_identity(files.out)
        new_rows = self._screen_files(todo) if todo else {}
        self._count(self._finish(kept, on_disk, new_rows, report_id), t_start)
        summary.images_per_s = summary.screened / summary.seconds if summary.seconds > 0 else 0.0
        return summary

    def _keep_unseen(self, listing, images, first: dict) -> dict:
        """The rows (path cell -> row) to keep as they are because their files could not be seen:
        what could not be listed is not deleted."""
        summary = self.summary
        if listing.unlisted:
            listed = {f.key for f in images}
            blind = [u.key for u in listing.unlisted]
            frozen = {c: r for c, r in first.items() if uncell(c) not in listed and _under(uncell(c), blind)}
            summary.unlisted = blind
            summary.kept_unlisted = len(frozen)
            for u in listing.unlisted:
                summary.warnings.append(_unlisted_note(u, sum(_under(uncell(c), [u.key]) for c in frozen)))
            return frozen
        if images or not first or self.job.allow_empty:
            return {}
        # An empty folder where the report has rows is what an unmounted share or a wrong path
        # looks like: keep every row and say so, rather than empty the report.
        summary.unlisted = [""]
        summary.kept_unlisted = len(first)
        summary.warnings.append(
            f"{display_path(Path(self.job.folder))}: holds no images now, but the report has {len(first)} row(s) "
            f"from earlier runs. Expected the folder's films, got none (an unmounted share or a wrong path looks "
            f"like this). The rows are kept unchanged and the run exits {EXIT_UNLISTED}; if the folder "
            f"really is empty now, run again with --allow-empty to clear the report.")
        return dict(first)

    def _plan(self, pool, images, first: dict, frozen: dict, suspect: set) -> tuple[dict, list]:
        """(rows kept: path cell -> row, [(ImageFile, sha256)] to screen). A file keeps the first row
        of its path when its bytes, the model, the threshold and the xraynet that wrote it
        (:data:`~.writer.ROW_VERSION`) match, unless that row is an error whose reason depends on
        the machine (:data:`RETRY_REASONS`) or ``suspect`` (:class:`~.report.ExistingReport`)."""
        t0 = time.perf_counter()
        hashed = list(pool.map(_hash_one, images))
        self.summary.hash_seconds = time.perf_counter() - t0
        col, thr_text = self.col, format_number(self.settings.threshold)
        kept: dict[str, list] = dict(frozen)
        todo: list[tuple[ImageFile, str]] = []
        for f, digest in hashed:
            c = cell(f.key)
            row = first.get(c)
            # "" == "": unreadable both times; a suspect row (after damage, or one of two) is never reused
            same = (row is not None and c not in suspect and row[col["sha256"]] == digest
                    and row[col["model_sha256"]] == self.settings.model_sha256
                    and row[col["threshold"]] == thr_text
                    and row[col["xraynet_version"]] == ROW_VERSION)
            reason = row[col["error"]].split(":", 1)[0] if same and row[col["status"]] == "error" else None
            if reason in RETRY_REASONS:
                self.retried[f.key] = (digest, reason)  # the same error again is no news (Summary)
            reusable = same and digest and reason not in RETRY_REASONS
            if reusable:
                kept[c] = row
            else:
                todo.append((f, digest))
        return kept, todo

    def _compact(self, kept: dict, existing: ExistingReport) -> list:
        """Drop every row not kept, so that appending a file's new row can never make a duplicate,
        at any kill point. Returns the path cells in the report's order."""
        if not self.summary.dropped_rows and not existing.needs_rewrite:
            return [r[0] for r in existing.rows]  # the same rows, in the file's own order
        on_disk = sorted(kept, key=uncell)
        replace_report(self.files, [self.columns, *(kept[c] for c in on_disk)], "rewriting the report without "
                       "its outdated rows", "The report is unchanged, every old row still in it.")
        return on_disk

    def _screen_files(self, todo) -> dict:
        """Screen ``todo`` in batches and append each batch durably: file key -> its new row."""
        batch_size = self.job.batch_size
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        if self.progress:
            self.progress(0, len(todo))
        try:
            fd = os.open(self.files.out, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise write_error(self.files.out, e, "opening the report to append rows", "No row was lost.") from None
        try:
            writer = BatchWriter(fd, self.settings, self.summary, len(todo), self.progress, retried=self.retried)
            if self.cluster is not None:
                from .cluster import screen_batches

                screen_batches(self.cluster, batches, writer, self.settings)
            else:
                kind = pool_kind(self.job.pool, self.job.workers, len(todo))
                with DecodePool(self.job.workers, kind) as decoders:
                    try:
                        screen_local(batches, decoders, writer, self.settings)
                    finally:
                        self.summary.decode_pool = decoders.kind
                        self.summary.warnings.extend(decoders.warnings)
        finally:
            os.close(fd)
        return writer.new_rows

    def _finish(self, kept: dict, on_disk: list, new_rows: dict, report_id) -> dict:
        """Leave the report sorted by path, with every row, at ``--out``; its rows (path cell -> row)."""
        on_disk_cells = on_disk + [cell(k) for k in new_rows]  # in append order (--cluster: completion order)
        final = {**kept, **{cell(k): r for k, r in new_rows.items()}}
        final_cells = sorted(final, key=uncell)
        rows = [self.columns, *(final[c] for c in final_cells)]
        if file_identity(self.files.out) != report_id:
            # Removed, moved or replaced while this run appended to it: the rows went with that file.
            # Every row is still in memory, so the report is written again whole at --out.
            self.summary.warnings.append(f"{display_path(self.files.out)}: the report was removed, moved or "
                                         "replaced during the run; it has been written again with every row.")
            replace_report(self.files, rows, "writing the report again after it was removed or moved during the "
                           "run", "Its rows are not at --out (the next run screens the files again).")
        elif on_disk_cells != final_cells:
            # New rows were appended after kept rows that sort later: restore the sorted order atomically.
            replace_report(self.files, rows, "rewriting the report in sorted order", "Every row is in the report, "
                           "only not sorted (the next run sorts it).")
        return final

    def _count(self, rows: dict, t_start: float) -> None:
        col = self.col
        self.summary.errors = sum(1 for r in rows.values() if r[col["status"]] == "error")
        self.summary.flagged = sum(1 for r in rows.values() if r[col["flagged"]] == "1")
        self.summary.seconds = time.perf_counter() - t_start

