"""PNG, JPEG, TIFF, BMP, GIF, WebP and the other raster formats.

See :func:`decode_raster` for what comes out and :func:`xraynet.imaging.decode`
for what happens to it next.

Who decodes what
----------------
The format is told by the file's first bytes. Before any pixel is decoded the
file's own structure is read: every size it declares is checked against
:data:`~xraynet.decoders.MAX_PIXELS` (:func:`~xraynet.decoders.check_pixels`),
and whether the file is complete decides between the reasons ``truncated``
(the file is shorter than its structure says) and ``damaged`` (complete, but
the data does not decode).

* **PNG**: the chunks are walked (IHDR, sBIT, eXIf, up to IEND). 16-bit PNGs go
  to ``imagecodecs.png_decode`` (Pillow reduces 16-bit gray+alpha, RGB and RGBA
  to 8 bits); the others to Pillow.
* **JPEG**: the marker segments are walked to the first scan (SOF, JFIF, Adobe,
  Exif), and the end-of-image marker is looked for. 8-bit DCT JPEG (baseline,
  extended, progressive, arithmetic) goes to Pillow; 12-bit, lossless (SOF3),
  hierarchical and JPEG-LS (SOF55) ones -- and 8-bit ones Pillow fails on -- to
  imagecodecs (libjpeg-turbo 3, liblj92, CharLS), then pylibjpeg-libjpeg.
* **TIFF**: tifffile (with imagecodecs for the compressions), which returns the
  stored samples at full precision; Pillow when tifffile cannot read the variant.
* Everything else (BMP, GIF, WebP, JPEG 2000 files...): Pillow.

Decoded samples become grayscale float32 a block of rows at a time, so that
besides the source samples and the float32 result only a few MB are allocated
(no float copy of all channels, no float64 image).
"""
from __future__ import annotations

import importlib
import io
import struct
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError
from . import (COPY_AGAIN, MAX_PIXELS, SIGNATURES, check_pixels, describe, image_error, luma,
               minmax, os_error, row_blocks, short, warning_entry)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: Candidate stored bit depths of 16-bit grayscale samples whose file does not
#: declare one (no PNG sBIT): detectors write 10-, 12- and 14-bit data into
#: 16-bit containers, low bits aligned.
STORED_BITS = (10, 12, 14, 16)


