"""Grad-CAM overlays as PNG files, for people to see where the model looked.

The map from :meth:`xraynet.model.Model.gradcam` (coarse, values in [0, 1])
is resized to the network's input image, coloured (dark blue through red to
yellow for the strongest evidence) and blended over the grayscale film;
pixels with no evidence keep the film unchanged. Written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_open

# Colour stops of the heat scale (value, RGB): transparent-ish blue to yellow.
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLOURS = np.array([[20, 40, 160], [40, 180, 200], [230, 60, 30], [255, 235, 60]], np.float64)


def colourise(cam: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the heat scale."""
    v = np.clip(cam, 0, 1)
    rgb = np.stack([np.interp(v, _STOPS, _COLOURS[:, k]) for k in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``cam`` (h, w) in [0, 1], resized to ``image`` (H, W), over the
    grayscale ``image`` (any range; shown min-max scaled). Returns (H, W, 3) uint8."""
    h, w = image.shape
    lo, hi = float(image.min()), float(image.max())
    gray = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    film = np.repeat((gray * 255)[..., None], 3, axis=-1)
    big = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    weight = (alpha * np.clip(big, 0, 1))[..., None]  # no evidence: the film shows through untouched
    return (film * (1 - weight) + colourise(big) * weight).astype(np.uint8)


def write_overlay_png(path, image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> Path:
    """Write the overlay of ``cam`` on ``image`` to ``path`` (temp file, then rename)."""
    with atomic_open(path, "wb") as fh:
        Image.fromarray(overlay(image, cam, alpha)).save(fh, format="PNG")
    return Path(path)
