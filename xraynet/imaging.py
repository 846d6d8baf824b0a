"""Images in, network input out: decode X-ray files and preprocess them.

Training and screening both read images through this module, so a model sees
the same pixels in both.

Pipeline
--------
1. **Decode** (:func:`decode`) any file Pillow opens (PNG, JPEG, BMP, TIFF,
   GIF, WebP...) or a DICOM file (``DICM`` at byte 128, or a ``.dcm`` /
   ``.dicom`` name; needs pydicom) into one grayscale float32 image in
   [0, 1], 0 = black:

   * Pillow: the EXIF orientation is applied; 16-bit modes (``I;16``...) are
     divided by 65535, never squeezed through 8 bits; RGB, RGBA, palette and
     CMYK images become ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B); alpha is
     ignored (X-ray files with alpha are opaque); multi-frame files give
     their first frame.
   * DICOM: the first frame; the modality LUT (or Rescale Slope/Intercept),
     then the VOI LUT (or Window Center/Width); min-max to [0, 1]; MONOCHROME1
     (white = no signal) is inverted so 0 is black like everything else.

   Files that cannot be decoded raise :class:`~xraynet.errors.ImageError`
   with a stable ``reason`` code. Odd but usable images decode with short
   warning codes in ``Decoded.warnings`` (see :data:`WARNING_CODES`).
2. **Border crop**: ``border_crop`` of the width and height is removed from
   each side, where burned-in text, rulers and side markers sit.
3. **Working size**: if ``working_size`` is set, resize so the short side has
   that many pixels, which brings every source to one resolution before the
   steps below.
4. **Equalise**: optional histogram equalisation of the image.
5. **Fit** to ``image_size`` x ``image_size``: ``"pad"`` scales the long
   side to fit and pads the rest with black (0); ``"crop"`` scales the short
   side to fit and keeps the centre square; ``"stretch"`` resizes each side
   on its own to the square, distorting the aspect ratio. Stretch is the one
   treatment that gives every source the same geometry when part of the data
   was already squashed to a square before it reached xraynet (the SIIM films
   of ../shared/data/cxr): padding or cropping the others would leave film
   shape as a cue to the source.
6. **Normalise**: ``"per_image"`` gives the image zero mean and unit standard
   deviation (statistics over the image, not the padding, so the padding is
   the same "black" whatever the aspect ratio); ``"fixed"`` maps [0, 1] with
   ``(x - 0.5) / 0.25``.

All resizing uses Pillow on 32-bit float ("F") images with the bilinear
filter, which Pillow widens when shrinking (antialiasing). Bilinear rather
than bicubic or Lanczos because it never overshoots: no ringing halos next to
the sharp edges of ribs, wires and collimator borders, and values stay in
range. The whole pipeline is deterministic.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings as _warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ShapeError, SpecError

__all__ = ["ImageError", "Decoded", "Preprocessing", "decode", "preprocess", "load", "equalize_histogram",
           "MAX_PIXELS", "WARNING_CODES"]

#: Images with more pixels than this are refused ("too_large"): a 100 M pixel
#: image already needs 400 MB as float32, and real radiographs are < 20 M.
MAX_PIXELS = 100_000_000

#: Bump when the pipeline changes what it computes, so caches keyed by
#: Preprocessing.key() stop matching old results.
PIPELINE_VERSION = 1

#: Warning codes found in ``Decoded.warnings``.
WARNING_CODES = {
    "tiny": "the short side is under 128 pixels: too little detail for a chest X-ray",
    "extreme_aspect": "width / height is over 2.5 or under 0.4: probably not a single frontal chest film",
    "nearly_uniform": "pixel standard deviation under 0.02: blank, or almost no contrast",
    "likely_inverted": "the lung fields are brighter than the mediastinum: probably a negative "
                       "(white = air) image that is not marked as such",
}
TINY_SIDE = 128
MAX_ASPECT = 2.5
NEARLY_UNIFORM_STD = 0.02
# "likely_inverted" compares, on a 64x64 thumbnail, the mean of two lateral
# lung boxes with a central (spine/mediastinum) box. On the 609 real frontal
# radiographs of ../shared/data/cxr, lungs minus mediastinum was at most 0.071
# (median -0.18); on the same images inverted it exceeded 0.1 for 77% of them.
# 0.1 flags no real image there: the check is meant to be conservative.
INVERTED_MARGIN = 0.1
EQUALIZE_BINS = 4096

_DICOM_SUFFIXES = (".dcm", ".dicom")
_RESAMPLE = Image.Resampling.BILINEAR
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SIGNATURES = (  # formats whose header we can recognise even when Pillow cannot open the file
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)
_OPEN_LOCK = threading.Lock()
_COPY_AGAIN = "Copy the file again from its source, or remove it from the folder"


@dataclass
class Decoded:
    """One decoded image.

    ``pixels`` is float32 (height, width) in [0, 1], 0 = black. ``source_mode``
    is the Pillow mode ("L", "I;16", "RGB", ...) or the DICOM photometric
    interpretation ("MONOCHROME1", ...); ``bit_depth`` the bits per sample of
    the source (DICOM: Bits Stored). ``warnings`` holds codes from
    :data:`WARNING_CODES`.
    """

    pixels: np.ndarray
    width: int
    height: int
    source_format: str
    source_mode: str
    bit_depth: int
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ decoding
def _image_error(path, what: str, expected: str, got: str, todo: str, reason: str) -> ImageError:
    return ImageError(f"{path}: {what}. Expected {expected}, got {got}. {todo}.", reason, path)


def _short(e: BaseException) -> str:
    """An embedded library message on one line (reports are CSV rows), cut to 200 characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(head: bytes, size: int) -> str:
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


