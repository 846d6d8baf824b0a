"""The review page's HTML, in memory (:func:`render_page`): head, summary,
model, run, model card, then the films table, one row per report row in
review order (see :mod:`xraynet.review`, "What the page shows")."""
from __future__ import annotations

import html
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .. import __version__
from .assets import CSP, CSS, JS
from .card import card_html, threshold_html
from .markup import html_text, plain_text, relative_url
from .report import Report, Row, finite_float
from .thumbnails import files_folder


@dataclass
class ModelView:
    """What the page may say about the model: the file named, and whether it is the report's."""

    path: str
    info: dict | None          # read_info of the model file, or None
    matches: int               # rows whose model_sha256 is this file's
    others: Counter            # model_sha256 -> rows, for rows of other models


def render_page(report: Report, *, page_path, model: ModelView | None = None, thumbs: set = frozenset(),
                screening_class: str | None = None, heatmap_base=None) -> str:
    """The HTML text of the review page (see :mod:`xraynet.review`). ``page_path``: where it will be
    written (links are relative to its folder); ``thumbs``: sha256s that have a thumbnail in
    :func:`files_folder`; ``heatmap_base``: folder a relative heatmap path is taken from first
    (default: the current folder)."""
    rows, classes = report.rows, report.classes
    info = model.info if model is not None else None
    # The model file speaks for the report only when it screened some of its rows (or there are none).
    usable = info is not None and (model.matches > 0 or not rows)
    meta = info.get("metadata") if usable and isinstance(info.get("metadata"), dict) else {}
    stored = meta.get("threshold")
    preferred = screening_class or (stored.get("class") if isinstance(stored, dict) else None)
    cls = _screening_class(classes, rows, preferred)
    name = html_text(report.path.name)
    e = [_head_html(name, cls)]
    e += [f'<p class="warn">{html_text(n)}</p>\n' for n in model_notes(model, rows)]
    e.append('<div class="cols">\n' + _summary_html(rows, classes, cls))
    e.append(_model_html(rows, classes, cls, model, stored, usable))
    e.append(_run_html(report, name) + "</div>\n")
    # The model card: full width, under the three columns.
    card = (card_html(meta.get("model_card"), classes, model.path) if usable else
            "<p>not shown: the model file given is not the one that screened this report</p>")
    e.append(f'<section id="card"><h2>Model card</h2>{card}</section>\n')
    e.append(_films_html(report, cls, thumbs, Path(page_path), heatmap_base))
    return "".join(e)