# ------------------------------------------------------------ small helpers
def _codec(name: str):
    """The module ``name`` (``imagecodecs``, ``libjpeg``, ``tifffile``), or None
    when it is not installed. Imported here, at use, so tests can take one away."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError):
        return None


def _scaled(a: np.ndarray, maxval: int, *, shift: int = 0, invert: bool = False) -> np.ndarray:
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


def _luma_scaled(rgb: np.ndarray, maxval: int, *, shift: int = 0) -> np.ndarray:
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


def _float_gray(a: np.ndarray, *, invert: bool = False, own: bool = False) -> np.ndarray:
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


def _int_gray(a: np.ndarray, *, bits: int | None = None, sbit: int | None = None,
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
        return _scaled(a, 1, invert=invert), 1
    if a.size == 0:
        return np.zeros(a.shape, np.float32), a.dtype.itemsize * 8
    if bits is not None and bits < 16 and a.dtype.kind == "u":
        return _scaled(a, (1 << bits) - 1, invert=invert), bits
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and a.dtype.itemsize == 1:
        return _scaled(a, 255, invert=invert), 8
    if lo >= 0 and hi <= 65535:
        depth, shift = stored_bits(hi, sbit)
        if invert and sbit is None and depth == 16 and a.dtype.itemsize == 2:
            flipped = stored_bits(65535 - lo)[0]
            if flipped < 16:
                # A 12-bit film made WhiteIsZero in the 16-bit container (stored 65535 - v):
                # undo that, then scale by the bits the film really has.
                return _scaled(np.subtract(np.uint16(65535), a, dtype=np.uint16), (1 << flipped) - 1), flipped
        return _scaled(a, (1 << depth) - 1, shift=shift, invert=invert), depth
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


def _exif_orientation(payload: bytes | None) -> int:
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


def _tail(fh, size: int, n: int) -> bytes:
    fh.seek(max(0, size - n))
    return fh.read(n)


# ----------------------------------------------------------------------- PNG
class _PngLayout(NamedTuple):
    width: int
    height: int
    bit_depth: int
    color_type: int
    sbit: tuple[int, ...] | None
    exif: bytes | None


_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


def _png_layout(path, fh, size: int) -> _PngLayout:
    """Walk the chunks of a PNG file from the signature to IEND (PNG specification 5.3),
    reading IHDR, sBIT and eXIf. Raises ``truncated`` when the file ends before
    IEND, ``damaged`` when the chunk structure is broken or IHDR is missing."""
    pos, ihdr, sbit, exif = 8, None, None, None
    while True:
        fh.seek(pos)
        header = fh.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if not kind.isalpha() or length > 0x7FFFFFFF:
            raise image_error(path, f"the PNG chunk structure is broken at byte {pos:,} (chunk type {kind!r})",
                              "a sequence of valid PNG chunks", f"{size:,} bytes that do not follow it",
                              COPY_AGAIN, "damaged")
        if pos + 12 + length > size:
            break
        if kind == b"IHDR":
            data = fh.read(length)
            if length != 13:
                break
            w, h, depth, color = struct.unpack(">IIBB", data[:10])
            ihdr = (w, h, depth, color)
        elif kind == b"sBIT" and length <= 4:
            sbit = tuple(fh.read(length))
        elif kind == b"eXIf" and length <= 1 << 20:
            exif = fh.read(length)
        elif kind == b"IEND":
            if ihdr is None:
                raise image_error(path, "the PNG file has no IHDR header chunk", "a PNG file that starts with IHDR",
                                  "none before IEND", COPY_AGAIN, "damaged")
            w, h, depth, color = ihdr
            if color not in _PNG_COLOR_TYPES or depth not in (1, 2, 4, 8, 16):
                raise image_error(path, f"the PNG header (IHDR) is invalid (bit depth {depth}, colour type {color})",
                                  "bit depth 1-16 and colour type 0, 2, 3, 4 or 6",
                                  f"bit depth {depth}, colour type {color}", COPY_AGAIN, "damaged")
            return _PngLayout(w, h, depth, color, sbit, exif)
        pos += 12 + length
    if _PNG_IEND in _tail(fh, size, 64):
        # The file does end with IEND, so it is complete; a chunk in the middle is corrupt.
        raise image_error(path, f"the PNG chunk structure is broken at byte {pos:,}",
                          "a sequence of valid PNG chunks", f"{size:,} bytes that do not follow it",
                          COPY_AGAIN, "damaged")
    raise image_error(path, f"the PNG file ends early (the chunk at byte {pos:,} is cut off; no IEND chunk)",
                      "a complete PNG file ending with its IEND chunk", f"{size:,} bytes", COPY_AGAIN, "truncated")


def _decode_png(path, fh, head: bytes, size: int):
    layout = _png_layout(path, fh, size)
    check_pixels(path, layout.width, layout.height, "the PNG header (IHDR)")
    if layout.bit_depth == 16:
        ic = _codec("imagecodecs")
        if ic is not None and hasattr(ic, "png_decode"):
            return _decode_png16(path, fh, layout, ic)
        if layout.color_type != 0:
            # Pillow reads these at 8 bits only: still a usable film, but say so.
            pixels, fmt, mode, depth, notes = _decode_pillow(path, fh, head, size, complete=True)
            notes.append(warning_entry("png", "16-bit samples read at 8 bits because imagecodecs is not installed "
                                              "(pip install imagecodecs)"))
            return pixels, fmt, mode, depth, notes
    sbit = layout.sbit[0] if layout.sbit and layout.color_type == 0 else None
    return _decode_pillow(path, fh, head, size, complete=True, sbit=sbit)


def _decode_png16(path, fh, layout: _PngLayout, ic):
    """16-bit PNG through imagecodecs.png_decode, at full precision."""
    fh.seek(0)
    data = fh.read()
    try:
        a = ic.png_decode(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- libpng errors on corrupt data
        raise image_error(path, f"the PNG pixel data does not decode ({type(e).__name__}: {short(e)})",
                          "complete PNG data that decodes", f"{len(data):,} bytes whose image data is corrupt",
                          COPY_AGAIN, "damaged") from None
    del data
    if a.shape[:2] != (layout.height, layout.width) or a.dtype != np.uint16:
        raise image_error(path, "the decoded PNG does not match its header",
                          f"{layout.height}x{layout.width} 16-bit samples", f"{a.shape} {a.dtype}",
                          COPY_AGAIN, "damaged")
    sbit = layout.sbit
    if a.ndim == 2 or a.shape[2] <= 2:  # gray, gray + alpha (alpha ignored)
        gray = a if a.ndim == 2 else a[..., 0]
        bits, shift = stored_bits(int(gray.max()) if gray.size else 0, sbit[0] if sbit else None)
        pixels = _scaled(gray, (1 << bits) - 1, shift=shift)
        mode = "I;16" if layout.color_type == 0 else "LA"
    else:  # RGB, RGBA: 16 bits unless sBIT declares fewer
        declared = max(sbit[:3]) if sbit and len(sbit) >= 3 else None
        # As for gray: 12-bit data in a 16-bit RGB file spans the whole range, not its first 1/16.
        bits, shift = stored_bits(int(a[..., :3].max()) if a.size else 0, declared)
        pixels = _luma_scaled(a, (1 << bits) - 1, shift=shift)
        mode = "RGBA" if a.shape[2] == 4 else "RGB"
    del a
    return orient(pixels, _exif_orientation(layout.exif)), "png", mode, bits, []


# ---------------------------------------------------------------------- JPEG
_SOF_NAMES = {
    0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive", 0xC3: "lossless",
    0xC5: "hierarchical sequential", 0xC6: "hierarchical progressive", 0xC7: "hierarchical lossless",
    0xC9: "arithmetic-coded sequential", 0xCA: "arithmetic-coded progressive", 0xCB: "arithmetic-coded lossless",
    0xCD: "hierarchical arithmetic-coded sequential", 0xCE: "hierarchical arithmetic-coded progressive",
    0xCF: "hierarchical arithmetic-coded lossless", 0xF7: "JPEG-LS",
}
# 8-bit variants Pillow (libjpeg-turbo's 8-bit API) decodes.
_PILLOW_SOF = (0xC0, 0xC1, 0xC2, 0xC9, 0xCA)


class _JpegLayout(NamedTuple):
    status: str  # "scan": reached the first SOS; "short": the data ended first; "bad": no valid structure
    sof: int | None = None
    precision: int = 0
    height: int = 0
    width: int = 0
    components: int = 0
    component_ids: bytes = b""
    jfif: bool = False
    adobe_transform: int | None = None
    exif: bytes | None = None
    scan: int = 0  # offset of the first SOS marker
    problem: str = ""


def _jpeg_layout(fh, size: int) -> _JpegLayout:
    """Walk the marker segments of a JPEG stream from SOI to the first SOS (ITU-T T.81
    B.1.1; JPEG-LS T.87), reading the frame header (SOFn) and the JFIF, Exif and
    Adobe segments."""
    found = {}
    pos = 2
    while True:
        fh.seek(pos)
        b = fh.read(4)
        if len(b) < 2:
            return _JpegLayout("short", **found)
        if b[0] != 0xFF:
            # Stray bytes between segments: decoders skip to the next marker (libjpeg warns).
            fh.seek(pos)
            rest = fh.read(1 << 16)
            skip = rest.find(b"\xff")
            if skip < 0:
                if len(rest) < 1 << 16:
                    return _JpegLayout("short", **found)
                return _JpegLayout("bad", **found, problem=f"no marker in the 64 KiB after byte {pos:,}")
            pos += skip
            continue
        marker = b[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xD8, 0xD9):
            return _JpegLayout("bad", **found, problem=f"marker 0x{marker:02X} at byte {pos:,} before any scan")
        if len(b) < 4:
            return _JpegLayout("short", **found)
        length = int.from_bytes(b[2:4], "big")
        if length < 2:
            return _JpegLayout("bad", **found, problem=f"segment length {length} at byte {pos:,}")
        if pos + 2 + length > size:
            return _JpegLayout("short", **found)
        if marker in _SOF_NAMES and "sof" not in found:
            data = fh.read(length - 2)
            if len(data) < 6:
                return _JpegLayout("bad", **found, problem=f"a {len(data)}-byte frame header")
            p, h, w, n = struct.unpack(">BHHB", data[:6])
            found.update(sof=marker, precision=p, height=h, width=w, components=n,
                         component_ids=bytes(data[6:6 + 3 * n:3]))
        elif marker == 0xE0 and length >= 7:
            found["jfif"] = found.get("jfif", False) or fh.read(5) == b"JFIF\x00"
        elif marker == 0xE1 and length >= 8 and "exif" not in found:
            data = fh.read(length - 2)
            if data.startswith(b"Exif\x00\x00"):
                found["exif"] = data
        elif marker == 0xEE and length >= 14:
            data = fh.read(12)
            if data.startswith(b"Adobe"):
                found["adobe_transform"] = data[11]
        elif marker == 0xDA:
            if "sof" not in found:
                return _JpegLayout("bad", **found, problem="a scan (SOS) before any frame header (SOF)")
            return _JpegLayout("scan", **found, scan=pos)
        pos += 2 + length


def _jpeg_has_end(fh, size: int, start: int) -> bool:
    """Whether the end-of-image marker (FF D9) follows byte ``start`` (the first scan).
    Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker
    (T.81 B.1.1.5; in JPEG-LS by a byte below 0x80), so FF D9 there is the real EOI."""
    if _tail(fh, size, 1 << 16).find(b"\xff\xd9", max(0, start - max(0, size - (1 << 16)))) >= 0:
        return True
    pos, block = start, 1 << 20
    while pos < size:
        fh.seek(pos)
        data = fh.read(block + 1)
        if b"\xff\xd9" in data:
            return True
        pos += block
    return False


def _jpeg_variant(layout: _JpegLayout) -> str:
    return f"{layout.precision}-bit {_SOF_NAMES.get(layout.sof, 'unknown')} JPEG"


def _jpeg_ycbcr(layout: _JpegLayout) -> bool:
    """Whether 3 components hold YCbCr, by libjpeg's rule (jdapimin.c): JFIF says so;
    an Adobe segment says so by its transform flag; else component ids 'R', 'G', 'B' mean RGB."""
    if layout.jfif:
        return True
    if layout.adobe_transform is not None:
        return layout.adobe_transform != 0
    return layout.component_ids != b"RGB"


def _jpeg_decoders(layout: _JpegLayout) -> list[tuple[str, object]]:
    """(name, decode(bytes) -> ndarray) of the installed decoders that read this JPEG
    variant, in order of preference."""
    out = []
    sof, p = layout.sof, layout.precision
    ic = _codec("imagecodecs")
    if ic is not None:
        if sof == 0xF7:
            if getattr(getattr(ic, "JPEGLS", None), "available", False):
                out.append(("imagecodecs.jpegls_decode", ic.jpegls_decode))
        elif sof in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB):
            jpeg8 = getattr(ic, "JPEG8", None)
            # libjpeg-turbo >= 3 decodes 8- and 12-bit DCT and 2-16-bit lossless JPEG.
            if getattr(jpeg8, "available", False) and (p == 8 or getattr(jpeg8, "all_precisions", False)):
                out.append(("imagecodecs.jpeg8_decode", ic.jpeg8_decode))
            if sof == 0xC3 and getattr(getattr(ic, "LJPEG", None), "available", False):
                out.append(("imagecodecs.ljpeg_decode", ic.ljpeg_decode))
    lj = _codec("libjpeg")
    if lj is not None and hasattr(lj, "decode"):
        # pylibjpeg-libjpeg returns the stored components: ask it for RGB when they are YCbCr.
        transform = 1 if layout.components == 3 and sof != 0xF7 and _jpeg_ycbcr(layout) else 0
        out.append(("libjpeg.decode", lambda data, t=transform: lj.decode(data, colour_transform=t)))
    return out


def _decode_jpeg(path, fh, head: bytes, size: int):
    layout = _jpeg_layout(fh, size)
    if layout.status == "short":
        raise image_error(path, "the JPEG headers end early (the file stops before the first scan)",
                          "a complete JPEG file", f"{size:,} bytes", COPY_AGAIN, "truncated")
    if layout.status == "bad":
        raise image_error(path, f"the JPEG marker structure is broken ({layout.problem})",
                          "a JPEG file with a frame header and a scan", f"{size:,} bytes that do not follow it",
                          COPY_AGAIN, "damaged")
    check_pixels(path, layout.width, layout.height, "the JPEG frame header (SOF)")
    if layout.height == 0:
        # ITU-T T.81 B.2.5: height 0 means a DNL marker after the first scan gives it. No
        # decoder installed here bounds its memory before that marker (libjpeg grows its
        # buffers line by line to gigabytes on a damaged file), and no X-ray writer uses it.
        fh.seek(0)
        has_dnl = b"\xff\xdc" in fh.read()
        if has_dnl:
            raise image_error(path, "a JPEG whose height is given by a DNL marker after the image data",
                              "a JPEG whose frame header (SOF) states its height", "height 0 in the SOF",
                              "Convert the file to a PNG or a JPEG with the height in its header", "unsupported_codec")
        raise image_error(path, "the JPEG frame header (SOF) gives height 0 and no DNL marker follows",
                          "a JPEG whose frame header states its height", "height 0", COPY_AGAIN, "damaged")
    if not _jpeg_has_end(fh, size, layout.scan):
        raise image_error(path, "the JPEG data ends early (no end-of-image marker after the image data)",
                          "a complete JPEG file ending with its EOI marker (FF D9)", f"{size:,} bytes",
                          COPY_AGAIN, "truncated")
    pillow_error = None
    if layout.precision == 8 and layout.sof in _PILLOW_SOF:
        try:
            return _decode_pillow(path, fh, head, size, complete=True)
        except Exception as e:  # noqa: BLE001 -- any Pillow failure: the codecs below get their turn
            if getattr(e, "reason", None) in ("too_large", "unreadable"):
                raise
            pillow_error = e
    return _decode_jpeg_codecs(path, fh, size, layout, pillow_error)


def _decode_jpeg_codecs(path, fh, size: int, layout: _JpegLayout, pillow_error):
    variant = _jpeg_variant(layout)
    decoders = _jpeg_decoders(layout)
    if not decoders:
        if pillow_error is not None:
            raise pillow_error
        installed = [name for name in ("imagecodecs", "libjpeg") if _codec(name) is not None]
        got = (f"only {' and '.join(installed)}, which does not read this variant" if installed
               else "neither installed")
        raise image_error(path, f"a valid {variant}, but no installed decoder reads this variant",
                          f"a decoder for {variant} (imagecodecs or pylibjpeg-libjpeg)", got,
                          "Install one: pip install imagecodecs pylibjpeg-libjpeg "
                          "(or convert the file to a 16-bit PNG)", "unsupported_codec")
    fh.seek(0)
    data = fh.read()
    failures = [f"Pillow: {short(pillow_error)}"] if pillow_error is not None else []
    a = None
    for name, decode in decoders:
        try:
            a = np.asarray(decode(data))
            break
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 -- codec libraries raise their own types on corrupt data
            failures.append(f"{name}: {short(e)}")
    del data
    if a is None:
        raise image_error(path, f"the {variant} data does not decode ({'; '.join(failures)})",
                          "JPEG data that decodes", f"a complete file of {size:,} bytes whose image data is corrupt",
                          COPY_AGAIN, "damaged")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.shape[:2] != (layout.height, layout.width) and layout.height:
        raise image_error(path, "the decoded JPEG does not match its frame header",
                          f"{layout.height}x{layout.width} pixels", f"shape {a.shape}", COPY_AGAIN, "damaged")
    depth = layout.precision
    if a.ndim == 2:
        # A 16-bit frame is a container like a 16-bit PNG: it often holds 12-bit data.
        pixels, depth = _int_gray(a, bits=depth if depth < 16 else None)
        mode = "L" if layout.precision <= 8 else "I;16"
    elif a.shape[2] == 3:
        pixels = _luma_scaled(a, (1 << depth) - 1)
        mode = "RGB"
    else:
        raise image_error(path, f"a {variant} with {a.shape[2]} components",
                          "a grayscale or RGB JPEG at this bit depth", f"{a.shape[2]} components (CMYK?)",
                          "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")
    del a
    notes = []
    if pillow_error is not None:
        notes.append(warning_entry("jpeg", f"Pillow could not decode it ({short(pillow_error)}), "
                                           f"{decoders[0][0].split('.')[0]} did"))
    return orient(pixels, _exif_orientation(layout.exif)), "jpeg", mode, depth, notes


# ---------------------------------------------------------------------- TIFF
# Compressions tifffile decodes without imagecodecs (zlib, deflate, packbits, LZMA).
_TIFF_WITHOUT_IMAGECODECS = {1, 8, 32946, 50013, 32773, 34925}
_TIFF_JPEG = {6, 7, 33007, 34892}
_TIFF_JPEG2000 = {33003, 33004, 33005, 34712}
_PHOTOMETRIC_NAMES = {4: "MASK", 8: "LAB", 9: "LAB", 10: "LAB", 32803: "CFA", 32844: "LOGL", 32845: "LOGLUV",
                      34892: "LINEAR_RAW", 51177: "DEPTH", 52527: "SEMANTIC_MASK"}
_TIFF_SUPPORT_WORDS = ("not supported", "requires the", "not implemented", "not a known")


def _check_tiff_header(path, fh, head: bytes, size: int) -> None:
    """``truncated`` when the first image file directory lies (partly) past the end."""
    big = head[2:4] in (b"+\x00", b"\x00+")
    order = "<" if head[:2] == b"II" else ">"
    header, count_fmt, entry = (16, "Q", 20) if big else (8, "H", 12)
    cut = image_error(path, "the TIFF file ends early (inside its header or first image file directory)",
                      "a complete TIFF file", f"{size:,} bytes", COPY_AGAIN, "truncated")
    if len(head) < header:
        raise cut
    offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > size:
        raise cut
    fh.seek(offset)
    count = struct.unpack(order + count_fmt, fh.read(count_size))[0]
    if offset + count_size + count * entry > size:
        raise cut


def _embedded_size(kind: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a JPEG 2000 codestream (SIZ, ITU-T T.800 A.5.1) or a JPEG
    stream (SOFn) at the start of ``data``; None when ``data`` holds no such header."""
    if kind == "JPEG 2000":
        i = data.find(b"\xff\x4f\xff\x51")  # SOC, SIZ
        if i < 0 or len(data) < i + 24:
            return None
        x, y, x0, y0 = struct.unpack(">IIII", data[i + 8:i + 24])
        return max(0, x - x0), max(0, y - y0)
    if not data.startswith(b"\xff\xd8"):
        return None
    layout = _jpeg_layout(io.BytesIO(data), len(data))
    return (layout.width, layout.height) if layout.sof is not None else None