def _too_large(path, n_pixels: int, shape: str) -> ImageError:
    return _image_error(path, f"too many pixels ({shape}, {n_pixels:,} pixels)",
                        f"at most {MAX_PIXELS:,} pixels", f"{n_pixels:,}",
                        "Downscale the image before screening it (a possible decompression bomb is refused)",
                        "too_large")


def _os_error(path, e: OSError) -> ImageError:
    if isinstance(e, FileNotFoundError):
        what, got = "does not exist", "no such file"
    elif isinstance(e, IsADirectoryError):
        what, got = "is a directory", "a directory"
    elif isinstance(e, PermissionError):
        what, got = "cannot be read (permission denied)", "no read permission"
    else:
        what, got = f"cannot be read ({e.strerror or e})", type(e).__name__
    return _image_error(path, what, "a readable image file", got,
                        "Check the path, the permissions and the disk", "unreadable")


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _minmax(a: np.ndarray) -> np.ndarray:
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
        return _luma(np.asarray(img)) / 255.0, 8
    if mode in ("P", "PA", "CMYK", "YCbCr"):
        # Pillow's own conversion to RGB resolves the palette / inks; the luma
        # is then taken in float rather than Pillow's rounded "L".
        return _luma(np.asarray(img.convert("RGB"))) / 255.0, 8
    if mode.startswith("I;16"):
        # Straight from the 16-bit samples: converting to "L" first would keep
        # only the top 8 bits of a 16-bit radiograph.
        return np.asarray(img).astype(np.float32) / 65535.0, 16
    if mode == "I":
        a = np.asarray(img)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            # 16-bit sources opened as 32-bit integers by some plugins.
            return a.astype(np.float32) / 65535.0, 16
        return _minmax(a), 32
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if np.isfinite(a).all() and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return a.copy(), 32
        return _minmax(a), 32
    raise _image_error(path, f"unsupported pixel mode {mode!r}",
                       "a grayscale, RGB, RGBA, palette, CMYK, 16-bit or float image", repr(mode),
                       "Convert the image to an 8- or 16-bit grayscale PNG", "unsupported_mode")


