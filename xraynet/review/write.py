"""Writing the review page: :func:`check_page_path` (refuse a page path that
cannot work, before anything is screened) and :func:`write_review` (read the
report, update the thumbnails under the page's lock, render, write
atomically; see :mod:`xraynet.review`, "Writing, failures, determinism")."""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..atomic import special_file_kind, write_atomic
from ..errors import ReportWriteError, ScreenError
from .page import ModelView, model_notes, render_page
from .report import read_report
from .thumbnails import ThumbnailWriteError, files_folder, lock_page, update_thumbnails


@dataclass
class ReviewResult:
    """What :func:`write_review` did: the page, its size, rows, thumbnails made / reused /
    removed, and warnings (the model mismatch, records of the report left out) for the command
    to print."""

    html: str
    bytes: int
    rows: int
    thumbnails_made: int = 0
    thumbnails_reused: int = 0
    thumbnails_removed: int = 0
    warnings: list = field(default_factory=list)
    seconds: float = 0.0


def _write_failed(path, e: OSError, failed: str) -> ReportWriteError:
    """The one-line ReportWriteError (exit 4) for a page or thumbnail that cannot be written."""
    from ..screening.report import write_error

    return write_error(path, e, failed, "The report is complete and unchanged; the previous page, if any, is "
                       "kept.", "--html")


def check_page_path(html_path, report, folder=None) -> None:
    """Refuse a page path that cannot work, before anything is screened or written: a folder, a
    missing parent folder, the report itself or its lock or temp file (a page renamed over the
    lock would let two runs in at once), or a page whose thumbnails folder lies inside the
    screened ``folder`` (the next run would screen the thumbnails as films). :class:`ScreenError`."""
    html_p = Path(html_path)
    kind = special_file_kind(html_p)
    if kind is not None:
        raise ScreenError(f"{html_path}: cannot write the review page there. Expected a regular file or no file, "
                          f"got {kind} (replacing it would destroy it). Give another --html.")
    if html_p.is_dir():
        raise ScreenError(f"{html_path}: cannot write the review page there. Expected a file path such as "
                          f"review.html, got a directory. Give a file name.")
    if not html_p.parent.is_dir():
        raise ScreenError(f"{html_path}: the review page's folder does not exist. Expected an existing folder, got "
                          f"missing {html_p.parent}. Create it first.")
    from ..screening.report import ReportFiles

    files = ReportFiles.of(os.path.realpath(report))
    for what, other in (("the report", files.out), ("the report's lock file", files.lock),
                        ("the report's temp file", files.tmp)):
        if os.path.realpath(html_p) == os.path.realpath(other) or (html_p.exists() and other.exists()
                                                                    and html_p.samefile(other)):
            raise ScreenError(f"{html_path}: the review page would replace {what}. Expected another file than "
                              f"the CSV report and its companions, got {other}. Pass --html review.html.")
    if folder is not None:
        inside = Path(os.path.realpath(files_folder(html_p)))
        top = Path(os.path.realpath(folder))
        if inside == top or top in inside.parents:
            raise ScreenError(f"{html_path}: the page's thumbnails folder {files_folder(html_p)} would lie inside "
                              f"the screened folder {folder}. Expected a page outside it, got one inside (its "
                              f"thumbnails would be screened as films). Write the page beside the report.")


def write_review(report, html_path, *, model_path=None, folder=None, screening_class: str | None = None,
                 workers: int = 2, progress: Callable[[int, int], None] | None = None,
                 heatmap_base=None) -> ReviewResult:
    """Write the review page of ``report`` to ``html_path`` (see :mod:`xraynet.review`).

    ``model_path``: the model file the report was screened with (default: the bundled model);
    ``folder``: the screened folder, to make missing thumbnails (None: use those already made);
    ``screening_class``: the class ``flagged`` was computed for when known (``screen`` knows it);
    ``workers``: threads decoding films for thumbnails; ``progress(done, total)`` after each
    thumbnail; ``heatmap_base``: folder relative heatmap paths are taken from first (default: the
    current folder).

    Raises :class:`ScreenError` for an unusable report (exit 2), :class:`ReportWriteError` when the
    page or a thumbnail cannot be written (exit 4), :class:`~xraynet.errors.ModelFileError` for an
    unusable model file.
    """
    from ..modelfile import bundled_model_path, read_info

    t0 = time.perf_counter()
    html_p = Path(html_path)
    check_page_path(html_p, report, folder)
    if folder is not None and not Path(folder).is_dir():
        got = "a file" if Path(folder).exists() else "nothing at that path"
        raise ScreenError(f"{folder}: cannot make thumbnails from it. Expected the screened folder, got {got}. "
                          f"Check --folder.")
    rep = read_report(report)  # usage errors before anything is created
    model_file = Path(model_path) if model_path is not None else bundled_model_path()
    info = read_info(model_file)
    files_dir = files_folder(html_p)
    try:
        lock = lock_page(files_dir)
    except OSError as e:
        raise _write_failed(files_dir / ".lock", e, "creating the thumbnails folder and its lock") from None
    try:
        rep = read_report(report)  # again, under the page lock: the rows the thumbnails are kept for
        shas = Counter(r.model_sha256 for r in rep.rows)
        sha = info["weights_sha256"]
        view = ModelView(path=str(model_file), info=info, matches=shas.get(sha, 0),
                         others=Counter({s: n for s, n in shas.items() if s != sha}))
        try:
            present, made, removed = update_thumbnails(rep.rows, folder, files_dir, workers, progress)
        except ThumbnailWriteError as e:
            raise _write_failed(e.path, e.error, "writing a thumbnail") from None
        except OSError as e:
            raise _write_failed(files_dir, e, "updating the thumbnails folder") from None
        page = render_page(rep, page_path=html_p, model=view, thumbs=present, screening_class=screening_class,
                           heatmap_base=heatmap_base)
        data = page.encode("utf-8")
        try:
            write_atomic(html_p, data)
        except OSError as e:
            raise _write_failed(html_p, e, "writing the review page") from None
    finally:
        os.close(lock)
    n_thumbs = len({r.sha256 for r in rep.rows if r.ok and r.sha256 in present})
    return ReviewResult(html=str(html_p), bytes=len(data), rows=len(rep.rows), thumbnails_made=made,
                        thumbnails_reused=n_thumbs - made, thumbnails_removed=removed,
                        warnings=model_notes(view, rep.rows) + _left_out_note(rep), seconds=time.perf_counter() - t0)


def _left_out_note(rep) -> list:
    """The warning for records of the report the page leaves out (:attr:`Report.left_out`)."""
    if not rep.left_out:
        return []
    return [f"{rep.path}: {rep.left_out} incomplete or malformed record(s) left out of the page. Expected whole "
            f"report rows, got damaged ones (a hand edit, a run still writing). The next xraynet screen run "
            f"screens their files again."]