def _check_tiff_segments(path, fh, page, size: int) -> None:
    """Before decoding: ``truncated`` when a strip or tile lies past the end of the
    file; ``too_large`` when an embedded JPEG / JPEG 2000 stream declares too many pixels
    (a small TIFF can carry a codestream that would decode to gigabytes)."""
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if offsets.size and counts.size == offsets.size:
        ends = offsets + counts
        last = int(np.argmax(ends))
        if int(ends[last]) > size:
            raise image_error(path, f"the TIFF file ends early (strip or tile {last} runs to byte {int(ends[last]):,})",
                              "a complete TIFF file holding all its strips or tiles", f"{size:,} bytes",
                              COPY_AGAIN, "truncated")
    compression = int(page.compression)
    kind = "JPEG" if compression in _TIFF_JPEG else "JPEG 2000" if compression in _TIFF_JPEG2000 else None
    if kind is None:
        return
    for index, (offset, count) in enumerate(zip(offsets.tolist(), counts.tolist())):
        if count <= 0:
            continue
        dims = None
        for n in (4096, 1 << 20):
            fh.seek(offset)
            dims = _embedded_size(kind, fh.read(min(count, n)))
            if dims is not None or count <= n:
                break
        if dims is not None:
            check_pixels(path, dims[0], dims[1], f"the {kind} stream embedded in TIFF strip or tile {index}")
        elif compression != 6:  # old-style JPEG (6) strips need not carry a frame header
            # No frame header in the first MiB: its size cannot be checked before decoding.
            raise image_error(path, f"TIFF strip or tile {index} holds a {kind} stream whose frame header is not "
                                    "within its first 1 MiB", f"a {kind} frame header the size can be read from",
                              "none found", COPY_AGAIN, "damaged")


