"""DICOM files: pydicom and its pixel decoders.

See :func:`xraynet.imaging.decode` for what comes out.
"""
from __future__ import annotations

import numpy as np

from . import SIGNATURES, COPY_AGAIN, check_pixels, MAX_PIXELS, describe, image_error, luma, minmax, os_error, short, too_large


_DICOM_SUFFIXES = (".dcm", ".dicom")


def looks_like_dicom(head: bytes, suffix: str = "") -> bool:
    """Whether a file starting with ``head`` (its first :data:`~xraynet.decoders.HEAD_BYTES`
    bytes) is read as DICOM: the ``DICM`` marker at byte 128, or a ``.dcm`` / ``.dicom``
    name (``suffix``, any case) on a file that starts like no other known format."""
    if head[128:132] == b"DICM":
        return True
    return suffix.lower() in _DICOM_SUFFIXES and not any(head.startswith(sig) for sig, _ in SIGNATURES)


def decode_dicom(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, str, int, list[str]]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
    except ImportError:
        raise image_error(path, "is a DICOM file, but pydicom is not installed", "pydicom installed",
                           "no pydicom", 'Install it with: pip install "xraynet[dicom]"',
                           "dicom_needs_pydicom") from None
    has_magic = head[128:132] == b"DICM"
    fh.seek(0)
    try:
        # force=True only for a .dcm name without the DICM preamble (raw
        # datasets written by some older modalities).
        ds = pydicom.dcmread(fh, force=not has_magic)
    except InvalidDicomError as e:
        raise image_error(path, f"not a readable DICOM file ({short(e)})", "a DICOM file", "something else",
                           "Remove the file from the folder or convert it", "not_an_image") from None
    except OSError as e:
        if e.errno is not None:
            raise os_error(path, e) from None
        raise image_error(path, f"the DICOM file cannot be parsed ({short(e)})", "a complete DICOM file",
                           f"{size} bytes", COPY_AGAIN, "truncated") from None
    except Exception as e:  # noqa: BLE001 -- pydicom raises many types on damaged files
        raise image_error(path, f"the DICOM file cannot be parsed ({type(e).__name__}: {short(e)})",
                           "a complete DICOM file", f"{size} bytes", COPY_AGAIN, "truncated") from None
    if "PixelData" not in ds:
        if not has_magic:
            # Read with force=True: without the preamble and without pixel
            # data nothing says this is DICOM at all.
            raise image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                               f"a {path.suffix} name without DICOM content ({describe(head, size)})",
                               "Remove the file from the folder or convert it", "not_an_image")
        kind = str(getattr(ds, "Modality", "") or getattr(ds, "SOPClassUID", "") or "unknown")
        raise image_error(path, "is a DICOM file without pixel data (Pixel Data (7FE0,0010) missing)",
                           "a DICOM image", f"a DICOM object of kind {kind!r} (a report or presentation state?)",
                           "Export the image series, not this object", "dicom_unsupported")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_pixels(path, cols, rows)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    try:
        arr = pixel_array(ds, index=0)
    except (NotImplementedError, RuntimeError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_text = f"{ts.name} ({ts})" if ts is not None else "an unknown transfer syntax"
        raise image_error(path, f"pydicom cannot decode its pixel data ({short(e)})",
                           "an uncompressed DICOM file or one whose codec is installed", ts_text,
                           "Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) "
                           "or convert the file to uncompressed DICOM or PNG", "dicom_unsupported") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- short or inconsistent pixel data
        raise image_error(path, f"its pixel data cannot be decoded ({type(e).__name__}: {short(e)})",
                           f"{rows}x{cols} pixels of {bits}-bit data", f"a file of {size} bytes",
                           COPY_AGAIN, "truncated") from None
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise image_error(path, f"unexpected pixel array shape {arr.shape}", "one 2-D frame",
                               f"shape {arr.shape}", "Convert the file to a single-frame grayscale DICOM",
                               "dicom_unsupported")
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds, index=0)
        gray = minmax(arr)
        if pi == "MONOCHROME1":
            gray = 1.0 - gray
    elif pi == "PALETTE COLOR":
        gray = minmax(luma(apply_color_lut(arr, ds)))
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = minmax(luma(arr))  # RGB, and YBR already converted to RGB by pydicom
    else:
        raise image_error(path, f"unsupported photometric interpretation {pi!r}",
                           "MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR", repr(pi),
                           "Convert the file to a grayscale DICOM or PNG", "unsupported_mode")
    return gray, "dicom", pi, bits, []


