"""JPEG 2000 files: JP2 (the boxed file format) and bare codestreams (.j2k, .j2c).

imagecodecs (OpenJPEG) decodes them at the precision and sign the codestream's SIZ
marker gives each component (ITU-T T.800 A.5.1), or, where a Palette box (pclr)
maps the samples, the palette's own precision (I.5.3.4); the samples become
grayscale as every other format's do (:mod:`.samples`): unsigned ones by their bit
depth, signed ones min-max stretched as signed TIFF, colour as BT.601 luma of the
first three components, alpha ignored. A JP2 file whose colour space box names a
YCC or CIELab space (enumerated, or an ICC profile's) keeps its first component,
the luma or lightness; one in CMY(K) inks is ``unsupported_mode``.

Why not Pillow: its JPEG 2000 plugin gives 9- to 16-bit colour and gray+alpha
images as 8-bit RGB(A) and LA, and the brightest samples of a 16-bit film (from
about 65,471 of 65,535) came out black: an ``ok`` row with its burned-in
markers inverted. It also offsets signed samples by half the range, so a signed
film filled half of [0, 1] and was called ``nearly_uniform``. Pillow stays the
decoder when imagecodecs is missing, for the files it reads right (one
component, or at most 8 unsigned bits a sample).

Before decoding, every size the file declares (the JP2 image header box, the
SIZ marker) is checked against :data:`~xraynet.decoders.MAX_PIXELS`, the image
header must agree with the codestream on its components, and a codestream that
ends before its tile-parts do (their SOT lengths, T.800 A.4.2), or without its
end marker (EOC) where the lengths cannot be followed, is ``truncated``:
OpenJPEG decodes some cut codestreams without an error, filling what is missing
with grey. Valid files imagecodecs does not read (sub-sampled components,
components of different precision or sign) are ``unsupported_codec``. Files are
decoded at full size; :func:`xraynet.imaging.load` area-averages them after.
"""
from __future__ import annotations

import numpy as np

from .. import COPY_AGAIN, check_pixels, image_error, luma, minmax, row_blocks, short
from ..codestream import (codestream_span, declared_sizes, jp2_colourspace, jp2_ihdr, jp2_palette, lacks_end_marker,
                          siz_components, tile_parts_cut)
from .pillow import decode_pillow
from .samples import codec, int_gray, scaled

__all__ = ["JPEG2000_SIGNATURES", "decode_jpeg2000"]

#: A JP2 file's signature box (T.800 I.5.1) and a codestream's SOC + SIZ markers (A.4.1, A.5.1).
JPEG2000_SIGNATURES = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")

# Colour spaces whose first component is a lightness, by enumerated value (colr box, METH 1;
# T.800 Table I.10 and its JPX extension, T.801 Table M.25: the YCC family -- YCbCr 1-3,
# PhotoYCC, YCCK, sYCC, YPbPr, e-sYCC -- and CIELab / CIEJab) or ICC colour space signature
# (ICC.1 Table 19); and the subtractive ones (CMY, CMYK).
_LIGHTNESS_FIRST = {1: "YCbCr", 3: "YCbCr", 4: "YCbCr", 9: "YCbCr", 13: "YCCK", 14: "LAB", 18: "YCbCr", 19: "LAB",
                    22: "YCbCr", 23: "YCbCr", 24: "YCbCr", "icc:YCbr": "YCbCr", "icc:Lab": "LAB", "icc:Luv": "LAB",
                    "icc:YCC": "YCbCr", "icc:Yxy": "LAB"}
