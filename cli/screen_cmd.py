"""``xraynet screen`` and ``xraynet review``: folder screening into the CSV report
(:mod:`xraynet.screening`) and its HTML review page (:mod:`xraynet.review`)."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

from .common import console, device_option, interrupt_hint, use_device


class OnLock(str, Enum):
    fail = "fail"
    wait = "wait"


class Pool(str, Enum):
    auto = "auto"
    threads = "threads"
    processes = "processes"


SCREEN_HELP = """Screen every X-ray under FOLDER into the CSV report --out (cron-safe, incremental).

Re-runs with the same --out screen only new or changed files; a kill at any
moment leaves a valid report. Columns and the crash-safety design are in the
docstring of the xraynet.screening package.

Exit codes (the table in the xraynet.screening docstring):

0  every file of FOLDER has an ok row

1  some files are error rows in the report (the run completed)

2  usage error: bad option, missing folder, unusable model or report

3  another run holds the report's lock (--on-lock fail)

4  the report, its lock or a heatmap could not be written (read-only folder,
disk full): rows written before are kept; fix it and run again; also when
the --html page or a thumbnail could not be written (the report is complete)

5  a folder under FOLDER could not be listed: its old rows are kept unchanged
(takes precedence over 1)

130  interrupted
"""


def screen(
    folder: str = typer.Argument(..., help="Folder of images (PNG, JPEG incl. lossless and JPEG-LS, JPEG 2000, "
                                           "TIFF, BMP, GIF, WebP, DICOM)."),
    out: str = typer.Option(..., "--out", help="CSV report to create or bring up to date."),
    model: Optional[str] = typer.Option(None, help="Model file (HDF5); default: the bundled model."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="Flag when p(screening class) >= this (default: the model's)."),
    batch_size: int = typer.Option(32, min=1, help="Images per network batch."),
    workers: int = typer.Option(2, min=1, help="Workers hashing (threads) and decoding images (see --pool)."),
    pool: Pool = typer.Option(Pool.auto, help="Where files decode; auto: processes from 3 workers and 64 files."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Descend into subfolders."),
    on_lock: OnLock = typer.Option(OnLock.fail, "--on-lock",
                                   help="When another run holds the report: fail (exit 3) or wait."),
    quiet: bool = typer.Option(False, help="No progress bar and no summary table. Still one line on stderr when new "
                                           "files are error rows, and the message of any failure."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be screened; write nothing."),
    heatmaps: Optional[str] = typer.Option(None, help="Write a Grad-CAM overlay PNG for each flagged image into "
                                                      "this folder (named after the input, long names cut and "
                                                      "hashed; path in the CSV)."),
    device: str = device_option(),
    cluster: Optional[str] = typer.Option(None, help="Run the batches on a Dask cluster: a scheduler address "
                                                     "(tcp://host:8786) or local:N (N worker processes here). "
                                                     "Workers must see FOLDER and the model at the same paths. "
                                                     'Needs pip install "xraynet\\[cluster]".'),
    cluster_timeout: float = typer.Option(30.0, min=0.001, help="Seconds to wait for the Dask scheduler."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write a self-contained HTML review page of the "
                                                            "report here (thumbnails in <name>_files/ beside it), "
                                                            "refreshed after every run."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Let a FOLDER with no images at all clear the "
                                                                  "report's rows. Without it such a run keeps them "
                                                                  "and exits 5 (an unmounted share looks empty)."),
) -> None:
    from xraynet.screening import ScreenJob, run_screen

    err = console(stderr=True)
    if html is not None and not dry_run:
        from xraynet.review import check_page_path

        check_page_path(html, out, folder)  # a page that cannot work is a usage error before any screening
    if cluster is None:
        # With --cluster each worker makes its own backend (this machine may have no GPU while the workers
        # do). The auto notice shows where the progress bar would: from cron nothing but errors is printed.
        use_device(device, notice=not quiet and err.is_terminal)
    bar = _Bar("screening", err) if not quiet and not dry_run and err.is_terminal else None
    try:
        job = ScreenJob(folder, out, model_path=model, threshold=threshold, batch_size=batch_size, workers=workers,
                        pool=pool.value, recursive=recursive, on_lock=on_lock.value, dry_run=dry_run, heatmaps=heatmaps,
                        device=device, cluster=cluster, cluster_timeout=cluster_timeout, allow_empty=allow_empty)
        summary = run_screen(job, progress=bar or _no_progress)
    except KeyboardInterrupt:
        # Rows already written are whole and synced; the next run continues from them.
        err.print("interrupted: the report holds every row written so far; run the same command again to "
                  "screen the rest", highlight=False)
        raise typer.Exit(code=130)
    finally:
        if bar is not None:
            bar.stop()
    _print_outcome(summary, err, as_json=as_json, dry_run=dry_run, quiet=quiet)
    if html is not None and not dry_run:
        # Also when nothing new was screened; silent from cron, one line and exit 4 if it cannot be written.
        _write_page(out, html, model, folder, workers, summary.screening_class,
                    progress=not quiet and not as_json and err.is_terminal)
    raise typer.Exit(code=summary.exit_code)


class _Bar:
    """A transient progress bar named ``label`` on ``err``, started at the first report of
    progress; call it as ``bar(done, total)``."""

    def __init__(self, label: str, err):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.label = label
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=err, transient=True)
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done)

    def stop(self) -> None:
        self.progress.stop()


def _no_progress(done: int, total: int) -> None:
    """The progress callback where no bar is shown."""


def _print_outcome(summary, err, *, as_json: bool, dry_run: bool, quiet: bool) -> None:
    """What a screening run prints: warnings and new error rows on stderr; the JSON summary, the
    dry run's list, or the summary table (only to a terminal) on stdout."""
    from rich.markup import escape

    for note in summary.warnings:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict()) + "\n")
    elif dry_run:
        for rel in summary.would_screen:
            typer.echo(rel)
        if not quiet:
            err.print(f"dry run: {summary.files} files, {len(summary.would_screen)} would be screened, "
                      f"{summary.skipped_unchanged} unchanged; nothing written", highlight=False)
    elif not quiet and sys.stdout.isatty():
        # From cron (stdout not a terminal) only errors are printed; --json gives the summary.
        _print_screen_summary(summary)
    if summary.errors_new and not as_json:
        # Only new error rows are news: rows kept from earlier nights still give exit 1, but a
        # nightly job must not mail the same line every night.
        err.print(f"{summary.errors_new} new file(s) are error rows in {summary.out} ({summary.errors} in all; "
                  "status 'error', reason in column 'error')", markup=False, highlight=False)


