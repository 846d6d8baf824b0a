"""PNG charts: valid images of the expected size with the series actually
drawn, atomic writes, and no crash on NaN, missing or empty data."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageColor

from xraynet.metrics import calibration, roc_auc, roc_curve
from xraynet.plots import PALETTE, write_history_png, write_reliability_png, write_roc_png


def _open(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (800, 500)
        return np.asarray(im.convert("RGB"))


def _pixels_of(arr, colour: str) -> int:
    rgb = np.array(ImageColor.getrgb(colour))
    return int((np.abs(arr.astype(int) - rgb).sum(axis=2) <= 30).sum())


def _only(folder, name):
    assert sorted(os.listdir(folder)) == [name]   # no temporary files left behind


def _example():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3))
    logits[np.arange(200), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_roc_png(tmp_path):
    y, p = _example()
    curves = {}
    for c, name in enumerate(["covid", "normal", "pneumonia"]):
        fpr, tpr, _ = roc_curve(p[:, c], y == c)
        curves[name] = (fpr, tpr, roc_auc(p[:, c], y == c))
    curves["empty"] = (np.array([np.nan]), np.array([np.nan]), float("nan"))
    out = write_roc_png(tmp_path / "roc.png", curves)
    assert out == tmp_path / "roc.png"
    arr = _open(out)
    _only(tmp_path, "roc.png")
    for colour in PALETTE[:3]:   # each curve was drawn (a few hundred pixels at least)
        assert _pixels_of(arr, colour) > 300, colour
    assert _pixels_of(arr, "#FFFFFF") > 0.5 * 800 * 500


def test_reliability_png_with_empty_bins(tmp_path):
    y, p = _example()
    ece, bins = calibration(y, p)
    arr = _open(write_reliability_png(tmp_path / "rel.png", bins, ece=ece))
    assert _pixels_of(arr, "#9ECAE9") > 1000   # accuracy bars
    empty = [{"lo": i / 10, "hi": (i + 1) / 10, "n": 0, "confidence": None, "accuracy": None} for i in range(10)]
    arr2 = _open(write_reliability_png(tmp_path / "empty.png", empty, ece=None))
    assert _pixels_of(arr2[50:430, 90:470], "#9ECAE9") == 0   # no bar inside the axes (the legend has a swatch)
    assert sorted(os.listdir(tmp_path)) == ["empty.png", "rel.png"]


def _history(n, **overrides):
    h = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 1.2 / (i + 1), "val_accuracy": 0.5 + 0.03 * i,
          "val_balanced_accuracy": 0.45 + 0.03 * i, "val_auc": 0.6 + 0.03 * i} for i in range(n)]
    for i, changes in overrides.items():
        h[int(i)].update(changes)
    return h


def test_history_png(tmp_path):
    arr = _open(write_history_png(tmp_path / "h.png", _history(12)))
    _only(tmp_path, "h.png")
    for colour in PALETTE[:5]:   # train/val loss, accuracy, balanced accuracy, AUC
        assert _pixels_of(arr, colour) > 150, colour


@pytest.mark.parametrize("history", [
    [],
    _history(1),
    _history(5, **{"2": {"val_loss": float("nan"), "val_auc": None}, "3": {"train_loss": float("inf")}}),
    [{"epoch": 1}, {"epoch": 2, "val_accuracy": "n/a"}],
    [{"train_loss": float("nan"), "val_loss": float("nan")}] * 3,
])
def test_history_png_survives_missing_values(tmp_path, history):
    arr = _open(write_history_png(tmp_path / "h.png", history))
    _only(tmp_path, "h.png")
    if len(history) == 1:   # a single epoch is still visible, as dots
        assert _pixels_of(arr, PALETTE[0]) > 20


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "h.png"
    write_history_png(target, _history(3))
    before = target.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    import xraynet.atomic

    monkeypatch.setattr(xraynet.atomic.os, "replace", boom)  # plots write through xraynet.atomic
    with pytest.raises(OSError, match="disk full"):
        write_history_png(target, _history(8))
    assert target.read_bytes() == before   # the old chart is intact
    _only(tmp_path, "h.png")               # and the temporary file is gone


def test_creates_missing_folder_and_replaces_files(tmp_path):
    target = tmp_path / "reports" / "run1" / "roc.png"
    write_roc_png(target, {})
    write_roc_png(target, {"a": ([0, 0, 1], [0, 1, 1], 1.0)})
    _only(target.parent, "roc.png")
    assert _pixels_of(_open(target), PALETTE[0]) > 300



def test_matplotlib_is_loaded_only_to_draw_and_never_pyplot(tmp_path):
    # `import xraynet` stays fast, and the charts touch no global pyplot state (figures, backend).
    import subprocess
    import sys

    code = ("import sys, xraynet, xraynet.plots, xraynet.training, xraynet.evaluate\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
            f"xraynet.plots.write_history_png({str(tmp_path / 'h.png')!r}, [])\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    _open(tmp_path / "h.png")