_SUBTRACTIVE = {11: "CMY", 12: "CMYK", "icc:CMY": "CMY", "icc:CMYK": "CMYK"}

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def decode_jpeg2000(path, fh, head: bytes, size: int):
    """A JPEG 2000 file; returns what :func:`~xraynet.decoders.raster.decode_raster` returns.

    ``format`` is "jpeg2000"; ``mode`` "L" or "I;16" (one component of up to 8 or of
    more bits), "LA", "RGB", "RGBA", or the colour space box's "YCbCr", "YCCK", "LAB";
    ``bit_depth`` the first component's precision (for one unsigned 16-bit component its
    stored depth, :func:`~.samples.stored_bits`). Raises ``too_large``, ``truncated``,
    ``damaged``, ``unsupported_mode`` (CMY and CMYK), ``unsupported_codec`` (what
    imagecodecs does not read; without imagecodecs, what Pillow reads wrong)."""
    fh.seek(0)
    data = fh.read()
    (width, height), components, space = _header(path, data, size)
    bits, signed = components[0][0], components[0][1]
    imagecodecs = codec("imagecodecs")
    if imagecodecs is None:
        if len(components) == 1 or (bits <= 8 and not any(c[1] for c in components)):
            return decode_pillow(path, fh, head, size, complete=True)
        raise image_error(path, f"a {bits}-bit JPEG 2000 image of {len(components)} components, which only "
                          "imagecodecs decodes at full precision", "imagecodecs installed", "it is not installed",
                          "Install it: pip install imagecodecs (or convert the file to a 16-bit PNG)",
                          "unsupported_codec")
    samples = _decode(path, imagecodecs, data, space, size)
    if samples.shape[:2] != (height, width) or samples.dtype.kind not in "iu":
        raise image_error(path, "the decoded JPEG 2000 image does not match its header",
                          f"{width}x{height} integer samples", f"{samples.shape} {samples.dtype}", COPY_AGAIN,
                          "damaged")
    mode = "I;16" if len(components) == 1 and bits > 8 else _MODES.get(len(components), "RGBA")
    if space in _LIGHTNESS_FIRST and len(components) >= 3:
        mode = _LIGHTNESS_FIRST[space]
    if samples.ndim == 2 or samples.shape[2] < 3 or mode in _LIGHTNESS_FIRST.values():
        gray = samples if samples.ndim == 2 else samples[..., 0]
        if bits > 16 and not signed:
            return scaled(gray, (1 << bits) - 1), "jpeg2000", mode, bits, []
        # 16-bit samples by their stored depth (12-bit detector data in 16 bits), as PNG's
        pixels, depth = int_gray(gray, bits=bits if bits < 16 and not signed else None)
        return pixels, "jpeg2000", mode, depth if bits == 16 and not signed else bits, []
    return _colour_gray(samples, components), "jpeg2000", mode, bits, []


def _decode(path, imagecodecs, data: bytes, space, size: int) -> np.ndarray:
    """imagecodecs.jpeg2k_decode of the file's bytes; its failures as the report's reasons."""
    if space in _LIGHTNESS_FIRST and isinstance(space, int):
        # imagecodecs turns sYCC into RGB (clipping what leaves the RGB cube) and leaves the
        # other spaces as they are: labelled sRGB, every space comes back as stored.
        data = _relabelled(data, jp2_colourspace(data)[1])
    try:
        return imagecodecs.jpeg2k_decode(data, numthreads=1)
    except MemoryError:
        raise
    except NotImplementedError as e:  # valid files its OpenJPEG binding does not take apart
        raise image_error(path, f"a valid JPEG 2000 variant imagecodecs does not decode ({short(e)})",
                          "components of one size, precision and sign", "another layout",
                          "Convert the file to a 16-bit PNG or TIFF (e.g. opj_decompress -i FILE -o FILE.tif)",
                          "unsupported_codec") from None
    except Exception as e:  # noqa: BLE001 -- OpenJPEG's failures come as several types
        raise image_error(path, f"the JPEG 2000 header reads but decoding fails ({type(e).__name__}: {short(e)})",
                          "a complete JPEG 2000 file", f"{size:,} bytes of damaged data", COPY_AGAIN,
                          "damaged") from None


