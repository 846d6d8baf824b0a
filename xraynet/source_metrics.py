"""Metrics that take each film's source into account: AUCs among the films
of one source only (:func:`within_source_aucs`), which a model that
recognises the source instead of the disease cannot inflate, and the
shortcut check's verdict (:func:`variant_aucs`, :func:`shortcut_verdict`).
Inputs as in :mod:`xraynet.metrics`; undefined numbers are None.

``xraynet evaluate`` (:func:`xraynet.evaluate.evaluate`) adds two keys::

    within_source      AUCs among films of one source only, which a model that
                       recognises the source cannot inflate
                       (:func:`within_source_aucs`):
                       {"available": bool, "reason": null | str (why not),
                        "screening_class": str | null,
                        "sources": {source: {"n", "class_counts": {cls: int},
                            "per_class": {cls: WAUC (class vs the rest)},
                            "pairwise": null | {other_cls: WAUC (screening
                                class vs other_cls alone, on their films)}}},
                        "combined": {cls: {"auc": {"value", "ci"},
                            "n_pairs": int, "sources": [str],
                            "reason": null | str}}}
                       "available" is false (sources {}) without source
                       metadata. "combined" is the AUC over same-source
                       (positive, negative) pairs of every known source.
    shortcut_check     only with --shortcut-check (see :mod:`xraynet.evaluate`):
                       {"region": {"centre_fraction", "margin_fraction",
                                   "image_size", "rows": [top, bottom],
                                   "columns": [left, right], "fill",
                                   "normalize"},
                        "variants": {"full", "centre_blanked",
                                     "centre_only": VARIANT},
                        "verdict": VERDICT}

    WAUC    = {"auc": {"value", "ci"}, "n_pos": int, "n_neg": int,
               "reason": null | str}; value and ci null, with the reason,
               when the source lacks films of either side ("no covid films
               in this source") or is unknown (the "(unknown)" group may mix
               sources)
    VARIANT = {"per_class": {cls: {"auc": {"value", "ci"}}}, "macro_auc",
               "within_source": null | {cls: a "combined" entry}}
    VERDICT = {"classes": [checked classes], "uses_shortcuts": bool | null,
               "text": str, "per_class": {cls: {"uses_shortcuts",
               "auc_full", "auc_centre_blanked", "auc_centre_only",
               "margin_kept", "text"}}}   (:func:`shortcut_verdict`)
"""
from __future__ import annotations

import numpy as np

from .errors import EvaluationError
from .metrics import (UNKNOWN, bootstrap_auc_ci, bootstrap_aucs, check_predictions, finite_or_none,
                      roc_auc)

# -------------------------------------------------------------- within source
NO_SOURCE_REASON = ("no source metadata: no film has a source_repo value in metadata.csv, so films cannot be "
                    "compared within their source; pooled AUCs may be inflated by a model that recognises "
                    "the source")


def _auc_entry(scores, pos, n_boot, seed, reason=None) -> dict:
    """``{"auc": {"value", "ci"}, "n_pos", "n_neg", "reason"}``; value and CI
    None with the ``reason`` when one is given."""
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if reason is not None:
        return {"auc": {"value": None, "ci": [None, None]}, "n_pos": n_pos, "n_neg": n_neg, "reason": reason}
    lo, hi = bootstrap_auc_ci(scores, pos, n_boot=n_boot, seed=seed)
    return {"auc": {"value": finite_or_none(roc_auc(scores, pos)), "ci": [finite_or_none(lo), finite_or_none(hi)]},
            "n_pos": n_pos, "n_neg": n_neg, "reason": None}


def _missing_reason(source: str, n_pos: int, n_neg: int, pos_name: str, neg_name: str) -> str | None:
    """Why a source's AUC is not defined (unknown source, no positives, no negatives), or None."""
    if source == UNKNOWN:
        return "source unknown: these films may come from several sources"
    if n_pos == 0:
        return f"no {pos_name} films in this source"
    if n_neg == 0:
        return f"no {neg_name} films in this source"
    return None


