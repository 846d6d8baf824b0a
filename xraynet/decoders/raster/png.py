"""PNG: the chunks walked from the signature to IEND before any pixel is
decoded (``truncated`` without IEND, ``damaged`` for a broken structure);
16-bit images through ``imagecodecs.png_decode`` at full precision; 8-bit
gray, gray + alpha, RGB and RGBA images with no metadata that could turn
them through ``imagecodecs.png_decode`` too (libpng), because Pillow's PNG
decoder took 1.4x as long on the same films (:func:`_libpng_takes`); the
others, and whatever libpng warns about or refuses, through Pillow, whose
failures name the reason. Image data that libpng refuses and Pillow reads
anyway (rows missing, a wrong checksum) is ``damaged``."""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from .. import COPY_AGAIN, check_pixels, image_error, library_warnings, short, warning_entry
from .pillow import decode_pillow
from .samples import codec, exif_orientation, luma_scaled, orient, scaled, stored_bits, tail

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC


class _PngLayout(NamedTuple):
    """What the chunks say: IHDR's size, depth, colour type and interlace method, sBIT and
    eXIf, and whether the file holds text chunks (tEXt, zTXt, iTXt: where Pillow also looks for an
    orientation, in Exif or XMP text)."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int
    sbit: tuple[int, ...] | None
    exif: bytes | None
    text: bool


_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


def _png_layout(path, fh, size: int) -> _PngLayout:
    """Walk the chunks of a PNG file from the signature to IEND (PNG specification 5.3),
    reading IHDR, sBIT and eXIf. Raises ``truncated`` when the file ends before
    IEND, ``damaged`` when the chunk structure is broken or IHDR is missing."""
    pos, ihdr, sbit, exif, text = 8, None, None, None, False
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
            ihdr = struct.unpack(">IIBBxxB", data)  # width, height, depth, colour type, interlace
        elif kind == b"sBIT" and length <= 4:
            sbit = tuple(fh.read(length))
        elif kind == b"eXIf" and length <= 1 << 20:
            exif = fh.read(length)
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            text = True
        elif kind == b"IEND":
            if ihdr is None:
                raise image_error(path, "the PNG file has no IHDR header chunk", "a PNG file that starts with IHDR",
                                  "none before IEND", COPY_AGAIN, "damaged")
            w, h, depth, color, interlace = ihdr
            if color not in _PNG_COLOR_TYPES or depth not in (1, 2, 4, 8, 16):
                raise image_error(path, f"the PNG header (IHDR) is invalid (bit depth {depth}, colour type {color})",
                                  "bit depth 1-16 and colour type 0, 2, 3, 4 or 6",
                                  f"bit depth {depth}, colour type {color}", COPY_AGAIN, "damaged")
            return _PngLayout(w, h, depth, color, interlace, sbit, exif, text)
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
    refusal = None
    ic = codec("imagecodecs")
    if ic is not None and hasattr(ic, "png_decode"):
        # libpng reads every file, also those Pillow decodes: it is the one of the two that
        # refuses image data which ends rows early or fails its checksums.
        samples, refusal = _libpng(fh, ic)
        decoded = _png8_pixels(samples, layout) if samples is not None and _libpng_takes(layout) else None
        del samples
        if decoded is not None:
            return decoded
    sbit = layout.sbit[0] if layout.sbit and layout.color_type == 0 else None
    result = decode_pillow(path, fh, head, size, complete=True, sbit=sbit)
    if refusal is not None:
        # Pillow read what libpng refused: image data that ends rows early (Pillow leaves
        # the missing rows black), a wrong zlib or IDAT checksum. Not a film to screen.
        raise image_error(path, f"the PNG image data does not decode (libpng: {short(refusal)})",
                          "complete PNG image data", f"{size:,} bytes whose image data is damaged or cut short",
                          COPY_AGAIN, "damaged")
    return result


#: 8-bit colour types :func:`_decode_png8` takes: (Pillow's mode, channels libpng returns; 0: a 2-D array)
_PNG8_MODES = {0: ("L", 0), 4: ("LA", 2), 2: ("RGB", 3), 6: ("RGBA", 4)}


def _libpng(fh, ic) -> tuple[np.ndarray | None, Exception | None]:
    """``imagecodecs.png_decode`` (libpng) of the whole file: ``(samples, None)``;
    ``(None, the exception)`` when libpng refuses the data; ``(None, None)`` when it
    decodes but warns (an ICC profile that does not fit the image, say: Pillow, which
    says nothing of it, then decodes the file, so that the row's warnings stay as they
    were)."""
    fh.seek(0)
    data = fh.read()
    try:
        with library_warnings() as caught:
            samples = ic.png_decode(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- libpng's refusal of damaged data
        return None, e
    return (None, None) if caught else (samples, None)


def _libpng_takes(layout: _PngLayout) -> bool:
    """Whether libpng's samples become the film (:func:`_png8_pixels`): 8-bit gray, gray +
    alpha, RGB or RGBA, not interlaced, without eXIf or text chunks (they can carry an
    orientation that Pillow applies). The others are Pillow's to decode.

    Why. libpng inflates the image data in larger pieces than Pillow's decoder: 7.4
    against 10.4 ms a film on the 1024-px PNG films of ../shared/data/cxr (AMD EPYC, one
    thread), the largest part of decoding them."""
    return (layout.bit_depth == 8 and layout.color_type in _PNG8_MODES and layout.interlace == 0
            and layout.exif is None and not layout.text)


def _png8_pixels(samples: np.ndarray, layout: _PngLayout):
    """What the Pillow path returns for the same file, bit for bit, from libpng's 8-bit
    ``samples``: float32 ``v / 255`` of the gray channel, or the BT.601 luma of RGB over
    255 (alpha ignored); Pillow's mode name, depth 8, no notes. None when the samples
    are not laid out as IHDR says (a tRNS chunk expanded to an alpha channel): Pillow
    decodes those."""
    mode, channels = _PNG8_MODES[layout.color_type]
    want = (layout.height, layout.width) + ((channels,) if channels else ())
    if samples.shape != want or samples.dtype != np.uint8:
        return None
    if channels == 0:
        pixels = scaled(samples, 255)
    elif channels == 2:
        pixels = scaled(samples[..., 0], 255)
    else:
        pixels = luma_scaled(samples, 255)
    return pixels, "png", mode, 8, []


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