def _decode_pillow(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, str, int]:
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
            raise _image_error(path, f"too many pixels ({_short(e)})", f"at most {MAX_PIXELS:,} pixels",
                               "more than Pillow's limit", "Downscale the image before screening it",
                               "too_large") from None
        except UnidentifiedImageError:
            known = next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)
            if known is not None:
                raise _image_error(path, f"starts like a {known} image but its header is incomplete",
                                   f"a complete {known} file", f"{size} bytes", _COPY_AGAIN, "truncated") from None
            raise _image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                               _describe(head, size), "Remove the file from the folder or convert it",
                               "not_an_image") from None
        except OSError as e:
            if e.errno is not None:
                raise _os_error(path, e) from None
            # Pillow's own "Truncated File Read" while parsing the header.
            known = next((name for sig, name in _SIGNATURES if head.startswith(sig)), "image")
            raise _image_error(path, f"the {known} header ends early ({_short(e)})", f"a complete {known} file",
                               f"{size} bytes", _COPY_AGAIN, "truncated") from None
    fmt = (img.format or "unknown").lower()
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise _too_large(path, w * h, f"{w}x{h}")
    try:
        # Pillow decodes lazily: load() now so broken pixel data fails here,
        # with the file named, and not later inside preprocessing.
        img.load()
    except MemoryError:
        raise
    except OSError as e:
        if e.errno is not None:  # the disk failed, not the data
            raise _os_error(path, e) from None
        raise _image_error(path, f"the {fmt.upper()} header reads but decoding fails ({_short(e)})",
                           f"a complete {fmt.upper()} file", f"{size} bytes that end early or are damaged",
                           _COPY_AGAIN, "truncated") from None
    except Exception as e:  # noqa: BLE001 -- format plugins raise many types on damaged data
        raise _image_error(path, f"the {fmt.upper()} header reads but decoding fails "
                           f"({type(e).__name__}: {_short(e)})", f"a complete {fmt.upper()} file",
                           f"{size} bytes that end early or are damaged", _COPY_AGAIN, "truncated") from None
    mode = img.mode
    if img.getexif().get(0x0112, 1) != 1:
        # Phone photos of films and some exports store the rotation in EXIF only.
        img = ImageOps.exif_transpose(img)
    pixels, depth = _pillow_gray(img, path)
    return pixels, fmt, mode, depth


