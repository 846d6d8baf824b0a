"""One self-contained HTML page for a radiologist to review a screening report.

:func:`write_review` reads the CSV report that :func:`xraynet.screen.screen`
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
SHA-256 (a film changed since its row was written gets a placeholder until
it is screened again). Thumbnails of films no longer in the report are
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
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import math
import os
import re
import time
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from . import __version__
from .atomic import special_file_kind
from .errors import ReportWriteError, ScreenError
from .screen import _HEAD, _TAIL, _uncell, report_columns  # the report's own columns and spreadsheet guard

__all__ = ["write_review", "check_page_path", "read_report", "render_page", "files_folder", "ReviewResult", "Report",
           "Row", "THUMB_SIDE"]

#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 160
_THUMB_QUALITY = 80
_SHA = re.compile(r"[0-9a-f]{64}")
_THUMB_NAME = re.compile(r"([0-9a-f]{64})\.jpg")
# A thumbnail write killed midway leaves write_atomic's hidden temp file: cleaned like a stale thumbnail.
_THUMB_TMP = re.compile(r"\.[0-9a-f]{64}\.jpg\.[0-9a-f]{12}\.tmp")


# ------------------------------------------------------------------ the report
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
    complete rows, and how many records at the end were left out (one still being written, or
    what follows a malformed one)."""

    path: Path
    classes: list
    rows: list
    left_out: int = 0


def _float(cell: str):
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_report(path) -> Report:
    """Parse a report that :func:`xraynet.screen.screen` wrote. Complete records only: a record
    without its line end (a run still appending, or one killed) and anything after a malformed
    record are left out, as the next screening run would cut them. Raises :class:`ScreenError`
    when the file cannot be read or is not an xraynet report."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ScreenError(f"{path}: the report cannot be read ({e.strerror or e}). Expected the CSV written by "
                          f"xraynet screen --out, got {type(e).__name__}. Check the path and its permissions."
                          ) from None
    text = data.decode("utf-8", "surrogateescape")
    records, cut = [], False
    try:
        for rec in csv.reader(io.StringIO(text, newline=""), strict=True):
            records.append(rec)
    except csv.Error:
        cut = True  # a record cut inside a quoted cell: the records before it stand
    header = records[0] if records else []
    n_cls = len(header) - len(_HEAD) - len(_TAIL)
    classes = [c[2:] for c in header[len(_HEAD):len(_HEAD) + n_cls]] if n_cls > 0 else []
    if n_cls < 1 or header != report_columns(classes):
        got = ",".join(header)[:200] if header else ("an empty file" if not data else repr(text[:80]))
        raise ScreenError(f"{path}: not an xraynet screening report. Expected the header "
                          f"{','.join(_HEAD)},p_<class>...,{','.join(_TAIL)}, got {got}. Pass the CSV that "
                          f"xraynet screen --out wrote.")
    body = records[1:]
    if body and not cut and not text.endswith("\n"):
        body, cut = body[:-1], True  # the last record has no line end yet
    rows = []
    for rec in body:
        if len(rec) != len(header) or rec[2] not in ("ok", "error") or not rec[0]:
            break
        rows.append(_row(dict(zip(header, rec)), classes))
    return Report(path=path, classes=classes, rows=rows, left_out=len(body) - len(rows) + cut)


def _row(cells: dict, classes: list) -> Row:
    ok = cells["status"] == "ok"
    reason, message = "", ""
    if not ok:
        err = _uncell(cells["error"])
        reason, _, message = err.partition(": ")
        if not message:
            reason, message = reason or "error", ""
    prob_cells = [cells[f"p_{c}"] for c in classes]
    warns = _uncell(cells["warnings"])
    return Row(path=_uncell(cells["path"]), sha256=cells["sha256"], ok=ok, reason=reason, message=message,
              label=_uncell(cells["label"]), probs=[_float(p) for p in prob_cells], prob_cells=prob_cells,
              flagged=cells["flagged"] == "1", threshold=cells["threshold"],
              warnings=[w for w in warns.split(";") if w] if warns else [], heatmap=_uncell(cells["heatmap"]),
              model=_uncell(cells["model"]), model_sha256=cells["model_sha256"],
              xraynet_version=cells["xraynet_version"], screened_at=cells["screened_at"])


# ------------------------------------------------------------------ thumbnails
def files_folder(html_path) -> Path:
    """The thumbnails folder of a page: ``review.html`` -> ``review_files``."""
    p = Path(html_path)
    return p.with_name(p.stem + "_files")


def _source_path(folder, row_path: str) -> str | None:
    """Where the film of a report path lies under ``folder`` (None for a path no listing gives:
    absolute, or climbing out with ``..``; a hand-edited report must not point us elsewhere)."""
    from .discovery import decode_path

    try:
        rel = decode_path(row_path)
    except ValueError:
        return None
    parts = rel.split(b"/")
    if rel.startswith(b"/") or b".." in parts or b"" in parts:
        return None
    return os.fsdecode(os.path.join(os.fsencode(folder), rel))


def _thumbnail_jpeg(pixels) -> bytes:
    """JPEG bytes of a film (float32 (h, w) in [0, 1]) shrunk to at most THUMB_SIDE a side."""
    import numpy as np
    from PIL import Image

    h, w = pixels.shape
    scale = min(1.0, THUMB_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # BOX: each thumbnail pixel is the mean of the film pixels it covers (no aliasing of fine lines).
    small = Image.fromarray(pixels, mode="F").resize(size, Image.Resampling.BOX)
    gray = np.clip(np.rint(np.asarray(small) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="JPEG", quality=_THUMB_QUALITY)
    return buf.getvalue()


class _ThumbnailWriteError(Exception):
    """A thumbnail file could not be written (carries the OSError and the path to the caller)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(str(error))
        self.path, self.error = path, error


