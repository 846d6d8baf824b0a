"""What every file decoder shares: error messages, size limits, grey conversion
and the collection of library warnings.

:func:`xraynet.imaging.decode` picks the decoder by the file's content
(:mod:`.dicom` for DICOM, :mod:`.raster` for PNG, JPEG, TIFF and the other
raster formats); each returns grayscale float32 pixels in [0, 1], 0 = black.
"""
from __future__ import annotations

import threading
import warnings as _warnings
from contextlib import contextmanager

import numpy as np

from ..errors import ImageError

#: Images with more pixels than this are refused ("too_large"): a 100 M pixel
#: image already needs 400 MB as float32, and real radiographs are < 20 M.
MAX_PIXELS = 100_000_000

#: How many bytes of a file the format detection looks at.
HEAD_BYTES = 1024

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SIGNATURES = (  # formats whose header we can recognise even when no decoder can open the file
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)
COPY_AGAIN = "Copy the file again from its source, or remove it from the folder"


def image_error(path, what: str, expected: str, got: str, todo: str, reason: str) -> ImageError:
    return ImageError(f"{path}: {what}. Expected {expected}, got {got}. {todo}.", reason, path)


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


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        # NaN/inf samples (possible in float TIFF) become black, not a crash.
        a = np.where(finite, a, np.nan)
        lo, hi = (np.nanmin(a), np.nanmax(a)) if finite.any() else (0.0, 0.0)
        a = np.nan_to_num(a, nan=lo)
    else:
        lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)




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
_local = threading.local()
_install_lock = threading.Lock()
_previous_showwarning = None


def _showwarning(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_local, "sink", None)
    if sink is None:
        return _previous_showwarning(message, category, filename, lineno, file, line)
    sink.append((category, " ".join(str(message).split())))


def _install() -> None:
    global _previous_showwarning
    with _install_lock:
        if _previous_showwarning is not None:
            return
        _previous_showwarning = _warnings.showwarning
        _warnings.showwarning = _showwarning
        # "always": a library's warning must reach every file it concerns, not
        # only the first one (the default action shows one per code location).
        _warnings.filterwarnings("always", module=_LIBRARY_MODULES)


@contextmanager
def library_warnings():
    """Collect the warnings that decoding libraries issue in this thread.

    ``with library_warnings() as caught: ...`` -- ``caught`` fills with
    ``(category, message on one line)`` pairs instead of their being printed.
    Nested use is allowed (the inner block collects its own)."""
    _install()
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
