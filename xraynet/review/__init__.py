"""One self-contained HTML page for a radiologist to review a screening report.

:func:`write_review` reads the CSV report that :func:`xraynet.screening.screen`
writes and turns it into one HTML file (``--html PATH``) that works opened
straight from disk: no server, no network, no external URL of any kind (the
page's Content-Security-Policy refuses every request but its own images, and
it holds no ``http:`` or ``//`` address). ``xraynet screen --html`` refreshes
it after every completed run, also when nothing new was screened;
``xraynet review REPORT --html PATH`` rebuilds it from a report alone.

What the page shows
-------------------
* **Summary**: rows, ok rows, flagged rows (``p_<screening class>`` at or
  above the threshold), predicted labels per class, error rows by reason,
  rows with warnings by code.
* **Model**: name and SHA-256 as the report's rows give them; the threshold
  the rows used, its class, and how the model's own was chosen with what it
  gave there (``metadata["threshold"]`` of the model file). The model file
  named (default: the bundled one) is trusted only when its
  ``weights_sha256`` is the report's ``model_sha256``; otherwise the page and
  a warning say so, and nothing of that file (threshold rule, card) is shown
  as the report's.
* **Run**: the latest and earliest ``screened_at``, the xraynet version(s)
  that wrote the rows, the one that wrote the page.
* **Model card** (``metadata["model_card"]``, :mod:`xraynet.modelcard`):
  intended use and the within-source validation AUCs in view; leave one
  source out, the threshold rule, the limits and the whole card behind a
  "more" switch; "no model card" for a file without one, "model card
  unreadable: <why>" for one this xraynet cannot read.
* **Films**: one table row per report row. Order: flagged films first, then
  the other ok films, both by descending probability of the screening class;
  error rows last; ties by path. So the films most worth a look come first,
  and the films nobody could look at (errors) sit together at the end. Each
  row: thumbnail, Grad-CAM overlay (linked, when the report has one), path,
  class probabilities (3 decimals; the CSV keeps them exact), label, result
  (``flagged`` or the error reason), notes (warnings, or the error message,
  which says what to do). A few lines of inline JavaScript filter (all,
  flagged, errors, warnings, one predicted class; ``#filter=flagged``,
  ``#filter=errors``, ``#filter=warnings``, ``#filter=label:<class>`` in the
  address does the same) and sort by a column; they set ``hidden`` and move
  rows, and never build HTML from data (no ``innerHTML``). Images are
  ``loading="lazy"`` with their address in ``data-src``: the script gives
  the first 40 rows shown theirs at once and the others as they come near
  the viewport, because Chromium defers only http(s) images and a page of
  10,000 films opened from disk would load every thumbnail first. Without
  JavaScript the table is complete, in the default order, without images.

Safety
------
Every text that comes from a report, a model file or a file name is escaped
with :func:`html.escape` (quotes included) and every attribute is quoted, so
a file named ``<img src=x onerror=alert(1)>.png`` shows as that text. Links
are relative and percent-encoded from the file's bytes (spaces, ``#``, ``?``,
``%``, quotes, backslashes, non-ASCII and the raw bytes behind the report's
``\\xNN`` escapes), so no name can end a URL early or become a scheme. The
inline script and style are allowed by their SHA-256 in the policy, nothing
else runs. Cells the report guards against spreadsheets (a leading ``'``)
are shown as the text they stand for.

Thumbnails
----------
``review.html`` keeps its thumbnails in ``review_files/`` beside it:
``<sha256 of the film>.jpg``, at most :data:`THUMB_SIDE` pixels a side, made
with Pillow from :func:`xraynet.imaging.decode` (the film as decoded, before
the network's preprocessing). Named by content, a thumbnail is made once and
reused by every later run and by renamed or copied films; one is made only
when missing, and only from a file whose bytes still have the report's
SHA-256 and are the ones decoded (a film changed since its row was written
gets a placeholder until it is screened again, unless its thumbnail was made
before: that one shows the film as it was screened, as its row does). Thumbnails of films no longer in the report are
removed; nothing else in the folder is touched. Making the thumbnails needs
the screened folder (``screen`` knows it; ``review --folder``); without it
the existing ones are used and the other rows get a placeholder, as do error
rows and films that cannot be read. The first page of a large archive
decodes every film once more (``workers`` threads; 100 films of 1024x1024
PNG took 1.3 s with 2 threads on the 2-core development machine, against
about 7 s to screen them); later runs decode only new films. Concurrent page builds for one page queue on
``review_files/.lock`` (``flock``), so one cannot remove the thumbnails of
the other.

Heatmaps (the ``heatmap`` column, ``screen --heatmaps DIR``) are linked, not
copied: a relative path in the report is taken from the current folder first
(where ``screen`` ran), then from the report's folder; one that does not
exist shows "missing".

Writing, failures, determinism
------------------------------
The page is rendered in memory and written with
:func:`xraynet.atomic.write_atomic`: a reader sees the old page or the whole
new one. The report is only read (never locked, never written); a torn last
record of a run still appending is left out. When the page or a thumbnail
cannot be written (read-only folder, disk full) :class:`ReportWriteError`
says so in one line (``screen`` and ``review`` exit 4, which then replaces
``screen``'s 0, 1 or 5; the lines that run printed before are kept); the
report is whole. An unusable report, and a page path that cannot work
(:func:`check_page_path`: a folder, the report itself, a missing folder, or
a thumbnails folder inside the screened folder, whose thumbnails the next
run would screen as films) are a :class:`ScreenError` (exit 2), raised by
``screen --html`` before anything is screened. The same report, model
and thumbnails give the byte-identical page: nothing on it comes from the
clock, only from the report's own data.

Modules
-------
:mod:`.report` reads the report; :mod:`.thumbnails` makes and cleans the
thumbnails; :mod:`.markup` escapes and formats untrusted text;
:mod:`.card` the threshold rule and the model card; :mod:`.assets` the
inline style, script and policy; :mod:`.page` the page's HTML;
:mod:`.write` checks the page path and writes the page.
"""
from __future__ import annotations

from .page import ModelView, render_page
from .report import Report, Row, read_report
from .thumbnails import THUMB_SIDE, files_folder
from .write import ReviewResult, check_page_path, write_review

__all__ = ["write_review", "check_page_path", "read_report", "render_page", "files_folder", "ReviewResult", "Report",
           "Row", "THUMB_SIDE", "ModelView"]