def within_source_aucs(y_true, proba, classes, sources, *, screening_class: str | None = None,
                       n_boot: int = 1000, seed: int = 0) -> dict:
    """AUCs computed only among films of one source: the figures a model that
    recognises the source (and not the disease) cannot inflate.

    ``sources``: one source name per sample (None = unknown), or None when
    there is no source metadata. Returns the ``within_source`` document (keys
    in the module docstring). Per source and class, the one-vs-rest AUC of
    ``proba[:, c]`` with its stratified bootstrap interval (``n_boot``,
    ``seed`` as for the pooled AUCs), defined when the source has a film of
    c and a film of another class. ``combined`` pools the same-source pairs
    of every source: the Mann-Whitney AUC over pairs (positive, negative)
    from one source, i.e. the per-source AUCs weighted by n_pos * n_neg; its
    interval resamples positives and negatives within each source (source k
    drawn from ``default_rng([seed, k])``). Films of unknown source are
    listed but left out of ``combined``: they may mix sources.
    """
    y, p, classes = check_predictions(y_true, proba, classes)
    if screening_class is not None and screening_class not in classes:
        raise EvaluationError(f"screening_class: unknown class. Expected one of {classes}, got "
                              f"{screening_class!r}. Use a class name of the model.")
    doc = {"available": False, "reason": NO_SOURCE_REASON, "screening_class": screening_class,
           "sources": {}, "combined": {}}
    if sources is None:
        return doc
    values = list(sources)
    if len(values) != y.size:
        raise EvaluationError(f"sources: wrong length. Expected one source per sample ({y.size}), got "
                              f"{len(values)}. Pass the source of every prediction, in order.")
    keys = np.array([UNKNOWN if v is None else str(v) for v in values], dtype=object)
    if (keys == UNKNOWN).all():
        return doc
    doc["available"], doc["reason"] = True, None
    names = sorted(set(keys.tolist()))
    for name in names:
        m = keys == name
        ys, ps = y[m], p[m]
        per_class = {}
        for c, cls in enumerate(classes):
            pos = ys == c
            why = _missing_reason(name, int(pos.sum()), int((~pos).sum()), cls, "other-class")
            per_class[cls] = _auc_entry(ps[:, c], pos, n_boot, seed, why)
        pairwise = None
        if screening_class is not None:
            # The screening class against each other class alone: in a source with three classes a
            # one-vs-rest AUC can hide that, say, covid is told from normal but not from pneumonia.
            k = classes.index(screening_class)
            pairwise = {}
            for c, cls in enumerate(classes):
                if c == k:
                    continue
                two = (ys == k) | (ys == c)
                pos = ys[two] == k
                why = _missing_reason(name, int(pos.sum()), int((~pos).sum()), screening_class, cls)
                pairwise[cls] = _auc_entry(ps[two, k], pos, n_boot, seed, why)
        doc["sources"][name] = {"n": int(m.sum()),
                                "class_counts": {cls: int((ys == c).sum()) for c, cls in enumerate(classes)},
                                "per_class": per_class, "pairwise": pairwise}
    doc["combined"] = _combined_within(y, p, classes, keys, names, n_boot, seed)
    return doc


def _combined_within(y, p, classes, keys, names, n_boot, seed) -> dict:
    """Per class, the AUC over same-source pairs of every known source (see
    :func:`within_source_aucs`)."""
    out = {}
    for c, cls in enumerate(classes):
        used, u_sum, w_sum, boots = [], 0.0, 0, None
        for k, name in enumerate(names):
            m = keys == name
            pos = y[m] == c
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
            if name == UNKNOWN or n_pos == 0 or n_neg == 0:
                continue
            s = p[m, c].astype(np.float64)
            w = n_pos * n_neg
            used.append(name)
            u_sum += roc_auc(s, pos) * w
            w_sum += w
            if n_boot >= 1:
                b = bootstrap_aucs(s, pos, n_boot, np.random.default_rng([seed, k])) * w
                boots = b if boots is None else boots + b
        if not used:
            out[cls] = {"auc": {"value": None, "ci": [None, None]}, "n_pairs": 0, "sources": [],
                        "reason": f"no source has both {cls} films and films of another class"}
            continue
        lo = hi = None
        if boots is not None:
            lo, hi = (float(v) for v in np.percentile(boots / w_sum, [2.5, 97.5]))
        out[cls] = {"auc": {"value": finite_or_none(u_sum / w_sum), "ci": [finite_or_none(lo), finite_or_none(hi)]},
                    "n_pairs": int(w_sum), "sources": used, "reason": None}
    return out


# ------------------------------------------------------------ shortcut check
SHORTCUT_VARIANTS = ("full", "centre_blanked", "centre_only")


