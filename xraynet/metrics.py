"""Evaluation metrics for a classifier's predicted probabilities, with
confidence intervals, as one JSON-able document.

Inputs everywhere: ``y_true`` (N,) integer labels in ``[0, C)``, ``proba``
(N, C) class probabilities (a binary sigmoid model gives ``[1 - p, p]``),
class names (label = index). The predicted class is the argmax of a row
(ties: the lowest label).

:func:`evaluate_predictions` returns a dict with these keys (stable: the
README and the CLI rely on them)::

    n                  int, number of predictions
    classes            [str], label order
    accuracy           RATE (see below)
    balanced_accuracy  mean sensitivity over the classes present in y_true
    per_class          {cls: {"support": int (true count),
                              "sensitivity", "specificity", "ppv", "npv": RATE
                                  (one vs rest, on the argmax prediction),
                              "auc": {"value", "ci": [lo, hi]}}}
    macro_auc          mean of the per-class AUCs that are defined
    confusion_matrix   [[int]], rows = true class, columns = predicted class
    ece                expected calibration error of the top-class confidence
    reliability        [{"lo", "hi", "n", "confidence", "accuracy"}] one per bin
    screening          null, or {"class", "threshold", "threshold_chosen_here",
                       "target_sensitivity", "flagged", "tp", "fp", "tn", "fn",
                       "sensitivity", "specificity", "ppv", "npv": RATE}
    by_group           {group: {value: {"n", "accuracy", "balanced_accuracy",
                       "per_class", "macro_auc", "confusion_matrix",
                       "screening"}}}; {} without groups
    bootstrap          {"n_boot", "seed", "level": 0.95}

    RATE = {"value": k/n, "ci": [lo, hi] (Wilson 95%), "k": int, "n": int}

``xraynet evaluate`` adds two keys, ``within_source`` and ``shortcut_check``,
from the source-aware metrics of :mod:`xraynet.source_metrics`.

Undefined numbers -- a sensitivity with no positives, an AUC with one class
absent, a group without some class, an empty calibration bin -- are ``None``,
never NaN, so ``json.dumps(doc, allow_nan=False)`` works and a reader cannot
mistake a missing value for a number.

AUCs are exact Mann-Whitney statistics (average ranks for ties, so a tied
positive-negative pair counts one half). Their 95% intervals are stratified
percentile bootstraps: positives and negatives are resampled separately, so
every resample has both, and ``seed`` makes the interval reproducible.

One module of about 400 lines: everything here builds the one document above
(its layout is a quarter of them); the source-aware metrics live apart.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import EvaluationError

Z95 = 1.959964          # two-sided 95% normal quantile
UNKNOWN = "(unknown)"   # group value written for None


# --------------------------------------------------------------- small pieces
def finite_or_none(x) -> float | None:
    """A float for JSON, None for NaN/inf."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise EvaluationError(f"confusion_matrix: labels and predictions differ in length. Expected equal "
                              f"lengths, got {y_true.size} and {y_pred.size}. Pass one prediction per label.")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise EvaluationError(f"confusion_matrix: {name} out of range. Expected labels in [0, {n_classes}), "
                                  f"got {int(a.min())}..{int(a.max())}. Check the class list.")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; (nan, nan)
    for n = 0. Unlike the normal approximation it stays inside [0, 1] and is
    not degenerate at k = 0 or k = n, which matters for the small counts of
    a validation set."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # The bounds at k = 0 and k = n are exactly 0 and 1; rounding would leave
    # 0.9999999999999999.
    lo = 0.0 if k <= 0 else max(0.0, center - half)
    hi = 1.0 if k >= n else min(1.0, center + half)
    return (lo, hi)


def proportion(k: int, n: int) -> dict:
    """``{"value": k/n, "ci": [lo, hi], "k": k, "n": n}`` with a Wilson 95%
    interval; value and interval are None when n = 0."""
    k, n = int(k), int(n)
    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else None, "ci": [finite_or_none(lo), finite_or_none(hi)], "k": k, "n": n}


# ---------------------------------------------------------------------- AUC
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg = ends - (counts - 1) / 2.0   # mean of ranks ends-counts+1 .. ends
    return avg[inv.ravel()]


def _as_binary(scores, positives):
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positives).ravel().astype(bool)
    if s.shape != pos.shape:
        raise EvaluationError(f"scores: length differs from positives. Expected equal lengths, got {s.size} "
                              f"and {pos.size}. Pass one score per sample.")
    if not np.isfinite(s).all():
        raise EvaluationError(f"scores: not all finite. Expected finite numbers, got "
                              f"{int((~np.isfinite(s)).sum())} NaN or infinite values. Check the model output.")
    return s, pos


