"""The model's part of the review page: how its threshold was chosen
(:func:`threshold_html`) and its model card (:func:`card_html`), read
defensively: a card this xraynet cannot read is said so, never fatal."""
from __future__ import annotations

from collections import Counter

from .markup import auc_html, dig, format_value, html_text, json_html, rate_html
from .report import finite_float


def threshold_html(stored, used: Counter, cls: str, known: bool) -> str:
    """How the threshold was chosen (the model's metadata["threshold"]) and what the rows used.
    ``known``: the model file is the report's, so its rule may be shown."""
    parts = []
    used_text = ", ".join(f"{html_text(t)} ({n} rows)" for t, n in sorted(used.items())) if used else "-"
    parts.append(f"<tr><th>threshold</th><td>{used_text}: flagged when p_{html_text(cls)} &ge; it</td></tr>")
    if not known:
        parts.append("<tr><th>how it was chosen</th><td>unknown: the model file given is not the one that "
                     "screened this report</td></tr>")
        return "".join(parts)
    if not isinstance(stored, dict) or not stored:
        parts.append("<tr><th>how it was chosen</th><td>not stored in the model file</td></tr>")
        return "".join(parts)
    value = stored.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        other = used and not any(finite_float(t) == float(value) for t in used)
        note = " (the rows used another one: passed with --threshold)" if other else ""
        parts.append(f"<tr><th>model's threshold</th><td>{html_text(repr(float(value)))} for class "
                     f"{html_text(stored.get('class', '-'))}{note}</td></tr>")
    rule = []
    target = stored.get("target_sensitivity")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        rule.append(f"the highest threshold whose sensitivity reaches {html_text(format_value(float(target)))}")
    if stored.get("chosen_on"):
        rule.append(f"chosen on {html_text(stored['chosen_on'])} films")
    if isinstance(stored.get("sources"), list) and stored["sources"]:
        rule.append("of the sources " + ", ".join(html_text(s) for s in stored["sources"]))
    if rule:
        parts.append(f"<tr><th>how it was chosen</th><td>{rule[0]}{' '.join([','] + rule[1:]) if rule[1:] else ''}"
                     "</td></tr>")
    val = stored.get("validation")
    if isinstance(val, dict):
        for k in ("sensitivity", "specificity", "ppv", "npv"):
            if k in val:
                parts.append(f"<tr><th>{html_text(k)} there</th><td>{rate_html(val[k])}</td></tr>")
        counts = [f"{k} {html_text(val[k])}" for k in ("flagged", "tp", "fp", "tn", "fn") if k in val]
        if counts:
            parts.append(f"<tr><th>counts there</th><td>{', '.join(counts)}</td></tr>")
    known = {"class", "value", "target_sensitivity", "chosen_on", "sources", "validation"}
    rest = {k: v for k, v in stored.items() if k not in known}
    if rest:
        parts.append(f"<tr><th>more</th><td>{json_html(rest)}</td></tr>")
    return "".join(parts)


def card_html(card, classes, model_path) -> str:
    """The model card (:mod:`xraynet.modelcard`, card_version 1): intended use, the within-source
    AUCs first, leave-one-source-out, the threshold rule and the limits; the whole card, escaped,
    in a collapsed section. Read defensively: an unreadable card is said so, never fatal."""
    if card is None:
        return "<p>no model card</p>"
    unreadable = _unreadable(card, model_path)
    if unreadable is not None:
        return unreadable
    out = _intended_use_html(card.get("intended_use"))
    out += _within_source_html(dig(card, "validation", "within_source"), classes)
    more = len(out)  # what follows is behind a "more" switch: the films come first
    out += _leave_one_out_html(card, classes)
    rule = dig(card, "threshold", "rule")
    if rule:
        out.append(f"<p>Threshold: {html_text(rule)}.</p>")
    limits = card.get("limits")
    if isinstance(limits, list) and limits:
        out.append("<h4>Limits</h4><ul>" + "".join(
            f"<li><b>{html_text(x.get('topic', ''))}</b>: {html_text(x.get('text', ''))}</li>" if isinstance(x, dict)
            else f"<li>{html_text(x)}</li>" for x in limits) + "</ul>")
    out.append(f"<h4>The whole card</h4>{json_html(card)}")
    return "".join(out[:more]) + ("<details><summary>More of the model card: leave one source out, threshold "
                                  "rule, limits, the whole card</summary>" + "".join(out[more:]) + "</details>")


