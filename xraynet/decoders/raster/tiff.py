"""TIFF: the first image file directory and every strip or tile checked
against the file's length, and every size it declares (embedded JPEG and
JPEG 2000 streams included) against the pixel limit, before any pixel is
decoded; then tifffile (with imagecodecs for the compressions), which
returns the stored samples at full precision, or Pillow for the variants
tifffile cannot read."""
from __future__ import annotations

import io
import struct

import numpy as np

from ...errors import ImageError
from .. import COPY_AGAIN, check_pixels, image_error, luma, minmax, os_error, row_blocks, short
from ..jpegscan import scan_shortfall
from .jpeg import jpeg_layout
from .pillow import decode_pillow
from .samples import codec, float_gray, int_gray, luma_scaled, orient, stored_bits

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Compressions tifffile decodes without imagecodecs (zlib, deflate, packbits, LZMA).
_TIFF_WITHOUT_IMAGECODECS = {1, 8, 32946, 50013, 32773, 34925}
_TIFF_JPEG = {6, 7, 33007, 34892}
_TIFF_JPEG_STREAMS = {7, 34892}  # new-style JPEG (Technical Note 2) and DNG lossy JPEG: one JPEG stream a strip
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
    layout = jpeg_layout(io.BytesIO(data), len(data))
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
    if compression in _TIFF_JPEG_STREAMS:
        _check_jpeg_streams(path, fh, page, offsets.tolist(), counts.tolist())


def _check_jpeg_streams(path, fh, page, offsets: list, counts: list) -> None:
    """Each strip or tile of a JPEG-compressed TIFF (TIFF Technical Note 2) is a JPEG stream,
    abbreviated when the JPEGTables tag holds its tables. libjpeg decodes one that stops early
    without an error, filling the rest of the strip with gray: "truncated" (or "damaged") when
    its scans lack image data or it lacks its end-of-image marker
    (:func:`~xraynet.decoders.jpegscan.scan_shortfall`; bytes after the marker, inside the
    strip's byte count, are allowed)."""
    tables = bytes(page.jpegtables or b"")
    prefix = tables[:-2] if tables.startswith(b"\xff\xd8") and tables.endswith(b"\xff\xd9") else b""
    for index, (offset, count) in enumerate(zip(offsets, counts)):
        if count <= 0:
            continue
        fh.seek(offset)
        data = fh.read(count)
        where = f"TIFF strip or tile {index}"
        found = scan_shortfall(prefix + data[2:] if prefix and data.startswith(b"\xff\xd8") else data)
        if found is not None:
            raise image_error(path, f"{where}: {found.what}", "a complete JPEG stream in every strip or tile",
                              "part of the strip's image data, which decoders fill in without an error",
                              COPY_AGAIN, found.reason)


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
            return float_gray(gray, invert=photometric == 0, own=channels == 1), mode, a.dtype.itemsize * 8
        pixels, depth = int_gray(gray, bits=bits if bits < 16 else None, invert=photometric == 0)
        return pixels, mode, depth
    if photometric in (2, 6):
        if floating:
            return float_gray(luma(a), own=True), mode, a.dtype.itemsize * 8
        if a.dtype.kind not in "ub":
            return minmax(luma(a)), mode, a.dtype.itemsize * 8
        if bits == 16 and a.size:
            bits = stored_bits(int(a[..., :3].max()))[0]  # 12-bit data in a 16-bit container, as for gray
        return luma_scaled(a, (1 << bits) - 1), mode, bits
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


def decode_tiff(path, fh, head: bytes, size: int):
    """A TIFF file; returns what :func:`~xraynet.decoders.raster.decode_raster` returns."""
    _check_tiff_header(path, fh, head, size)
    tifffile = codec("tifffile")
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
    """The first full-resolution page of an open tifffile.TiffFile (see :func:`decode_tiff`)."""
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
    elif compression not in _TIFF_WITHOUT_IMAGECODECS and codec("imagecodecs") is None:
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
                                 None if codec("imagecodecs") is not None else "pip install imagecodecs")
    pixels, mode, depth = _tiff_gray(path, page, shaped)
    del shaped
    orientation = page.tags.get(274)
    orientation = int(orientation.value) if orientation is not None else 1
    return orient(pixels, orientation), "tiff", mode, depth, []


def _compression_name(page) -> str:
    """``LZW (5)``: the page's compression by name and number, for messages."""
    try:
        return f"{page.compression.name} ({int(page.compression)})"
    except (AttributeError, ValueError):
        return str(int(page.compression))


def _tiff_damaged(path, e: Exception, size: int):
    """``damaged``: a TIFF structure tifffile cannot parse."""
    return image_error(path, f"the TIFF structure cannot be read ({type(e).__name__}: {short(e)})",
                       "a valid TIFF file", f"{size:,} bytes that do not parse", COPY_AGAIN, "damaged")


def _tiff_with_pillow(path, fh, head: bytes, size: int, why: str, install: str):
    """A TIFF variant tifffile cannot read, through Pillow (libtiff); ``unsupported_codec``
    naming ``install`` when Pillow cannot read it either."""
    try:
        return decode_pillow(path, fh, head, size, complete=True, tiff=True)
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
