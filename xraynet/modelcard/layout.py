"""What every part of the model card shares: its version and keys, the
bootstrap settings of its intervals, the wording repeated in it, and the
clock and interval formats (layout in :mod:`xraynet.modelcard`)."""
from __future__ import annotations

import datetime

CARD_VERSION = 1
CARD_KEY = "model_card"
#: The keys every card has (and ``xraynet info --json`` prints).
CARD_KEYS = ("card_version", "classes", "training_data", "split", "preprocessing", "validation", "threshold",
             "training", "xraynet_version", "intended_use", "limits")
#: Bootstrap resamples and seed of the card's intervals: those of `xraynet evaluate`'s defaults, so the
#: card of a fresh model and `xraynet evaluate MODEL DATA --subset val` give the same figures.
N_BOOT = 1000
BOOT_SEED = 0
UNKNOWN = "(unknown)"
SIDES = ("train", "val", "all")

POOLED_NOTE = ("pooled over every validation film: mixes sources, so it flatters a model that recognises "
               "where a film comes from; read the within-source figures first")
WITHIN_NOTE = ("AUCs among films of one source only: the figures a model that recognises the source, not the "
               "disease, cannot earn")
NOT_A_DEVICE = ("A research tool, not a diagnostic device: it has not been cleared or validated for clinical "
                "use, and its output is not a diagnosis.")


def now_utc() -> str:
    """The current UTC time as ISO 8601 to the second (``2026-11-29T21:58:08Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_ci(value, ci, digits=3) -> str:
    """``0.880 (0.855-0.904)``: a value and its 95% interval; ``-`` for an undefined value."""
    if value is None:
        return "-"
    lo, hi = ci if ci else (None, None)
    return f"{value:.{digits}f}" + (f" ({lo:.{digits}f}-{hi:.{digits}f})" if lo is not None else "")


def threshold_text(value) -> str:
    """A screening threshold with as many significant digits as it takes to be true: at least 4,
    more until the printed number lies within 1% of the value's distance to 0 and to 1
    (0.4273, 0.99999982, 2.1e-07; never ``1`` for 0.9999998, which would flag nothing a
    probability below 1 reaches). ``-`` for None or a non-finite value."""
    import math

    if value is None or not math.isfinite(float(value)):
        return "-"
    v = float(value)
    room = 0.01 * min(abs(v), abs(1.0 - v))
    for digits in range(4, 18):
        text = f"{v:.{digits}g}"
        if abs(float(text) - v) <= room:
            return text
    return repr(v)