def _head_html(name: str, cls: str) -> str:
    """The document head (policy, style) and the page's title and caution."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP, quote=True)}">\n'
            '<meta name="referrer" content="no-referrer">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>xraynet review: {name}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>xraynet review: {name}</h1>\n<p class=\"note\">A research and triage aid, not a diagnosis: "
            f"flagged means p_{html_text(cls)} reached the threshold. Read the films.</p>\n")


def _summary_html(rows, classes, cls: str) -> str:
    """Rows, ok rows, flagged rows, labels per class, errors by reason, warnings by code."""
    ok = [r for r in rows if r.ok]
    flagged = sum(r.flagged for r in ok)
    labels = Counter(r.label for r in ok)
    reasons = Counter(r.reason for r in rows if not r.ok)
    codes = Counter(c for r in rows for c in {_warning_code(w) for w in r.warnings})
    with_warn = sum(1 for r in rows if r.warnings)
    label_text = "; ".join(f"{html_text(c)} {labels.get(c, 0)}" for c in classes)
    return ('<section id="summary"><h2>Summary</h2><table class="kv"><tbody>'
            f"<tr><th>files (rows)</th><td>{len(rows)}</td></tr>"
            f"<tr><th>screened ok</th><td>{len(ok)}</td></tr>"
            f"<tr><th>flagged {html_text(cls)}</th><td>{flagged}</td></tr>"
            f"<tr><th>predicted label</th><td>{label_text}</td></tr>"
            + _count_rows(reasons, "error rows, by reason", total=True)
            + f"<tr><th>rows with warnings</th><td>{with_warn}</td></tr>" + _count_rows(codes, "warnings, by code")
            + "</tbody></table></section>\n")


def _model_html(rows, classes, cls: str, model: ModelView | None, stored, usable: bool) -> str:
    """The model's name and SHA-256 as the rows give them, its classes and the threshold
    (``stored``: the model's ``metadata["threshold"]`` when it is the report's model)."""
    info = model.info if model is not None else None
    names = Counter(r.model for r in rows)
    shas = Counter(r.model_sha256 for r in rows)
    name_text = "; ".join(f"{html_text(k)}" + (f" ({n} rows)" if len(names) > 1 else "")
                          for k, n in sorted(names.items()))
    sha_text = "; ".join(f"<code>{html_text(k)}</code>" + (f" ({n} rows)" if len(shas) > 1 else "")
                         for k, n in sorted(shas.items()))
    if not rows and info is not None:
        name_text = html_text(f"{info['architecture'].get('name', 'model')} ({Path(model.path).name})")
        sha_text = f"<code>{html_text(info['weights_sha256'])}</code> (the model given; no rows yet)"
    return ('<section id="model"><h2>Model</h2><table class="kv"><tbody>'
            f"<tr><th>name</th><td>{name_text or '-'}</td></tr><tr><th>SHA-256</th><td>{sha_text or '-'}</td></tr>"
            f"<tr><th>classes</th><td>{', '.join(html_text(c) for c in classes)}</td></tr>"
            f"<tr><th>screening class</th><td>{html_text(cls)}</td></tr>"
            + threshold_html(stored, Counter(r.threshold for r in rows), cls, usable)
            + "</tbody></table></section>\n")


def _run_html(report: Report, name: str) -> str:
    """When the rows were screened, by which xraynet, and what was left out of the report."""
    rows = report.rows
    times = sorted(r.screened_at for r in rows if r.screened_at)
    versions = Counter(r.xraynet_version for r in rows)
    return ('<section id="run"><h2>Run</h2><table class="kv"><tbody>'
            f"<tr><th>report</th><td>{name}</td></tr>"
            f"<tr><th>latest screened_at</th><td>{html_text(times[-1]) if times else '-'}</td></tr>"
            f"<tr><th>earliest screened_at</th><td>{html_text(times[0]) if times else '-'}</td></tr>"
            + "<tr><th>rows written by</th><td>" + ("; ".join(f"xraynet {html_text(v)} ({n} rows)" for v, n in
                                                          sorted(versions.items())) or "-") + "</td></tr>"
            + f"<tr><th>page written by</th><td>xraynet {html_text(__version__)}</td></tr>"
            + (f"<tr><th>left out</th><td>{report.left_out} incomplete or malformed record(s) of the "
               "report</td></tr>" if report.left_out else "")
            + "</tbody></table></section>\n")


def _films_html(report: Report, cls: str, thumbs, page_path: Path, heatmap_base) -> str:
    """The films table with its filter and sort controls, and the page's script."""
    classes = report.classes
    ci = classes.index(cls)
    page_dir = os.fsencode(os.path.abspath(page_path.parent))
    files_url = quote(os.fsencode(files_folder(page_path).name), safe="") + "/"
    opts = ['<option value="all">all rows</option>', '<option value="flagged">flagged</option>',
            '<option value="errors">errors</option>', '<option value="warnings">with warnings</option>']
    opts += [f'<option value="label:{html_text(c)}">label {html_text(c)}</option>' for c in classes]
    k = 3 + len(classes)
    head = ("<th>film</th><th>Grad-CAM</th><th><button type=\"button\" data-k=\"2\">file</button></th>"
            + "".join(f'<th><button type="button" data-k="{3 + i}" data-n="">p {html_text(c)}</button></th>'
                      for i, c in enumerate(classes))
            + f'<th><button type="button" data-k="{k}">label</button></th>'
            + f'<th><button type="button" data-k="{k + 1}">result</button></th><th>notes</th>')
    e = ['<section id="films"><h2>Films</h2>\n<div class="controls"><label>Show <select id="filter">'
         + "".join(opts) + '</select></label><button type="button" id="reset">default order</button>'
         '<span id="shown" aria-live="polite"></span></div>\n<noscript><p class="note">Thumbnails, filtering '
         "and sorting need JavaScript; every row is listed below, flagged first.</p></noscript>\n"
         f'<table id="rows"><thead><tr>{head}</tr></thead>\n<tbody>\n']
    base = os.fsencode(os.path.abspath(heatmap_base if heatmap_base is not None else os.curdir))
    report_dir = os.fsencode(os.path.abspath(report.path.parent))
    for r in _order(report.rows, ci):
        e.append(_row_html(r, classes, ci, thumbs, files_url, page_dir, base, report_dir))
    e.append("</tbody></table>\n</section>\n" f"<script>{JS}</script>\n</body>\n</html>\n")
    return "".join(e)