def _tiff_mode(dtype: np.dtype, channels: int, photometric: int) -> str:
    """A Pillow-style name for the stored pixel layout, for the report."""
    if photometric == 3:
        return "P"
    if photometric == 5:
        return "CMYK"
    if photometric == 6:
        return "YCbCr"
    if photometric == 2 and channels >= 3:
        return "RGBA" if channels >= 4 else "RGB"
    names = {"b": "1", "u1": "L", "u2": "I;16", "i2": "I;16S", "i4": "I", "u4": "I", "f2": "F;16", "f4": "F",
             "f8": "F;64"}
    name = names.get("b" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}", str(dtype))
    return "LA" if channels == 2 and name == "L" else name


def _tiff_gray(path, page, shaped: np.ndarray) -> tuple[np.ndarray, str, int]:
    """tifffile's samples of the first page, shape (separate samples, depth, length, width,
    contiguous samples), -> (float32 (h, w) in [0, 1] with 0 = black, mode, bit depth).
    tifffile returns the stored values: WhiteIsZero is inverted here, palettes and CMYK
    are resolved here (TIFF 6.0 sections 3-5 and 16)."""
    a = shaped[:, 0]  # first plane of a 3-D (ImageDepth) image
    a = np.moveaxis(a[..., 0], 0, -1) if a.shape[0] > 1 else a[0]  # (h, w, samples)
    channels = a.shape[-1]
    photometric, bits = int(page.photometric), int(page.bitspersample)
    mode = _tiff_mode(a.dtype, channels, photometric)
    compression = int(page.compression)
    # tifffile converts YCbCr to RGB only for JPEG-compressed data; elsewhere Y is the luma.
    ycbcr_as_rgb = photometric == 6 and compression in _TIFF_JPEG
    floating = a.dtype.kind == "f"
    if photometric in (0, 1) or (photometric == 6 and not ycbcr_as_rgb) or (photometric == 2 and channels < 3):
        gray = a[..., 0]
        if floating:
            return _float_gray(gray, invert=photometric == 0, own=channels == 1), mode, a.dtype.itemsize * 8
        pixels, depth = _int_gray(gray, bits=bits if bits < 16 else None, invert=photometric == 0)
        return pixels, mode, depth
    if photometric in (2, 6):
        if floating:
            return _float_gray(luma(a), own=True), mode, a.dtype.itemsize * 8
        if a.dtype.kind not in "ub":
            return minmax(luma(a)), mode, a.dtype.itemsize * 8
        if bits == 16 and a.size:
            bits = stored_bits(int(a[..., :3].max()))[0]  # 12-bit data in a 16-bit container, as for gray
        return _luma_scaled(a, (1 << bits) - 1), mode, bits
    if photometric == 3:
        colormap = page.colormap
        if colormap is None or a.dtype.kind not in "ub":
            raise image_error(path, "a palette TIFF without a usable ColorMap", "a ColorMap tag (320)",
                              "none" if colormap is None else f"{a.dtype} indices", COPY_AGAIN, "damaged")
        colormap = np.asarray(colormap, np.uint16).reshape(3, -1)
        # TIFF 6.0 stores 16-bit colours (65535 = full intensity). Writers of 8-bit
        # palettes store v << 8 (Pillow) or, wrongly, v itself: both read back as v / 255.
        if not (colormap & 0xFF).any():
            colormap, full = colormap >> 8, 255.0
        else:
            full = 255.0 if colormap.max() < 256 else 65535.0
        lut = (luma(colormap.T.astype(np.float64)) / full).astype(np.float32)
        index = a[..., 0]
        out = np.empty(index.shape, np.float32)
        for rows in row_blocks(index.shape):
            np.take(lut, index[rows].astype(np.intp), mode="clip", out=out[rows])
        return out, mode, bits
    # photometric 5: separated (CMYK), as Pillow converts it: R = (1 - C)(1 - K) ...
    m = np.float32(1.0 if floating else (1 << bits) - 1)
    out = np.empty(a.shape[:2], np.float32)
    for rows in row_blocks(out.shape):
        block = a[rows, :, :4].astype(np.float32)
        np.subtract(m, block, out=block)
        block /= m
        out[rows] = luma(block[..., :3]) * block[..., 3]
    return out, mode, bits


