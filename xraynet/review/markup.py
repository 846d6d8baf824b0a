"""Safe HTML from untrusted text for the review page: every text from a
report, a model file or a file name goes through :func:`html_text`; links
through :func:`relative_url`; JSON values and metrics figures through the
formatters here (see :mod:`xraynet.review`, "Safety")."""
from __future__ import annotations

import html
import math
import os
import unicodedata
from urllib.parse import quote

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def plain_text(s) -> str:
    """Text from a file made safe to show anywhere (a terminal, a page): undecodable bytes
    (surrogates) as \\xNN; control and format characters (escape, newline, tab, right-to-left
    override, zero-width joiner...: Unicode categories Cc, Cf, Zl, Zp) as a visible ⟨U+XXXX⟩, so
    that no name can move the cursor, hide, reorder or pass for another."""
    s = str(s).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if not s.isprintable():
        s = "".join(f"⟨U+{ord(c):04X}⟩" if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in s)
    return s


def html_text(s) -> str:
    """Text for the page: :func:`plain_text`, then HTML-escaped."""
    return html.escape(plain_text(s), quote=True)


def relative_url(target: bytes, base: bytes) -> str:
    """A relative, percent-encoded URL from the folder ``base`` to the file ``target`` (bytes)."""
    rel = os.path.relpath(target, base)
    return html.escape(quote(rel.replace(os.sep.encode(), b"/"), safe="/"), quote=True)


def format_value(v) -> str:
    """A JSON scalar in words: yes / no / - for booleans and null, 4 significant digits for floats."""
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v)


def json_html(v, depth: int = 0) -> str:
    """Any JSON value as nested definition lists (escaped, depth and length bounded)."""
    if depth > 6:
        return "&hellip;"
    if isinstance(v, dict):
        items = list(v.items())
        body = "".join(f"<dt>{html_text(k)}</dt><dd>{json_html(x, depth + 1)}</dd>" for k, x in items[:60])
        more = f"<dt>&hellip;</dt><dd>{len(items) - 60} more</dd>" if len(items) > 60 else ""
        return f"<dl>{body}{more}</dl>" if items else "-"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            shown = ", ".join(html_text(format_value(x)) for x in v[:60])
            return shown + (f", &hellip; {len(v) - 60} more" if len(v) > 60 else "") if v else "-"
        return "<ol>" + "".join(f"<li>{json_html(x, depth + 1)}</li>" for x in v[:60]) + "</ol>"
    return html_text(format_value(v))


def rate_html(r) -> str:
    """A metrics RATE ({"value", "ci", "k", "n"}) as '0.921 (95% CI 0.895-0.940, 498/541)'."""
    if not isinstance(r, dict) or not isinstance(r.get("value"), (int, float)):
        return json_html(r)
    out = f"{r['value']:.3f}"
    ci = r.get("ci")
    extra = []
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        extra.append(f"95% CI {ci[0]:.3f}&ndash;{ci[1]:.3f}")
    if isinstance(r.get("k"), int) and isinstance(r.get("n"), int):
        extra.append(f"{r['k']}/{r['n']}")
    return out + (f" ({', '.join(extra)})" if extra else "")


def auc_html(entry) -> str:
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
    return f"- ({html_text(entry['reason'])})" if entry.get("reason") else "-"


def dig(d, *keys):
    """``d[k1][k2]...``, or None where a level is missing or not a dict (cards are read defensively)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d
