"""Decoding through Pillow: every raster format without a decoder of its own
here (BMP, GIF, WebP, JPEG 2000 files...), 8-bit DCT JPEG, the PNG below 16
bits that libpng does not decode (:mod:`.png`), and the TIFF variants tifffile
cannot read. Pillow's failures become the
report's reasons (``truncated``, ``damaged``, ``too_large``...); its images
become grayscale a block of rows at a time."""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import (COPY_AGAIN, IMAGE_KINDS, MAX_PIXELS, SIGNATURES, Reduction, check_pixels, describe, image_error, luma,
               os_error, row_blocks, short)
from .samples import float_gray, int_gray, orient

_PILLOW_BLOCK_MODES = {"1": 1, "L": 8, "LA": 8, "La": 8, "RGB": 8, "RGBA": 8, "RGBX": 8, "RGBa": 8, "P": 8,
                       "PA": 8, "CMYK": 8, "YCbCr": 8}


def _pillow_gray(img: Image.Image, path, sbit: int | None = None, invert: bool = False) -> tuple[np.ndarray, int]:
    """Grayscale float32 (h, w) in [0, 1] and the source bit depth of a loaded Pillow image.

    8-bit modes are converted a block of rows at a time (Pillow keeps RGB as 4 bytes a
    pixel; a full NumPy copy would add 3 more): "1" -> 0/1, "L" -> v / 255, "LA" -> the
    gray channel, RGB(A) -> BT.601 luma / 255, palette, CMYK and YCbCr through Pillow's
    own conversion to RGB (it resolves the palette / inks), then luma in float.
    16-bit ("I;16...") and 32-bit ("I") integers: :func:`int_gray` (never squeezed
    through 8 bits); "F": :func:`float_gray`. ``invert``: WhiteIsZero still to be applied
    (Pillow applies it itself only for modes "1" and "L")."""
    mode = img.mode
    w, h = img.size
    if mode in _PILLOW_BLOCK_MODES:
        out = np.empty((h, w), np.float32)
        for rows in row_blocks((h, w)):
            top, bottom = rows.start, min(rows.stop, h)
            part = img.crop((0, top, w, bottom))
            if mode in ("P", "PA", "CMYK", "YCbCr"):
                part = part.convert("RGB")
            a = np.asarray(part)
            if mode == "1":
                out[top:bottom] = a
            elif a.ndim == 2:
                np.divide(a, np.float32(255.0), out=out[top:bottom])
            elif mode in ("LA", "La"):
                np.divide(a[..., 0], np.float32(255.0), out=out[top:bottom])
            else:
                out[top:bottom] = luma(a)
                out[top:bottom] /= np.float32(255.0)
        return out, _PILLOW_BLOCK_MODES[mode]
    if mode.startswith("I;16") or mode == "I":
        return int_gray(np.asarray(img), sbit=sbit, invert=invert)
    if mode == "F":
        return float_gray(np.asarray(img), invert=invert), 32
    raise image_error(path, f"unsupported pixel mode {mode!r}",
                      "a grayscale, RGB, RGBA, palette, CMYK, 16-bit or float image", repr(mode),
                      "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")