def _decode_tiff(path, fh, head: bytes, size: int):
    _check_tiff_header(path, fh, head, size)
    tifffile = _codec("tifffile")
    if tifffile is None:
        return _tiff_with_pillow(path, fh, head, size, "tifffile is not installed", "pip install tifffile imagecodecs")
    fh.seek(0)
    try:
        tif = tifffile.TiffFile(fh)
    except MemoryError:
        raise
    except OSError as e:
        if e.errno is not None:
            raise os_error(path, e) from None
        raise _tiff_damaged(path, e, size) from None
    except Exception as e:  # noqa: BLE001 -- tifffile raises several types on broken structures
        raise _tiff_damaged(path, e, size) from None
    with tif:
        try:
            return _decode_tiff_page(path, fh, head, size, tif)
        except (ImageError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 -- damaged tags (wrong type or count) fail anywhere in tifffile
            raise _tiff_damaged(path, e, size) from None


def _full_resolution_page(tif):
    """The image a TIFF holds: the first page, unless NewSubfileType marks it a
    reduced-resolution copy (TIFF 6.0 section 8, bit 0: a thumbnail or preview), in which
    case the first full-resolution image among its SubIFDs and then the next pages."""
    first = tif.pages.first
    if not first.is_reduced:
        return first
    try:
        for k, offset in enumerate((first.subifds or ())[:8]):
            tif.filehandle.seek(offset)
            sub = type(first)(tif, index=(0, k))  # a tifffile.TiffPage read at the SubIFD's offset
            if not sub.is_reduced:
                return sub
        for page in tif.pages[1:8]:
            if page is not None and not page.is_reduced:
                return page
    except Exception:  # noqa: BLE001 -- a damaged SubIFD or later page: the first page is still an image
        pass
    return first


def _decode_tiff_page(path, fh, head: bytes, size: int, tif):
    """The first full-resolution page of an open tifffile.TiffFile (see :func:`_decode_tiff`)."""
    page = _full_resolution_page(tif)
    width, height = int(page.imagewidth), int(page.imagelength)
    depth_planes = max(1, int(page.imagedepth))
    check_pixels(path, width, height * depth_planes, "the TIFF header (first image file directory)")
    if page.is_tiled:
        check_pixels(path, page.tilewidth, page.tilelength * max(1, int(page.tiledepth)),
                     "the TIFF tile size (TileWidth x TileLength)")
    _check_tiff_segments(path, fh, page, size)
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2, 3, 5, 6) or (photometric == 5 and page.samplesperpixel < 4):
        name = _PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
        raise image_error(path, f"unsupported pixel mode {name!r}",
                          "a grayscale, RGB, RGBA, palette, CMYK, 16-bit or float image", repr(name),
                          "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")
    compression = int(page.compression)
    missing = None
    if page.dtype is None:
        missing = f"tifffile cannot read {page.bitspersample}-bit samples of SampleFormat {page.sampleformat}"
    elif compression not in _TIFF_WITHOUT_IMAGECODECS and _codec("imagecodecs") is None:
        missing = f"TIFF compression {_compression_name(page)} needs imagecodecs, which is not installed"
    if missing is None:
        try:
            shaped = page.asarray(squeeze=False, maxworkers=1)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 -- codec libraries raise their own types
            if isinstance(e, OSError) and e.errno is not None:
                raise os_error(path, e) from None
            text = str(e)
            if (isinstance(e, NotImplementedError) or compression == 6
                    or any(word in text for word in _TIFF_SUPPORT_WORDS)):
                missing = f"tifffile cannot decode it ({type(e).__name__}: {short(e)})"
            else:
                raise image_error(path, f"the TIFF pixel data does not decode ({type(e).__name__}: {short(e)})",
                                  f"TIFF data ({_compression_name(page)}) that decodes",
                                  f"a complete file of {size:,} bytes whose image data is corrupt",
                                  COPY_AGAIN, "damaged") from None
    if missing is not None:
        # With imagecodecs installed there is nothing more to install: say so instead.
        return _tiff_with_pillow(path, fh, head, size, missing,
                                 None if _codec("imagecodecs") is not None else "pip install imagecodecs")
    pixels, mode, depth = _tiff_gray(path, page, shaped)
    del shaped
    orientation = page.tags.get(274)
    orientation = int(orientation.value) if orientation is not None else 1
    return orient(pixels, orientation), "tiff", mode, depth, []