def roc_auc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives``:
    the Mann-Whitney U over n_pos * n_neg, ties counting one half. NaN when
    either group is empty."""
    s, pos = _as_binary(scores, positives)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _average_ranks(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores, positives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of flagging ``score >= t`` for every distinct score t, in
    decreasing t, after a first point (0, 0) at t = +inf. Returns float64
    ``(fpr, tpr, thresholds)``; fpr (tpr) is NaN throughout when there are no
    negatives (positives)."""
    s, pos = _as_binary(scores, positives)
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    tps = np.cumsum(pos)
    fps = np.cumsum(~pos)
    # Last index of each run of equal scores: all tied samples flip together.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.array([], dtype=np.int64)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    tpr = np.r_[0.0, tps[last]] / n_pos if n_pos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fps[last]] / n_neg if n_neg else np.full(last.size + 1, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, s[last]]


def bootstrap_auc_ci(scores, positives, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUC over ``n_boot`` stratified bootstrap
    resamples (positives and negatives resampled separately, with
    replacement), from ``np.random.default_rng(seed)``. (nan, nan) when
    either group is empty or n_boot < 1.

    Vectorised: the scores are mapped to their U distinct values once; a
    resample is then a histogram of positives and one of negatives over those
    values, and its AUC is sum_u pos[u] * (neg below u + neg at u / 2), all
    resamples of a chunk at once.
    """
    s, pos = _as_binary(scores, positives)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0 or n_boot < 1:
        return (math.nan, math.nan)
    aucs = bootstrap_aucs(s, pos, n_boot, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(aucs, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


def bootstrap_aucs(s: np.ndarray, pos: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """(n_boot,) AUCs of stratified resamples of float64 ``s`` / bool ``pos``
    (both groups non-empty), drawn from ``rng``; see :func:`bootstrap_auc_ci`."""
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    uniq, inv = np.unique(s, return_inverse=True)
    inv = inv.ravel()
    u_pos, u_neg = inv[pos], inv[~pos]
    n_u = uniq.size
    # Chunks bound the (chunk, U) histograms to about 16 MB each.
    chunk = max(1, min(n_boot, 2_000_000 // max(n_u, 1)))
    aucs = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rows = np.arange(b)[:, None] * n_u
        hp = np.bincount((rows + u_pos[rng.integers(0, n_pos, size=(b, n_pos))]).ravel(),
                         minlength=b * n_u).reshape(b, n_u)
        hn = np.bincount((rows + u_neg[rng.integers(0, n_neg, size=(b, n_neg))]).ravel(),
                         minlength=b * n_u).reshape(b, n_u)
        below = np.cumsum(hn, axis=1) - hn
        aucs[start:start + b] = (hp * (below + 0.5 * hn)).sum(axis=1) / (n_pos * n_neg)
    return aucs


# ---------------------------------------------------------------- calibration
def calibration(y_true, proba, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-class confidence and its bins.

    Bin i covers ``[i/n_bins, (i+1)/n_bins)`` (the last also holds 1.0).
    ECE = sum over bins of (n_bin / N) * |accuracy_bin - mean confidence_bin|.
    Each bin is ``{"lo", "hi", "n", "confidence", "accuracy"}`` with None for
    an empty bin's means. A binary model's top confidence is never below 0.5,
    so its lower bins stay empty.
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(proba, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    bins, ece = [], 0.0
    for i in range(n_bins):
        c = sum_conf[i] / n[i] if n[i] else None
        a = sum_acc[i] / n[i] if n[i] else None
        if n[i]:
            ece += n[i] / max(y.size, 1) * abs(a - c)
        bins.append({"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": int(n[i]),
                     "confidence": finite_or_none(c), "accuracy": finite_or_none(a)})
    return (float(ece) if y.size else math.nan), bins


# ------------------------------------------------------------------ screening
# The sensitivity a threshold chosen on validation films aims for, when no threshold is given.
TARGET_SENSITIVITY = 0.95


def choose_threshold(scores, positives, target_sensitivity: float = TARGET_SENSITIVITY) -> float:
    """The highest t such that flagging ``score >= t`` catches at least
    ``target_sensitivity`` of the positives in these (validation) scores.

    t is the k-th highest positive score, k = ceil(target * n_pos). Ties:
    every sample scoring exactly t is flagged, so positives tied at t can lift
    the sensitivity above the target, and negatives tied at t are flagged too.
    On new data the sensitivity at t is only estimated: report its interval
    (:func:`binary_metrics_at`).
    """
    s, pos = _as_binary(scores, positives)
    if isinstance(target_sensitivity, bool) or not 0.0 < float(target_sensitivity) <= 1.0:
        raise EvaluationError(f"target_sensitivity: out of range. Expected a number in (0, 1], got "
                              f"{target_sensitivity!r}. Pass e.g. 0.95.")
    p_scores = np.sort(s[pos])[::-1]
    if p_scores.size == 0:
        raise EvaluationError("choose_threshold: no positive samples. Expected at least one sample of the "
                              "screening class, got none. Choose the threshold on data that contains it.")
    # The epsilon keeps 0.95 * 20 = 19.000000000000004 from asking for 20.
    k = max(1, math.ceil(float(target_sensitivity) * p_scores.size - 1e-9))
    return float(p_scores[k - 1])


def binary_metrics_at(scores, positives, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV (RATE dicts, Wilson 95%) of
    flagging ``score >= threshold``, with the counts ``tp fp tn fn`` and
    ``flagged``."""
    s, pos = _as_binary(scores, positives)
    flag = s >= float(threshold)
    tp = int((flag & pos).sum())
    fp = int((flag & ~pos).sum())
    fn = int((~flag & pos).sum())
    tn = int((~flag & ~pos).sum())
    return {"threshold": float(threshold), "flagged": tp + fp, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": proportion(tp, tp + fn), "specificity": proportion(tn, tn + fp),
            "ppv": proportion(tp, tp + fp), "npv": proportion(tn, tn + fn)}


# ----------------------------------------------------------------- evaluation
def check_predictions(y_true, proba, classes):
    """Checked inputs of the metrics: ``(y int64 (N,), p float64 (N, C) clipped to [0, 1], class
    names as str)``. EvaluationError, saying what to pass, for any other shape, label or value."""
    classes = [str(c) for c in classes]
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    n_cls = len(classes)
    if n_cls < 2:
        raise EvaluationError(f"classes: too few. Expected at least 2 class names, got {classes}. "
                              "Pass the model's class list.")
    if p.ndim != 2 or p.shape[1] != n_cls:
        raise EvaluationError(f"proba: wrong shape. Expected (N, {n_cls}), one column per class, got "
                              f"{p.shape}. For a sigmoid output p pass np.column_stack([1 - p, p]).")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise EvaluationError(f"y_true: wrong shape. Expected ({p.shape[0]},), one label per row of proba, "
                              f"got {y.shape}. Pass one label per prediction.")
    if y.size == 0:
        raise EvaluationError("y_true: empty. Expected at least one prediction, got 0. "
                              "Evaluate on a non-empty set.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_cls:
        raise EvaluationError(f"y_true: invalid labels. Expected integers in [0, {n_cls}), got dtype "
                              f"{y.dtype} with values {y.min()}..{y.max()}. Map class names to their index.")
    if not np.isfinite(p).all() or p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise EvaluationError("proba: not probabilities. Expected finite values in [0, 1], got values in "
                              f"[{np.nanmin(p):.4g}, {np.nanmax(p):.4g}]. Apply softmax/sigmoid to the logits.")
    return y.astype(np.int64), np.clip(p, 0.0, 1.0), classes


def _core(y, p, classes, n_boot, seed, screening) -> dict:
    """Metrics shared by the whole set and each group."""
    n_cls = len(classes)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, n_cls)
    total = int(cm.sum())
    per_class, sens, aucs = {}, [], []
    for c, name in enumerate(classes):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = total - tp - fn - fp
        pos = y == c
        auc = roc_auc(p[:, c], pos)
        lo, hi = bootstrap_auc_ci(p[:, c], pos, n_boot=n_boot, seed=seed)
        per_class[name] = {"support": tp + fn,
                           "sensitivity": proportion(tp, tp + fn), "specificity": proportion(tn, tn + fp),
                           "ppv": proportion(tp, tp + fp), "npv": proportion(tn, tn + fn),
                           "auc": {"value": finite_or_none(auc), "ci": [finite_or_none(lo), finite_or_none(hi)]}}
        if tp + fn:
            sens.append(tp / (tp + fn))
        if math.isfinite(auc):
            aucs.append(auc)
    doc = {"n": total, "accuracy": proportion(int(np.trace(cm)), total),
           "balanced_accuracy": float(np.mean(sens)) if sens else None,
           "per_class": per_class, "macro_auc": float(np.mean(aucs)) if aucs else None,
           "confusion_matrix": cm.tolist()}
    if screening is not None:
        c, threshold = screening
        doc["screening"] = binary_metrics_at(p[:, c], y == c, threshold)
    else:
        doc["screening"] = None
    return doc


def evaluate_predictions(y_true, proba, classes, *, screening_class: str | None = None,
                         threshold: float | None = None, groups: dict[str, list] | None = None,
                         n_boot: int = 1000, seed: int = 0) -> dict:
    """All metrics of ``proba`` against ``y_true`` as one JSON-able dict (keys
    in the module docstring).

    ``screening_class`` names the class to screen for: its probability is the
    score, flagged when ``>= threshold``. Without ``threshold`` one is chosen
    on these data with :func:`choose_threshold` for :data:`TARGET_SENSITIVITY`
    (``threshold_chosen_here`` says so; its sensitivity here is then
    optimistic). ``groups`` maps a name to one value per sample (e.g.
    ``{"source": [...], "view": [...]}``); each group value gets the metrics of
    its samples, screened at the same threshold. None values are grouped as
    ``"(unknown)"``; values become strings (JSON keys).
    """
    y, p, classes = check_predictions(y_true, proba, classes)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise EvaluationError(f"n_boot: invalid. Expected a whole number >= 0, got {n_boot!r}. Pass e.g. 1000.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EvaluationError(f"seed: invalid. Expected a whole number >= 0 (a NumPy seed), got {seed!r}. "
                              "Pass e.g. 0.")
    screening, screen_doc = _screening_rule(y, p, classes, screening_class, threshold, TARGET_SENSITIVITY)
    doc = {"n": int(y.size), "classes": classes}
    core = _core(y, p, classes, n_boot, seed, screening)
    doc.update({k: core[k] for k in ("accuracy", "balanced_accuracy", "per_class", "macro_auc",
                                     "confusion_matrix")})
    ece, bins = calibration(y, p)
    doc["ece"] = finite_or_none(ece)
    doc["reliability"] = bins
    doc["screening"] = None if screening is None else {**screen_doc, **core["screening"],
                                                       "threshold": screening[1]}
    doc["by_group"] = _by_group(groups, y, p, classes, n_boot, seed, screening)
    doc["bootstrap"] = {"n_boot": int(n_boot), "seed": int(seed), "level": 0.95}
    return doc


def _screening_rule(y, p, classes, screening_class, threshold, target_sensitivity):
    """``((class index, threshold), the document's screening keys)`` of
    :func:`evaluate_predictions`; ``(None, None)`` without a screening class.
    The threshold is chosen here on ``p`` when none is given."""
    if screening_class is None:
        if threshold is not None:
            raise EvaluationError(f"threshold: given without a screening class. Expected screening_class to "
                                  f"be one of {classes}, got None. Name the class the threshold screens for.")
        return None, None
    if screening_class not in classes:
        raise EvaluationError(f"screening_class: unknown class. Expected one of {classes}, got "
                              f"{screening_class!r}. Use a class name of the model.")
    c = classes.index(screening_class)
    chosen = threshold is None
    if chosen:
        threshold = choose_threshold(p[:, c], y == c, target_sensitivity)
    elif finite_or_none(threshold) is None:
        raise EvaluationError(f"threshold: not a finite number. Expected a probability, got {threshold!r}. "
                              "Pass the threshold stored with the model.")
    screen_doc = {"class": screening_class, "threshold": float(threshold), "threshold_chosen_here": chosen,
                  "target_sensitivity": float(target_sensitivity) if chosen else None}
    return (c, float(threshold)), screen_doc


def _by_group(groups, y, p, classes, n_boot, seed, screening) -> dict:
    """``by_group`` of :func:`evaluate_predictions`: the metrics of each group value's samples."""
    by_group: dict = {}
    for gname, values in (groups or {}).items():
        values = list(values)
        if len(values) != y.size:
            raise EvaluationError(f"groups[{gname!r}]: wrong length. Expected one value per sample ({y.size}), "
                                  f"got {len(values)}. Pass the group value of every prediction, in order.")
        keys = np.array([UNKNOWN if v is None else str(v) for v in values], dtype=object)
        by_group[str(gname)] = {}
        for key in sorted(set(keys.tolist())):
            mask = keys == key
            by_group[str(gname)][key] = _core(y[mask], p[mask], classes, n_boot, seed, screening)
    return by_group