def decode_pillow(path, fh, head: bytes, size: int, *, complete: bool | None = None, sbit: int | None = None,
                  tiff: bool = False, reduce: Reduction | None = None, orientation: bool = True):
    """Decode with Pillow; returns what :func:`~xraynet.decoders.raster.decode_raster` returns.
    ``complete``: the caller has checked that the file is whole (then any decoding failure is
    ``damaged``); None: nothing is known, and Pillow's "truncated" decides. ``sbit``: the
    significant bits a 16-bit PNG declares. ``tiff``: apply WhiteIsZero where Pillow does not.
    ``reduce``: decode a JPEG at reduced size (:func:`_draft`); other formats ignore it.
    ``orientation``: apply the Exif Orientation tag (False: a PNG whose eXIf chunk fails its
    checksum, which Pillow would still read)."""
    with _open(path, fh, head, size, complete) as img:
        fmt = (img.format or "unknown").lower()
        w, h = img.size
        check_pixels(path, w, h, f"the {fmt.upper()} header")
        scale = _draft(img, reduce)
        try:
            # Pillow decodes lazily: load() now so broken pixel data fails here,
            # with the file named, and not later inside preprocessing.
            img.load()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 -- format plugins raise many types on damaged data
            if isinstance(e, OSError) and e.errno is not None:  # the disk failed, not the data
                raise os_error(path, e) from None
            cut = not complete and "truncated" in str(e).lower()
            detail = short(e) if isinstance(e, OSError) else f"{type(e).__name__}: {short(e)}"
            raise image_error(path, f"the {fmt.upper()} header reads but decoding fails ({detail})",
                              f"a complete {fmt.upper()} file",
                              f"{size:,} bytes that end early" if cut else f"{size:,} bytes of damaged data",
                              COPY_AGAIN, "truncated" if cut else "damaged") from None
        mode = img.mode
        try:
            turn = img.getexif().get(0x0112, 1) if orientation else 1
        except Exception:  # noqa: BLE001 -- a damaged Exif block leaves the pixels usable
            turn = 1
        # Pillow inverts WhiteIsZero itself for 1- to 8-bit gray ("1;I", "L;I" raw modes) only.
        invert = tiff and mode not in ("1", "L") and getattr(img, "tag_v2", {}).get(262) == 0
        pixels, depth = _pillow_gray(img, path, sbit=sbit, invert=invert)
    if scale > 1:
        reduce.full_size = (h, w) if turn in (5, 6, 7, 8) else (w, h)  # these turn it a quarter
        reduce.scale = scale
    return orient(pixels, turn), fmt, mode, depth, []


def _draft(img: Image.Image, reduce: Reduction | None) -> int:
    """Ask Pillow to decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's scaled inverse DCT:
    each 8x8 block is transformed straight to 4x4, 2x2 or 1x1 pixels, so the full-size image
    is never made) when ``reduce`` allows it; the scale taken (1: full size).
    Must run before ``img.load()``."""
    if reduce is None or img.format not in ("JPEG", "MPO"):
        return 1
    w, h = img.size
    k = reduce.factor(w, h, (8, 4, 2))
    if k == 1:
        return 1
    # Pillow takes the largest of 8, 4, 2 with size * scale <= the stored size: asking for
    # (w // k, h // k) gives exactly k (w // (w // k) < 2k because w // k > 1).
    img.draft(None, (w // k, h // k))
    # The scale the output size shows (Pillow makes ceil(size / scale) pixels): k, unless
    # a Pillow version chose otherwise.
    return next((s for s in (k, 8, 4, 2) if img.size == (-(-w // s), -(-h // s))), 1)


def _open(path, fh, head: bytes, size: int, complete: bool | None) -> Image.Image:
    """``Image.open`` of the file (headers only); its failures as the report's reasons:
    ``too_large``, ``not_an_image`` (no known signature), ``truncated`` or ``damaged``,
    ``unreadable`` for a disk error."""
    known = next((name for sig, name in SIGNATURES if head.startswith(sig)), None)
    fh.seek(0)
    try:
        return Image.open(fh)
    except Image.DecompressionBombError as e:
        raise image_error(path, f"too many pixels ({short(e)})", f"at most {MAX_PIXELS:,} pixels",
                          "more than Pillow's limit", "Downscale the image before screening it",
                          "too_large") from None
    except UnidentifiedImageError:
        if known is None:
            raise image_error(path, "not an image", IMAGE_KINDS,
                              describe(head, size), "Remove the file from the folder or convert it",
                              "not_an_image") from None
        cut = not complete and size < 64
        raise image_error(path, f"starts like a {known} image but its header "
                          f"{'is incomplete' if cut else 'cannot be read'}", f"a complete {known} file",
                          f"{size:,} bytes", COPY_AGAIN, "truncated" if cut else "damaged") from None
    except OSError as e:
        if e.errno is not None:
            raise os_error(path, e) from None
        cut = not complete and "truncated" in str(e).lower()
        name = known or "image"
        raise image_error(path, f"the {name} header {'ends early' if cut else 'cannot be read'} ({short(e)})",
                          f"a complete {name} file", f"{size:,} bytes", COPY_AGAIN,
                          "truncated" if cut else "damaged") from None
    except Exception as e:  # noqa: BLE001 -- format plugins raise many types on broken headers
        name = known or "image"
        raise image_error(path, f"the {name} header cannot be read ({type(e).__name__}: {short(e)})",
                          f"a valid {name} file", f"{size:,} bytes", COPY_AGAIN, "damaged") from None
