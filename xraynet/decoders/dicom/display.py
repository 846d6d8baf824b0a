"""The DICOM grayscale display pipeline (PS3.4 N.2.1) on stored monochrome
values: Modality LUT or rescale, VOI LUT or window, min-max to [0, 1], and
the polarity the file's last stage asks for (:func:`grayscale`)."""
from __future__ import annotations

import warnings

import numpy as np

from .. import COPY_AGAIN, image_error, short
from .header import element_text

_CHUNK_PIXELS = 1 << 20  # float64 working set of the non-LUT path: 8 MB per chunk


def displays_inverted(ds, photometric: str) -> bool:
    """Whether the grayscale pipeline's last stage inverts: True when the minimum
    output value is to be shown white.

    Rule: a Presentation LUT Shape (2050,0020) of IDENTITY or INVERSE decides on
    its own; without one (or with another value), MONOCHROME1 inverts and
    MONOCHROME2 does not.

    Sources: PS3.3 C.7.6.3.1.2 (MONOCHROME1: minimum shown white; MONOCHROME2:
    black); PS3.3 C.11.6.1.2 (INVERSE: P-Value = maximum - output; IDENTITY: the
    output is already P-Values, whose minimum is black, PS3.14); PS3.4 N.2.1.4
    (the Presentation LUT is the last stage; its output, P-Values, is what is
    displayed, and Note 1: the pipeline then overrides Photometric Interpretation).
    The image IODs that carry the shape make it restate the photometric
    interpretation, not add to it: INVERSE shall be used with MONOCHROME1,
    IDENTITY with MONOCHROME2 (PS3.3 C.8.11.3 DX Image Module, C.7.6.1 General
    Image Module), so MONOCHROME1 + INVERSE is one inversion, not two. Files that
    break that rule (MONOCHROME2 + INVERSE, MONOCHROME1 + IDENTITY) get what
    their last stage says, as a conforming display would show them."""
    shape = element_text(ds, "PresentationLUTShape")
    if shape in ("IDENTITY", "INVERSE"):
        return shape == "INVERSE"
    return photometric == "MONOCHROME1"


def _to_unit(values: np.ndarray, inverted: bool) -> np.ndarray:
    """float64 display values -> float32 in [0, 1] by their min and max, inverted
    if asked; non-finite values become black (before inversion), so does an image
    without contrast."""
    finite = np.isfinite(values)
    if not finite.any():
        out = np.zeros(values.shape)
    else:
        lo, hi = values[finite].min(), values[finite].max()
        out = np.where(finite, values, lo) - lo
        if hi > lo:
            out /= hi - lo
    if inverted:
        out = 1.0 - out
    return out.astype(np.float32)


def stretch(a: np.ndarray, inverted: bool) -> np.ndarray:
    """In place on float32 ``a``: its min and max to [0, 1], inverted if asked;
    non-finite values become black. Rounding: float32, within a few ulp of the
    float64 computation."""
    finite = np.isfinite(a)
    if not finite.all():
        np.copyto(a, np.float32(np.nan), where=~finite)
        lo = np.nanmin(a) if finite.any() else np.float32(0)
        np.copyto(a, lo, where=~finite)
    del finite
    lo, hi = a.min(), a.max()
    a -= lo
    if hi > lo:
        a /= hi - lo
    if inverted:
        np.subtract(np.float32(1), a, out=a)
    return a


def modality_values(values: np.ndarray, ds, path) -> np.ndarray:
    """Stage 1 (PS3.4 N.2.1.1, PS3.3 C.11.1): the Modality LUT Sequence or Rescale
    Slope/Intercept, through pydicom (float64 for a rescale)."""
    from pydicom.pixels import apply_modality_lut

    try:
        return apply_modality_lut(values, ds)
    except Exception as e:  # noqa: BLE001 -- a malformed Modality LUT Sequence
        raise image_error(path, f"its Modality LUT cannot be applied ({type(e).__name__}: {short(e)})",
                           "a Modality LUT or Rescale Slope/Intercept that fits the pixel data",
                           "a malformed one", COPY_AGAIN, "damaged") from None


