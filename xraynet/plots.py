"""PNG charts for training and evaluation: ROC curves, a reliability diagram
and the training history, drawn with matplotlib.

Each writer draws an 800x500 pixel figure (axes, ticks, grid, legend) and
writes it through :func:`xraynet.atomic.atomic_open` (temporary file, fsync,
``os.replace``), so a reader never sees half a PNG and a failed write leaves
the old chart intact. Missing or non-finite values are gaps in a line, never
an error, so a diverged run (NaN loss) or an undefined AUC still gets its
chart.

Figures are built as ``matplotlib.figure.Figure`` on an Agg canvas, never
through ``pyplot``: no global figure registry, no GUI backend chosen behind
the caller's back, nothing to close afterwards. matplotlib is imported inside
the writers so that ``import xraynet`` (and the screening CLI) stays fast.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SIZE = (800, 500)   # pixels
DPI = 100
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GRID = "#E5E5E5"
AXIS = "#333333"
MUTED = "#888888"
BAR = "#9ECAE9"     # reliability bars: a light tint of PALETTE[0]
LINE_WIDTH = 2.2    # points; about 3 pixels at DPI 100
UNIT_TICKS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _finite(v) -> float:
    """v as a float, NaN for None, non-numbers and infinities."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _finite_array(values) -> np.ndarray:
    """1-D float64 copy of ``values`` with every non-finite or non-numeric entry NaN."""
    try:
        a = np.array(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        a = np.array([_finite(v) for v in values], dtype=np.float64)
    a[~np.isfinite(a)] = np.nan
    return a


# ------------------------------------------------------------ figure plumbing
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE[0] / DPI, SIZE[1] / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig, left, top, right, bottom):
    """Axes whose plotting rectangle is the pixel box (left, top, right, bottom),
    counted from the top-left corner of the figure."""
    w, h = SIZE
    return fig.add_axes((left / w, 1 - bottom / h, (right - left) / w, (bottom - top) / h))


def _style(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=12, color=AXIS)
    ax.set_xlabel(xlabel, fontsize=10, color=AXIS)
    ax.set_ylabel(ylabel, fontsize=10, color=AXIS)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for spine in ax.spines.values():
        spine.set_color(AXIS)
    ax.tick_params(colors=AXIS, labelsize=9)


def _unit_square(ax, **labels) -> None:
    """[0, 1] x [0, 1] axes with ticks every 0.2 (ROC and reliability)."""
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(UNIT_TICKS)
    ax.set_yticks(UNIT_TICKS)
    _style(ax, **labels)


def _message(ax, text: str) -> None:
    """Say in the middle of empty axes why they are empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color=MUTED,
            bbox={"facecolor": "white", "edgecolor": "none"}, zorder=6)


def _line(ax, xs, ys, color: str, *, label: str, markers: bool = False) -> None:
    """Line through the finite points; NaNs break it. Isolated points (and
    every point with ``markers``) get a dot so that they stay visible.
    ``clip_on=False`` and a z-order above the frame: a curve that runs along
    an edge of the axes (a perfect ROC) is drawn whole, not half hidden."""
    xs, ys = _finite_array(xs), _finite_array(ys)
    ax.plot(xs, ys, color=color, linewidth=LINE_WIDTH, label=label, marker="o" if markers else None,
            markersize=5, clip_on=False, zorder=3)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    lone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    if lone.any() and not markers:
        ax.plot(xs[lone], ys[lone], "o", color=color, markersize=5, clip_on=False, zorder=3)


def _save(fig, path) -> Path:
    from .atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, facecolor="white")
    return Path(path)


# ----------------------------------------------------------------- the charts
def write_roc_png(path, curves: dict) -> Path:
    """ROC curves, one per entry ``label: (fpr, tpr, auc)`` (as from
    :func:`xraynet.metrics.roc_curve` and ``roc_auc``), with the chance
    diagonal; the legend gives each AUC ("n/a" when None or NaN).

    Writes an 800x500 PNG at ``path`` (folders created as needed) and
    returns ``path`` as a Path; an ``OSError`` of the write propagates."""
    fig = _figure()
    ax = _axes(fig, 90, 50, 470, 430)
    _unit_square(ax, title="ROC curves (one vs rest)", xlabel="false positive rate (1 - specificity)",
                 ylabel="true positive rate (sensitivity)")
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        a = _finite(auc)
        _line(ax, fpr, tpr, PALETTE[i % len(PALETTE)], label=f"{label}: AUC {'n/a' if math.isnan(a) else f'{a:.3f}'}")
    if not curves:
        _message(ax, "no curves")
    ax.plot([0, 1], [0, 1], color=MUTED, linewidth=1, linestyle="--", label="chance")
    fig.legend(*ax.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(500 / SIZE[0], 1 - 50 / SIZE[1]),
               frameon=False, fontsize=10)
    return _save(fig, path)


def _reliability_bars(ax, reliability_bins: list[dict]) -> bool:
    """Draw each non-empty bin: accuracy bar, its count above it, a dot at its
    mean confidence. Returns whether any bin was drawn."""
    drawn = False
    for b in reliability_bins:
        lo, hi = _finite(b.get("lo")), _finite(b.get("hi"))
        acc, conf = _finite(b.get("accuracy")), _finite(b.get("confidence"))
        if math.isnan(lo) or math.isnan(hi) or math.isnan(acc) or not b.get("n"):
            continue
        drawn = True
        ax.bar(lo, acc, width=hi - lo, align="edge", color=BAR, edgecolor=PALETTE[0], linewidth=1, zorder=2)
        # The count sits above the bar, or just inside its top when a bar reaches the frame.
        top = acc > 0.92
        ax.text((lo + hi) / 2, acc - 0.025 if top else acc + 0.01, str(int(b["n"])), ha="center",
                va="top" if top else "bottom", fontsize=8, color=MUTED, zorder=5)
        if not math.isnan(conf):
            ax.plot([conf], [acc], "o", color=PALETTE[3], markersize=6, zorder=4)
    return drawn


def write_reliability_png(path, reliability_bins: list[dict], ece: float | None = None) -> Path:
    """Reliability diagram from :func:`xraynet.metrics.calibration` bins
    (``lo``, ``hi``, ``n``, ``confidence``, ``accuracy``): a bar of accuracy
    per non-empty bin, a dot at its mean confidence, the diagonal of perfect
    calibration, each bin's count above its bar, and the ECE when finite.

    Writes an 800x500 PNG at ``path`` and returns it as a Path."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _figure()
    ax = _axes(fig, 90, 50, 470, 430)
    _unit_square(ax, title="Reliability (top-class confidence)", xlabel="confidence", ylabel="accuracy")
    if not _reliability_bars(ax, reliability_bins):
        _message(ax, "no predictions")
    ax.plot([0, 1], [0, 1], color=MUTED, linewidth=1.5, linestyle="--", zorder=3)
    handles = [Patch(facecolor=BAR, edgecolor=PALETTE[0]),
               Line2D([], [], color=PALETTE[3], marker="o", linestyle="none", markersize=6),
               Line2D([], [], color=MUTED, linewidth=1.5, linestyle="--")]
    labels = ["accuracy per bin (n above)", "mean confidence of bin", "perfect calibration"]
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(500 / SIZE[0], 1 - 50 / SIZE[1]),
               frameon=False, fontsize=10)
    e = _finite(ece)
    if not math.isnan(e):
        fig.text(510 / SIZE[0], 1 - 160 / SIZE[1], f"ECE {e:.3f}", fontsize=12, color=AXIS, va="top")
    return _save(fig, path)