def _decode_dicom(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, int]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
    except ImportError:
        raise _image_error(path, "is a DICOM file, but pydicom is not installed", "pydicom installed",
                           "no pydicom", 'Install it with: pip install "xraynet[dicom]"',
                           "dicom_needs_pydicom") from None
    has_magic = head[128:132] == b"DICM"
    fh.seek(0)
    try:
        # force=True only for a .dcm name without the DICM preamble (raw
        # datasets written by some older modalities).
        ds = pydicom.dcmread(fh, force=not has_magic)
    except InvalidDicomError as e:
        raise _image_error(path, f"not a readable DICOM file ({_short(e)})", "a DICOM file", "something else",
                           "Remove the file from the folder or convert it", "not_an_image") from None
    except OSError as e:
        if e.errno is not None:
            raise _os_error(path, e) from None
        raise _image_error(path, f"the DICOM file cannot be parsed ({_short(e)})", "a complete DICOM file",
                           f"{size} bytes", _COPY_AGAIN, "truncated") from None
    except Exception as e:  # noqa: BLE001 -- pydicom raises many types on damaged files
        raise _image_error(path, f"the DICOM file cannot be parsed ({type(e).__name__}: {_short(e)})",
                           "a complete DICOM file", f"{size} bytes", _COPY_AGAIN, "truncated") from None
    if "PixelData" not in ds:
        if not has_magic:
            # Read with force=True: without the preamble and without pixel
            # data nothing says this is DICOM at all.
            raise _image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                               f"a {path.suffix} name without DICOM content ({_describe(head, size)})",
                               "Remove the file from the folder or convert it", "not_an_image")
        kind = str(getattr(ds, "Modality", "") or getattr(ds, "SOPClassUID", "") or "unknown")
        raise _image_error(path, "is a DICOM file without pixel data (Pixel Data (7FE0,0010) missing)",
                           "a DICOM image", f"a DICOM object of kind {kind!r} (a report or presentation state?)",
                           "Export the image series, not this object", "dicom_unsupported")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise _too_large(path, rows * cols, f"{cols}x{rows}")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    try:
        arr = pixel_array(ds, index=0)
    except (NotImplementedError, RuntimeError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_text = f"{ts.name} ({ts})" if ts is not None else "an unknown transfer syntax"
        raise _image_error(path, f"pydicom cannot decode its pixel data ({_short(e)})",
                           "an uncompressed DICOM file or one whose codec is installed", ts_text,
                           "Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) "
                           "or convert the file to uncompressed DICOM or PNG", "dicom_unsupported") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- short or inconsistent pixel data
        raise _image_error(path, f"its pixel data cannot be decoded ({type(e).__name__}: {_short(e)})",
                           f"{rows}x{cols} pixels of {bits}-bit data", f"a file of {size} bytes",
                           _COPY_AGAIN, "truncated") from None
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise _image_error(path, f"unexpected pixel array shape {arr.shape}", "one 2-D frame",
                               f"shape {arr.shape}", "Convert the file to a single-frame grayscale DICOM",
                               "dicom_unsupported")
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds, index=0)
        gray = _minmax(arr)
        if pi == "MONOCHROME1":
            gray = 1.0 - gray
    elif pi == "PALETTE COLOR":
        gray = _minmax(_luma(apply_color_lut(arr, ds)))
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = _minmax(_luma(arr))  # RGB, and YBR already converted to RGB by pydicom
    else:
        raise _image_error(path, f"unsupported photometric interpretation {pi!r}",
                           "MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR", repr(pi),
                           "Convert the file to a grayscale DICOM or PNG", "unsupported_mode")
    return gray, pi, bits


def _inverted_score(pixels: np.ndarray) -> float:
    """Lung boxes minus mediastinum box on a 64x64 thumbnail (see INVERTED_MARGIN)."""
    a = np.asarray(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32)).resize((64, 64), _RESAMPLE))
    mediastinum = a[19:45, 26:38].mean()
    lungs = (a[19:45, 10:22].mean() + a[19:45, 42:54].mean()) / 2.0
    return float(lungs - mediastinum)


def _image_warnings(pixels: np.ndarray) -> list[str]:
    h, w = pixels.shape
    out = []
    if min(h, w) < TINY_SIDE:
        out.append("tiny")
    if w / h > MAX_ASPECT or w / h < 1.0 / MAX_ASPECT:
        out.append("extreme_aspect")
    if float(pixels.std(dtype=np.float64)) < NEARLY_UNIFORM_STD:
        out.append("nearly_uniform")
    elif _inverted_score(pixels) > INVERTED_MARGIN:
        # A uniform image has no anatomy to judge, so it is never "inverted".
        out.append("likely_inverted")
    return out



#: File name endings read as images (any case); other files count only with the DICOM marker.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})


def has_dicom_magic(path) -> bool:
    """True when the file has the DICOM marker ``DICM`` at byte 128 (a DICOM
    file whatever its name); False for shorter or unreadable files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"

def decode(path) -> Decoded:
    """Read one image file into a :class:`Decoded` (grayscale float32 in [0, 1]).

    Raises :class:`~xraynet.errors.ImageError` with ``reason`` one of
    ``ImageError.REASONS`` when the file cannot be used; see the module
    docstring for what each format goes through.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise _os_error(path, e) from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(132)
        except OSError as e:
            raise _os_error(path, e) from None
        if size == 0 or not head:
            raise _image_error(path, "the file is empty", "an image file", "0 bytes",
                               "Copy the file again from its source, or remove it from the folder", "empty")
        has_magic = head[128:132] == b"DICM"
        fh.seek(0)
        named_dicom = path.suffix.lower() in _DICOM_SUFFIXES
        if has_magic or (named_dicom and not any(head.startswith(sig) for sig, _ in _SIGNATURES)):
            pixels, mode, depth = _decode_dicom(path, fh, head, size)
            fmt = "dicom"
        else:
            pixels, fmt, mode, depth = _decode_pillow(path, fh, head, size)
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    h, w = pixels.shape
    return Decoded(pixels=pixels, width=w, height=h, source_format=fmt, source_mode=mode, bit_depth=depth,
                   warnings=_image_warnings(pixels))