def _unreadable(card, model_path) -> str | None:
    """"model card unreadable: <why>" for a card :func:`xraynet.modelcard.check_card` refuses or that
    is no JSON object; None for a readable one."""
    try:
        from ..modelcard import check_card
    except ImportError:  # an xraynet without model cards: read what is there
        check_card = None
    if check_card is not None:
        from ..errors import XraynetError

        try:
            check_card(card, model_path)
        except XraynetError as e:
            return f"<p>model card unreadable: {html_text(e)}</p>"
    if not isinstance(card, dict):
        return f"<p>model card unreadable: a {html_text(type(card).__name__)}, not a JSON object</p>"
    return None


def _class_heads(classes) -> str:
    """One table header cell per class."""
    return "".join(f"<th>{html_text(c)}</th>" for c in classes)


def _intended_use_html(use) -> list[str]:
    """The card's intended use: summary, what it is not for, what to do before use."""
    if not isinstance(use, dict):
        return []
    items = [f"<p>{html_text(use['summary'])}</p>"] if use.get("summary") else []
    if isinstance(use.get("not_for"), list) and use["not_for"]:
        items.append("<p>Not for: " + "; ".join(html_text(x) for x in use["not_for"]) + ".</p>")
    if use.get("before_use"):
        items.append(f"<p>Before use: {html_text(use['before_use'])}</p>")
    return items


def _within_source_html(within, classes) -> list[str]:
    """The within-source validation AUCs: one row per source, then the same-source pairs of all."""
    sources = dig(within, "sources")
    if isinstance(sources, dict) and sources:
        body = "".join(f"<tr><td>{html_text(name)}</td><td>{html_text(dig(v, 'films') or '-')}</td>"
                       + "".join(f"<td>{auc_html(dig(v, 'auc', c))}</td>" for c in classes) + "</tr>"
                       for name, v in sources.items())
        combined = dig(within, "combined")
        if isinstance(combined, dict) and combined:
            body += ("<tr><td>same-source pairs of all sources</td><td></td>"
                     + "".join(f"<td>{auc_html(combined.get(c))}</td>" for c in classes) + "</tr>")
        note = dig(within, "note") or "AUCs among films of one source only"
        return [f"<h4>Within one source (validation AUC, 95% interval)</h4><p class=\"note\">{html_text(note)}</p>"
                f"<table class=\"kv\"><thead><tr><th>source</th><th>films</th>{_class_heads(classes)}</tr></thead>"
                f"<tbody>{body}</tbody></table>"]
    if isinstance(within, dict) and within.get("reason"):
        return [f"<p>Within-source figures: none ({html_text(within['reason'])})</p>"]
    return []


def _leave_one_out_html(card, classes) -> list[str]:
    """The leave-one-source-out folds: AUCs in the held-out source, sensitivity / specificity."""
    folds = dig(card, "validation", "leave_one_source_out", "folds")
    if not (isinstance(folds, list) and folds):
        return []
    rows = []
    for f in folds:
        if not isinstance(f, dict):
            continue
        scr = f.get("screening") if isinstance(f.get("screening"), dict) else {}
        ss = " / ".join(f"{scr[k]['value']:.2f}" if isinstance(dig(scr, k, "value"), (int, float)) else "-"
                        for k in ("sensitivity", "specificity"))
        cells = ("".join(f"<td>{auc_html(dig(f, 'auc', c))}</td>" for c in classes) if f.get("status") == "ok"
                 else f"<td colspan=\"{len(classes)}\">{html_text(f.get('reason') or 'not possible')}</td>")
        rows.append(f"<tr><td>{html_text(f.get('held_out', '-'))}</td><td>{html_text(f.get('films', '-'))}</td>"
                    f"{cells}<td>{ss if scr else '-'}</td></tr>")
    note = dig(card, "validation", "leave_one_source_out", "note") or ""
    return [f"<h4>Leave one source out (AUC in the held-out source)</h4><p class=\"note\">{html_text(note)}</p>"
            f"<table class=\"kv\"><thead><tr><th>held out</th><th>films</th>{_class_heads(classes)}"
            f"<th>sens/spec</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"]
