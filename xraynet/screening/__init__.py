"""Screen a folder of X-rays into a CSV report that a nightly cron job can trust.

:func:`screen` (or :func:`run_screen` of a :class:`ScreenJob`) finds every
image under a folder, runs the model on the files that are new or changed
since the last run, and appends one row per file to a CSV report. The
report stays a valid CSV whatever moment the run is killed at (``kill -9``
included), and after a run that completes every image in the folder appears
in it exactly once, with the SHA-256 of its current bytes.

Which files
-----------
The rules of :mod:`xraynet.discovery` -- the same ones training and
evaluation use (:func:`xraynet.discovery.find_images`). In short: every
regular file under the folder (recursively unless ``recursive=False``) whose
name ends in ``.png .jpg .jpeg .jpe .jfif .jls .jp2 .j2k .j2c .jpc .jpx .bmp
.tif .tiff .gif .webp .dcm .dicom`` (any case, :data:`IMAGE_SUFFIXES`), or,
for any other name (none, ``IM0001``, a DICOM UID such as
``1.2.840.113619.2.55.3.9``), whose content :func:`~xraynet.imaging.is_dicom_file` says is DICOM. FIFOs,
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
``xraynet_version`` the xraynet that wrote the row and its decode pipeline,
                    e.g. ``0.1.0+decode7``
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
  record. On start (under the lock) the report is parsed; what follows the
  last good record is truncated off. Those files are simply screened again.
  Malformed records between good ones (a hand edit, a bad disk block) are
  skipped line by line up to the next good record, so only they are lost
  (the run warns, and rewrites the report without them); the rows read after
  them, and every row of a path that has two, are kept for files that cannot
  be listed but never reused for a file that can (text past damage may come
  from inside a damaged quoted cell). A byte order mark before the header is
  read past and dropped at that rewrite.
* A file is skipped when the report has a row for its path with the same
  ``sha256``, ``model_sha256``, ``threshold`` and ``xraynet_version`` (the
  xraynet version and decode pipeline that wrote the row,
  :data:`~xraynet.screening.writer.ROW_VERSION`: after an upgrade that
  changes what decoding gives, every file is screened once more, so no report
  mixes rows of two pipelines). Error rows whose reason depends on the
  machine, not the bytes -- ``unreadable``, ``dicom_needs_pydicom``,
  ``unsupported_codec`` -- and ``changed`` rows are always retried.
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

A file that changes between being hashed and being decoded gets the error
``changed``, tried again by the next run: each file's inode, size and mtime as
it was hashed (:func:`~xraynet.decodecache.file_version`) must be those of the
file the decoder opens, before and after it reads it (every decoder reads that
one open file), so another file renamed over the name, or a write meanwhile,
never gives its pixels to the hashed bytes' row. A chmod, a backup's hard link
or an antivirus attribute (no write) changes nothing.

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

Threads and processes
---------------------
Hashing runs in ``workers`` threads (hashlib releases the GIL). Decoding runs
a batch ahead of the network in ``workers`` worker processes, or threads
(``pool``: ``"auto"`` takes processes from 64 files on with 3 or more workers
and cores; :mod:`~xraynet.screening.decodepool`): decoding holds the GIL for
part of its time, so threads stop scaling with cores. The network runs on the
calling thread only (the Numba workqueue layer must not be entered from two
threads). At most two batches of images are in memory. Rows, their order and
every guarantee above are the same whichever pool decodes.

Across machines (``cluster=``, ``--cluster``)
---------------------------------------------
With a Dask scheduler address (``tcp://host:8786``) or ``local:N`` (a
LocalCluster of N one-thread worker processes started here and closed at the
end; it is started only when some file needs screening), only the per-batch
work -- decode, preprocess, network, heatmaps of flagged images -- runs on
the workers (:mod:`xraynet.screening.cluster`), through the same per-batch
functions as the local path (:mod:`xraynet.screening.batch`). This process
stays the one writer: listing, hashing, lock, repair, compaction, skip rule,
the row text, the one-write()+fsync append per batch and the sorted rewrite
are shared with the local path
(:class:`~xraynet.screening.writer.BatchWriter`). Tasks carry paths, not pixels:
workers must see the folder, the model file and the ``heatmaps`` folder at
the same absolute paths (shared file system); a worker whose model file has
another ``weights_sha256``, or that runs another xraynet than the client
(:data:`~xraynet.screening.writer.ROW_VERSION`), fails the run. At most two batches per worker are
in flight. Batches complete out of order, so rows are appended out of order
and the final sorted rewrite restores path order. A worker that dies has its
task re-run elsewhere; a batch's rows are written once, when its result
arrives, so every file still gets exactly one row. A batch that fails for
good raises :class:`ScreenError` (exit 2) with the finished batches' rows kept;
a heatmap a worker cannot write raises :class:`ReportWriteError` (exit 4) the
same way.
Needs ``pip install "xraynet[cluster]"``; ``import xraynet.screening`` never
imports Dask.

Modules
-------
=====================================  ==============================================
:mod:`~xraynet.screening.run`          :class:`ScreenJob`, :func:`run_screen`: one
                                       run, from the checks to the finished report
:mod:`~xraynet.screening.report`       the CSV report: columns, cells, reading,
                                       repair, the lock, durable appends, rewrites
:mod:`~xraynet.screening.batch`        the per-batch work: decode, network, heatmaps
:mod:`~xraynet.screening.decodepool`   the local path: decoding threads or processes
                                       a batch ahead of the network
:mod:`~xraynet.screening.writer`       a batch's result -> rows, appended durably
:mod:`~xraynet.screening.cluster`      the batches on Dask workers (``--cluster``)
:mod:`~xraynet.screening.summary`      :class:`Summary` and the exit codes
=====================================  ==============================================
"""
from __future__ import annotations

from ..discovery import IMAGE_SUFFIXES
from .batch import BatchResult, BatchSettings, ImageFile, decode_image, infer_batch, screen_batch
from .report import HEAD_COLUMNS, TAIL_COLUMNS, path_of_cell, report_columns
from .run import RETRY_REASONS, ScreenJob, run_screen, screen
from .summary import (EXIT_ERRORS, EXIT_LOCKED, EXIT_OK, EXIT_UNLISTED, EXIT_USAGE, EXIT_WRITE, Summary,
                      exit_code_for)

__all__ = ["screen", "run_screen", "ScreenJob", "Summary", "report_columns", "path_of_cell", "exit_code_for",
           "IMAGE_SUFFIXES", "HEAD_COLUMNS", "TAIL_COLUMNS", "RETRY_REASONS", "EXIT_OK", "EXIT_ERRORS", "EXIT_USAGE",
           "EXIT_LOCKED", "EXIT_WRITE", "EXIT_UNLISTED", "ImageFile", "BatchSettings", "BatchResult",
           "decode_image", "infer_batch", "screen_batch"]