def _make_one(sources: list, sha: str, dest: Path) -> bool:
    """Worker job: write ``dest`` from the first of ``sources`` whose bytes still hash to ``sha``.
    True when made. A file that is gone, changed or undecodable is passed over (its row gets a
    placeholder); a thumbnail that cannot be written raises :class:`_ThumbnailWriteError`."""
    from .atomic import write_atomic
    from .decodecache import file_sha256
    from .errors import ImageError
    from .imaging import decode

    for src in sources:
        try:
            if file_sha256(src) != sha:
                continue  # changed since it was screened: the next screening run gives it a row
            data = _thumbnail_jpeg(decode(src).pixels)
        except (OSError, ImageError):
            continue  # gone, unreadable or not decodable now: a placeholder
        except Exception:  # noqa: BLE001 -- one odd film must never stop the page (MemoryError included)
            continue
        try:
            write_atomic(dest, data)
        except OSError as e:
            raise _ThumbnailWriteError(dest, e) from None
        return True
    return False


def _lock_page(files_dir: Path):
    """Hold ``files_dir/.lock`` (flock, waiting) so that two page builds of one page do not remove
    each other's thumbnails. A file system without locks builds unlocked (only a rare race)."""
    import errno
    import fcntl

    files_dir.mkdir(exist_ok=True)
    fd = os.open(files_dir / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno != errno.ENOLCK:
            os.close(fd)
            raise
    return fd


def _update_thumbnails(rows, folder, files_dir: Path, workers: int, progress) -> tuple[set, int, int]:
    """Make the missing thumbnails (when ``folder`` is known) and remove the stale ones.
    Returns (shas that have a thumbnail now, made, removed)."""
    wanted: dict[str, list] = {}  # sha256 -> report paths of the films with those bytes
    for r in rows:
        if r.ok and _SHA.fullmatch(r.sha256):
            wanted.setdefault(r.sha256, []).append(r.path)
    present, stale = set(), []
    for name in sorted(os.listdir(files_dir)):
        m = _THUMB_NAME.fullmatch(name)
        if m and m.group(1) in wanted:
            present.add(m.group(1))
        elif m or _THUMB_TMP.fullmatch(name):
            stale.append(name)
    removed = 0
    for name in stale:
        try:
            os.unlink(files_dir / name)
            removed += 1
        except FileNotFoundError:
            pass  # removed by hand meanwhile
    todo = []
    if folder is not None:
        for sha, paths in wanted.items():
            sources = [] if sha in present else [s for s in (_source_path(folder, p) for p in paths) if s]
            if sources:
                todo.append((sources, sha))
    made = 0
    if todo:
        if progress:
            progress(0, len(todo))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_make_one, sources, sha, files_dir / f"{sha}.jpg") for sources, sha in todo]
            try:
                for i, fu in enumerate(futures):
                    if fu.result():
                        present.add(todo[i][1])
                        made += 1
                    if progress:
                        progress(i + 1, len(todo))
            except BaseException:
                for fu in futures:
                    fu.cancel()  # a full disk fails every later write too: stop at the first
                raise
    return present, made, removed


# -------------------------------------------------------------- page pieces
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _text(s) -> str:
    """Text for the page: undecodable bytes (surrogates) as \\xNN; control and format characters
    (newline, tab, right-to-left override, zero-width joiner...: Unicode categories Cc, Cf, Zl, Zp)
    as a visible ⟨U+XXXX⟩, so that no name can hide, reorder or pass for another; then
    HTML-escaped."""
    s = str(s).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if not s.isprintable():
        s = "".join(f"⟨U+{ord(c):04X}⟩" if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in s)
    return html.escape(s, quote=True)


def _url(target: bytes, base: bytes) -> str:
    """A relative, percent-encoded URL from the folder ``base`` to the file ``target`` (bytes)."""
    rel = os.path.relpath(target, base)
    return html.escape(quote(rel.replace(os.sep.encode(), b"/"), safe="/"), quote=True)


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v)


