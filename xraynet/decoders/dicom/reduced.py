"""The first frame of a compressed monochrome DICOM image decoded at reduced
size, where its codec offers it (:func:`decode_reduced`); the caller's area
means (:func:`xraynet.decoders.area_reduce`) do the rest of the reduction.

8-bit DCT JPEG (Baseline and Extended, PS3.5 A.4.1) decodes at 1/2, 1/4 or
1/8 scale in libjpeg itself (scaled inverse DCT, Pillow's ``draft``), as JPEG
files do: each pixel is then its block's mean up to the DCT's rounding, and
the entropy-coded data is still read whole, so a damaged frame fails as at
full size.

JPEG 2000 also holds every power-of-two scale (its resolution levels), but is
left at full size: its low-pass samples are no block means -- they ring at
sharp edges (a dip of 0.03-0.04 of the range before a bright edge on a
synthetic film) and sit half a block off the block-mean grid -- so a film
decoded that way would differ from the same film stored uncompressed.

Anything else -- other codecs, colour, a frame whose header says other than
the DICOM header, a reduction the codec refuses -- returns None, and the
frame is decoded at full size by pydicom as before, with its checks and error
reasons. The values come back as pydicom would give them (the stored values,
in the dtype of Bits Allocated and Pixel Representation), so the display
pipeline that follows (:func:`.display.grayscale`) is the same."""
from __future__ import annotations

import io

import numpy as np

from .. import Reduction
from .codestream import ends_early

# 8-bit DCT JPEG: Baseline (Process 1) and Extended (Process 2 & 4), the latter only with 8 bits.
_JPEG_DCT = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def decode_reduced(frame: bytes | None, ts, ds, reduce: Reduction | None) -> np.ndarray | None:
    """The stored values of ``frame`` (the first frame's codestream) at 1/``scale`` of its
    size, ``(ceil(Rows / scale), ceil(Columns / scale))``, in pydicom's dtype; sets
    ``reduce.full_size`` (Columns, Rows) and ``reduce.scale``. None where the frame is to
    be decoded at full size (see the module docstring). Never raises on bad data: a frame
    the reduced decoder cannot read is left to the full-size path, which says why."""
    if reduce is None or frame is None or str(ts) not in _JPEG_DCT or ends_early(frame):
        return None  # a frame cut short goes to the full-size path, which reports it
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if samples != 1 or pi not in _MONOCHROME or allocated not in (8, 16) or int(ds.get("NumberOfFrames", 1)) < 1:
            return None
        dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
        arr, scale = _jpeg(frame, rows, cols, stored, signed, reduce)
    except Exception:  # noqa: BLE001 -- any trouble: the full-size path decodes it and reports
        return None
    if arr is None:
        return None
    reduce.full_size, reduce.scale = (cols, rows), scale
    return arr.astype(dtype)


def _jpeg(frame: bytes, rows: int, cols: int, stored: int, signed: bool, reduce: Reduction):
    """(stored values, scale) of an 8-bit DCT JPEG frame by libjpeg's scaled decoding, or (None, 1)."""
    from PIL import Image

    if stored > 8 or signed:
        return None, 1
    scale = reduce.factor(cols, rows, (8, 4, 2))
    if scale == 1:
        return None, 1
    with Image.open(io.BytesIO(frame)) as img:
        if img.format != "JPEG" or img.mode != "L" or img.size != (cols, rows):
            return None, 1
        img.draft("L", (cols // scale, rows // scale))
        want = (-(-cols // scale), -(-rows // scale))
        if img.size != want:
            return None, 1
        return np.asarray(img), scale