def variant_aucs(y_true, proba, classes, sources, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """One variant of the shortcut check: ``{"per_class": {cls: {"auc"}},
    "macro_auc", "within_source": {cls: combined entry} | None}`` (pooled
    one-vs-rest AUCs, and the same-source AUCs of :func:`within_source_aucs`)."""
    y, p, classes = check_predictions(y_true, proba, classes)
    per_class, aucs = {}, []
    for c, cls in enumerate(classes):
        e = _auc_entry(p[:, c], y == c, n_boot, seed)
        per_class[cls] = {"auc": e["auc"]}
        if e["auc"]["value"] is not None:
            aucs.append(e["auc"]["value"])
    within = within_source_aucs(y, p, classes, sources, n_boot=n_boot, seed=seed)
    return {"per_class": per_class, "macro_auc": float(np.mean(aucs)) if aucs else None,
            "within_source": within["combined"] if within["available"] else None}


def _fmt_auc(a: dict) -> str:
    """``AUC 0.880 (95% CI 0.855-0.904)``."""
    lo, hi = a["ci"]
    return f"AUC {a['value']:.3f}" + (f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None else "")


def shortcut_verdict(variants: dict, classes, screening_class: str | None = None) -> dict:
    """The verdict of the shortcut check from :func:`variant_aucs` of the
    three ``SHORTCUT_VARIANTS``, for ``screening_class`` (every class when
    None).

    A class uses shortcuts when, with the central chest region blanked, its
    pooled AUC's 95% interval excludes 0.5: the model still separates it
    without seeing the lungs (below chance too: the outside still moves the
    score with the class, inverted; the text says so and gives no margin).
    Undecided when the full-film interval holds 0.5
    (a model at chance shows nothing by blanking). ``margin_kept`` = (AUC_blanked - 0.5) /
    (AUC_full - 0.5), the share of the above-chance margin that survives the
    blanking (None when AUC_full <= 0.5). ``uses_shortcuts`` is None when it
    cannot be decided (no interval: n_boot = 0, or the class absent), and the
    overall flag is True when any checked class uses shortcuts, False when
    none does and all were decided, else None.
    """
    checked = [screening_class] if screening_class is not None else list(classes)
    per_class, texts = {}, []
    for cls in checked:
        per_class[cls] = _class_verdict(cls, variants["full"]["per_class"][cls]["auc"],
                                        variants["centre_blanked"]["per_class"][cls]["auc"],
                                        variants["centre_only"]["per_class"][cls]["auc"])
        texts.append(per_class[cls]["text"])
    flags = [v["uses_shortcuts"] for v in per_class.values()]
    overall = True if True in flags else (False if all(f is False for f in flags) else None)
    return {"classes": checked, "uses_shortcuts": overall, "per_class": per_class, "text": " ".join(texts)}


def _shortcut_text(cls: str, full: dict, blank: dict, margin, below: bool) -> str:
    """What a blanked-centre AUC whose interval excludes 0.5 says: above chance, the model still
    separates ``cls`` without the lungs (with the share of its full-film margin kept); below
    chance (``below``), its scores still follow the class without the lungs, inverted."""
    cues = ("borders, burned-in text, markers, devices, the source of the film, or the outer lung fields, "
            "which the box leaves out on most films; look at the films and the within-source figures.")
    if below:
        # Below chance with the lungs hidden is still a signal from outside them, inverted: the
        # blanked films' scores follow the class, so cues there differ between the classes.
        return (f"the model reacts to cues outside the central region, inverted. With the central chest region "
                f"blanked (most of the lungs hidden) its scores still depend on whether a film is {cls}: pooled "
                f"{_fmt_auc(blank)} (full films: {_fmt_auc(full)}) is below chance, its whole interval under 0.5, "
                f"so blanked {cls} films score lower than the others. These cues do not find {cls} on their own, "
                "but they differ between the classes and move the score, a shortcut risk: " + cues)
    if margin is None:
        kept = ""
    elif margin > 1:
        kept = ", even further from chance than on full films"
    else:
        kept = f", and keeps {margin:.0%} of its above-chance margin"
    return (f"the model is using shortcuts. With the central chest region blanked (most of the lungs hidden) it "
            f"still separates {cls} from the rest: pooled {_fmt_auc(blank)}, above chance{kept} (full films: "
            f"{_fmt_auc(full)}). It relies on cues outside the central region: " + cues)


def _class_verdict(cls: str, full: dict, blank: dict, only: dict) -> dict:
    """One class's entry of :func:`shortcut_verdict` from its pooled AUCs (``{"value", "ci"}``) on
    full films, with the central region blanked, and with only the central region kept."""
    margin = None
    if full["value"] is not None and blank["value"] is not None and full["value"] > 0.5:
        margin = (blank["value"] - 0.5) / (full["value"] - 0.5)
    lo, hi = blank["ci"]
    f_lo = full["ci"][0] if full["value"] is not None else None
    f_hi = full["ci"][1] if full["value"] is not None else None
    if full["value"] is not None and f_lo is not None and f_lo <= 0.5 <= f_hi:
        uses = None
        text = (f"{cls}: undecided: on full films the model does not separate {cls} from the rest "
                f"({_fmt_auc(full)}), so blanking the lungs cannot show what it relies on.")
    elif blank["value"] is None:
        uses = None
        text = f"{cls}: undecided: the AUC is not defined (these films need {cls} films and others)."
    elif lo is None:
        uses = None
        text = (f"{cls}: undecided: with the central chest region blanked the pooled {_fmt_auc(blank)} has no "
                "confidence interval (n_boot = 0); rerun with bootstrap resamples.")
    elif lo > 0.5 or (hi is not None and hi < 0.5):
        uses = True
        text = f"{cls}: " + _shortcut_text(cls, full, blank, margin, below=lo <= 0.5)
    else:
        uses = False
        text = (f"{cls}: with the lungs blanked the model falls to chance: pooled {_fmt_auc(blank)} with the "
                f"central chest region blanked (full films: {_fmt_auc(full)}); no sign of shortcuts outside "
                "the central region.")
    if only["value"] is not None:
        text += f" With only the central region kept: {_fmt_auc(only)}."
    return {"uses_shortcuts": uses, "auc_full": full, "auc_centre_blanked": blank, "auc_centre_only": only,
            "margin_kept": finite_or_none(margin), "text": text}