def _compression_name(page) -> str:
    try:
        return f"{page.compression.name} ({int(page.compression)})"
    except (AttributeError, ValueError):
        return str(int(page.compression))


def _tiff_damaged(path, e: Exception, size: int):
    return image_error(path, f"the TIFF structure cannot be read ({type(e).__name__}: {short(e)})",
                       "a valid TIFF file", f"{size:,} bytes that do not parse", COPY_AGAIN, "damaged")


def _tiff_with_pillow(path, fh, head: bytes, size: int, why: str, install: str):
    """A TIFF variant tifffile cannot read, through Pillow (libtiff); ``unsupported_codec``
    naming ``install`` when Pillow cannot read it either."""
    try:
        return _decode_pillow(path, fh, head, size, complete=True, tiff=True)
    except Exception as e:  # noqa: BLE001 -- Pillow's failure only adds detail to the message
        if getattr(e, "reason", None) in ("too_large", "unreadable", "unsupported_mode"):
            raise
        detail = short(e).replace(f"{path}: ", "")
        raise image_error(path, f"a TIFF variant no installed decoder reads ({why}; Pillow: {detail})",
                          "a TIFF compression and sample format that tifffile, imagecodecs or Pillow decode",
                          why, (f"Install the decoder ({install}) or convert" if install else
                                "No decoder for it can be installed here (tifffile, imagecodecs and Pillow are); "
                                "convert") + " the file to an uncompressed TIFF or a 16-bit PNG",
                          "unsupported_codec") from None


