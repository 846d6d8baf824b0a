"""PNG: the chunks walked from the signature to IEND before any pixel is
decoded (``truncated`` without IEND, ``damaged`` for a broken structure).

16-bit images go through ``imagecodecs.png_decode`` (libpng) at full precision.
Below 16 bits libpng reads every file too, and a file it refuses is
``damaged`` even where Pillow would read it (image data that ends rows early,
which Pillow filled with black rows; a wrong IDAT checksum; chunks out of
order). Its samples become the film for 8-bit gray, gray + alpha, RGB and RGBA
images that are not interlaced and carry nothing Pillow would act on
differently (:func:`_libpng_takes`), because Pillow's PNG decoder took 1.4x as
long on the same films; they come out as Pillow's path makes them, bit for
bit. The others, and files libpng warns about, are decoded by Pillow, whose
failures name the reason.
"""
from __future__ import annotations

import logging
import struct
import zlib
from typing import NamedTuple

import numpy as np

from .. import COPY_AGAIN, check_pixels, image_error, library_warnings, os_error, short, warning_entry
from .pillow import decode_pillow
from .samples import codec, exif_orientation, luma_scaled, orient, scaled, stored_bits, tail

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC


class _PngLayout(NamedTuple):
    """What the chunks say: IHDR's size, depth, colour type and interlace method, sBIT,
    eXIf (up to 1 MiB), where the file ends (``end``: the byte after IEND), and whether
    libpng's samples may become the film as they are (``plain``, see :func:`_libpng_takes`):
    no eXIf chunk of any size, no text chunk Pillow reads an orientation from (Exif or XMP
    text), no APNG chunk, and nothing but image data between the first IDAT and IEND (the
    chunks Pillow still reads after the image, which libpng skips)."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int
    sbit: tuple[int, ...] | None
    exif: bytes | None
    end: int
    plain: bool
    exif_bad: bool = False  # an eXIf chunk failing its checksum (its orientation is not applied)


#: Text chunk keywords Pillow takes an orientation from (``Image.getexif``: Exif, XMP).
_ORIENTATION_TEXT = (b"Raw profile type exif", b"XML:com.adobe.xmp")

_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


def _png_layout(path, fh, size: int) -> _PngLayout:
    """Walk the chunks of a PNG file from the signature to IEND (PNG specification 5.3),
    reading IHDR, sBIT, eXIf and text keywords. Raises ``truncated`` when the file ends
    before IEND, ``damaged`` when the chunk structure is broken or IHDR is missing."""
    pos, ihdr, sbit, exif, plain, image_seen, exif_bad = 8, None, None, None, True, False, False
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
        if image_seen and kind not in (b"IDAT", b"IEND"):
            plain = False
        image_seen = image_seen or kind == b"IDAT"
        if kind == b"IHDR":
            data = fh.read(length)
            if length != 13:
                break
            ihdr = struct.unpack(">IIBBxxB", data)  # width, height, depth, colour type, interlace
        elif kind == b"sBIT" and length <= 4:
            sbit = tuple(fh.read(length))
        elif kind == b"eXIf":
            plain = False
            if length <= 1 << 20:
                exif = fh.read(length)
                if fh.read(4) != struct.pack(">I", zlib.crc32(kind + exif)):
                    exif, exif_bad = None, True  # libpng drops it, and its orientation with it
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            if fh.read(min(length, 80)).split(b"\0", 1)[0] in _ORIENTATION_TEXT:
                plain = False
        elif kind in (b"acTL", b"fcTL", b"fdAT"):
            plain = False
        elif kind == b"IEND":
            if ihdr is None:
                raise image_error(path, "the PNG file has no IHDR header chunk", "a PNG file that starts with IHDR",
                                  "none before IEND", COPY_AGAIN, "damaged")
            w, h, depth, color, interlace = ihdr
            if color not in _PNG_COLOR_TYPES or depth not in (1, 2, 4, 8, 16):
                raise image_error(path, f"the PNG header (IHDR) is invalid (bit depth {depth}, colour type {color})",
                                  "bit depth 1-16 and colour type 0, 2, 3, 4 or 6",
                                  f"bit depth {depth}, colour type {color}", COPY_AGAIN, "damaged")
            return _PngLayout(w, h, depth, color, interlace, sbit, exif, pos + 12 + length, plain, exif_bad)
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
    ic = codec("imagecodecs")
    libpng = ic is not None and hasattr(ic, "png_decode")
    if layout.bit_depth == 16:
        if libpng:
            return _decode_png16(path, fh, layout, ic)
        if layout.color_type != 0:
            # Pillow reads these at 8 bits only: still a usable film, but say so.
            pixels, fmt, mode, depth, notes = decode_pillow(path, fh, head, size, complete=True)
            notes.append(warning_entry("png", "16-bit samples read at 8 bits because imagecodecs is not installed "
                                              "(pip install imagecodecs)"))
            return pixels, fmt, mode, depth, notes
    refusal = None
    if libpng and max(layout.width, layout.height) <= _LIBPNG_MAX_SIDE:
        # libpng reads every file, also those Pillow decodes: it is the one of the two that
        # refuses image data which ends rows early or fails its checksums.
        samples, refusal, warned = _libpng(path, fh, layout, ic)
        if samples is not None and warned == [] and _libpng_takes(layout):
            decoded = _png8_pixels(samples, layout)
            if decoded is not None:
                return decoded
        if samples is not None and warned and any("CRC" in m for m in warned):
            # An ancillary chunk failing its checksum: libpng drops that chunk and reads the
            # film, where Pillow refuses the whole file (or, after the image data, keeps the
            # chunk: an eXIf's orientation). libpng's film, its warning in the row.
            decoded = _expanded_pixels(samples, layout)
            if decoded is not None:
                return (*decoded, [warning_entry("png", m) for m in warned])
        del samples
    sbit = layout.sbit[0] if layout.sbit and layout.color_type == 0 else None
    result = decode_pillow(path, fh, head, size, complete=True, sbit=sbit, orientation=not layout.exif_bad)
    if refusal is not None:
        # Pillow read what libpng, the reference decoder, refuses: image data that ends
        # rows early (Pillow leaves them black), a wrong IDAT checksum, chunks out of
        # order, an unknown critical chunk. Not a film to screen.
        raise image_error(path, f"the PNG does not decode (libpng: {_reason(refusal)})",
                          "a valid PNG file", f"{size:,} bytes that libpng refuses", COPY_AGAIN, "damaged")
    return result


#: 8-bit colour types :func:`_libpng_takes` takes: (Pillow's mode, channels libpng returns; 0: a 2-D array)
_PNG8_MODES = {0: ("L", 0), 4: ("LA", 2), 2: ("RGB", 3), 6: ("RGBA", 4)}

#: libpng's default limit on each side (PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX); larger
#: valid films (within MAX_PIXELS: a long thin strip) are Pillow's alone.
_LIBPNG_MAX_SIDE = 1_000_000


def _read_through_iend(path, fh, layout: _PngLayout) -> bytes:
    """The file's bytes up to the end of its IEND chunk (nothing appended after it is
    read); a failing disk is ``unreadable``."""
    fh.seek(0)
    try:
        return fh.read(layout.end)
    except OSError as e:
        raise os_error(path, e) from None


def _reason(e: Exception) -> str:
    """libpng's message, or a plain word where imagecodecs could not read one (its text
    then comes from a freed buffer and changes from run to run)."""
    text = "" if isinstance(e, UnicodeError) else short(e).strip()
    return text or "no readable message"


def _libpng(path, fh, layout: _PngLayout, ic) -> tuple[np.ndarray | None, Exception | None, list | None]:
    """``imagecodecs.png_decode`` (libpng) of the file: ``(samples, None, [])``; ``(None, the
    exception, [])`` when libpng refuses it; ``(samples, None, warnings)`` when it decodes but
    warns (an ICC profile that does not fit the image, a bad ancillary chunk CRC: Pillow then
    decodes the file, so that the row stays what Pillow made of it), ``warnings`` None when
    they could not be seen (the "imagecodecs" logger set above WARNING)."""
    data = _read_through_iend(path, fh, layout)
    try:
        with library_warnings() as caught:
            samples = ic.png_decode(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- libpng's refusal of the file
        return None, e, []
    heard = logging.getLogger("imagecodecs").isEnabledFor(logging.WARNING)
    return samples, None, [m for _, m in caught] if heard else None


def _libpng_takes(layout: _PngLayout) -> bool:
    """Whether libpng's samples become the film (:func:`_png8_pixels`): 8-bit gray, gray +
    alpha, RGB or RGBA, not interlaced, and ``layout.plain`` (no orientation Pillow would
    apply, no APNG, nothing after the image data that Pillow would still check). The
    others are Pillow's to decode.

    Why. libpng inflates the image data in larger pieces than Pillow's decoder: 7.4
    against 10.4 ms a film on the 1024-px PNG films of ../shared/data/cxr (AMD EPYC, one
    thread), the largest part of decoding them."""
    return (layout.bit_depth == 8 and layout.color_type in _PNG8_MODES and layout.interlace == 0
            and layout.plain)


def _png8_pixels(samples: np.ndarray, layout: _PngLayout):
    """What the Pillow path returns for the same file, bit for bit, from libpng's 8-bit
    ``samples``: float32 ``v / 255`` of the gray channel, or the BT.601 luma of RGB over
    255 (alpha ignored); Pillow's mode name, depth 8, no notes. None when the samples
    are not laid out as IHDR says (a tRNS chunk expanded to an alpha channel): Pillow
    decodes those."""
    channels = _PNG8_MODES[layout.color_type][1]
    want = (layout.height, layout.width) + ((channels,) if channels else ())
    if samples.shape != want or samples.dtype != np.uint8:
        return None
    return (*_expanded_pixels(samples, layout), [])  # plain layouts: no orientation to apply


def _expanded_pixels(samples: np.ndarray, layout: _PngLayout):
    """(pixels, "png", mode, depth) of libpng's expanded 8-bit ``samples`` of any PNG below 16
    bits (palette to RGB, 1- to 4-bit gray to 0-255, tRNS to alpha): gray ``v / 255``, or the
    BT.601 luma of RGB over 255, alpha ignored; the orientation of a valid eXIf applied.
    None when they are not 8-bit samples of the header's size."""
    if samples.dtype != np.uint8 or samples.shape[:2] != (layout.height, layout.width):
        return None
    if samples.ndim == 2 or samples.shape[2] <= 2:
        pixels = scaled(samples if samples.ndim == 2 else samples[..., 0], 255)
    else:
        pixels = luma_scaled(samples, 255)
    mode = "P" if layout.color_type == 3 else "1" if layout.bit_depth == 1 else _PNG8_MODES[layout.color_type][0]
    return orient(pixels, exif_orientation(layout.exif)), "png", mode, layout.bit_depth


def _decode_png16(path, fh, layout: _PngLayout, ic):
    """16-bit PNG through imagecodecs.png_decode, at full precision."""
    data = _read_through_iend(path, fh, layout)
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
