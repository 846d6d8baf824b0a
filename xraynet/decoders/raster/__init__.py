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

* **PNG**: the chunks are walked (IHDR, sBIT, eXIf, text keywords, up to IEND).
  16-bit PNGs go to ``imagecodecs.png_decode`` (Pillow reduces 16-bit gray+alpha,
  RGB and RGBA to 8 bits); libpng also checks every other PNG's image data and
  decodes most 8-bit ones, Pillow the rest (see :mod:`.png`).
* **JPEG**: the marker segments are walked to the first scan (SOF, JFIF, Adobe,
  Exif), and the end-of-image marker is looked for. 8-bit DCT JPEG (baseline,
  extended, progressive, arithmetic) goes to Pillow; 12-bit, lossless (SOF3),
  hierarchical and JPEG-LS (SOF55) ones -- and 8-bit ones Pillow fails on -- to
  imagecodecs (libjpeg-turbo 3, liblj92, CharLS), then pylibjpeg-libjpeg.
* **TIFF**: tifffile (with imagecodecs for the compressions), which returns the
  stored samples at full precision; Pillow when tifffile cannot read the variant.
* **WebP**: Pillow, with the RIFF length and the image chunk's tail checked
  (:mod:`.webp`).
* **JPEG 2000** (JP2 files and bare codestreams): imagecodecs (OpenJPEG), at each
  component's own precision and sign, after the declared sizes and the end
  marker are checked (:mod:`.jpeg2000`).
* Everything else (BMP, GIF...): Pillow.

Decoded samples become grayscale float32 a block of rows at a time, so that
besides the source samples and the float32 result only a few MB are allocated
(no float copy of all channels, no float64 image).

Modules: :mod:`.png`, :mod:`.jpeg`, :mod:`.tiff`, :mod:`.webp` and :mod:`.jpeg2000` read their format's
structure and pick its decoder; :mod:`.pillow` decodes the rest and is the
fallback of the others; :mod:`.samples` turns samples of any depth into
grayscale and applies the Orientation tag.
"""
from __future__ import annotations

import numpy as np

from .. import Reduction
from .jpeg import decode_jpeg
from .jpeg2000 import JPEG2000_SIGNATURES, decode_jpeg2000
from .pillow import decode_pillow
from .png import PNG_SIGNATURE, decode_png
from .samples import STORED_BITS, orient, stored_bits
from .tiff import TIFF_SIGNATURES, decode_tiff
from .webp import WEBP_SIGNATURE, decode_webp

__all__ = ["STORED_BITS", "decode_raster", "orient", "stored_bits"]


def decode_raster(path, fh, head: bytes, size: int, reduce: Reduction | None = None
                  ) -> tuple[np.ndarray, str, str, int, list[str]]:
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

    * integers: ``v / (2**bits - 1)`` (:func:`~.samples.int_gray`); floats: as they are
      when within [0, 1], else min-max; colour: ITU-R BT.601 luma
      (0.299 R + 0.587 G + 0.114 B) in float32; alpha ignored; palette and CMYK
      resolved to RGB first; multi-frame files: the first frame.
    * TIFF PhotometricInterpretation WhiteIsZero is inverted at every bit depth.

    ``reduce``: a :class:`~xraynet.decoders.Reduction`; 8-bit DCT JPEGs are then
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's ``draft``)
    when the short side stays at least ``reduce.min_side``, and ``reduce.full_size``
    says the stored size. Other formats decode at full size.

    Raises :class:`~xraynet.errors.ImageError`: ``too_large`` (any declared size
    over :data:`~xraynet.decoders.MAX_PIXELS`, checked before decoding),
    ``truncated`` (the file ends before its own structure does: PNG without
    IEND, JPEG without EOI, TIFF directory or strips past the end), ``damaged``
    (complete, but the data does not decode), ``unsupported_codec`` (a valid
    variant no installed decoder reads; the message names the package),
    ``unsupported_mode``, ``not_an_image``, ``unreadable``.
    """
    if head.startswith(PNG_SIGNATURE):
        return decode_png(path, fh, head, size)
    if head.startswith(b"\xff\xd8\xff"):
        return decode_jpeg(path, fh, head, size, reduce)
    if head.startswith(TIFF_SIGNATURES):
        return decode_tiff(path, fh, head, size)
    if head[:4] == WEBP_SIGNATURE[0] and head[8:12] == WEBP_SIGNATURE[1]:
        return decode_webp(path, fh, head, size)
    if head.startswith(JPEG2000_SIGNATURES):
        return decode_jpeg2000(path, fh, head, size)
    return decode_pillow(path, fh, head, size)