# -------------------------------------------------------------------- Pillow
_PILLOW_BLOCK_MODES = {"1": 1, "L": 8, "LA": 8, "La": 8, "RGB": 8, "RGBA": 8, "RGBX": 8, "RGBa": 8, "P": 8,
                       "PA": 8, "CMYK": 8, "YCbCr": 8}


def _pillow_gray(img: Image.Image, path, sbit: int | None = None, invert: bool = False) -> tuple[np.ndarray, int]:
    """Grayscale float32 (h, w) in [0, 1] and the source bit depth of a loaded Pillow image.

    8-bit modes are converted a block of rows at a time (Pillow keeps RGB as 4 bytes a
    pixel; a full NumPy copy would add 3 more): "1" -> 0/1, "L" -> v / 255, "LA" -> the
    gray channel, RGB(A) -> BT.601 luma / 255, palette, CMYK and YCbCr through Pillow's
    own conversion to RGB (it resolves the palette / inks), then luma in float.
    16-bit ("I;16...") and 32-bit ("I") integers: :func:`_int_gray` (never squeezed
    through 8 bits); "F": :func:`_float_gray`. ``invert``: WhiteIsZero still to be applied
    (Pillow applies it itself only for modes "1" and "L")."""
    mode = img.mode
    w, h = img.size
    if mode in _PILLOW_BLOCK_MODES:
        out = np.empty((h, w), np.float32)
        for rows in row_blocks((h, w)):
            top, bottom = rows.start, min(rows.stop, h)
            part = img.crop((0, top, w, bottom))
            if mode in ("P", "PA", "CMYK", "YCbCr"):
                part = part.convert("RGB")
            a = np.asarray(part)
            if mode == "1":
                out[top:bottom] = a
            elif a.ndim == 2:
                np.divide(a, np.float32(255.0), out=out[top:bottom])
            elif mode in ("LA", "La"):
                np.divide(a[..., 0], np.float32(255.0), out=out[top:bottom])
            else:
                out[top:bottom] = luma(a)
                out[top:bottom] /= np.float32(255.0)
        return out, _PILLOW_BLOCK_MODES[mode]
    if mode.startswith("I;16") or mode == "I":
        return _int_gray(np.asarray(img), sbit=sbit, invert=invert)
    if mode == "F":
        return _float_gray(np.asarray(img), invert=invert), 32
    raise image_error(path, f"unsupported pixel mode {mode!r}",
                      "a grayscale, RGB, RGBA, palette, CMYK, 16-bit or float image", repr(mode),
                      "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")