# ------------------------------------------------------------- preprocessing
_FITS = ("pad", "crop", "stretch")
_NORMALIZATIONS = ("per_image", "fixed")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes network input; see the module docstring for the order.

    ``image_size`` side of the square output (8..4096); ``fit`` "pad",
    "crop" or "stretch"; ``border_crop`` fraction cut from each side first (0 <= f <= 0.4);
    ``equalize`` histogram equalisation; ``normalize`` "per_image" or "fixed";
    ``working_size`` None or the short side (8..8192) every image is first
    resized to.
    """

    image_size: int = 224
    fit: str = "pad"
    border_crop: float = 0.0
    equalize: bool = False
    normalize: str = "per_image"
    working_size: int | None = None

    def __post_init__(self):
        def bad(name, expected, value, todo=None):
            return SpecError(f"preprocessing: invalid {name}. Expected {expected}, got {value!r}. "
                             f"{todo or f'Set {name} to a valid value'}.")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        if not is_int(self.image_size) or not 8 <= self.image_size <= 4096:
            raise bad("image_size", "an integer from 8 to 4096", self.image_size)
        if self.fit not in _FITS:
            raise bad("fit", '"pad", "crop" or "stretch"', self.fit)
        bc = self.border_crop
        if (not isinstance(bc, (int, float, np.integer, np.floating)) or isinstance(bc, (bool, np.bool_))
                or not 0.0 <= float(bc) <= 0.4):
            raise bad("border_crop", "a fraction from 0.0 to 0.4 (cut from each side)", bc)
        if not isinstance(self.equalize, (bool, np.bool_)):
            raise bad("equalize", "true or false", self.equalize)
        if self.normalize not in _NORMALIZATIONS:
            raise bad("normalize", '"per_image" or "fixed"', self.normalize)
        ws = self.working_size
        if ws is not None and (not is_int(ws) or not 8 <= ws <= 8192):
            raise bad("working_size", "null or an integer from 8 to 8192", ws)
        # Canonical Python types, so equal settings compare, hash and key equal.
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "border_crop", float(bc))
        object.__setattr__(self, "equalize", bool(self.equalize))
        object.__setattr__(self, "working_size", None if ws is None else int(ws))

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the parameters (stored in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Build from :meth:`to_dict` output; missing keys take defaults, unknown keys and
        bad values raise :class:`~xraynet.errors.SpecError`."""
        if not isinstance(d, dict):
            raise SpecError(f"preprocessing: not a mapping. Expected a dict of settings, got "
                            f"{type(d).__name__}. Pass a dict such as Preprocessing().to_dict().")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"preprocessing: unknown setting(s) {unknown}. Expected keys among {sorted(known)}, "
                            f"got {sorted(d)}. Remove or rename them (a newer xraynet may have written them).")
        return cls(**d)

    def key(self) -> str:
        """Short stable hash (16 hex digits) of the parameters and the pipeline version, for caches."""
        text = json.dumps({"pipeline_version": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _resize(pixels: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    """Resize a float32 (h, w) array to size = (width, height); box = (x0, y0, x1, y1) source region."""
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize(size, _RESAMPLE, box=box), dtype=np.float32)


def equalize_histogram(pixels: np.ndarray, bins: int = EQUALIZE_BINS) -> np.ndarray:
    """Histogram equalisation in float: each value maps to its cumulative frequency.

    ``bins`` histogram bins span the image's own [min, max]; within a bin the
    mapping is linear, so equal inputs stay equal and order is kept. The
    result is stretched to [0, 1]. A constant image comes back as zeros.
    """
    p = np.asarray(pixels, dtype=np.float32)
    lo, hi = float(p.min()), float(p.max())
    if hi <= lo:
        return np.zeros_like(p)
    hist, edges = np.histogram(p, bins=bins, range=(lo, hi))
    cdf = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    out = np.interp(p.ravel(), edges, cdf / cdf[-1]).reshape(p.shape)
    o_lo, o_hi = out.min(), out.max()
    return ((out - o_lo) / (o_hi - o_lo)).astype(np.float32)


def preprocess(decoded_or_pixels, prep: Preprocessing) -> np.ndarray:
    """Steps 2-6 of the pipeline: a :class:`Decoded` (or a 2-D array in [0, 1],
    0 = black) to float32 (prep.image_size, prep.image_size)."""
    if not isinstance(prep, Preprocessing):
        raise SpecError(f"preprocess: prep is not a Preprocessing. Expected xraynet.imaging.Preprocessing, "
                        f"got {type(prep).__name__}. Use Preprocessing.from_dict(d) for a dict.")
    pixels = decoded_or_pixels.pixels if isinstance(decoded_or_pixels, Decoded) else decoded_or_pixels
    p = np.asarray(pixels)
    if p.ndim != 2 or p.size == 0 or not np.issubdtype(p.dtype, np.number):
        raise ShapeError(f"preprocess: unusable image array. Expected a non-empty 2-D numeric array "
                         f"(height, width), got shape {p.shape} dtype {p.dtype}. "
                         f"Pass Decoded.pixels or one channel.")
    p = p.astype(np.float32, copy=False)

    h, w = p.shape
    if prep.border_crop > 0.0:
        dy, dx = int(round(h * prep.border_crop)), int(round(w * prep.border_crop))
        dy, dx = min(dy, (h - 1) // 2), min(dx, (w - 1) // 2)  # tiny images keep at least one pixel
        p = p[dy:h - dy, dx:w - dx]
        h, w = p.shape
    if prep.working_size is not None:
        scale = prep.working_size / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != (w, h):
            p = _resize(p, size)
            h, w = p.shape
    if prep.equalize:
        p = equalize_histogram(p)

    s = prep.image_size
    if prep.fit == "crop":
        side = min(h, w)
        x0, y0 = (w - side) / 2.0, (h - side) / 2.0
        # Cropping through resize's box keeps sub-pixel centring exact.
        content = _resize(p, (s, s), box=(x0, y0, x0 + side, y0 + side))
        top = left = 0
    elif prep.fit == "stretch":
        content = p if (w, h) == (s, s) else _resize(p, (s, s))
        top = left = 0
    else:
        scale = s / max(h, w)
        nw, nh = min(s, max(1, round(w * scale))), min(s, max(1, round(h * scale)))
        content = p if (nw, nh) == (w, h) else _resize(p, (nw, nh))
        top, left = (s - nh) // 2, (s - nw) // 2

    if prep.normalize == "per_image":
        # Statistics of the image only: padding would drag the mean towards
        # black by an amount that depends on the aspect ratio. The floor keeps
        # a blank image (flagged "nearly_uniform" by decode) from exploding.
        mean = float(content.mean(dtype=np.float64))
        std = max(float(content.std(dtype=np.float64)), NEARLY_UNIFORM_STD)
    else:
        mean, std = 0.5, 0.25
    out = np.full((s, s), (0.0 - mean) / std, dtype=np.float32)  # padding = black
    ch, cw = content.shape
    out[top:top + ch, left:left + cw] = (content - np.float32(mean)) / np.float32(std)
    return out


def load(path, prep: Preprocessing) -> tuple[np.ndarray, Decoded]:
    """Decode ``path`` and preprocess it: (float32 (image_size, image_size), Decoded)."""
    decoded = decode(path)
    return preprocess(decoded, prep), decoded