def _header(path, data: bytes, size: int):
    """((width, height), the components' (bits, signed, XRsiz, YRsiz) -- the Palette box's
    columns where there is one -- and the JP2 colour space or None) of a JPEG 2000 file's
    bytes, read without decoding; raises the report's errors for what the header already
    shows (module docstring)."""
    start, end = codestream_span(data) or (0, len(data))
    stream = data[start:end]
    cut = tile_parts_cut(stream) if stream.startswith(JPEG2000_SIGNATURES[1]) else None
    cut = lacks_end_marker(stream) if cut is None else cut
    try:
        sizes = declared_sizes(data)
    except ValueError as e:
        raise image_error(path, f"its JPEG 2000 header cannot be read ({short(e)})", "a complete JPEG 2000 file",
                          f"{size:,} bytes", COPY_AGAIN, "truncated" if cut else "damaged") from None
    for where, width, height in sizes:
        check_pixels(path, width, height, where.replace("the embedded ", "the "))
    if len({(w, h) for _, w, h in sizes}) > 1:
        raise image_error(path, "the JP2 image header box and the codestream disagree on the image size",
                          f"{sizes[-1][1]}x{sizes[-1][2]} (the codestream)", f"{sizes[0][1]}x{sizes[0][2]}",
                          COPY_AGAIN, "damaged")
    components = siz_components(data)
    if components is None:
        raise image_error(path, "its JPEG 2000 codestream has no complete SIZ marker", "a complete JPEG 2000 file",
                          f"{size:,} bytes", COPY_AGAIN, "truncated" if cut else "damaged")
    if cut:
        raise image_error(path, "the JPEG 2000 codestream ends before its last tile-part or end marker",
                          "a complete JPEG 2000 file", f"{size:,} bytes that end early", COPY_AGAIN, "truncated")
    _check_ihdr(path, data, components)
    space, _ = jp2_colourspace(data) or (None, None)
    if space in _SUBTRACTIVE and len(components) >= 3:
        raise image_error(path, f"a JPEG 2000 image in the {_SUBTRACTIVE[space]} colour space (printing inks)",
                          "a grayscale, RGB or YCC JPEG 2000 image", f"{_SUBTRACTIVE[space]} components",
                          "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")
    palette = jp2_palette(data)
    if palette:  # the decoder applies it: its columns are the samples
        components = [(bits, signed, 1, 1) for bits, signed in palette]
    return sizes[-1][1:], components, space


def _check_ihdr(path, data: bytes, components) -> None:
    """``damaged`` when a JP2 image header box (ihdr) disagrees with the codestream's SIZ on
    the number of components or, where it gives one depth for all (BPC not 255), on it."""
    ihdr = jp2_ihdr(data)
    if ihdr is None:
        return
    count, bpc = ihdr
    depths = {((c[0] - 1) | (0x80 if c[1] else 0)) for c in components}
    if count != len(components) or (bpc != 255 and depths != {bpc}):
        got = f"{count} component(s) of " + ("several depths" if bpc == 255 else
                                             f"{(bpc & 0x7F) + 1} bits{' signed' if bpc & 0x80 else ''}")
        raise image_error(path, "the JP2 image header box and the codestream disagree on the components",
                          f"{len(components)} component(s) as the codestream's SIZ marker says", got, COPY_AGAIN,
                          "damaged")


def _relabelled(data: bytes, pos: int) -> bytes:
    """``data`` (a JP2 file) with the enumerated colour space at ``pos`` (its colour
    specification box's EnumCS) set to sRGB (16), so that no decoder converts the components."""
    return data[:pos] + (16).to_bytes(4, "big") + data[pos + 4:]


def _colour_gray(samples: np.ndarray, components) -> np.ndarray:
    """BT.601 luma (h, w) float32 in [0, 1] of the first three components of ``samples``
    (h, w, c): each unsigned one divided by its own largest value (2**bits - 1) first;
    with any signed one, the luma of the values as they are, min-max stretched."""
    signed = any(c[1] for c in components[:3])
    scale = np.array([1.0 if signed else 1.0 / ((1 << c[0]) - 1) for c in components[:3]], np.float32)
    out = np.empty(samples.shape[:2], np.float32)
    for rows in row_blocks(out.shape):
        out[rows] = luma(samples[rows, :, :3].astype(np.float32) * scale)
    if signed:
        return minmax(out)
    np.clip(out, 0.0, 1.0, out=out)  # float rounding of 0.299 + 0.587 + 0.114 may pass 1 by an ulp
    return out
