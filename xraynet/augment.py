"""On-the-fly augmentation of preprocessed training images.

Each image of a batch gets its own small random affine transform (rotation,
shift, zoom) and a brightness/contrast change, drawn from a seeded NumPy
generator so a training run is reproducible and a resumed run repeats the
same draws. No horizontal flip by default: a chest film is not symmetric
(heart on the left), and a flipped film is not a film the model will see.

Images are (N, H, W) float32 after normalisation (mean about 0); pixels that
the transform brings in from outside the frame are filled with each image's
own minimum, the value of padding and film border.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import SpecError


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transform; zero turns a part off."""

    rotation_deg: float = 7.0     # uniform in [-r, r]
    shift: float = 0.05           # fraction of the side, uniform in [-s, s] per axis
    zoom: float = 0.10            # scale uniform in [1 - z, 1 + z]
    brightness: float = 0.10      # additive, in units of the image's std (about 1 after normalisation)
    contrast: float = 0.10        # multiplicative, uniform in [1 - c, 1 + c]
    hflip: bool = False

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name != "hflip" and not (isinstance(value, (int, float)) and 0 <= value < (180 if name == "rotation_deg" else 1)):
                raise SpecError(f"augmentation {name}: out of range. Expected a number in [0, "
                                f"{180 if name == 'rotation_deg' else 1}), got {value!r}. Pick a smaller value.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def off(cls) -> "Augmentation":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, False)


def augment_batch(x: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Return an augmented copy of ``x`` (N, H, W), bilinear resampling."""
    n, h, w = x.shape
    out = np.empty_like(x)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    for i in range(n):
        angle = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
        scale = rng.uniform(1 - aug.zoom, 1 + aug.zoom)
        ty, tx = rng.uniform(-aug.shift, aug.shift, size=2) * (h, w)
        gain = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
        bias = rng.uniform(-aug.brightness, aug.brightness)
        flip = aug.hflip and rng.random() < 0.5
        # Inverse map: for each output pixel, where to read in the input.
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = yy - cy - ty, xx - cx - tx
        sy = (c * dy + s * dx) / scale + cy
        sx = (-s * dy + c * dx) / scale + cx
        if flip:
            sx = (w - 1) - sx
        img = x[i]
        fill = float(img.min())
        out[i] = gain * _bilinear(img, sy, sx, fill) + bias
    return out


def _bilinear(img, sy, sx, fill):
    h, w = img.shape
    tol = 1e-6  # the identity map must keep the last row and column
    inside = (sy >= -tol) & (sy <= h - 1 + tol) & (sx >= -tol) & (sx <= w - 1 + tol)
    y0 = np.clip(np.floor(sy), 0, h - 2).astype(np.int64)
    x0 = np.clip(np.floor(sx), 0, w - 2).astype(np.int64)
    fy, fx = np.clip(sy - y0, 0, 1), np.clip(sx - x0, 0, 1)
    y0c, x0c = y0, x0
    a, b = img[y0c, x0c], img[y0c, x0c + 1]
    c, d = img[y0c + 1, x0c], img[y0c + 1, x0c + 1]
    v = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return np.where(inside, v, fill).astype(img.dtype)