def _write_page(report, html, model, folder, workers, screening_class, progress: bool):
    """Write the HTML review page (:func:`xraynet.review.write_review`) and return its ReviewResult.
    A page or thumbnail that cannot be written ends the command with one line and exit 4
    (ReportWriteError; the report is complete and unchanged); an unusable report or model with
    exit 2."""
    from xraynet.review import write_review

    bar = _Bar("thumbnails", console(stderr=True)) if progress else None
    try:
        with interrupt_hint(f"interrupted: {html} was not updated (the report is complete); run the command "
                            "again"):
            return write_review(report, html, model_path=model, folder=folder, screening_class=screening_class,
                                workers=workers, progress=bar)
    finally:
        if bar is not None:
            bar.stop()


def review(
    report: str = typer.Argument(..., help="CSV report written by xraynet screen --out."),
    html: str = typer.Option(..., "--html", help="Where to write the page (thumbnails in <name>_files/ beside it)."),
    model: Optional[str] = typer.Option(None, help="Model file that screened the report (default: the bundled "
                                                   "model); another one is named as such on the page."),
    folder: Optional[str] = typer.Option(None, help="The screened folder, to make missing thumbnails (default: "
                                                    "reuse those already made, a placeholder for the rest)."),
    workers: int = typer.Option(2, min=1, help="Threads decoding films for thumbnails."),
    quiet: bool = typer.Option(False, help="No progress bar and no closing line."),
) -> None:
    """Write the self-contained HTML review page of an existing report (screens nothing).

    Exit codes: 0 written; 2 unusable report, model or option; 4 the page or a thumbnail could not be
    written (the report is never changed).
    """
    from rich.markup import escape

    from xraynet.review import check_page_path

    err = console(stderr=True)
    check_page_path(html, report, folder)
    res = _write_page(report, html, model, folder, workers, None, progress=not quiet and err.is_terminal)
    for note in res.warnings:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if not quiet and sys.stdout.isatty():
        typer.echo(f"{res.html}: {res.rows} rows, {res.bytes / 1e6:.2f} MB; thumbnails {res.thumbnails_made} made, "
                   f"{res.thumbnails_reused} reused, {res.thumbnails_removed} removed")


def _print_screen_summary(s) -> None:
    from rich.table import Table

    from xraynet.modelcard.layout import threshold_text

    t = Table(title=f"xraynet screen -> {s.out}")
    t.add_column("", justify="left")
    t.add_column("value", justify="right")
    net_share = s.network_seconds / max(s.decode_seconds + s.network_seconds, 1e-12)
    for name, value in (
        ("files in folder", s.files), ("screened now", s.screened), ("unchanged, kept", s.skipped_unchanged),
        ("old rows dropped", s.dropped_rows), ("error rows", s.errors),
        ("not listable: folders (their rows kept)", f"{len(s.unlisted)} ({s.kept_unlisted})"),
        (f"flagged {s.screening_class} (p >= {threshold_text(s.threshold)})", s.flagged),
        ("flagged among screened now", s.flagged_new),
        ("images/s", f"{s.images_per_s:.1f}"), ("seconds", f"{s.seconds:.2f}"),
        ("decode seconds (all threads)", f"{s.decode_seconds:.2f}"),
        ("network seconds", f"{s.network_seconds:.2f} ({net_share:.0%} of decode + network)"),
        ("model", f"{s.model} {s.model_sha256[:12]}"),
    ):
        t.add_row(name, str(value))
    console().print(t)
