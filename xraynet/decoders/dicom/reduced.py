"""The first frame of a compressed monochrome DICOM image decoded at reduced
size, where its codec offers it (:func:`decode_reduced`); the caller's area
means (:func:`xraynet.decoders.area_reduce`) do the rest of the reduction.

* 8-bit DCT JPEG (Baseline and Extended, PS3.5 A.4.1) decodes at 1/2, 1/4 or
  1/8 scale in libjpeg itself (scaled inverse DCT, Pillow's ``draft``), as
  JPEG files do: each pixel is then its block's mean up to the DCT's
  rounding, and the entropy-coded data is still read whole, so a damaged
  frame fails as at full size.
* JPEG 2000 (PS3.5 A.4.4; not HTJ2K, see ``_J2K``) holds the image at every
  power-of-two scale (its resolution levels): OpenJPEG, through Pillow's
  ``reduce``, skips the finest levels and never makes the film whole. Its
  low-pass samples are no block means, though -- they ring at sharp edges and
  sit half a block off the block-mean grid -- so the levels skipped take at
  most half of the reduction, and area means of at least 2x2 do the rest.
  Measured with the bundled model on 20 films of ../shared/data/cxr written
  as 12-bit JPEG 2000 DICOM at 3x their size (about 3000 px;
  benchmarks/dicom_reduced_check.py --upscale 3): p(covid) moved by a median
  of 0.002, at most 0.026, no flag changed, and a film loaded in 75 instead of
  919 ms. Skipping every level the reduction allows moved it by up to 0.055
  and changed 2 flags (25 ms a film): not taken.

Anything else -- other codecs, colour, a frame whose header says other than
the DICOM header (size, precision, sign, components, an image offset), a
reduction the codec refuses -- returns None, and the frame is decoded at full
size by pydicom as before, with its checks and error reasons. The values
come back as pydicom would give them (the stored values, in the dtype of
Bits Allocated and Pixel Representation), so the display pipeline that
follows (:func:`.display.grayscale`) is the same."""
from __future__ import annotations

import io
import struct

import numpy as np

from .. import Reduction
from ..codestream import ends_early

# JPEG 2000 transfer syntaxes (PS3.5 A.4.4): Lossless Only and JPEG 2000. Not HTJ2K (A.4.10-A.4.11):
# its block decoder fails on damaged code-blocks of the finest levels, which a reduced decode
# skips, so a frame the full-size path calls damaged would become a plain row.
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
# 8-bit DCT JPEG: Baseline (Process 1) and Extended (Process 2 & 4), the latter only with 8 bits.
_JPEG_DCT = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def decode_reduced(frame: bytes | None, ts, ds, reduce: Reduction | None, path=None) -> np.ndarray | None:
    """The stored values of ``frame`` (the first frame's codestream) at 1/``scale`` of its
    size, ``(ceil(Rows / scale), ceil(Columns / scale))``, in pydicom's dtype; sets
    ``reduce.full_size`` (Columns, Rows) and ``reduce.scale``. None where the frame is to
    be decoded at full size (see the module docstring). Never raises on bad data: a frame
    the reduced decoder cannot read is left to the full-size path, which says why.

    Taken only where the full-size path would take the file as it is -- pydicom's own
    checks of the pixel description pass, the photometric interpretation is spelled as
    the standard spells it, Bits Allocated is the one the codestream's precision asks
    for -- and where reducing first changes nothing but the averaging: the display
    mapping (:func:`_display_is_affine`) is affine over the film's values."""
    if reduce is None or frame is None or str(ts) not in _J2K | _JPEG_DCT or ends_early(frame):
        return None  # a frame cut short goes to the full-size path, which reports it
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        pi = str(ds.get("PhotometricInterpretation", "")).strip()
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or pi not in _MONOCHROME \
                or allocated != (8 if stored <= 8 else 16) or int(ds.get("NumberOfFrames", 1) or 1) < 1:
            return None
        if not _pydicom_accepts(ds, ts):
            return None
        codec = _j2k if str(ts) in _J2K else _jpeg
        arr, scale = codec(frame, rows, cols, stored, signed, reduce)
        if arr is None:
            return None
        arr = arr.astype(f"{'i' if signed else 'u'}{allocated // 8}")
        if not _display_is_affine(ds, arr, path):
            return None
    except Exception:  # noqa: BLE001 -- any trouble: the full-size path decodes it and reports
        return None
    reduce.full_size, reduce.scale = (cols, rows), scale
    return arr


def _pydicom_accepts(ds, ts) -> bool:
    """Whether pydicom's decoder takes the dataset's pixel description (its validation,
    run without decoding: the photometric interpretation, bit depths, sizes)."""
    from pydicom.pixels.decoders.base import DecodeRunner

    runner = DecodeRunner(ts)
    runner.set_source(ds)
    runner.validate()  # raises where pixel_array would
    return True