def _json_html(v, depth: int = 0) -> str:
    """Any JSON value as nested definition lists (escaped, depth and length bounded)."""
    if depth > 6:
        return "&hellip;"
    if isinstance(v, dict):
        items = list(v.items())
        body = "".join(f"<dt>{_text(k)}</dt><dd>{_json_html(x, depth + 1)}</dd>" for k, x in items[:60])
        more = f"<dt>&hellip;</dt><dd>{len(items) - 60} more</dd>" if len(items) > 60 else ""
        return f"<dl>{body}{more}</dl>" if items else "-"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            shown = ", ".join(_text(_fmt(x)) for x in v[:60])
            return shown + (f", &hellip; {len(v) - 60} more" if len(v) > 60 else "") if v else "-"
        return "<ol>" + "".join(f"<li>{_json_html(x, depth + 1)}</li>" for x in v[:60]) + "</ol>"
    return _text(_fmt(v))


def _rate(r) -> str:
    """A metrics RATE ({"value", "ci", "k", "n"}) as '0.921 (95% CI 0.895-0.940, 498/541)'."""
    if not isinstance(r, dict) or not isinstance(r.get("value"), (int, float)):
        return _json_html(r)
    out = f"{r['value']:.3f}"
    ci = r.get("ci")
    extra = []
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        extra.append(f"95% CI {ci[0]:.3f}&ndash;{ci[1]:.3f}")
    if isinstance(r.get("k"), int) and isinstance(r.get("n"), int):
        extra.append(f"{r['k']}/{r['n']}")
    return out + (f" ({', '.join(extra)})" if extra else "")


def _threshold_html(stored, used: Counter, cls: str, known: bool) -> str:
    """How the threshold was chosen (the model's metadata["threshold"]) and what the rows used.
    ``known``: the model file is the report's, so its rule may be shown."""
    parts = []
    used_text = ", ".join(f"{_text(t)} ({n} rows)" for t, n in sorted(used.items())) if used else "-"
    parts.append(f"<tr><th>threshold</th><td>{used_text}: flagged when p_{_text(cls)} &ge; it</td></tr>")
    if not known:
        parts.append("<tr><th>how it was chosen</th><td>unknown: the model file given is not the one that "
                     "screened this report</td></tr>")
        return "".join(parts)
    if not isinstance(stored, dict) or not stored:
        parts.append("<tr><th>how it was chosen</th><td>not stored in the model file</td></tr>")
        return "".join(parts)
    value = stored.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        other = used and not any(_float(t) == float(value) for t in used)
        note = " (the rows used another one: passed with --threshold)" if other else ""
        parts.append(f"<tr><th>model's threshold</th><td>{_text(repr(float(value)))} for class "
                     f"{_text(stored.get('class', '-'))}{note}</td></tr>")
    rule = []
    target = stored.get("target_sensitivity")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        rule.append(f"the highest threshold whose sensitivity reaches {_text(_fmt(float(target)))}")
    if stored.get("chosen_on"):
        rule.append(f"chosen on {_text(stored['chosen_on'])} films")
    if isinstance(stored.get("sources"), list) and stored["sources"]:
        rule.append("of the sources " + ", ".join(_text(s) for s in stored["sources"]))
    if rule:
        parts.append(f"<tr><th>how it was chosen</th><td>{rule[0]}{' '.join([','] + rule[1:]) if rule[1:] else ''}"
                     "</td></tr>")
    val = stored.get("validation")
    if isinstance(val, dict):
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            if k in val:
                parts.append(f"<tr><th>{_text(k)} there</th><td>{_rate(val[k])}</td></tr>")
        counts = [f"{k} {_text(val[k])}" for k in ("flagged", "tp", "fp", "tn", "fn") if k in val]
        if counts:
            parts.append(f"<tr><th>counts there</th><td>{', '.join(counts)}</td></tr>")
    known = {"class", "value", "target_sensitivity", "chosen_on", "sources", "validation"}
    rest = {k: v for k, v in stored.items() if k not in known}
    if rest:
        parts.append(f"<tr><th>more</th><td>{_json_html(rest)}</td></tr>")
    return "".join(parts)


def _auc_text(entry) -> str:
    """An AUC entry ({"value", "ci", "reason"}, or evaluate's {"auc": {...}, "reason"}) as
    '0.880 (0.855-0.904)', or '- (reason)' where it is not defined."""
    if not isinstance(entry, dict):
        return "-"
    auc = entry.get("auc") if isinstance(entry.get("auc"), dict) else entry
    value, ci = auc.get("value"), auc.get("ci")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
            return f"{value:.3f} ({ci[0]:.3f}&ndash;{ci[1]:.3f})"
        return f"{value:.3f}"
    return f"- ({_text(entry['reason'])})" if entry.get("reason") else "-"