def _series(history, key) -> list[float]:
    return [_finite(h.get(key)) if isinstance(h, dict) else math.nan for h in history]


def _history_panel(ax, epochs: list[float], series, *, title: str, ylabel: str, ylim=None) -> None:
    """One history panel: ``series`` is ``[(label, values, colour)]``, one
    value per epoch; the legend goes below the axes."""
    from matplotlib.ticker import MaxNLocator

    finite_x = [e for e in epochs if not math.isnan(e)]
    xlo, xhi = (min(finite_x), max(finite_x)) if finite_x else (1.0, 1.0)
    if xhi - xlo < 1:
        xlo, xhi = xlo - 1, xhi + 1
    if ylim is None:
        vals = [v for _, ys, _ in series for v in ys if not math.isnan(v)]
        hi = max(vals) if vals else 1.0
        lo = min(0.0, min(vals)) if vals else 0.0
        ylim = (lo, hi * 1.05 if hi > lo else lo + 1.0)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(*ylim)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    _style(ax, title=title, xlabel="epoch", ylabel=ylabel)
    drawn = False
    for label, ys, color in series:
        drawn = drawn or any(not math.isnan(v) for v in ys)
        _line(ax, epochs, ys, color, label=label, markers=len(ys) <= 30)
    if not drawn:
        _message(ax, "no epochs recorded" if not epochs else "no finite values")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(series), 2), frameon=False,
              fontsize=9, handlelength=1.6, columnspacing=1.0)


def write_history_png(path, history: list[dict]) -> Path:
    """Training history, one dict per epoch with keys ``epoch``,
    ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy``,
    ``val_auc``: loss on the left, validation accuracy, balanced accuracy and
    AUC (0..1) on the right. Missing keys, None and NaN leave gaps; an empty
    history gives empty axes that say so.

    Writes an 800x500 PNG at ``path`` and returns it as a Path."""
    history = list(history or [])
    epochs = [_finite(h.get("epoch", i + 1)) if isinstance(h, dict) else math.nan for i, h in enumerate(history)]
    fig = _figure()
    _history_panel(_axes(fig, 80, 40, 370, 380), epochs,
                   [("train loss", _series(history, "train_loss"), PALETTE[0]),
                    ("val loss", _series(history, "val_loss"), PALETTE[1])],
                   title="Loss", ylabel="loss")
    _history_panel(_axes(fig, 490, 40, 780, 380), epochs,
                   [("val accuracy", _series(history, "val_accuracy"), PALETTE[2]),
                    ("val balanced acc.", _series(history, "val_balanced_accuracy"), PALETTE[3]),
                    ("val AUC", _series(history, "val_auc"), PALETTE[4])],
                   title="Validation", ylabel="score", ylim=(0.0, 1.0))
    return _save(fig, path)
