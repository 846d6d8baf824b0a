"""JPEG: the marker segments walked to the first scan (SOF, JFIF, Adobe,
Exif) and the end-of-image marker looked for before any pixel is decoded;
8-bit DCT JPEG through Pillow, 12-bit, lossless, hierarchical and JPEG-LS
ones -- and 8-bit ones Pillow fails on -- through imagecodecs, then
pylibjpeg-libjpeg. After decoding, the scans of every Huffman-coded JPEG are
checked for missing or damaged image data (:mod:`xraynet.decoders.jpegscan`)."""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from .. import COPY_AGAIN, check_pixels, image_error, short, warning_entry
from ..jpegscan import charls_refuses, check_decoded
from .pillow import decode_pillow
from .samples import codec, exif_orientation, int_gray, luma_scaled, orient, tail

_SOF_NAMES = {
    0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive", 0xC3: "lossless",
    0xC5: "hierarchical sequential", 0xC6: "hierarchical progressive", 0xC7: "hierarchical lossless",
    0xC9: "arithmetic-coded sequential", 0xCA: "arithmetic-coded progressive", 0xCB: "arithmetic-coded lossless",
    0xCD: "hierarchical arithmetic-coded sequential", 0xCE: "hierarchical arithmetic-coded progressive",
    0xCF: "hierarchical arithmetic-coded lossless", 0xF7: "JPEG-LS",
}
# 8-bit variants Pillow (libjpeg-turbo's 8-bit API) decodes.
_PILLOW_SOF = (0xC0, 0xC1, 0xC2, 0xC9, 0xCA)


class JpegLayout(NamedTuple):
    """What the marker segments before the first scan say (see :func:`jpeg_layout`)."""

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


def jpeg_layout(fh, size: int) -> JpegLayout:
    """Walk the marker segments of a JPEG stream from SOI to the first SOS (ITU-T T.81
    B.1.1; JPEG-LS T.87), reading the frame header (SOFn) and the JFIF, Exif and
    Adobe segments."""
    found = {}
    pos = 2
    while True:
        fh.seek(pos)
        b = fh.read(4)
        if len(b) < 2:
            return JpegLayout("short", **found)
        if b[0] != 0xFF:
            # Stray bytes between segments: decoders skip to the next marker (libjpeg warns).
            fh.seek(pos)
            rest = fh.read(1 << 16)
            skip = rest.find(b"\xff")
            if skip < 0:
                if len(rest) < 1 << 16:
                    return JpegLayout("short", **found)
                return JpegLayout("bad", **found, problem=f"no marker in the 64 KiB after byte {pos:,}")
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
            return JpegLayout("bad", **found, problem=f"marker 0x{marker:02X} at byte {pos:,} before any scan")
        if len(b) < 4:
            return JpegLayout("short", **found)
        length = int.from_bytes(b[2:4], "big")
        if length < 2:
            return JpegLayout("bad", **found, problem=f"segment length {length} at byte {pos:,}")
        if pos + 2 + length > size:
            return JpegLayout("short", **found)
        if marker in _SOF_NAMES and "sof" not in found:
            data = fh.read(length - 2)
            if len(data) < 6:
                return JpegLayout("bad", **found, problem=f"a {len(data)}-byte frame header")
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
                return JpegLayout("bad", **found, problem="a scan (SOS) before any frame header (SOF)")
            return JpegLayout("scan", **found, scan=pos)
        pos += 2 + length


def _jpeg_has_end(fh, size: int, start: int) -> bool:
    """Whether the end-of-image marker (FF D9) follows byte ``start`` (the first scan).
    Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker
    (T.81 B.1.1.5; in JPEG-LS by a byte below 0x80), so FF D9 there is the real EOI."""
    if tail(fh, size, 1 << 16).find(b"\xff\xd9", max(0, start - max(0, size - (1 << 16)))) >= 0:
        return True
    pos, block = start, 1 << 20
    while pos < size:
        fh.seek(pos)
        data = fh.read(block + 1)
        if b"\xff\xd9" in data:
            return True
        pos += block
    return False


def _jpeg_variant(layout: JpegLayout) -> str:
    """``12-bit lossless JPEG``: the precision and coding process, for messages."""
    return f"{layout.precision}-bit {_SOF_NAMES.get(layout.sof, 'unknown')} JPEG"


def _jpeg_ycbcr(layout: JpegLayout) -> bool:
    """Whether 3 components hold YCbCr, by libjpeg's rule (jdapimin.c): JFIF says so;
    an Adobe segment says so by its transform flag; else component ids 'R', 'G', 'B' mean RGB."""
    if layout.jfif:
        return True
    if layout.adobe_transform is not None:
        return layout.adobe_transform != 0
    return layout.component_ids != b"RGB"


def _jpeg_decoders(layout: JpegLayout) -> list[tuple[str, object]]:
    """(name, decode(bytes) -> ndarray) of the installed decoders that read this JPEG
    variant, in order of preference."""
    out = []
    sof, p = layout.sof, layout.precision
    ic = codec("imagecodecs")
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
    lj = codec("libjpeg")
    if lj is not None and hasattr(lj, "decode"):
        # pylibjpeg-libjpeg returns the stored components: ask it for RGB when they are YCbCr.
        transform = 1 if layout.components == 3 and sof != 0xF7 and _jpeg_ycbcr(layout) else 0
        out.append(("libjpeg.decode", lambda data, t=transform: lj.decode(data, colour_transform=t)))
    return out


def decode_jpeg(path, fh, head: bytes, size: int, reduce=None):
    """A JPEG file; returns what :func:`~xraynet.decoders.raster.decode_raster` returns.
    ``reduce``: a :class:`~xraynet.decoders.Reduction`, honoured by the Pillow path (8-bit DCT)."""
    layout = jpeg_layout(fh, size)
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
            decoded = decode_pillow(path, fh, head, size, complete=True, reduce=reduce)
        except Exception as e:  # noqa: BLE001 -- any Pillow failure: the codecs below get their turn
            if getattr(e, "reason", None) in ("too_large", "unreadable"):
                raise
            pillow_error = e
        else:
            check_decoded(path, lambda: _read_all(fh), layout.sof)
            return decoded
    return _decode_jpeg_codecs(path, fh, size, layout, pillow_error)


def _read_all(fh) -> bytes:
    fh.seek(0)
    return fh.read()


def _decode_jpeg_codecs(path, fh, size: int, layout: JpegLayout, pillow_error):
    """The variants Pillow does not read (or failed on): the installed codecs in turn."""
    variant = _jpeg_variant(layout)
    decoders = _jpeg_decoders(layout)
    if not decoders:
        if pillow_error is not None:
            raise pillow_error
        installed = [name for name in ("imagecodecs", "libjpeg") if codec(name) is not None]
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
            if name == "imagecodecs.jpegls_decode" and charls_refuses(e):
                # pylibjpeg-libjpeg decodes JPEG-LS data CharLS finds invalid (a stream cut and
                # closed again) without an error: its image would be made up.
                break
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
    if a.size:
        check_decoded(path, lambda: _read_all(fh), layout.sof)
    depth = layout.precision
    if a.ndim == 2:
        # A 16-bit frame is a container like a 16-bit PNG: it often holds 12-bit data.
        pixels, depth = int_gray(a, bits=depth if depth < 16 else None)
        mode = "L" if layout.precision <= 8 else "I;16"
    elif a.shape[2] == 3:
        pixels = luma_scaled(a, (1 << depth) - 1)
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
    return orient(pixels, exif_orientation(layout.exif)), "jpeg", mode, depth, notes