def _decode_pillow(path, fh, head: bytes, size: int, *, complete: bool | None = None, sbit: int | None = None,
                   tiff: bool = False):
    """Decode with Pillow. ``complete``: the caller has checked that the file is whole
    (then any decoding failure is ``damaged``); None: nothing is known, and Pillow's
    "truncated" decides. ``tiff``: apply WhiteIsZero where Pillow does not."""
    known = next((name for sig, name in SIGNATURES if head.startswith(sig)), None)
    fh.seek(0)
    try:
        img = Image.open(fh)
    except Image.DecompressionBombError as e:
        raise image_error(path, f"too many pixels ({short(e)})", f"at most {MAX_PIXELS:,} pixels",
                          "more than Pillow's limit", "Downscale the image before screening it",
                          "too_large") from None
    except UnidentifiedImageError:
        if known is None:
            raise image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                              describe(head, size), "Remove the file from the folder or convert it",
                              "not_an_image") from None
        cut = not complete and size < 64
        raise image_error(path, f"starts like a {known} image but its header "
                          f"{'is incomplete' if cut else 'cannot be read'}", f"a complete {known} file",
                          f"{size:,} bytes", COPY_AGAIN, "truncated" if cut else "damaged") from None
    except OSError as e:
        if e.errno is not None:
            raise os_error(path, e) from None
        cut = not complete and "truncated" in str(e).lower()
        name = known or "image"
        raise image_error(path, f"the {name} header {'ends early' if cut else 'cannot be read'} ({short(e)})",
                          f"a complete {name} file", f"{size:,} bytes", COPY_AGAIN,
                          "truncated" if cut else "damaged") from None
    except Exception as e:  # noqa: BLE001 -- format plugins raise many types on broken headers
        name = known or "image"
        raise image_error(path, f"the {name} header cannot be read ({type(e).__name__}: {short(e)})",
                          f"a valid {name} file", f"{size:,} bytes", COPY_AGAIN, "damaged") from None
    with img:
        fmt = (img.format or "unknown").lower()
        w, h = img.size
        check_pixels(path, w, h, f"the {fmt.upper()} header")
        try:
            # Pillow decodes lazily: load() now so broken pixel data fails here,
            # with the file named, and not later inside preprocessing.
            img.load()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 -- format plugins raise many types on damaged data
            if isinstance(e, OSError) and e.errno is not None:  # the disk failed, not the data
                raise os_error(path, e) from None
            cut = not complete and "truncated" in str(e).lower()
            detail = short(e) if isinstance(e, OSError) else f"{type(e).__name__}: {short(e)}"
            raise image_error(path, f"the {fmt.upper()} header reads but decoding fails ({detail})",
                              f"a complete {fmt.upper()} file",
                              f"{size:,} bytes that end early" if cut else f"{size:,} bytes of damaged data",
                              COPY_AGAIN, "truncated" if cut else "damaged") from None
        mode = img.mode
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 -- a damaged Exif block leaves the pixels usable
            orientation = 1
        # Pillow inverts WhiteIsZero itself for 1- to 8-bit gray ("1;I", "L;I" raw modes) only.
        invert = tiff and mode not in ("1", "L") and getattr(img, "tag_v2", {}).get(262) == 0
        pixels, depth = _pillow_gray(img, path, sbit=sbit, invert=invert)
    return orient(pixels, orientation), fmt, mode, depth, []


# ------------------------------------------------------------------- entry
def decode_raster(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, str, int, list[str]]:
    """Decode a non-DICOM image file.

    ``fh``: the open file (binary, seekable); ``head``: its first bytes
    (:data:`~xraynet.decoders.HEAD_BYTES`); ``size``: its length in bytes.

    Returns ``(pixels, format, mode, bit_depth, notes)``: ``pixels`` float32
    (height, width), C-contiguous, in [0, 1], 0 = black, upright (EXIF / TIFF
    Orientation applied); ``format`` lowercase ("png", "jpeg", "tiff", or
    Pillow's format name); ``mode`` the stored pixel layout in Pillow's names
    ("L", "I;16", "LA", "RGB", "RGBA", "P", "CMYK", "F", "F;64"...); ``bit_depth``
    the bits per sample of the source (the stored depth for 16-bit gray, see
    :func:`stored_bits`; the precision of a 12-bit JPEG); ``notes``: report
    warning entries. Conversions:

    * integers: ``v / (2**bits - 1)`` (:func:`_int_gray`); floats: as they are
      when within [0, 1], else min-max; colour: ITU-R BT.601 luma
      (0.299 R + 0.587 G + 0.114 B) in float32; alpha ignored; palette and CMYK
      resolved to RGB first; multi-frame files: the first frame.
    * TIFF PhotometricInterpretation WhiteIsZero is inverted at every bit depth.

    Raises :class:`~xraynet.errors.ImageError`: ``too_large`` (any declared size
    over :data:`~xraynet.decoders.MAX_PIXELS`, checked before decoding),
    ``truncated`` (the file ends before its own structure does: PNG without
    IEND, JPEG without EOI, TIFF directory or strips past the end), ``damaged``
    (complete, but the data does not decode), ``unsupported_codec`` (a valid
    variant no installed decoder reads; the message names the package),
    ``unsupported_mode``, ``not_an_image``, ``unreadable``.
    """
    if head.startswith(_PNG_SIGNATURE):
        return _decode_png(path, fh, head, size)
    if head.startswith(b"\xff\xd8\xff"):
        return _decode_jpeg(path, fh, head, size)
    if head.startswith(_TIFF_SIGNATURES):
        return _decode_tiff(path, fh, head, size)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and int.from_bytes(head[4:8], "little") + 8 > size:
        # The RIFF header gives the file's length; Pillow only says it cannot decode.
        raise image_error(path, "the WebP file ends early (shorter than its RIFF header says)",
                          f"{int.from_bytes(head[4:8], 'little') + 8:,} bytes", f"{size:,} bytes", COPY_AGAIN,
                          "truncated")
    return _decode_pillow(path, fh, head, size)
