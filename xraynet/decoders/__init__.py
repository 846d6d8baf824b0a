"""What every file decoder shares: error messages, size limits, grey conversion
and the collection of library warnings.

:func:`xraynet.imaging.decode` picks the decoder by the file's content
(:mod:`.dicom` for DICOM, :mod:`.raster` for PNG, JPEG, TIFF and the other
raster formats); each returns grayscale float32 pixels in [0, 1], 0 = black.
"""
from __future__ import annotations

import logging
import re
import threading
import warnings as _warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError, message

#: Images with more pixels than this are refused ("too_large"): a 100 M pixel
#: image already needs 400 MB as float32, and real radiographs are < 20 M.
MAX_PIXELS = 100_000_000

#: How many bytes of a file the format detection looks at.
HEAD_BYTES = 1024

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SIGNATURES = (  # formats whose header we can recognise even when no decoder can open the file
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),  # classic, BigTIFF
    (b"BM", "BMP"),
)
COPY_AGAIN = "Copy the file again from its source, or remove it from the folder"
#: What a "not_an_image" message says was expected.
IMAGE_KINDS = "a PNG, JPEG, JPEG 2000, TIFF, BMP, GIF, WebP or DICOM file"


@dataclass
class Reduction:
    """A request to decode at reduced size (:func:`xraynet.imaging.decode` with ``min_side``).

    A decoder that can decode smaller while decoding (JPEG DCT scaling) may shrink
    the image by an integer ``scale`` that keeps its short side at least ``min_side``
    pixels, to ceil(size / scale) pixels; when it does, it sets ``full_size`` to the
    (width, height) of the stored image, upright (the report still gives the file's
    own size), and ``scale``. Decoders that cannot reduce ignore the request
    (:func:`area_reduce` then does what is left)."""

    min_side: int
    full_size: tuple[int, int] | None = None
    scale: int = 1

    def factor(self, width: int, height: int, allowed=None) -> int:
        """The largest integer factor that keeps ``min(width, height) // factor`` at least
        :attr:`min_side`, chosen among ``allowed`` (descending; None: any integer); 1 when none."""
        short = min(int(width), int(height))
        if allowed is None:
            return max(1, short // max(1, self.min_side))
        return next((k for k in allowed if short // k >= self.min_side), 1)


def area_reduce(pixels: np.ndarray, full_size: tuple[int, int], factor: int, scale: int = 1) -> np.ndarray:
    """Shrink a stored image of ``full_size`` = (width W, height H) by ``factor``.

    ``pixels``: float32, the image at 1/``scale`` (ceil(H / scale), ceil(W / scale)): the
    last row and column of a scaled JPEG cover less than ``scale`` stored pixels, so its
    true extent is W / scale x H / scale. Returns float32 (round(H / factor), round(W /
    factor)), each pixel the mean of the pixels whose centres fall in the part of the image
    it covers (Pillow's BOX filter on that exact extent: whole block means when ``factor``
    divides the size). The image's extent maps exactly onto the result, so nothing shifts
    or stretches at the far edges. ``pixels`` itself when it already has that size and
    extent."""
    from PIL import Image

    w, h = full_size
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    box = (0.0, 0.0, w / scale, h / scale)
    if size == (pixels.shape[1], pixels.shape[0]) and box[2:] == size:
        return pixels
    return resize_float(pixels, size, Image.Resampling.BOX, box)


def resize_float(pixels: np.ndarray, size: tuple[int, int], resample, box=None) -> np.ndarray:
    """float32 (h, w) ``pixels`` resized to ``size`` = (width, height) by Pillow on a 32-bit
    float ("F") image with the filter ``resample``; ``box`` = (x0, y0, x1, y1): the source
    region (default: all of it). Returns float32 (height, width)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize(size, resample, box=box), dtype=np.float32)


def image_error(path, what: str, expected: str, got: str, todo: str, reason: str) -> ImageError:
    return ImageError(message(path, what, expected, got, todo), reason, path)


def short(e: BaseException) -> str:
    """An embedded library message on one line (reports are CSV rows), cut to 200 characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def describe(head: bytes, size: int) -> str:
    """What a file that is no image looks like, for the error message."""
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    try:
        text = head[:200].decode("utf-8")
    except UnicodeDecodeError:
        return f"{size} bytes starting {head[:8]!r}"
    first = " ".join(text.split())[:40]
    return f"text ({first!r}...)" if first else "whitespace"


def too_large(path, n_pixels: int, shape: str) -> ImageError:
    return image_error(path, f"too many pixels ({shape}, {n_pixels:,} pixels)",
                        f"at most {MAX_PIXELS:,} pixels", f"{n_pixels:,}",
                        "Downscale the image before screening it (a possible decompression bomb is refused)",
                        "too_large")


def check_pixels(path, width: int, height: int, where: str = "") -> None:
    """Refuse ("too_large") a declared size above :data:`MAX_PIXELS`, before any
    pixel is decoded. ``where`` names the declaring header in the message
    (e.g. "the embedded JPEG 2000 codestream")."""
    n = int(width) * int(height)
    if n > MAX_PIXELS:
        raise too_large(path, n, f"{width}x{height}" + (f", declared by {where}" if where else ""))


def os_error(path, e: OSError) -> ImageError:
    if isinstance(e, FileNotFoundError):
        what, got = "does not exist", "no such file"
    elif isinstance(e, IsADirectoryError):
        what, got = "is a directory", "a directory"
    elif isinstance(e, PermissionError):
        what, got = "cannot be read (permission denied)", "no read permission"
    else:
        what, got = f"cannot be read ({e.strerror or e})", type(e).__name__
    return image_error(path, what, "a readable image file", got,
                        "Check the path, the permissions and the disk", "unreadable")


#: Elements per block when a whole-image conversion works through an image a
#: block of rows at a time: the temporaries (float32 or float64 copies of one
#: block) stay at a few MB instead of several bytes per pixel of the image.
BLOCK_ELEMENTS = 1 << 20


def row_blocks(shape: tuple[int, ...]):
    """Slices of axis 0 that cut an array of ``shape`` into blocks of about
    :data:`BLOCK_ELEMENTS` elements (at least one row each)."""
    per_row = 1
    for n in shape[1:]:
        per_row *= int(n)
    step = max(1, BLOCK_ELEMENTS // max(1, per_row))
    for start in range(0, int(shape[0]) if shape else 0, step):
        yield slice(start, start + step)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B, of ``rgb`` (..., C >= 3),
    any real dtype; channels past the third (alpha) are ignored.

    Returns float32 of shape ``rgb.shape[:-1]`` in the input's units (0-255
    for uint8 samples). Computed a block of rows at a time, so no float copy
    of all the channels exists at once (peak: the output plus a few MB)."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 3:
        return rgb[..., :3].astype(np.float32) @ _LUMA
    out = np.empty(rgb.shape[:-1], np.float32)
    for rows in row_blocks(out.shape):
        np.matmul(rgb[rows, ..., :3].astype(np.float32), _LUMA, out=out[rows])
    return out


def minmax(a: np.ndarray) -> np.ndarray:
    """Stretch ``a`` (any shape, any real dtype) to float32 in [0, 1]:
    ``(a - min) / (max - min)``, with min and max over the finite samples.

    NaN and infinite samples (possible in float TIFF) become 0 (black), not a
    crash; a constant (or all non-finite) array gives zeros. The arithmetic is
    float64 a block of rows at a time (exact for 32-bit integers and large
    offsets), so besides the float32 result only a few MB are allocated; the
    input is not modified."""
    a = np.asarray(a)
    if a.ndim == 0:
        return minmax(a.reshape(1)).reshape(())
    out = np.empty(a.shape, np.float32)
    integer = a.dtype.kind in "biu"
    lo, hi, any_finite, all_finite = np.inf, -np.inf, False, True
    if integer:
        if a.size:
            lo, hi, any_finite = float(a.min()), float(a.max()), True
    else:
        for rows in row_blocks(a.shape):
            block = a[rows]
            finite = np.isfinite(block)
            if finite.all():
                if block.size:
                    lo, hi, any_finite = min(lo, float(block.min())), max(hi, float(block.max())), True
            else:
                all_finite = False
                if finite.any():
                    kept = block[finite]
                    lo, hi, any_finite = min(lo, float(kept.min())), max(hi, float(kept.max())), True
    if not any_finite or hi <= lo:
        out[...] = 0.0
        return out
    span = hi - lo
    for rows in row_blocks(a.shape):
        block = a[rows].astype(np.float64)
        block -= lo
        block /= span
        if not all_finite:
            # Non-finite samples go to 0 (the old nan_to_num(nan=lo) of the whole image).
            block[~np.isfinite(block)] = 0.0
        out[rows] = block
    return out


# ------------------------------------------------- warnings of decoding libraries
# pydicom, Pillow and the codec libraries report odd-but-decodable files with
# ``warnings.warn``. Printed to stderr they would break a cron run's silence and
# say nothing about which file they concern, so while a decoder runs they are
# collected for that file instead and end up in its report row. Decoding runs
# in several threads at once and ``warnings.catch_warnings`` is process-wide,
# so the collection is per thread: one hook, installed once, hands each warning
# to the list of the thread that issued it, or to the previous hook when that
# thread collects nothing.
_LIBRARY_MODULES = r"(pydicom|PIL|tifffile|imagecodecs|pylibjpeg|libjpeg|openjpeg|rle|xraynet\.decoders)(\.|$)"
# tifffile and imagecodecs (libpng's warnings, for one) report odd files through
# the ``logging`` module instead (loggers "tifffile", "imagecodecs"); with no
# handler configured those records would reach stderr through logging's
# last-resort handler.
_LIBRARY_LOGGERS = ("tifffile", "imagecodecs")
# What a library says about how it was called, not about the file (libpng, when imagecodecs reads
# an interlaced 16-bit PNG whole): dropped, so that a row's warnings concern its file only.
_ABOUT_THE_CALLER = re.compile(r"Interlace handling should be turned on when using png_read_image")
_local = threading.local()
_install_lock = threading.Lock()
_previous_showwarning = None


def _showwarning(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_local, "sink", None)
    if sink is not None:
        if not _ABOUT_THE_CALLER.search(str(message)):
            sink.append((category, " ".join(str(message).split())))
    elif _previous_showwarning is getattr(_warnings, "_showwarning_orig", None):
        # What warnings.warn itself does when no hook is set (it may be recording, under
        # catch_warnings(record=True), rather than printing).
        _warnings._showwarnmsg_impl(_warnings.WarningMessage(message, category, filename, lineno, file, line))
    else:
        _previous_showwarning(message, category, filename, lineno, file, line)


class _LogToSink(logging.Filter):
    """A logger filter that hands a record to the collecting thread's list
    (as a UserWarning) and stops it there; records of other threads pass on
    unchanged. A filter, not a handler, because a logger's filters run before
    any handler and before propagation to the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_local, "sink", None)
        if sink is None:
            return True
        if not _ABOUT_THE_CALLER.search(record.getMessage()):
            sink.append((UserWarning, " ".join(record.getMessage().split())))
        return False


def _install_log_filters() -> None:
    with _install_lock:
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _LogToSink) for f in logger.filters):
                logger.addFilter(_LogToSink())


def _install() -> None:
    """Put the hook and the "always" filter in place, again if a ``catch_warnings``
    block (pytest runs every test in one) has since restored the old ones."""
    global _previous_showwarning
    with _install_lock:
        if _warnings.showwarning is not _showwarning:
            _previous_showwarning = _warnings.showwarning
            _warnings.showwarning = _showwarning
        # "always": a library's warning must reach every file it concerns, not
        # only the first one (the default action shows one per code location).
        if not any(f[0] == "always" and f[3] is not None and f[3].pattern == _LIBRARY_MODULES
                   for f in _warnings.filters):
            _warnings.filterwarnings("always", module=_LIBRARY_MODULES)


@contextmanager
def library_warnings():
    """Collect the warnings that decoding libraries issue in this thread.

    ``with library_warnings() as caught: ...`` -- ``caught`` fills with
    ``(category, message on one line)`` pairs instead of their being printed:
    ``warnings.warn`` calls, and the records tifffile logs at WARNING level or
    above (category UserWarning). Nested use is allowed (the inner block
    collects its own)."""
    _install()
    _install_log_filters()
    outer = getattr(_local, "sink", None)
    caught: list = []
    _local.sink = caught
    try:
        yield caught
    finally:
        _local.sink = outer


def warning_entry(source: str, message: str) -> str:
    """A library warning as one entry of a report's ``warnings`` cell:
    ``decoder_warning (<source>: <message>)``, on one line, without the ``;``
    that separates entries, cut to 160 characters."""
    text = " ".join(message.replace(";", ",").split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"decoder_warning ({source}: {text})"