def _dig(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _card_html(card, classes, model_path) -> str:
    """The model card (:mod:`xraynet.modelcard`, card_version 1): intended use, the within-source
    AUCs first, leave-one-source-out, the threshold rule and the limits; the whole card, escaped,
    in a collapsed section. Read defensively: an unreadable card is said so, never fatal."""
    if card is None:
        return "<p>no model card</p>"
    try:
        from .modelcard import check_card
    except ImportError:  # an xraynet without model cards: read what is there
        check_card = None
    if check_card is not None:
        from .errors import XraynetError

        try:
            check_card(card, model_path)
        except XraynetError as e:
            return f"<p>model card unreadable: {_text(e)}</p>"
    if not isinstance(card, dict):
        return f"<p>model card unreadable: a {_text(type(card).__name__)}, not a JSON object</p>"
    out = []
    use = card.get("intended_use")
    if isinstance(use, dict):
        items = [f"<p>{_text(use['summary'])}</p>"] if use.get("summary") else []
        if isinstance(use.get("not_for"), list) and use["not_for"]:
            items.append("<p>Not for: " + "; ".join(_text(x) for x in use["not_for"]) + ".</p>")
        if use.get("before_use"):
            items.append(f"<p>Before use: {_text(use['before_use'])}</p>")
        out += items
    within = _dig(card, "validation", "within_source")
    sources = _dig(within, "sources")
    head = "".join(f"<th>{_text(c)}</th>" for c in classes)
    if isinstance(sources, dict) and sources:
        body = "".join(f"<tr><td>{_text(name)}</td><td>{_text(_dig(v, 'films') or '-')}</td>"
                       + "".join(f"<td>{_auc_text(_dig(v, 'auc', c))}</td>" for c in classes) + "</tr>"
                       for name, v in sources.items())
        combined = _dig(within, "combined")
        if isinstance(combined, dict) and combined:
            body += ("<tr><td>same-source pairs of all sources</td><td></td>"
                     + "".join(f"<td>{_auc_text(combined.get(c))}</td>" for c in classes) + "</tr>")
        note = _dig(within, "note") or "AUCs among films of one source only"
        out.append(f"<h4>Within one source (validation AUC, 95% interval)</h4><p class=\"note\">{_text(note)}</p>"
                   f"<table class=\"kv\"><thead><tr><th>source</th><th>films</th>{head}</tr></thead>"
                   f"<tbody>{body}</tbody></table>")
    elif isinstance(within, dict) and within.get("reason"):
        out.append(f"<p>Within-source figures: none ({_text(within['reason'])})</p>")
    more = len(out)  # what follows is behind a "more" switch: the films come first
    folds = _dig(card, "validation", "leave_one_source_out", "folds")
    if isinstance(folds, list) and folds:
        rows = []
        for f in folds:
            if not isinstance(f, dict):
                continue
            scr = f.get("screening") if isinstance(f.get("screening"), dict) else {}
            ss = " / ".join(f"{scr[k]['value']:.2f}" if isinstance(_dig(scr, k, "value"), (int, float)) else "-"
                            for k in ("sensitivity", "specificity"))
            cells = ("".join(f"<td>{_auc_text(_dig(f, 'auc', c))}</td>" for c in classes) if f.get("status") == "ok"
                     else f"<td colspan=\"{len(classes)}\">{_text(f.get('reason') or 'not possible')}</td>")
            rows.append(f"<tr><td>{_text(f.get('held_out', '-'))}</td><td>{_text(f.get('films', '-'))}</td>{cells}"
                        f"<td>{ss if scr else '-'}</td></tr>")
        note = _dig(card, "validation", "leave_one_source_out", "note") or ""
        out.append(f"<h4>Leave one source out (AUC in the held-out source)</h4><p class=\"note\">{_text(note)}</p>"
                   f"<table class=\"kv\"><thead><tr><th>held out</th><th>films</th>{head}<th>sens/spec</th></tr>"
                   f"</thead><tbody>{''.join(rows)}</tbody></table>")
    rule = _dig(card, "threshold", "rule")
    if rule:
        out.append(f"<p>Threshold: {_text(rule)}.</p>")
    limits = card.get("limits")
    if isinstance(limits, list) and limits:
        out.append("<h4>Limits</h4><ul>" + "".join(
            f"<li><b>{_text(x.get('topic', ''))}</b>: {_text(x.get('text', ''))}</li>" if isinstance(x, dict)
            else f"<li>{_text(x)}</li>" for x in limits) + "</ul>")
    out.append(f"<h4>The whole card</h4>{_json_html(card)}")
    return "".join(out[:more]) + ("<details><summary>More of the model card: leave one source out, threshold "
                                  "rule, limits, the whole card</summary>" + "".join(out[more:]) + "</details>")


def _screening_class(classes, rows, preferred) -> str:
    """The class ``flagged`` was computed for: the preferred one (the model's) when the rows agree
    with it, else the first class every ok row agrees with (the report does not store it)."""
    def agrees(c):
        i = classes.index(c)
        return all(r.probs[i] is not None and (r.probs[i] >= (_float(r.threshold) or 0.0)) == r.flagged
                   for r in rows if r.ok)
    fallback = preferred if preferred in classes else ("covid" if "covid" in classes else classes[-1])
    if agrees(fallback):
        return fallback
    return next((c for c in classes if agrees(c)), fallback)


def _count_rows(counter: Counter, what: str, total: bool = False) -> str:
    """One summary line: the commonest first ('empty 3; truncated 1'), with the total first if asked."""
    if not counter:
        return f"<tr><th>{what}</th><td>{0 if total else 'none'}</td></tr>"
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    cells = "; ".join(f"{_text(k)} {n}" for k, n in items)
    return f"<tr><th>{what}</th><td>{f'{sum(counter.values())} ({cells})' if total else cells}</td></tr>"


def _warning_code(entry: str) -> str:
    # "decoder_warning (pillow: text)" counts as decoder_warning; the text stays on the row.
    return entry.split(" (", 1)[0].strip()


def _order(rows, ci: int):
    def key(r):
        if not r.ok:
            return (2, 0.0, r.path)
        p = r.probs[ci]
        return (0 if r.flagged else 1, -(p if p is not None else -1.0), r.path)
    return sorted(rows, key=key)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#111;background:#fafafa}
h1{font-size:1.4em;margin:.8em 0 .2em}h2{font-size:1.15em;margin:1.2em 0 .4em}
.note{color:#555;margin:.2em 0}.warn{background:#fff3cd;border:1px solid #e0b000;padding:.4em .8em}
.cols{display:flex;flex-wrap:wrap;gap:2em}.cols section{flex:1 1 22em}
summary{cursor:pointer;color:#1a4d8f;margin:.5em 0}
table.kv{border-collapse:collapse}table.kv th,table.kv td{text-align:left;vertical-align:top;padding:2px 8px;
border-bottom:1px solid #ddd}dl{margin:0}dt{font-weight:600}dd{margin:0 0 .2em 1em}
#rows{border-collapse:collapse;width:100%;background:#fff}
#rows th{position:sticky;top:0;background:#eee;text-align:left;padding:4px;z-index:1}
#rows td{border-top:1px solid #ddd;padding:3px 6px;vertical-align:middle}
#rows td.p{word-break:break-all;max-width:28em}#rows td.n{text-align:right;font-variant-numeric:tabular-nums}
#rows img{width:96px;height:96px;object-fit:contain;background:#000;display:block}
tr.fl td:first-child{box-shadow:inset 5px 0 #c62828}tr.fl .r{color:#c62828;font-weight:700}
tr.er{background:#fdf2f2}tr.er .r{color:#8a1c1c}.ph{display:inline-block;width:96px;color:#888;font-size:12px;
text-align:center}th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0}
th button::after{content:" \\2195";color:#999}.controls{margin:.5em 0;display:flex;gap:1em;align-items:center}
"""

# Plain ES5, no innerHTML: the filter sets `hidden`, the sort moves the rows it was given. Images carry
# their URL in data-src: the first 40 rows shown get src at once, the others when they come near the
# viewport. Chromium ignores loading="lazy" on file: pages (only http(s) images are deferred), and
# 10,000 eager thumbnails took 20 s to open on the 2-core machine.
_JS = """
(function () {
  "use strict";
  var table = document.getElementById("rows"), tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows), select = document.getElementById("filter");
  var shown = document.getElementById("shown"), last = {k: -1, desc: false};
  function keep(tr, f) {
    if (f === "flagged") { return tr.classList.contains("fl"); }
    if (f === "errors") { return tr.classList.contains("er"); }
    if (f === "warnings") { return tr.classList.contains("wa"); }
    if (f.indexOf("label:") === 0) { return tr.getAttribute("data-l") === f.slice(6); }
    return true;
  }
  function apply() {
    var f = select.value, n = 0;
    rows.forEach(function (tr) { var k = keep(tr, f); tr.hidden = !k; if (k) { n += 1; } });
    shown.textContent = n + " of " + rows.length + " rows shown";
    first(40);
  }
  function load(img) {
    if (img.hasAttribute("data-src")) { img.src = img.getAttribute("data-src"); img.removeAttribute("data-src"); }
  }
  function first(n) {
    var live = tbody.rows;
    for (var i = 0, k = 0; i < live.length && k < n; i += 1) {
      if (!live[i].hidden) { k += 1; Array.prototype.forEach.call(live[i].querySelectorAll("img[data-src]"), load); }
    }
  }
  function fromHash() {
    var m = /(?:^#|&)filter=([^&]*)/.exec(location.hash), f = "all";
    try { if (m) { f = decodeURIComponent(m[1]); } } catch (e) { f = "all"; }
    var known = Array.prototype.some.call(select.options, function (o) { return o.value === f; });
    select.value = known ? f : "all";
    apply();
  }
  function place(list) {
    var frag = document.createDocumentFragment();
    list.forEach(function (tr) { frag.appendChild(tr); });
    tbody.appendChild(frag);
  }
  function sortBy(k, num) {
    var desc = last.k === k ? !last.desc : num;
    last = {k: k, desc: desc};
    var keyed = rows.map(function (tr, i) {
      var t = tr.cells[k].textContent, v = num ? parseFloat(t) : t;
      return {v: num && isNaN(v) ? -Infinity : v, i: i, tr: tr};
    });
    keyed.sort(function (a, b) {
      var c = num ? (a.v < b.v ? -1 : a.v > b.v ? 1 : 0) : String(a.v).localeCompare(String(b.v));
      return (desc ? -c : c) || a.i - b.i;
    });
    place(keyed.map(function (e) { return e.tr; }));
    first(40);
  }
  select.addEventListener("change", function () { location.hash = "filter=" + encodeURIComponent(select.value); });
  window.addEventListener("hashchange", fromHash);
  Array.prototype.forEach.call(table.querySelectorAll("th button"), function (b) {
    b.addEventListener("click", function () { sortBy(+b.getAttribute("data-k"), b.hasAttribute("data-n")); });
  });
  document.getElementById("reset").addEventListener("click", function () {
    last = {k: -1}; place(rows); first(40);
  });
  fromHash();
  var lazy = Array.prototype.slice.call(table.querySelectorAll("img[data-src]"));
  if (!("IntersectionObserver" in window)) { lazy.forEach(load); return; }
  var seen = new IntersectionObserver(function (entries) {
    entries.forEach(function (en) { if (en.isIntersecting) { seen.unobserve(en.target); load(en.target); } });
  }, {rootMargin: "1000px 0px"});
  lazy.forEach(function (img) { seen.observe(img); });
}());
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# Nothing may be fetched but the page's own images (thumbnails, heatmaps); only the inline script and
# style below run. file: covers a page opened from disk, 'self' one served from a folder.
_CSP = (f"default-src 'none'; img-src 'self' file:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
        "base-uri 'none'; form-action 'none'")


@dataclass
class _ModelView:
    """What the page may say about the model: the file named, and whether it is the report's."""

    path: str
    info: dict | None          # read_info of the model file, or None
    matches: int               # rows whose model_sha256 is this file's
    others: Counter            # model_sha256 -> rows, for rows of other models


def render_page(report: Report, *, page_path, model: _ModelView | None = None, thumbs: set = frozenset(),
                screening_class: str | None = None, heatmap_base=None) -> str:
    """The HTML text of the review page (see the module docstring). ``page_path``: where it will be
    written (links are relative to its folder); ``thumbs``: sha256s that have a thumbnail in
    :func:`files_folder`; ``heatmap_base``: folder a relative heatmap path is taken from first
    (default: the current folder)."""
    page_path = Path(page_path)
    page_dir = os.fsencode(os.path.abspath(page_path.parent))
    files_url = quote(os.fsencode(files_folder(page_path).name), safe="") + "/"
    rows, classes = report.rows, report.classes
    info = model.info if model is not None else None
    # The model file speaks for the report only when it screened some of its rows (or there are none).
    usable = info is not None and (model.matches > 0 or not rows)
    meta = info.get("metadata") if usable and isinstance(info.get("metadata"), dict) else {}
    stored = meta.get("threshold")
    preferred = screening_class or (stored.get("class") if isinstance(stored, dict) else None)
    cls = _screening_class(classes, rows, preferred)
    ci = classes.index(cls)
    ok = [r for r in rows if r.ok]
    errors = [r for r in rows if not r.ok]
    flagged = sum(r.flagged for r in ok)
    name = _text(report.path.name)
    e = []
    e.append('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
             f'<meta http-equiv="Content-Security-Policy" content="{html.escape(_CSP, quote=True)}">\n'
             '<meta name="referrer" content="no-referrer">\n'
             '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
             f"<title>xraynet review: {name}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n")
    e.append(f"<h1>xraynet review: {name}</h1>\n<p class=\"note\">A research and triage aid, not a diagnosis: "
             f"flagged means p_{_text(cls)} reached the threshold. Read the films.</p>\n")

    # -- warnings about the model given
    notes = _model_notes(model, rows)
    for n in notes:
        e.append(f'<p class="warn">{_text(n)}</p>\n')

    # -- summary
    labels = Counter(r.label for r in ok)
    reasons = Counter(r.reason for r in errors)
    codes = Counter(c for r in rows for c in {_warning_code(w) for w in r.warnings})
    with_warn = sum(1 for r in rows if r.warnings)
    label_text = "; ".join(f"{_text(c)} {labels.get(c, 0)}" for c in classes)
    e.append('<div class="cols">\n<section id="summary"><h2>Summary</h2><table class="kv"><tbody>'
             f"<tr><th>files (rows)</th><td>{len(rows)}</td></tr>"
             f"<tr><th>screened ok</th><td>{len(ok)}</td></tr>"
             f"<tr><th>flagged {_text(cls)}</th><td>{flagged}</td></tr>"
             f"<tr><th>predicted label</th><td>{label_text}</td></tr>"
             + _count_rows(reasons, "error rows, by reason", total=True)
             + f"<tr><th>rows with warnings</th><td>{with_warn}</td></tr>" + _count_rows(codes, "warnings, by code")
             + "</tbody></table></section>\n")

    # -- model
    names = Counter(r.model for r in rows)
    shas = Counter(r.model_sha256 for r in rows)
    name_text = "; ".join(f"{_text(k)}" + (f" ({n} rows)" if len(names) > 1 else "") for k, n in sorted(names.items()))
    sha_text = "; ".join(f"<code>{_text(k)}</code>" + (f" ({n} rows)" if len(shas) > 1 else "")
                         for k, n in sorted(shas.items()))
    if not rows and info is not None:
        name_text = _text(f"{info['architecture'].get('name', 'model')} ({Path(model.path).name})")
        sha_text = f"<code>{_text(info['weights_sha256'])}</code> (the model given; no rows yet)"
    e.append('<section id="model"><h2>Model</h2><table class="kv"><tbody>'
             f"<tr><th>name</th><td>{name_text or '-'}</td></tr><tr><th>SHA-256</th><td>{sha_text or '-'}</td></tr>"
             f"<tr><th>classes</th><td>{', '.join(_text(c) for c in classes)}</td></tr>"
             f"<tr><th>screening class</th><td>{_text(cls)}</td></tr>"
             + _threshold_html(stored, Counter(r.threshold for r in rows), cls, usable)
             + "</tbody></table>")
    e.append("</section>\n")

    # -- run
    times = sorted(r.screened_at for r in rows if r.screened_at)
    versions = Counter(r.xraynet_version for r in rows)
    e.append('<section id="run"><h2>Run</h2><table class="kv"><tbody>'
             f"<tr><th>report</th><td>{name}</td></tr>"
             f"<tr><th>latest screened_at</th><td>{_text(times[-1]) if times else '-'}</td></tr>"
             f"<tr><th>earliest screened_at</th><td>{_text(times[0]) if times else '-'}</td></tr>"
             + "<tr><th>rows written by</th><td>" + ("; ".join(f"xraynet {_text(v)} ({n} rows)" for v, n in
                                                           sorted(versions.items())) or "-") + "</td></tr>"
             + f"<tr><th>page written by</th><td>xraynet {_text(__version__)}</td></tr>"
             + (f"<tr><th>left out</th><td>{report.left_out} incomplete or malformed record(s) at the end of "
                "the report</td></tr>" if report.left_out else "")
             + "</tbody></table></section>\n</div>\n")

    # -- model card: full width, under the three columns
    card = (_card_html(meta.get("model_card"), classes, model.path) if usable else
            "<p>not shown: the model file given is not the one that screened this report</p>")
    e.append(f'<section id="card"><h2>Model card</h2>{card}</section>\n')

    # -- films
    opts = ['<option value="all">all rows</option>', '<option value="flagged">flagged</option>',
            '<option value="errors">errors</option>', '<option value="warnings">with warnings</option>']
    opts += [f'<option value="label:{_text(c)}">label {_text(c)}</option>' for c in classes]
    k = 3 + len(classes)
    head = ("<th>film</th><th>Grad-CAM</th><th><button type=\"button\" data-k=\"2\">file</button></th>"
            + "".join(f'<th><button type="button" data-k="{3 + i}" data-n="">p {_text(c)}</button></th>'
                      for i, c in enumerate(classes))
            + f'<th><button type="button" data-k="{k}">label</button></th>'
            + f'<th><button type="button" data-k="{k + 1}">result</button></th><th>notes</th>')
    e.append('<section id="films"><h2>Films</h2>\n<div class="controls"><label>Show <select id="filter">'
             + "".join(opts) + '</select></label><button type="button" id="reset">default order</button>'
             '<span id="shown" aria-live="polite"></span></div>\n<noscript><p class="note">Thumbnails, filtering '
             "and sorting need JavaScript; every row is listed below, flagged first.</p></noscript>\n"
             f'<table id="rows"><thead><tr>{head}</tr></thead>\n<tbody>\n')
    base = os.fsencode(os.path.abspath(heatmap_base if heatmap_base is not None else os.curdir))
    report_dir = os.fsencode(os.path.abspath(report.path.parent))
    for r in _order(rows, ci):
        e.append(_row_html(r, classes, ci, thumbs, files_url, page_dir, base, report_dir))
    e.append("</tbody></table>\n</section>\n" f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(e)


def _model_notes(model: _ModelView | None, rows) -> list[str]:
    """The model mismatch, as the page and the command's warning say it."""
    if model is None or model.info is None or not rows:
        return []
    sha = model.info["weights_sha256"]
    other = ", ".join(f"{s or '(empty)'} ({n} rows)" for s, n in sorted(model.others.items()))
    if model.matches == 0:
        return [f"{model.path}: not the model that screened this report. Expected weights_sha256 {other}, got "
                f"{sha}. The page shows the report's own model name and SHA-256, not this file's threshold rule "
                f"or model card; pass --model with the file that screened the report."]
    if model.others:
        return [f"{model.path}: screened {model.matches} of the {len(rows)} rows; the others were screened with "
                f"another model: {other}. Their rows are shown as the report has them; the threshold rule and "
                f"model card are this file's."]
    return []


def _row_html(r: Row, classes, ci, thumbs, files_url, page_dir, heat_base, report_dir) -> str:
    marks = (["fl"] if r.ok and r.flagged else []) + ([] if r.ok else ["er"]) + (["wa"] if r.warnings else [])
    attrs = (f' class="{" ".join(marks)}"' if marks else "") + (f' data-l="{_text(r.label)}"' if r.ok else "")
    if r.ok and r.sha256 in thumbs:
        film = f'<img loading="lazy" alt="" data-src="{files_url}{r.sha256}.jpg">'
    else:
        film = '<span class="ph">no thumbnail</span>'
    heat = ""
    if r.heatmap:
        target = _heatmap_file(r.heatmap, heat_base, report_dir)
        if target is None:
            heat = '<span class="ph">missing</span>'
        else:
            u = _url(target, page_dir)
            heat = f'<a href="{u}"><img loading="lazy" alt="Grad-CAM" data-src="{u}"></a>'
    probs = "".join(f'<td class="n">{_prob(p, cell)}</td>' for p, cell in zip(r.probs, r.prob_cells))
    if r.ok:
        result = "flagged" if r.flagged else ""
        notes = "; ".join(_text(w) for w in r.warnings)
    else:
        result = _text(r.reason)
        notes = _text(r.message)
    return (f"<tr{attrs}><td>{film}</td><td>{heat}</td><td class=\"p\">{_text(r.path)}</td>{probs}"
            f"<td>{_text(r.label)}</td><td class=\"r\">{result}</td><td>{notes}</td></tr>\n")


def _prob(p, cell: str) -> str:
    return f"{p:.3f}" if p is not None else _text(cell)


def _heatmap_file(cell: str, base: bytes, report_dir: bytes) -> bytes | None:
    """The heatmap file a cell names (absolute; relative from ``base``, then the report's folder)."""
    raw = os.fsencode(cell)
    candidates = [raw] if os.path.isabs(raw) else [os.path.join(base, raw), os.path.join(report_dir, raw)]
    return next((os.path.normpath(c) for c in candidates if os.path.isfile(c)), None)


# ------------------------------------------------------------------ the entry
@dataclass
class ReviewResult:
    """What :func:`write_review` did: the page, its size, rows, thumbnails made / reused /
    removed, and warnings (the model mismatch) for the command to print."""

    html: str
    bytes: int
    rows: int
    thumbnails_made: int = 0
    thumbnails_reused: int = 0
    thumbnails_removed: int = 0
    warnings: list = field(default_factory=list)
    seconds: float = 0.0


def _write_failed(path, e: OSError, failed: str) -> ReportWriteError:
    from .screen import _write_error

    return _write_error(path, e, failed, "The report is complete and unchanged; the previous page, if any, is "
                        "kept.", "--html")


def check_page_path(html_path, report, folder=None) -> None:
    """Refuse a page path that cannot work, before anything is screened or written: a folder, a
    missing parent folder, the report itself, or a page whose thumbnails folder lies inside the
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
    if os.path.abspath(html_p) == os.path.abspath(report) or (html_p.exists() and Path(report).exists()
                                                              and html_p.samefile(report)):
        raise ScreenError(f"{html_path}: the review page would replace the report. Expected another file than "
                          f"the CSV report, got the same path. Pass --html review.html.")
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
    """Write the review page of ``report`` to ``html_path`` (see the module docstring).

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
    from .modelfile import bundled_model_path, read_info

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
        lock = _lock_page(files_dir)
    except OSError as e:
        raise _write_failed(files_dir / ".lock", e, "creating the thumbnails folder and its lock") from None
    try:
        rep = read_report(report)  # again, under the page lock: the rows the thumbnails are kept for
        shas = Counter(r.model_sha256 for r in rep.rows)
        sha = info["weights_sha256"]
        view = _ModelView(path=str(model_file), info=info, matches=shas.get(sha, 0),
                          others=Counter({s: n for s, n in shas.items() if s != sha}))
        try:
            present, made, removed = _update_thumbnails(rep.rows, folder, files_dir, workers, progress)
        except _ThumbnailWriteError as e:
            raise _write_failed(e.path, e.error, "writing a thumbnail") from None
        except OSError as e:
            raise _write_failed(files_dir, e, "updating the thumbnails folder") from None
        page = render_page(rep, page_path=html_p, model=view, thumbs=present, screening_class=screening_class,
                           heatmap_base=heatmap_base)
        data = page.encode("utf-8")
        from .atomic import write_atomic

        try:
            write_atomic(html_p, data)
        except OSError as e:
            raise _write_failed(html_p, e, "writing the review page") from None
    finally:
        os.close(lock)
    n_thumbs = len({r.sha256 for r in rep.rows if r.ok and r.sha256 in present})
    return ReviewResult(html=str(html_p), bytes=len(data), rows=len(rep.rows), thumbnails_made=made,
                        thumbnails_reused=n_thumbs - made, thumbnails_removed=removed,
                        warnings=_model_notes(view, rep.rows), seconds=time.perf_counter() - t0)
