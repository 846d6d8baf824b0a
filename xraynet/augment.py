"""On-the-fly augmentation of preprocessed training images.

Each image of a batch gets its own small random affine transform (rotation,
shift, zoom) and a brightness/contrast change, drawn from a seeded NumPy
generator so a training run is reproducible and a resumed run repeats the
same draws. No horizontal flip: a chest film is not symmetric (heart on the
left), and a flipped film is not a film the model will see.

Images are (N, H, W) float32 after normalisation (mean about 0). The
resampling is Pillow's bilinear affine transform on a 32-bit float ('F')
image, so no precision is lost to 8-bit pixels. Pixels that the transform
brings in from outside the frame are filled with each image's own minimum,
the value of padding and film border. Pillow treats a pixel as a unit
square, so the frame reaches half a pixel beyond the outer pixel centres; a
sample in that half-pixel band takes the edge value rather than the fill.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import SpecError


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transform; zero turns a part off."""

    rotation_deg: float = 7.0     # uniform in [-r, r]
    shift: float = 0.05           # fraction of the side, uniform in [-s, s] per axis
    zoom: float = 0.10            # scale uniform in [1 - z, 1 + z]
    brightness: float = 0.10      # additive, in units of the image's std (about 1 after normalisation)
    contrast: float = 0.10        # multiplicative, uniform in [1 - c, 1 + c]

    def __post_init__(self):
        for name, value in asdict(self).items():
            limit = 180 if name == "rotation_deg" else 1
            if not (isinstance(value, (int, float)) and 0 <= value < limit):
                raise SpecError(f"augmentation {name}: out of range. Expected a number in [0, "
                                f"{limit}), got {value!r}. Pick a smaller value.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def off(cls) -> "Augmentation":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)


def augment_batch(x: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Return an augmented copy of ``x`` (N, H, W) float32, bilinear resampling.

    Draws, per image and in this order: rotation angle, scale, shift (rows,
    columns), contrast gain, brightness bias -- five calls on ``rng``, so the
    same generator state gives the same batch."""
    n, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        angle = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
        scale = rng.uniform(1 - aug.zoom, 1 + aug.zoom)
        ty, tx = rng.uniform(-aug.shift, aug.shift, size=2) * (h, w)
        gain = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
        bias = rng.uniform(-aug.brightness, aug.brightness)
        img = x[i]
        out[i] = gain * _warp(img, angle, scale, ty, tx, fill=float(img.min())) + bias
    return out


def _warp(img: np.ndarray, angle: float, scale: float, ty: float, tx: float, *, fill: float) -> np.ndarray:
    """``img`` (H, W) rotated by ``angle`` (radians), scaled by ``scale`` about
    its centre, then shifted by ``(ty, tx)`` pixels; float32 (H, W)."""
    h, w = img.shape
    # Pillow wants the inverse map, output (x, y) -> input, in continuous
    # coordinates (pixel centres at k + 0.5, so the frame centre is (w/2, h/2)):
    # input = R(-angle) (output - centre - shift) / scale + centre.
    c, s = np.cos(angle) / scale, np.sin(angle) / scale
    ox, oy = w / 2 + tx, h / 2 + ty
    inverse = (c, -s, w / 2 - (c * ox - s * oy),
               s, c, h / 2 - (s * ox + c * oy))
    src = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))   # mode 'F'
    warped = src.transform((w, h), Image.Transform.AFFINE, inverse,
                           resample=Image.Resampling.BILINEAR, fillcolor=fill)
    return np.asarray(warped, dtype=np.float32)