def _display_is_affine(ds, arr: np.ndarray, path) -> bool:
    """Whether the display pipeline (:func:`.display.grayscale`: modality LUT or rescale, VOI
    LUT or window, then the min-max stretch) maps every stored value affinely over the range
    of ``arr`` (the reduced film) and a margin of a tenth of it on either side, where the
    full-size film's extremes lie. Only then do its means and the display commute: a window
    that clips inside that range, a sigmoid or a LUT would display the mean of a block
    otherwise than the mean of the displayed block (the full-size path's order)."""
    from .display import modality_values, voi_stage

    lo, hi = int(arr.min()), int(arr.max())
    margin = (hi - lo) // 10 + 1
    info = np.iinfo(arr.dtype)
    # every stored value in the range (at most 65,536): a LUT may bend between any two of them
    probe = np.arange(max(info.min, lo - margin), min(info.max, hi + margin) + 1).astype(arr.dtype)
    values = np.asarray(modality_values(probe, ds, path), dtype=np.float64)
    voi = voi_stage(ds, values[:1])
    shown = np.asarray(voi(values) if voi is not None else values, dtype=np.float64)
    x = probe.astype(np.float64)
    if len(x) < 2:
        return True
    line = shown[0] + (shown[-1] - shown[0]) * (x - x[0]) / (x[-1] - x[0])
    span = abs(shown[-1] - shown[0])
    return span > 0 and float(np.abs(shown - line).max()) <= 1e-6 * span + 1e-9


def _j2k_header(frame: bytes) -> tuple[int, int, int, bool] | None:
    """``(width, height, precision, signed)`` of a one-component JPEG 2000 codestream
    with no image offset and no subsampling (SIZ marker, ITU-T T.800 A.5.1), else None."""
    if frame[:4] != b"\xff\x4f\xff\x51" or len(frame) < 45:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">LLLL", frame, 8)
    (csiz,) = struct.unpack_from(">H", frame, 40)
    ssiz, xrsiz, yrsiz = frame[42], frame[43], frame[44]
    if csiz != 1 or xosiz or yosiz or (xrsiz, yrsiz) != (1, 1):
        return None
    return xsiz, ysiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80)


def _pillow_j2k_side(n: int, levels: int) -> int:
    """The side Pillow gives ``n`` pixels decoded ``levels`` levels down (Jpeg2KImagePlugin
    rounds; OpenJPEG's image is ceil(n / 2**levels), and where the two differ the decode fails)."""
    power = 1 << levels
    return int((n + (power >> 1)) / power)


def _j2k(frame: bytes, rows: int, cols: int, stored: int, signed: bool, reduce: Reduction):
    """(stored values, scale) of a JPEG 2000 frame decoded some levels down, or (None, 1)."""
    header = _j2k_header(frame)
    if header is None:
        return None, 1
    width, height, precision, j2k_signed = header
    # 8 bits (Pillow's mode L, as stored) or 9-16 (mode I;16, widened; undone below). Fewer than 8
    # Pillow widens in mode L too: left to the full-size path.
    if (width, height) != (cols, rows) or precision != stored or j2k_signed != signed or not 8 <= precision <= 16:
        return None, 1
    whole = reduce.factor(cols, rows)
    for scale in (32, 16, 8, 4, 2):
        if 2 * scale > whole:  # at most half of the reduction (module docstring)
            continue
        levels = scale.bit_length() - 1
        size = (-(-cols // scale), -(-rows // scale))
        if (_pillow_j2k_side(cols, levels), _pillow_j2k_side(rows, levels)) != size:
            continue
        values = _pillow_j2k(frame, levels, size, precision, signed)
        if values is not None:
            return values, scale
    return None, 1


def _pillow_j2k(frame: bytes, levels: int, size: tuple[int, int], precision: int, signed: bool):
    """Stored values (h, w) int32 of ``frame`` decoded ``levels`` levels down, or None where
    OpenJPEG refuses (fewer decomposition levels in the codestream than asked, damage)."""
    from PIL import Image

    with Image.open(io.BytesIO(frame)) as img:
        if img.format != "JPEG2000" or img.mode != ("L" if precision == 8 else "I;16"):
            return None
        img.reduce = levels
        try:
            img.load()
        except OSError:
            return None
        if img.size != size:
            return None
        values = np.asarray(img).astype(np.int32)
        mode = img.mode
    if mode == "I;16":
        # Pillow widens every sample to 16 bits and offsets signed ones by half the range
        values >>= 16 - precision
        if signed:
            values -= 1 << (precision - 1)
    elif signed:
        return None
    lo, hi = (-(1 << (precision - 1)), (1 << (precision - 1)) - 1) if signed else (0, (1 << precision) - 1)
    return np.clip(values, lo, hi)


def _jpeg(frame: bytes, rows: int, cols: int, stored: int, signed: bool, reduce: Reduction):
    """(stored values, scale) of an 8-bit DCT JPEG frame by libjpeg's scaled decoding, or (None, 1).
    Only 8 bits stored: pydicom masks fewer, and a scaled IDCT's means would not be masked."""
    from PIL import Image

    if stored != 8 or signed:
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
