"""Reading a screening report for the review page: its columns checked, its
complete records parsed into :class:`Row` objects (a record still being
written, and a malformed one, left out)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScreenError
from ..screening.report import HEAD_COLUMNS, TAIL_COLUMNS, report_columns, scan_records, uncell


@dataclass
class Row:
    """One report row as the page needs it; text cells already without the spreadsheet ``'``."""

    path: str            # the report's path text (discovery.encode_path: \\xNN for undecodable bytes)
    sha256: str
    ok: bool
    reason: str          # error rows: the reason code; else ""
    message: str         # error rows: the message after "<reason>: "; else ""
    label: str
    probs: list          # float or None per class, in the model's class order
    prob_cells: list     # the cells as written
    flagged: bool
    threshold: str
    warnings: list       # warning entries as written, split on ";"
    heatmap: str         # the heatmap cell (a file-system path as text), or ""
    model: str
    model_sha256: str
    xraynet_version: str
    screened_at: str


@dataclass
class Report:
    """A parsed report: its path, the model classes (from the ``p_<class>`` columns), the
    complete rows, and how many records were left out (one still being written, or a
    malformed one)."""

    path: Path
    classes: list
    rows: list
    left_out: int = 0


def finite_float(cell: str):
    """A report cell as a finite float; None for empty, text, NaN or infinite cells."""
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_report(path) -> Report:
    """Parse a report that :func:`xraynet.screening.screen` wrote, as screening reads it
    (:func:`~xraynet.screening.report.scan_records`): whole records only; a malformed one
    between good rows (a hand edit, a bad disk block) is left out alone, and what follows the
    last good record (a run still appending, or one killed) too; ``left_out`` counts them. A
    byte order mark before the header is read past. Raises :class:`ScreenError` when the file
    cannot be read or is not an xraynet report."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ScreenError(f"{path}: the report cannot be read ({e.strerror or e}). Expected the CSV written by "
                          f"xraynet screen --out, got {type(e).__name__}. Check the path and its permissions."
                          ) from None
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), strict=True), [])
    except csv.Error:
        header = []
    n_head = len(HEAD_COLUMNS)
    n_cls = len(header) - n_head - len(TAIL_COLUMNS)
    classes = [c[2:] for c in header[n_head:n_head + n_cls]] if n_cls > 0 else []
    records, good_end, dropped = [], -1, 0
    if n_cls >= 1 and header == report_columns(classes):
        records, good_end, dropped, _, _ = scan_records(text, header)
    if good_end < 0:
        # repr: the file's bytes are quoted, never echoed (an escape sequence in them stays visible text).
        got = repr(",".join(header)[:200]) if header else ("an empty file" if not data else repr(text[:80]))
        raise ScreenError(f"{path}: not an xraynet screening report. Expected the header "
                          f"{','.join(HEAD_COLUMNS)},p_<class>...,{','.join(TAIL_COLUMNS)}, got {got}. Pass the "
                          f"CSV that xraynet screen --out wrote.")
    rows = [_row(dict(zip(header, rec)), classes) for rec in records]
    return Report(path=path, classes=classes, rows=rows, left_out=dropped + bool(text[good_end:].strip()))


def _row(cells: dict, classes: list) -> Row:
    """One record (``{column: cell}``) as a :class:`Row`."""
    ok = cells["status"] == "ok"
    reason, message = "", ""
    if not ok:
        err = uncell(cells["error"])
        reason, _, message = err.partition(": ")
        if not message:
            reason, message = reason or "error", ""
    prob_cells = [cells[f"p_{c}"] for c in classes]
    warns = uncell(cells["warnings"])
    return Row(path=uncell(cells["path"]), sha256=cells["sha256"], ok=ok, reason=reason, message=message,
              label=uncell(cells["label"]), probs=[finite_float(p) for p in prob_cells], prob_cells=prob_cells,
              flagged=cells["flagged"] == "1", threshold=cells["threshold"],
              warnings=[w for w in warns.split(";") if w] if warns else [], heatmap=uncell(cells["heatmap"]),
              model=uncell(cells["model"]), model_sha256=cells["model_sha256"],
              xraynet_version=cells["xraynet_version"], screened_at=cells["screened_at"])
