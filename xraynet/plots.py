"""PNG charts for training and evaluation: ROC curves, a reliability diagram
and the training history, drawn with Pillow's ImageDraw alone (no plotting
library at run time).

Each writer draws an 800x500 image with axes, tick labels, a legend and the
default Pillow font, and writes it atomically: a temporary file in the target
folder, then ``os.replace``, so a reader never sees half a PNG. Missing or
non-finite values are gaps in a line, never an error, so a diverged run (NaN
loss) or an undefined AUC still gets its chart.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = (800, 500)
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GRID = "#E5E5E5"
AXIS = "#333333"
MUTED = "#888888"


@lru_cache(maxsize=8)
def _font(size: int):
    # Pillow >= 10.1 has a scalable default font when FreeType is present; the
    # old fixed bitmap font is the fallback (smaller, still legible).
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text(draw, xy, s, *, size=13, fill=AXIS, anchor="la"):
    """Draw ``s`` with ``anchor`` = horizontal (l, m, r) + vertical (a top,
    m middle, b bottom) computed from the text box, which works for bitmap
    fonts too (Pillow's own anchors need FreeType)."""
    font = _font(size)
    l, t, r, b = draw.textbbox((0, 0), s, font=font)
    x, y = xy
    x -= {"l": l, "m": (l + r) / 2, "r": r}[anchor[0]]
    y -= {"a": t, "m": (t + b) / 2, "b": b}[anchor[1]]
    draw.text((round(x), round(y)), s, font=font, fill=fill)
    return r - l, b - t


def _vertical_text(img, xy, s, *, size=13, fill=AXIS):
    """Text rotated 90 degrees counter-clockwise, centred on ``xy``."""
    font = _font(size)
    probe = ImageDraw.Draw(img)
    l, t, r, b = probe.textbbox((0, 0), s, font=font)
    tile = Image.new("RGBA", (r - l + 4, b - t + 4), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((2 - l, 2 - t), s, font=font, fill=fill)
    tile = tile.rotate(90, expand=True)
    img.paste(tile, (round(xy[0] - tile.width / 2), round(xy[1] - tile.height / 2)), tile)


def _finite(v) -> float:
    """v as a float, NaN for None, non-numbers and infinities."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(first + k * step)
        k += 1
    return ticks


def _fmt(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"{v:.{decimals}f}"


class _Axes:
    """A plotting rectangle with data limits: maps data to pixels and draws
    frame, grid, ticks, lines and legends."""

    def __init__(self, img, box, xlim, ylim):
        self.img, self.draw = img, ImageDraw.Draw(img)
        self.x0, self.y0, self.x1, self.y1 = box
        self.xlim, self.ylim = xlim, ylim

    def px(self, x, y):
        (a, b), (c, d) = self.xlim, self.ylim
        return (self.x0 + (x - a) / (b - a) * (self.x1 - self.x0),
                self.y1 - (y - c) / (d - c) * (self.y1 - self.y0))

    def frame(self, *, title, xlabel, ylabel, xticks, yticks, integer_x=False):
        d = self.draw
        xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
        ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
        for t in xticks:
            x, _ = self.px(t, self.ylim[0])
            d.line([(x, self.y0), (x, self.y1)], fill=GRID)
            d.line([(x, self.y1), (x, self.y1 + 5)], fill=AXIS)
            _text(d, (x, self.y1 + 8), str(int(round(t))) if integer_x else _fmt(t, xstep), anchor="ma")
        for t in yticks:
            _, y = self.px(self.xlim[0], t)
            d.line([(self.x0, y), (self.x1, y)], fill=GRID)
            d.line([(self.x0 - 5, y), (self.x0, y)], fill=AXIS)
            _text(d, (self.x0 - 8, y), _fmt(t, ystep), anchor="rm")
        d.rectangle([self.x0, self.y0, self.x1, self.y1], outline=AXIS)
        _text(d, ((self.x0 + self.x1) / 2, self.y0 - 10), title, size=15, anchor="mb")
        _text(d, ((self.x0 + self.x1) / 2, self.y1 + 28), xlabel, anchor="ma")
        _vertical_text(self.img, (self.x0 - 52, (self.y0 + self.y1) / 2), ylabel)

    def line(self, xs, ys, color, *, width=3, dashed=False, markers=False):
        """Polyline through the finite points; NaNs break it. Isolated points
        (and every point with ``markers``) get a dot so they stay visible."""
        xs = [_finite(v) for v in xs]
        ys = [_finite(v) for v in ys]
        runs, run = [], []
        for x, y in zip(xs, ys):
            if math.isnan(x) or math.isnan(y):
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(self.px(x, y))
        if run:
            runs.append(run)
        for pts in runs:
            if len(pts) > 1:
                if dashed:
                    self._dashed(pts, color, width)
                else:
                    self.draw.line(pts, fill=color, width=width, joint="curve")
            if markers or len(pts) == 1:
                for x, y in pts:
                    r = width + 1
                    self.draw.ellipse([x - r, y - r, x + r, y + r], fill=color)

    def _dashed(self, pts, color, width, dash=8, gap=6):
        for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
            length = math.hypot(xb - xa, yb - ya)
            pos = 0.0
            while pos < length:
                end = min(pos + dash, length)
                f0, f1 = pos / length, end / length
                self.draw.line([(xa + (xb - xa) * f0, ya + (yb - ya) * f0),
                                (xa + (xb - xa) * f1, ya + (yb - ya) * f1)], fill=color, width=width)
                pos += dash + gap

    def message(self, s):
        _text(self.draw, ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2), s, size=15, fill=MUTED, anchor="mm")


def _legend(draw, xy, entries, *, max_width=None, row_height=22):
    """Entries ``(label, colour, style)``, style "line", "dashed" or "dot",
    stacked down from ``xy``, or packed in rows when ``max_width`` is given."""
    x0, y0 = xy
    x, y = x0, y0
    for label, color, style in entries:
        w = 30 + draw.textbbox((0, 0), label, font=_font(13))[2] + 18
        if max_width is not None and x > x0 and x + w > x0 + max_width:
            x, y = x0, y + row_height
        if style == "dashed":
            for s in (0, 14):
                draw.line([(x + s, y + 8), (x + s + 9, y + 8)], fill=color, width=3)
        elif style == "dot":
            draw.ellipse([x + 8, y + 4, x + 16, y + 12], fill=color)
        else:
            draw.line([(x, y + 8), (x + 24, y + 8)], fill=color, width=3)
        _text(draw, (x + 30, y + 8), label, anchor="lm")
        if max_width is None:
            y += row_height
        else:
            x += w


def _write_atomic(img: Image.Image, path) -> Path:
    from .atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        img.save(fh, format="PNG")
    return Path(path)


def _canvas():
    return Image.new("RGB", SIZE, "white")


# ----------------------------------------------------------------- the charts
def write_roc_png(path, curves: dict) -> Path:
    """ROC curves, one per entry ``label: (fpr, tpr, auc)`` (as from
    :func:`xraynet.metrics.roc_curve` and ``roc_auc``), with the chance
    diagonal; the legend gives each AUC ("n/a" when None or NaN)."""
    img = _canvas()
    ax = _Axes(img, (90, 50, 470, 430), (0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ax.frame(title="ROC curves (one vs rest)", xlabel="false positive rate (1 - specificity)",
             ylabel="true positive rate (sensitivity)", xticks=ticks, yticks=ticks)
    ax.line([0, 1], [0, 1], MUTED, width=1, dashed=True)
    entries = []
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        ax.line(np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float), color)
        a = _finite(auc)
        entries.append((f"{label}: AUC {'n/a' if math.isnan(a) else f'{a:.3f}'}", color, "line"))
    if not curves:
        ax.message("no curves")
    entries.append(("chance", MUTED, "dashed"))
    _legend(ax.draw, (500, 60), entries)
    return _write_atomic(img, path)


def write_reliability_png(path, reliability_bins: list[dict], ece: float | None = None) -> Path:
    """Reliability diagram from :func:`xraynet.metrics.calibration` bins
    (``lo``, ``hi``, ``n``, ``confidence``, ``accuracy``): a bar of accuracy
    per non-empty bin, a dot at its mean confidence, the diagonal of perfect
    calibration, and each bin's count above its bar."""
    img = _canvas()
    ax = _Axes(img, (90, 50, 470, 430), (0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ax.frame(title="Reliability (top-class confidence)", xlabel="confidence", ylabel="accuracy",
             xticks=ticks, yticks=ticks)
    d = ax.draw
    any_bin = False
    for b in reliability_bins:
        lo, hi, acc, conf = _finite(b.get("lo")), _finite(b.get("hi")), _finite(b.get("accuracy")), \
            _finite(b.get("confidence"))
        if math.isnan(lo) or math.isnan(hi) or math.isnan(acc) or not b.get("n"):
            continue
        any_bin = True
        xa, ya = ax.px(lo, acc)
        xb, yb = ax.px(hi, 0.0)
        d.rectangle([xa + 1, ya, xb - 1, yb], fill="#9ECAE9", outline=PALETTE[0])
        _text(d, ((xa + xb) / 2, ya - 3), str(int(b["n"])), size=11, fill=MUTED, anchor="mb")
        if not math.isnan(conf):
            cx, cy = ax.px(conf, acc)
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=PALETTE[3])
    ax.line([0, 1], [0, 1], MUTED, width=2, dashed=True)
    if not any_bin:
        ax.message("no predictions")
    entries = [("accuracy per bin (n above)", PALETTE[0], "line"), ("mean confidence of bin", PALETTE[3], "dot"),
               ("perfect calibration", MUTED, "dashed")]
    _legend(d, (500, 60), entries)
    e = _finite(ece)
    if not math.isnan(e):
        _text(d, (500, 60 + 22 * len(entries) + 12), f"ECE {e:.3f}", size=15)
    return _write_atomic(img, path)


def _series(history, key):
    return [_finite(h.get(key)) if isinstance(h, dict) else math.nan for h in history]


def _panel(img, box, epochs, series, *, title, ylabel, ylim=None):
    """One history panel: ``series`` is ``[(label, values, colour)]``."""
    finite_x = [e for e in epochs if not math.isnan(e)]
    xlo, xhi = (min(finite_x), max(finite_x)) if finite_x else (1.0, 1.0)
    if xhi - xlo < 1:
        xlo, xhi = xlo - 1, xhi + 1
    if ylim is None:
        vals = [v for _, ys, _ in series for v in ys if not math.isnan(v)]
        hi = max(vals) if vals else 1.0
        lo = min(0.0, min(vals)) if vals else 0.0
        ylim = (lo, hi * 1.05 if hi > lo else lo + 1.0)
    xt = nice_ticks(xlo, xhi, 6, integer=True)
    yt = nice_ticks(*ylim, 5)
    ax = _Axes(img, box, (xlo, xhi), ylim)
    ax.frame(title=title, xlabel="epoch", ylabel=ylabel, xticks=xt, yticks=yt, integer_x=True)
    drawn = False
    for _, ys, color in series:
        if any(not math.isnan(v) for v in ys):
            drawn = True
            ax.line(epochs, ys, color, markers=len(ys) <= 30)
    if not drawn:
        ax.message("no epochs recorded" if not epochs else "no finite values")
    _legend(ax.draw, (box[0] - 40, box[3] + 52), [(lab, c, "line") for lab, _, c in series],
            max_width=box[2] - box[0] + 40)


def write_history_png(path, history: list[dict]) -> Path:
    """Training history, one dict per epoch with keys ``epoch``,
    ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy``,
    ``val_auc``: loss on the left, validation accuracy, balanced accuracy and
    AUC (0..1) on the right. Missing keys, None and NaN leave gaps; an empty
    history gives empty axes that say so."""
    history = list(history or [])
    img = _canvas()
    epochs = [_finite(h.get("epoch", i + 1)) if isinstance(h, dict) else math.nan for i, h in enumerate(history)]
    _panel(img, (80, 40, 370, 380), epochs,
           [("train loss", _series(history, "train_loss"), PALETTE[0]),
            ("val loss", _series(history, "val_loss"), PALETTE[1])],
           title="Loss", ylabel="loss")
    _panel(img, (490, 40, 780, 380), epochs,
           [("val accuracy", _series(history, "val_accuracy"), PALETTE[2]),
            ("val balanced acc.", _series(history, "val_balanced_accuracy"), PALETTE[3]),
            ("val AUC", _series(history, "val_auc"), PALETTE[4])],
           title="Validation", ylabel="score", ylim=(0.0, 1.0))
    return _write_atomic(img, path)