def _window(center: float, width: float, function: str):
    """The window of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) or
    C.11.2.1.3.1 (SIGMOID) onto the output range [0, 1], as a float64 function.

    Written out rather than taken from pydicom, whose apply_windowing derives the
    output range from Rescale Slope/Intercept and so turns a window upside down
    when the slope is negative (PS3.3 C.11.1.1.2 allows any slope)."""
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError(f"Window Width {width:g} is not allowed for {function} (LINEAR needs >= 1, others > 0)")
    if function == "SIGMOID":
        def sigmoid(x):
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-4.0 * (np.asarray(x, dtype=np.float64) - center) / width))
        return sigmoid
    c, w = (center, width) if function == "LINEAR_EXACT" else (center - 0.5, width - 1.0)

    def linear(x):
        x = np.asarray(x, dtype=np.float64)
        ramp = (x - c) / w + 0.5 if w > 0 else np.zeros_like(x)  # LINEAR width 1: a step, no ramp
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, ramp))
    return linear


def _first(value):
    """The first of a multi-valued element's values (VM 1-n), as PS3.3 C.11.2.1.2 asks."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def voi_stage(ds, probe: np.ndarray):
    """Stage 2 (PS3.4 N.2.1.2, PS3.3 C.11.2) as a function of Modality LUT output:
    the first VOI LUT Sequence item (through pydicom; preferred when a window is
    there too, as pydicom does), else the first Window Center/Width with its VOI
    LUT Function (:func:`_window`; LINEAR when absent). None when the dataset has
    neither, or when it cannot be applied (a LUT is tried on ``probe``, a few
    Modality LUT output values): ``warnings.warn`` then says why, and the image
    keeps its full range, which the min-max stretch still displays."""
    from pydicom.pixels import apply_voi

    try:
        if ds.get("VOILUTSequence"):
            def voi(values):
                if values.dtype.kind == "f" and np.all(values == np.round(values)):
                    # A VOI LUT is indexed by integers; a rescale with integral
                    # results hands it floats that pydicom would warn about.
                    values = values.astype(np.int64)
                return apply_voi(values, ds, index=0)

            voi(probe)
            return voi
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center in (None, "") or width in (None, ""):
            return None  # absent or empty: no window (an empty Type 1C/3 element says nothing)
        function = element_text(ds, "VOILUTFunction") or "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            warnings.warn(f"VOI LUT Function {function!r} is not one of LINEAR, LINEAR_EXACT, SIGMOID "
                          f"(PS3.3 C.11.2.1.3); LINEAR used", stacklevel=2)
            function = "LINEAR"
        return _window(float(center), float(width), function)
    except Exception as e:  # noqa: BLE001 -- pydicom raises ValueError, NotImplementedError, TypeError...
        warnings.warn(f"VOI LUT / window not applied, the image is shown over its full range: "
                      f"{type(e).__name__}: {short(e)}", stacklevel=2)
        return None


def grayscale(arr: np.ndarray, ds, photometric: str, path) -> np.ndarray:
    """Stored monochrome values (h, w) -> float32 (h, w) in [0, 1], 0 = black.

    Pipeline (PS3.4 N.2.1): Modality LUT Sequence or Rescale Slope/Intercept
    (PS3.3 C.11.1); VOI LUT Sequence or the first Window Center/Width with its
    VOI LUT Function (PS3.3 C.11.2), see :func:`voi_stage`; min-max to [0, 1];
    the polarity of :func:`displays_inverted`.

    Memory: the LUT stages compute in float64. For 8- and 16-bit samples
    (every radiograph) they run only on the distinct stored values (at most
    65,536), giving a float32 table indexed by the samples: the only full-size
    array made is the float32 result, identical to the float64 computation
    rounded once to float32. Other samples (32-bit, float) go through in chunks
    of 1 M pixels."""
    inverted = displays_inverted(ds, photometric)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        index = arr.view(f"u{arr.dtype.itemsize}")  # signed values index by their bit pattern
        present = np.zeros(1 << (8 * arr.dtype.itemsize), dtype=bool)
        present[index] = True
        stored = np.flatnonzero(present).astype(index.dtype).view(arr.dtype)
        values = modality_values(stored, ds, path)
        voi = voi_stage(ds, values[:1])
        if voi is not None:
            values = voi(values)
        lut = np.zeros(present.size, dtype=np.float32)
        lut[present] = _to_unit(np.asarray(values, dtype=np.float64), inverted)
        return lut[index]
    out = np.empty(arr.shape, dtype=np.float32)
    voi = voi_stage(ds, modality_values(arr[:1, :1].ravel(), ds, path))
    step = max(1, _CHUNK_PIXELS // max(1, arr.shape[-1]))
    for i in range(0, arr.shape[0], step):
        values = modality_values(arr[i:i + step], ds, path)
        out[i:i + step] = voi(values) if voi is not None else values
    return stretch(out, inverted)
