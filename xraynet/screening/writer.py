"""The one writer of new rows: a batch's :class:`~xraynet.screening.batch.BatchResult` -> report rows,
appended durably. The local path and ``--cluster`` both hand every finished batch to it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import __version__
from ..imaging import PIPELINE_VERSION
from .batch import BatchResult, BatchSettings, heatmap_path
from .report import append_rows, cell, format_number, utc_now
from .summary import Summary

__all__ = ["BatchWriter", "ROW_VERSION"]

#: The report's ``xraynet_version`` cell: the version and the decode pipeline
#: (:data:`xraynet.imaging.PIPELINE_VERSION`) that made the row, as a PEP 440 local
#: version ("0.1.0+decode7"). A row is reused only when it matches (the skip rule).
ROW_VERSION = f"{__version__}+decode{PIPELINE_VERSION}"


@dataclass
class BatchWriter:
    """Appends each batch's rows to the report open at ``fd`` (``O_APPEND``) with one
    write() + fsync, counts them into ``summary``, keeps them in ``new_rows`` (file key ->
    row) and calls ``progress(done, total)`` after each batch. ``retried``: file key ->
    (sha256, reason) of the error rows tried again; the same error on the same bytes is not
    counted in ``summary.errors_new``."""

    fd: int
    settings: BatchSettings
    summary: Summary
    total: int
    progress: Callable[[int, int], None] | None = None
    retried: dict = field(default_factory=dict)
    new_rows: dict = field(default_factory=dict)
    done: int = 0

    def __post_init__(self):
        self._threshold_text = format_number(self.settings.threshold)
        self._model_text = cell(self.settings.model_name)

    def rows(self, batch, res: BatchResult) -> list:
        """One CSV row per file of ``batch`` ([(ImageFile, sha256)]), in batch order; counts the
        batch into the summary."""
        s, now = self.summary, utc_now()
        s.decode_seconds += sum(res.decode_seconds)
        s.network_seconds += res.network_seconds
        return [self._row(i, f.key, digest, res, now) for i, (f, digest) in enumerate(batch)]

    def _row(self, i: int, key: str, digest: str, res: BatchResult, now: str) -> list:
        st, classes = self.settings, self.settings.classes
        s = self.summary
        if res.error[i] is not None:
            s.errors_new += self.retried.get(key) != (digest, res.error[i].split(":", 1)[0])
            return [cell(key), digest, "error", cell(res.error[i]), "", *([""] * len(classes)), "",
                    self._threshold_text, "", "", "", self._model_text, st.model_sha256, ROW_VERSION, now, ""]
        p = res.proba[i]
        label = classes[int(np.argmax(p))]
        flagged = int(p[st.class_index] >= st.threshold)
        w, h, warns = res.meta[i]
        heat = str(heatmap_path(st.heatmaps, key)) if i in res.heat else ""
        s.flagged_new += flagged
        s.labels_new[label] = s.labels_new.get(label, 0) + 1
        return [cell(key), digest, "ok", "", cell(label), *(format_number(v) for v in p), str(flagged),
                self._threshold_text, cell(";".join(warns)), str(w), str(h), self._model_text, st.model_sha256,
                ROW_VERSION, now, cell(heat)]

    def append(self, batch, res: BatchResult) -> None:
        """Write ``batch``'s rows durably (:func:`~xraynet.screening.report.append_rows`), then
        record them and report progress."""
        rows = self.rows(batch, res)
        append_rows(self.fd, rows, self.summary.out, self.done)
        for (f, _), row in zip(batch, rows):
            self.new_rows[f.key] = row
        self.summary.screened += len(rows)
        self.done += len(rows)
        if self.progress:
            self.progress(self.done, self.total)