def model_notes(model: ModelView | None, rows) -> list[str]:
    """The model mismatch, as the page and the command's warning say it (values from the report
    and the file name through :func:`~.markup.plain_text`: the command prints these lines)."""
    if model is None or model.info is None or not rows:
        return []
    sha = plain_text(model.info["weights_sha256"])
    other = ", ".join(f"{plain_text(s) or '(empty)'} ({n} rows)" for s, n in sorted(model.others.items()))
    where = plain_text(model.path)
    if model.matches == 0:
        return [f"{where}: not the model that screened this report. Expected weights_sha256 {other}, got "
                f"{sha}. The page shows the report's own model name and SHA-256, not this file's threshold rule "
                f"or model card; pass --model with the file that screened the report."]
    if model.others:
        return [f"{where}: screened {model.matches} of the {len(rows)} rows; the others were screened with "
                f"another model: {other}. Their rows are shown as the report has them; the threshold rule and "
                f"model card are this file's."]
    return []


def _row_html(r: Row, classes, ci, thumbs, files_url, page_dir, heat_base, report_dir) -> str:
    """One film's table row: thumbnail, Grad-CAM link, path, probabilities, label, result, notes."""
    marks = (["fl"] if r.ok and r.flagged else []) + ([] if r.ok else ["er"]) + (["wa"] if r.warnings else [])
    attrs = (f' class="{" ".join(marks)}"' if marks else "") + (f' data-l="{html_text(r.label)}"' if r.ok else "")
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
            u = relative_url(target, page_dir)
            heat = f'<a href="{u}"><img loading="lazy" alt="Grad-CAM" data-src="{u}"></a>'
    probs = "".join(f'<td class="n">{_prob(p, cell)}</td>' for p, cell in zip(r.probs, r.prob_cells))
    if r.ok:
        result = "flagged" if r.flagged else ""
        notes = "; ".join(html_text(w) for w in r.warnings)
    else:
        result = html_text(r.reason)
        notes = html_text(r.message)
    return (f"<tr{attrs}><td>{film}</td><td>{heat}</td><td class=\"p\">{html_text(r.path)}</td>{probs}"
            f"<td>{html_text(r.label)}</td><td class=\"r\">{result}</td><td>{notes}</td></tr>\n")


def _prob(p, cell: str) -> str:
    """A probability to 3 decimals, or the cell as written when it is not a number."""
    return f"{p:.3f}" if p is not None else html_text(cell)


def _heatmap_file(cell: str, base: bytes, report_dir: bytes) -> bytes | None:
    """The heatmap file a cell names (absolute; relative from ``base``, then the report's folder)."""
    raw = os.fsencode(cell)
    candidates = [raw] if os.path.isabs(raw) else [os.path.join(base, raw), os.path.join(report_dir, raw)]
    return next((os.path.normpath(c) for c in candidates if os.path.isfile(c)), None)


def _screening_class(classes, rows, preferred) -> str:
    """The class ``flagged`` was computed for: the preferred one (the model's) when the rows agree
    with it, else the first class every ok row agrees with (the report does not store it)."""
    def agrees(c):
        i = classes.index(c)
        return all(r.probs[i] is not None and (r.probs[i] >= (finite_float(r.threshold) or 0.0)) == r.flagged
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
    cells = "; ".join(f"{html_text(k)} {n}" for k, n in items)
    return f"<tr><th>{what}</th><td>{f'{sum(counter.values())} ({cells})' if total else cells}</td></tr>"


def _warning_code(entry: str) -> str:
    # "decoder_warning (pillow: text)" counts as decoder_warning; the text stays on the row.
    return entry.split(" (", 1)[0].strip()


def _order(rows, ci: int):
    """Review order: flagged films, then the other ok films, both by descending p of class ``ci``;
    errors last; ties by path."""
    def key(r):
        if not r.ok:
            return (2, 0.0, r.path)
        p = r.probs[ci]
        return (0 if r.flagged else 1, -(p if p is not None else -1.0), r.path)
    return sorted(rows, key=key)
