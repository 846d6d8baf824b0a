"""Images in, network input out: decode X-ray files and preprocess them.

Training and screening both read images through this module, so a model sees
the same pixels in both.

Pipeline
--------
1. **Decode** (:func:`decode`) a raster file (PNG, JPEG, BMP, TIFF, GIF,
   WebP...) or a DICOM file (``DICM`` at byte 128, a bare dataset recognised
   by its first elements whatever its name, or a ``.dcm`` / ``.dicom`` name)
   into one grayscale float32 image in [0, 1], 0 = black:

   * Raster files (:mod:`xraynet.decoders.raster`): the file's structure
     (PNG chunks, JPEG markers, TIFF strips and tiles) is read first, so that
     every declared size is checked before decoding and ``truncated`` means
     the file really ends early. Pillow decodes 8-bit PNG, baseline JPEG and
     the other formats; imagecodecs 16-bit PNG (gray, gray + alpha, RGB at
     full precision) and 12-bit, lossless and JPEG-LS files; tifffile TIFF
     (any sample format, any compression imagecodecs has). 16-bit gray
     samples are divided by 2**bits - 1, where bits is the PNG sBIT chunk's
     or else the smallest of 10, 12, 14, 16 that holds the largest sample
     (detectors store 12-bit films in 16-bit files); TIFF WhiteIsZero is
     inverted at every bit depth; the EXIF / TIFF orientation is applied; RGB,
     RGBA, palette and CMYK images become ITU-R 601 luma (0.299 R + 0.587 G +
     0.114 B); alpha is ignored (X-ray files with alpha are opaque);
     multi-frame files give their first frame.
   * DICOM (:mod:`xraynet.decoders.dicom`): the first frame, decoded by
     pydicom and its pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE); the
     modality LUT (or Rescale Slope/Intercept), then the VOI LUT (or the first
     Window Center/Width with its VOI LUT Function); min-max to [0, 1];
     inverted as Presentation LUT Shape says (INVERSE), else when MONOCHROME1
     (white = no signal), so 0 is black like everything else. Header gates
     add ``not_frontal``, ``not_radiograph``, ``not_chest`` and
     ``for_processing``. Every size the file declares -- Rows x Columns and
     the first frame's own codestream header -- is checked before decoding.
   * Warnings that pydicom, Pillow or a codec library issue while decoding a
     file are never printed: they become ``decoder_warning (...)`` entries of
     that file's ``Decoded.warnings``.

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
import io
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from .decoders import HEAD_BYTES, MAX_PIXELS, image_error, library_warnings, os_error, warning_entry
from .decoders.dicom import decode_dicom, looks_like_dicom
from .decoders.raster import decode_raster
from .errors import ImageError, ShapeError, SpecError

__all__ = ["ImageError", "Decoded", "Preprocessing", "decode", "preprocess", "load", "equalize_histogram",
           "MAX_PIXELS", "WARNING_CODES"]


#: Bump when the pipeline changes what it computes, so caches keyed by
#: Preprocessing.key() stop matching old results.
PIPELINE_VERSION = 2  # 2: the field-input decoders (bit depths, polarity, orientation)

#: Warning codes found in ``Decoded.warnings``.
WARNING_CODES = {
    "tiny": "the short side is under 128 pixels: too little detail for a chest X-ray",
    "extreme_aspect": "width / height is over 2.5 or under 0.4: probably not a single frontal chest film",
    "nearly_uniform": "pixel standard deviation under 0.02: blank, or almost no contrast",
    "likely_inverted": "the lung fields are brighter than the mediastinum: probably a negative "
                       "(white = air) image that is not marked as such",
    # DICOM header gates: the film was screened, but its header says it is not
    # what the model was trained on (frontal chest radiographs for display).
    "not_frontal": "the DICOM header's View Position says lateral (or another non-frontal view)",
    "not_radiograph": "the DICOM header's Modality is not a projection radiograph (CT, MR, US...)",
    "not_chest": "the DICOM header's Body Part Examined names a part other than the chest",
    "for_processing": "the DICOM header says FOR PROCESSING: raw detector data, not the image meant for display",
    "decoder_warning": "the decoding library warned about the file (the text follows in brackets); "
                       "the image decoded",
}
TINY_SIDE = 128
MAX_ASPECT = 2.5
NEARLY_UNIFORM_STD = 0.02
# "likely_inverted" compares, on a 64x64 thumbnail stretched to its own
# [min, max], the mean of two lateral lung boxes with a central
# (spine/mediastinum) box. On the 4,398 films of ../shared/data/cxr, lungs
# minus mediastinum had median -0.16 and exceeded 0.1 for 23 films (0.5%);
# on the same films inverted it exceeded 0.1 for 75% of them (without the
# stretch: 18 films and 65%; benchmarks/inverted_check.py). The
# check is meant to be conservative: a warning, never a refusal.
INVERTED_MARGIN = 0.1
EQUALIZE_BINS = 4096

_RESAMPLE = Image.Resampling.BILINEAR


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


def _block_mean(pixels: np.ndarray, target: int = 256, block_elements: int = 1 << 20) -> np.ndarray:
    """Shrink a large image by whole k x k block means (k = short side // ``target``)
    a band of rows at a time, so that thumbnails of a big film need no full-size copy
    (Pillow's fromarray would make one). Images under 2 * target come back as they are."""
    h, w = pixels.shape
    k = min(h, w) // target
    if k < 2:
        return pixels
    hh, ww = h // k * k, w // k * k
    small = np.empty((hh // k, ww // k), np.float32)
    step = max(k, block_elements // ww // k * k)
    for r in range(0, hh, step):
        band = pixels[r:min(r + step, hh), :ww]
        small[r // k:(r + band.shape[0]) // k] = band.reshape(band.shape[0] // k, k, ww // k, k).mean(axis=(1, 3))
    return small


def _inverted_score(pixels: np.ndarray) -> float:
    """Lung boxes minus mediastinum box on a 64x64 thumbnail (see INVERTED_MARGIN),
    with the thumbnail stretched to its own [min, max]: the film's polarity does not
    depend on how much of the stored range its values happen to use."""
    a = np.asarray(Image.fromarray(np.ascontiguousarray(_block_mean(pixels), dtype=np.float32))
                   .resize((64, 64), _RESAMPLE))
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return 0.0
    a = (a - lo) / (hi - lo)
    mediastinum = a[19:45, 26:38].mean()
    lungs = (a[19:45, 10:22].mean() + a[19:45, 42:54].mean()) / 2.0
    return float(lungs - mediastinum)


def _pixel_std(pixels: np.ndarray, rows_per_chunk: int = 256) -> float:
    """Standard deviation of a float32 image, accumulated in float64 a block of
    rows at a time, so that no full-size float64 temporary is ever made."""
    n = pixels.size
    mean = sum(float(pixels[i:i + rows_per_chunk].sum(dtype=np.float64))
               for i in range(0, pixels.shape[0], rows_per_chunk)) / n
    ss = 0.0
    for i in range(0, pixels.shape[0], rows_per_chunk):
        d = pixels[i:i + rows_per_chunk] - np.float32(mean)
        ss += float(np.dot(d.ravel(), d.ravel()))
    return (ss / n) ** 0.5


def _image_warnings(pixels: np.ndarray) -> list[str]:
    h, w = pixels.shape
    out = []
    if min(h, w) < TINY_SIDE:
        out.append("tiny")
    if w / h > MAX_ASPECT or w / h < 1.0 / MAX_ASPECT:
        out.append("extreme_aspect")
    std = _pixel_std(pixels)
    if std < NEARLY_UNIFORM_STD:
        out.append("nearly_uniform")
    # Low contrast does not hide polarity: only a constant image has no anatomy to judge.
    if std > 0.0 and _inverted_score(pixels) > INVERTED_MARGIN:
        out.append("likely_inverted")
    return out


def _open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file. O_NONBLOCK keeps a
    FIFO that took an image's name (even one swapped in after a folder was listed)
    from blocking the open; fstat of the opened descriptor then decides."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise os_error(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
            raise image_error(path, f"is not a regular file ({kind})", "a regular image file", kind,
                              "Remove it from the folder", "unreadable")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb", closefd=True)
        raw.name = os.fspath(path)  # decoders (tifffile, pydicom) read the name off the file object
        return io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise


def is_dicom_file(path) -> bool:
    """True when the file's content (or, failing that, its name) says DICOM
    (:func:`xraynet.decoders.dicom.looks_like_dicom`); False for unreadable files."""
    try:
        with _open_regular(Path(path)) as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, ImageError):
        return False
    return looks_like_dicom(head, os.path.splitext(os.fspath(path))[1])


def decode(path) -> Decoded:
    """Read one image file into a :class:`Decoded` (grayscale float32 in [0, 1]).

    Raises :class:`~xraynet.errors.ImageError` with ``reason`` one of
    ``ImageError.REASONS`` when the file cannot be used; see the module
    docstring for what each format goes through.
    """
    path = Path(path)
    fh = _open_regular(path)
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEAD_BYTES)
        except OSError as e:
            raise os_error(path, e) from None
        if size == 0 or not head:
            raise image_error(path, "the file is empty", "an image file", "0 bytes",
                               "Copy the file again from its source, or remove it from the folder", "empty")
        fh.seek(0)
        decoder = decode_dicom if looks_like_dicom(head, path.suffix) else decode_raster
        with library_warnings() as caught:
            pixels, fmt, mode, depth, notes = decoder(path, fh, head, size)
    for category, message in caught:
        # Pillow's bomb warning concerns sizes that MAX_PIXELS already judged.
        if not issubclass(category, Image.DecompressionBombWarning):
            entry = warning_entry(fmt, message)
            if entry not in notes:
                notes.append(entry)
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    np.clip(pixels, 0.0, 1.0, out=pixels)  # in place: no second full-size copy
    h, w = pixels.shape
    return Decoded(pixels=pixels, width=w, height=h, source_format=fmt, source_mode=mode, bit_depth=depth,
                   warnings=[*notes, *_image_warnings(pixels)])


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
    cdf /= cdf[-1]
    # The mapping never decreases, so the result's extremes are those of the input's
    # extremes; rows then go through it a block at a time (float64 only per block).
    o_lo, o_hi = np.interp([lo, hi], edges, cdf)
    out = np.empty(p.shape, np.float32)
    flat_in, flat_out = p.reshape(p.shape[0], -1), out.reshape(out.shape[0], -1)
    step = max(1, (1 << 20) // max(1, flat_in.shape[1]))
    for r in range(0, flat_in.shape[0], step):
        block = np.interp(flat_in[r:r + step], edges, cdf)
        flat_out[r:r + step] = (block - o_lo) / (o_hi - o_lo)
    return out


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
