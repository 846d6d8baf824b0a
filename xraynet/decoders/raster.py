"""PNG, JPEG, TIFF, BMP, GIF and WebP files: Pillow first.

See :func:`xraynet.imaging.decode` for what comes out.
"""
from __future__ import annotations

import threading
import warnings as _warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import (COPY_AGAIN, check_pixels, MAX_PIXELS, SIGNATURES, describe, image_error, luma, minmax, os_error, short,
               too_large)

_OPEN_LOCK = threading.Lock()


def _pillow_gray(img: Image.Image, path) -> tuple[np.ndarray, int]:
    """Grayscale float32 in [0, 1] and the source bit depth of a loaded Pillow image."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32), 1
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0, 8
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.float32) / 255.0, 8
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return luma(np.asarray(img)) / 255.0, 8
    if mode in ("P", "PA", "CMYK", "YCbCr"):
        # Pillow's own conversion to RGB resolves the palette / inks; the luma
        # is then taken in float rather than Pillow's rounded "L".
        return luma(np.asarray(img.convert("RGB"))) / 255.0, 8
    if mode.startswith("I;16"):
        # Straight from the 16-bit samples: converting to "L" first would keep
        # only the top 8 bits of a 16-bit radiograph.
        return np.asarray(img).astype(np.float32) / 65535.0, 16
    if mode == "I":
        a = np.asarray(img)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            # 16-bit sources opened as 32-bit integers by some plugins.
            return a.astype(np.float32) / 65535.0, 16
        return minmax(a), 32
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if np.isfinite(a).all() and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return a.copy(), 32
        return minmax(a), 32
    raise image_error(path, f"unsupported pixel mode {mode!r}",
                       "a grayscale, RGB, RGBA, palette, CMYK, 16-bit or float image", repr(mode),
                       "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")


def decode_raster(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, str, int, list[str]]:
    # Pillow warns above 89 M pixels and raises above twice that; xraynet
    # applies its own limit (MAX_PIXELS) right after opening instead. The
    # warning filters are process-global and training decodes in threads, so
    # one lock keeps two opens from saving and restoring them interleaved
    # (opening reads only the header; decoding, the slow part, runs unlocked).
    with _OPEN_LOCK, _warnings.catch_warnings():
        _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError as e:
            raise image_error(path, f"too many pixels ({short(e)})", f"at most {MAX_PIXELS:,} pixels",
                               "more than Pillow's limit", "Downscale the image before screening it",
                               "too_large") from None
        except UnidentifiedImageError:
            known = next((name for sig, name in SIGNATURES if head.startswith(sig)), None)
            if known is not None:
                raise image_error(path, f"starts like a {known} image but its header is incomplete",
                                   f"a complete {known} file", f"{size} bytes", COPY_AGAIN, "truncated") from None
            raise image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                               describe(head, size), "Remove the file from the folder or convert it",
                               "not_an_image") from None
        except OSError as e:
            if e.errno is not None:
                raise os_error(path, e) from None
            # Pillow's own "Truncated File Read" while parsing the header.
            known = next((name for sig, name in SIGNATURES if head.startswith(sig)), "image")
            raise image_error(path, f"the {known} header ends early ({short(e)})", f"a complete {known} file",
                               f"{size} bytes", COPY_AGAIN, "truncated") from None
    fmt = (img.format or "unknown").lower()
    w, h = img.size
    check_pixels(path, w, h)
    try:
        # Pillow decodes lazily: load() now so broken pixel data fails here,
        # with the file named, and not later inside preprocessing.
        img.load()
    except MemoryError:
        raise
    except OSError as e:
        if e.errno is not None:  # the disk failed, not the data
            raise os_error(path, e) from None
        raise image_error(path, f"the {fmt.upper()} header reads but decoding fails ({short(e)})",
                           f"a complete {fmt.upper()} file", f"{size} bytes that end early or are damaged",
                           COPY_AGAIN, "truncated") from None
    except Exception as e:  # noqa: BLE001 -- format plugins raise many types on damaged data
        raise image_error(path, f"the {fmt.upper()} header reads but decoding fails "
                           f"({type(e).__name__}: {short(e)})", f"a complete {fmt.upper()} file",
                           f"{size} bytes that end early or are damaged", COPY_AGAIN, "truncated") from None
    mode = img.mode
    if img.getexif().get(0x0112, 1) != 1:
        # Phone photos of films and some exports store the rotation in EXIF only.
        img = ImageOps.exif_transpose(img)
    pixels, depth = _pillow_gray(img, path)
    return pixels, fmt, mode, depth, []


