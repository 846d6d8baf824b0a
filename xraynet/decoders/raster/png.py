"""PNG: the chunks walked from the signature to IEND before any pixel is
decoded (``truncated`` without IEND, ``damaged`` for a broken structure);
16-bit images through ``imagecodecs.png_decode`` at full precision, the
others through Pillow."""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from .. import COPY_AGAIN, check_pixels, image_error, short, warning_entry
from .pillow import decode_pillow
from .samples import codec, exif_orientation, luma_scaled, orient, scaled, stored_bits, tail

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC


class _PngLayout(NamedTuple):
    """What the chunks say: IHDR's size, depth and colour type, sBIT and eXIf."""

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
    if _PNG_IEND in tail(fh, size, 64):
        # The file does end with IEND, so it is complete; a chunk in the middle is corrupt.
        raise image_error(path, f"the PNG chunk structure is broken at byte {pos:,}",
                          "a sequence of valid PNG chunks", f"{size:,} bytes that do not follow it",
                          COPY_AGAIN, "damaged")
    raise image_error(path, f"the PNG file ends early (the chunk at byte {pos:,} is cut off; no IEND chunk)",
                      "a complete PNG file ending with its IEND chunk", f"{size:,} bytes", COPY_AGAIN, "truncated")


def decode_png(path, fh, head: bytes, size: int):
    """A PNG file; returns what :func:`~xraynet.decoders.raster.decode_raster` returns."""
    layout = _png_layout(path, fh, size)
    check_pixels(path, layout.width, layout.height, "the PNG header (IHDR)")
    if layout.bit_depth == 16:
        ic = codec("imagecodecs")
        if ic is not None and hasattr(ic, "png_decode"):
            return _decode_png16(path, fh, layout, ic)
        if layout.color_type != 0:
            # Pillow reads these at 8 bits only: still a usable film, but say so.
            pixels, fmt, mode, depth, notes = decode_pillow(path, fh, head, size, complete=True)
            notes.append(warning_entry("png", "16-bit samples read at 8 bits because imagecodecs is not installed "
                                              "(pip install imagecodecs)"))
            return pixels, fmt, mode, depth, notes
    sbit = layout.sbit[0] if layout.sbit and layout.color_type == 0 else None
    return decode_pillow(path, fh, head, size, complete=True, sbit=sbit)


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
        pixels = scaled(gray, (1 << bits) - 1, shift=shift)
        mode = "I;16" if layout.color_type == 0 else "LA"
    else:  # RGB, RGBA: 16 bits unless sBIT declares fewer
        declared = max(sbit[:3]) if sbit and len(sbit) >= 3 else None
        # As for gray: 12-bit data in a 16-bit RGB file spans the whole range, not its first 1/16.
        bits, shift = stored_bits(int(a[..., :3].max()) if a.size else 0, declared)
        pixels = luma_scaled(a, (1 << bits) - 1, shift=shift)
        mode = "RGBA" if a.shape[2] == 4 else "RGB"
    del a
    return orient(pixels, exif_orientation(layout.exif)), "png", mode, bits, []
