"""The checks behind the warning codes of a decoded film (:data:`xraynet.imaging.WARNING_CODES`):
``tiny``, ``extreme_aspect``, ``nearly_uniform`` and ``likely_inverted``.

:func:`image_warnings` runs them on the pixels :func:`xraynet.imaging.decode`
made (full size, or reduced: the size checks take the stored size), without
any full-size float64 temporary.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .decoders import resize_float

__all__ = ["image_warnings", "TINY_SIDE", "MAX_ASPECT", "NEARLY_UNIFORM_STD", "INVERTED_MARGIN"]

TINY_SIDE = 128
MAX_ASPECT = 2.5
NEARLY_UNIFORM_STD = 0.02
# "likely_inverted" compares, on a 64x64 thumbnail stretched to its own
# [min, max], the mean of two lateral lung boxes with a central
# (spine/mediastinum) box. On the 4,398 films of ../shared/data/cxr, lungs
# minus mediastinum had median -0.16 and exceeded 0.1 for 23 films (0.5%);
# on the same films inverted it exceeded 0.1 for 75% of them (without the
# stretch: 18 films and 65%; benchmarks/inverted_check.py). The
# check is meant to be conservative: a warning, never a refusal.
INVERTED_MARGIN = 0.1

# The thumbnail of the polarity check is made with the filter xraynet.imaging resizes with.
_THUMBNAIL_RESAMPLE = Image.Resampling.BILINEAR


def _block_mean(pixels: np.ndarray, target: int = 256, block_elements: int = 1 << 20) -> np.ndarray:
    """Shrink a large image by whole k x k block means (k = short side // ``target``)
    a band of rows at a time, so that thumbnails of a big film need no full-size copy
    (Pillow's fromarray would make one). Images under 2 * target come back as they are."""
    h, w = pixels.shape
    k = min(h, w) // target
    if k < 2:
        return pixels
    hh, ww = h // k * k, w // k * k
    small = np.empty((hh // k, ww // k), np.float32)
    step = max(k, block_elements // ww // k * k)
    for r in range(0, hh, step):
        band = pixels[r:min(r + step, hh), :ww]
        small[r // k:(r + band.shape[0]) // k] = band.reshape(band.shape[0] // k, k, ww // k, k).mean(axis=(1, 3))
    return small


def _inverted_score(pixels: np.ndarray) -> float:
    """Lung boxes minus mediastinum box on a 64x64 thumbnail (see INVERTED_MARGIN),
    with the thumbnail stretched to its own [min, max]: the film's polarity does not
    depend on how much of the stored range its values happen to use."""
    a = resize_float(_block_mean(pixels), (64, 64), _THUMBNAIL_RESAMPLE)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return 0.0
    a = (a - lo) / (hi - lo)
    mediastinum = a[19:45, 26:38].mean()
    lungs = (a[19:45, 10:22].mean() + a[19:45, 42:54].mean()) / 2.0
    return float(lungs - mediastinum)


def _pixel_std(pixels: np.ndarray, rows_per_chunk: int = 256) -> float:
    """Standard deviation of a float32 image, accumulated in float64 a block of
    rows at a time, so that no full-size float64 temporary is ever made."""
    n = pixels.size
    mean = sum(float(pixels[i:i + rows_per_chunk].sum(dtype=np.float64))
               for i in range(0, pixels.shape[0], rows_per_chunk)) / n
    ss = 0.0
    for i in range(0, pixels.shape[0], rows_per_chunk):
        d = pixels[i:i + rows_per_chunk] - np.float32(mean)
        ss += float(np.dot(d.ravel(), d.ravel()))
    return (ss / n) ** 0.5


def image_warnings(pixels: np.ndarray, width: int, height: int) -> list[str]:
    """The codes of WARNING_CODES that the pixels (float32, possibly reduced) and the
    stored size ``width`` x ``height`` call for."""
    w, h = width, height
    out = []
    if min(h, w) < TINY_SIDE:
        out.append("tiny")
    if w / h > MAX_ASPECT or w / h < 1.0 / MAX_ASPECT:
        out.append("extreme_aspect")
    std = _pixel_std(pixels)
    if std < NEARLY_UNIFORM_STD:
        out.append("nearly_uniform")
    # Low contrast does not hide polarity: only a constant image has no anatomy to judge.
    if std > 0.0 and _inverted_score(pixels) > INVERTED_MARGIN:
        out.append("likely_inverted")
    return out
