"""From decoded raster samples to grayscale float32 in [0, 1]: integers by
their (stored) bit depth, floats as they are or min-max stretched, colour as
BT.601 luma, a block of rows at a time; and the Orientation tag applied. Also
the small file helpers every raster format uses."""
from __future__ import annotations

import importlib

import numpy as np
from PIL import Image

from .. import luma, minmax, row_blocks

#: Candidate stored bit depths of 16-bit grayscale samples whose file does not
#: declare one (no PNG sBIT): detectors write 10-, 12- and 14-bit data into
#: 16-bit containers, low bits aligned.
STORED_BITS = (10, 12, 14, 16)


def codec(name: str):
    """The module ``name`` (``imagecodecs``, ``libjpeg``, ``tifffile``), or None
    when it is not installed. Imported here, at use, so tests can take one away."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError):
        return None


def scaled(a: np.ndarray, maxval: int, *, shift: int = 0, invert: bool = False) -> np.ndarray:
    """Integer or bool samples ``a`` (h, w) -> float32 (h, w): ``(a >> shift) / maxval``,
    or ``(maxval - (a >> shift)) / maxval`` when ``invert`` (TIFF WhiteIsZero)."""
    out = np.empty(a.shape, np.float32)
    m = np.float32(maxval)
    for rows in row_blocks(a.shape):
        block = a[rows]
        if shift:
            block = block >> shift
        block = block.astype(np.float32)
        if invert:
            np.subtract(m, block, out=block)
        # Division, not a multiplication by 1/maxval: the maximum maps exactly to 1.0.
        np.divide(block, m, out=out[rows])
    return out


def luma_scaled(rgb: np.ndarray, maxval: int, *, shift: int = 0) -> np.ndarray:
    """Integer samples ``rgb`` (h, w, >=3) -> float32 (h, w): BT.601 luma of
    ``(rgb >> shift) / maxval``; channels past the third (alpha) are ignored."""
    out = np.empty(rgb.shape[:2], np.float32)
    m = np.float32(maxval)
    for rows in row_blocks(out.shape):
        block = rgb[rows, :, :3]
        out[rows] = luma(block >> shift if shift else block)
        out[rows] /= m
    return out


def _unit_interval(a: np.ndarray) -> bool:
    """Whether every sample of the float array ``a`` is finite and within [0, 1]."""
    for rows in row_blocks(a.shape):
        block = a[rows]
        if block.size and not (np.isfinite(block).all() and block.min() >= 0.0 and block.max() <= 1.0):
            return False
    return True


def float_gray(a: np.ndarray, *, invert: bool = False, own: bool = False) -> np.ndarray:
    """Float samples ``a`` (h, w) -> float32 (h, w) in [0, 1]: kept as they are when all
    are finite and within [0, 1] (already display values), else min-max stretched
    (:func:`~xraynet.decoders.minmax`: NaN/inf become black); ``1 - v`` when ``invert``.
    ``own``: ``a`` may be returned or changed in place (it belongs to the caller alone)."""
    if _unit_interval(a):
        if own and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable:
            out = a
        else:
            out = np.empty(a.shape, np.float32)
            for rows in row_blocks(a.shape):
                out[rows] = a[rows]
    else:
        out = minmax(a)
    if invert:
        np.subtract(np.float32(1.0), out, out=out)
    return out


def stored_bits(top: int, sbit: int | None = None) -> tuple[int, int]:
    """``(bits, shift)`` of 16-bit grayscale samples whose largest value is ``top``.

    ``sbit``: the significant bits the file declares (PNG sBIT chunk, PNG
    specification 11.3.3.4), or None. With ``sbit`` = n < 16 the samples are
    read as n-bit values: low-aligned (0 .. 2^n - 1, as many exporters write
    them) when ``top`` fits n bits, else high-aligned as the specification says
    (shift right by 16 - n). Without it, ``bits`` is the smallest of
    :data:`STORED_BITS` that holds ``top``: 12-bit detector data in a 16-bit
    file spans [0, 1] instead of [0, 1/16]. The pixel value is then
    ``(v >> shift) / (2**bits - 1)``."""
    if sbit is not None and 1 <= sbit <= 16:
        if sbit == 16 or top < (1 << sbit):
            return sbit, 0
        return sbit, 16 - sbit
    for bits in STORED_BITS:
        if top < (1 << bits):
            return bits, 0
    return 16, 0


def int_gray(a: np.ndarray, *, bits: int | None = None, sbit: int | None = None,
              invert: bool = False) -> tuple[np.ndarray, int]:
    """Integer or bool grayscale samples ``a`` (h, w) -> (float32 (h, w) in [0, 1], bit depth).

    * bool: 0 / 1 (1-bit).
    * ``bits`` < 16 declared by the file (TIFF BitsPerSample 1-15, JPEG precision):
      ``v / (2**bits - 1)``.
    * 8-bit containers: ``v / 255``.
    * samples within 0..65535 (16-bit, or 32-bit integers holding 16-bit values):
      by the stored bit depth, :func:`stored_bits`.
    * anything else (negative or wider values): min-max stretched, depth = container bits.
    ``invert`` (TIFF WhiteIsZero) gives ``(maxval - v) / maxval``, or ``1 - v`` after min-max."""
    if a.dtype.kind == "b":
        return scaled(a, 1, invert=invert), 1
    if a.size == 0:
        return np.zeros(a.shape, np.float32), a.dtype.itemsize * 8
    if bits is not None and bits < 16 and a.dtype.kind == "u":
        return scaled(a, (1 << bits) - 1, invert=invert), bits
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and a.dtype.itemsize == 1:
        return scaled(a, 255, invert=invert), 8
    if lo >= 0 and hi <= 65535:
        depth, shift = stored_bits(hi, sbit)
        if invert and sbit is None and depth == 16 and a.dtype.itemsize == 2:
            flipped = stored_bits(65535 - lo)[0]
            if flipped < 16:
                # A 12-bit film made WhiteIsZero in the 16-bit container (stored 65535 - v):
                # undo that, then scale by the bits the film really has.
                return scaled(np.subtract(np.uint16(65535), a, dtype=np.uint16), (1 << flipped) - 1), flipped
        return scaled(a, (1 << depth) - 1, shift=shift, invert=invert), depth
    out = minmax(a)
    if invert:
        np.subtract(np.float32(1.0), out, out=out)
    return out, a.dtype.itemsize * 8


# Orientation tag (EXIF and TIFF tag 274) -> the array operation that shows the
# image upright; the same transpositions as PIL.ImageOps.exif_transpose.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],              # mirrored left-right
    3: lambda a: a[::-1, ::-1],           # rotated 180
    4: lambda a: a[::-1],                 # mirrored top-bottom
    5: lambda a: a.T,                     # transposed
    6: lambda a: np.rot90(a, -1),         # rotate 90 clockwise to display
    7: lambda a: a[::-1, ::-1].T,         # transverse
    8: lambda a: np.rot90(a, 1),          # rotate 90 counter-clockwise to display
}



def orient(pixels: np.ndarray, orientation) -> np.ndarray:
    """``pixels`` (h, w) turned upright by an EXIF / TIFF Orientation value (1-8;
    others leave it as it is); C-contiguous. Phone photos of films and some
    exports store the rotation in this tag only."""
    op = _ORIENTATIONS.get(orientation if isinstance(orientation, int) else None)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


def exif_orientation(payload: bytes | None) -> int:
    """The Orientation of an Exif block (``Exif\\0\\0`` + TIFF structure), 1 when absent."""
    if not payload:
        return 1
    try:
        exif = Image.Exif()
        exif.load(payload)
        value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 -- a damaged Exif block leaves the pixels usable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def tail(fh, size: int, n: int) -> bytes:
    """The last ``n`` bytes of the open file of ``size`` bytes (all of a shorter one)."""
    fh.seek(max(0, size - n))
    return fh.read(n)
