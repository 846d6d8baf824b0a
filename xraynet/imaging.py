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
     the file really ends early. imagecodecs (libpng) decodes 16-bit PNG
     (gray, gray + alpha, RGB at full precision) and most 8-bit PNG, and
     checks the image data of every PNG (:mod:`xraynet.decoders.raster.png`);
     Pillow the other PNG, baseline JPEG and the other formats; imagecodecs
     12-bit, lossless and JPEG-LS files; tifffile TIFF
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

Reduced-size decoding
---------------------
:func:`load` (the path training, evaluation and screening all take) does not
need a 3000-pixel film to make a 224-pixel input. It decodes with
``min_side = reduced_side(prep)``: :data:`REDUCE_MARGIN` (2) times the larger
of ``image_size`` and ``working_size``, divided by the share of each side
``border_crop`` leaves (305 for the bundled model: 128 px, crop 0.08). A film
whose short side is at least twice that is shrunk by k = short side //
``min_side`` to round(size / k) pixels, each the mean of the part of the film
it covers (Pillow's BOX filter: the pixels whose centres fall in it), so the
film's extent maps exactly onto the result and nothing shifts or stretches at
the edges:

* 8-bit DCT JPEG (baseline, progressive) decodes at 1/2, 1/4 or 1/8 scale
  (the largest that is at most k) in libjpeg itself (scaled inverse DCT,
  Pillow's ``draft``): the full-size image is never made; area means do the
  rest of k;
* DICOM frames of 8-bit monochrome JPEG (Baseline, Extended) likewise, and
  of monochrome JPEG 2000 at 1/2 .. 1/32 scale (its resolution levels) for
  at most half of k (:mod:`xraynet.decoders.dicom.reduced`, which says why,
  and benchmarks/dicom_reduced_check.py);
* every other file is decoded at full size, then area-averaged (Pillow's BOX
  filter on float32) before any of the steps below.

Steps 2-6 and the warnings then run on the smaller image; ``Decoded.width`` /
``height`` (the report's columns, and the ``tiny`` / ``extreme_aspect``
checks) stay the stored size. :func:`decode` alone (thumbnails, ``min_side``
None) still decodes at full size.

Measured with the bundled model on 1,009 films of ../shared/data/cxr (the 609
not from SIIM, of which 503 were reduced, and 400 SIIM films, too small to be
reduced; benchmarks/reduced_decode_check.py): p(covid) moved by a median of
0.004, at most 0.10, and 4 films crossed the screening threshold -- no more
than cutting one row and column off each film does (median 0.005, at most
0.10, 5 films) -- while decoding and preprocessing the reduced films took 14
instead of 26 ms each. No warning changed; covid-vs-normal AUC within SIIM
0.903 both ways. REDUCE_MARGIN 3 would move p(covid) at most 0.04 (1 film),
for 18 ms a film.

All resizing uses Pillow on 32-bit float ("F") images with the bilinear
filter, which Pillow widens when shrinking (antialiasing). Bilinear rather
than bicubic or Lanczos because it never overshoots: no ringing halos next to
the sharp edges of ribs, wires and collimator borders, and values stay in
range. The whole pipeline is deterministic.

(This docstring, the pipeline's specification, is a quarter of the module and
keeps it over 400 lines; the checks behind the warning codes live in
:mod:`xraynet.imagechecks`.)
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from .decoders import (HEAD_BYTES, MAX_PIXELS, Reduction, area_reduce, image_error, library_warnings, os_error,
                       resize_float, warning_entry)
from .decoders.dicom import decode_dicom, looks_like_dicom
from .decoders.raster import decode_raster
from .errors import ImageError, ShapeError, SpecError
from .imagechecks import INVERTED_MARGIN, MAX_ASPECT, NEARLY_UNIFORM_STD, TINY_SIDE, image_warnings

__all__ = ["ImageError", "Decoded", "Preprocessing", "decode", "preprocess", "load", "equalize_histogram",
           "reduced_side", "MAX_PIXELS", "WARNING_CODES", "TINY_SIDE", "MAX_ASPECT", "NEARLY_UNIFORM_STD",
           "INVERTED_MARGIN"]


#: Bump when the pipeline changes what it computes, so caches keyed by
#: Preprocessing.key() stop matching old results.
#: 2: the field-input decoders (bit depths, polarity, orientation); 3: reduced-size decoding (load),
#: and histogram equalisation finding bins by arithmetic (a value on a bin edge may change bins);
#: 4: a PNG that libpng refuses is an error (image data ending early was a film with black rows);
#: 5: a JPEG stream whose scans lack image data (DCT, lossless; JPEG-LS that CharLS refuses) and a
#: WebP padded with zeros are errors (they were films filled in by the decoder); 6: a YBR colour
#: DICOM becomes its Y, not the luma of pydicom's RGB conversion (which refused 12- and 16-bit YBR);
#: 7: JPEG 2000 files at each component's precision and sign (Pillow gave 9- to 16-bit colour as
#: 8 bits, the brightest samples black, and offset signed samples by half the range), and a PNG
#: whose ancillary chunk fails its checksum read as libpng reads it (it was "damaged").
PIPELINE_VERSION = 7

#: Whether :func:`load` decodes films at reduced size (see "Reduced-size decoding"
#: in the module docstring), and by how much the kept short side exceeds the
#: network's input (:func:`reduced_side`).
REDUCED_DECODING = True
REDUCE_MARGIN = 2.0

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
EQUALIZE_BINS = 4096

_RESAMPLE = Image.Resampling.BILINEAR


@dataclass
class Decoded:
    """One decoded image.

    ``pixels`` is float32 (height, width) in [0, 1], 0 = black; ``width`` and
    ``height`` are the stored image's size (upright), and ``pixels`` is smaller
    by an integer factor when :func:`decode` was given ``min_side`` (about
    (height / k, width / k), see "Reduced-size decoding"). ``source_mode``
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


def _check_version(path, fh, version) -> None:
    """``changed`` when the open file ``fh`` is not at ``version`` (None: not checked)."""
    from .fileversion import file_version

    if version is not None and file_version(os.fstat(fh.fileno())) != tuple(version):
        raise image_error(path, "the file changed while it was screened", "the bytes hashed at the start of "
                          "the run", "a file written, replaced or removed since", "It is screened again on the "
                          "next run; if it changes every night, screen the folder after the program writing it "
                          "has finished", "changed")


def is_dicom_file(path) -> bool:
    """True when the file's content (or, failing that, its name) says DICOM
    (:func:`xraynet.decoders.dicom.looks_like_dicom`); False for unreadable files."""
    try:
        with _open_regular(Path(path)) as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, ImageError):
        return False
    return looks_like_dicom(head, os.path.splitext(os.fspath(path))[1])


def decode(path, min_side: int | None = None, version: tuple | None = None) -> Decoded:
    """Read one image file into a :class:`Decoded` (grayscale float32 in [0, 1]).

    ``min_side``: None decodes at full size. A number lets the image come back
    smaller by an integer factor as long as its short side stays at least
    ``min_side`` pixels (see "Reduced-size decoding" in the module docstring);
    ``Decoded.width`` / ``height`` are the stored size either way.

    ``version``: the :func:`~xraynet.fileversion.file_version` the caller hashed the file
    at. The file is opened once and every decoder reads that open file, so checking the
    version of what was opened, before and after decoding, ties the pixels to the hashed
    bytes: another file renamed over the name, or a write meanwhile, raises the reason
    ``changed``.

    Raises :class:`~xraynet.errors.ImageError` with ``reason`` one of
    ``ImageError.REASONS`` when the file cannot be used; see the module
    docstring for what each format goes through.
    """
    path = Path(path)
    want = Reduction(int(min_side)) if min_side is not None else None
    fh = _open_regular(path)
    with fh:
        try:
            _check_version(path, fh, version)
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
            pixels, fmt, mode, depth, notes = decoder(path, fh, head, size, reduce=want)
        _check_version(path, fh, version)  # written to while it was read
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
    if want is not None:
        w, h = want.full_size or (w, h)
        # What the decoder could not shrink while decoding, area means shrink now, before
        # the full-size steps below (the warnings, then preprocess) run on it.
        pixels = area_reduce(pixels, (w, h), want.factor(w, h), want.scale)
    return Decoded(pixels=pixels, width=w, height=h, source_format=fmt, source_mode=mode, bit_depth=depth,
                   warnings=[*notes, *image_warnings(pixels, w, h)])


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
        """Short stable hash (16 hex digits) of the parameters, the pipeline version and the
        reduced-decoding margin (:data:`REDUCE_MARGIN`, None when off), for caches."""
        reduce_margin = REDUCE_MARGIN if REDUCED_DECODING else None
        text = json.dumps({"pipeline_version": PIPELINE_VERSION, "reduce_margin": reduce_margin, **self.to_dict()},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _resize(pixels: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    """Resize a float32 (h, w) array to size = (width, height); box = (x0, y0, x1, y1) source region."""
    return resize_float(pixels, size, _RESAMPLE, box)


def _bin_positions(rows: np.ndarray, lo: float, scale: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin index, position inside the bin in [0, 1]) of each value of ``rows``, for ``bins``
    equal bins from ``lo`` with ``scale`` = bins / (hi - lo); float64 arithmetic."""
    t = rows.astype(np.float64)
    t -= lo
    t *= scale  # position in bins, 0 .. bins (values >= lo, so t >= 0 and truncation is floor)
    i = np.minimum(t.astype(np.intp), bins - 1)  # hi itself falls in the last bin
    t -= i
    np.minimum(t, 1.0, out=t)
    return i, t


def equalize_histogram(pixels: np.ndarray, bins: int = EQUALIZE_BINS) -> np.ndarray:
    """Histogram equalisation in float: each value maps to its cumulative frequency.

    ``bins`` equal histogram bins span the image's own [min, max]; within a bin the
    mapping is linear, so equal inputs stay equal and order is kept. The
    result is float32 in [0, 1], the shape of ``pixels``. A constant image comes back
    as zeros. Raises :class:`~xraynet.errors.ShapeError` for NaN or infinite values.
    """
    p = np.asarray(pixels, dtype=np.float32)
    lo, hi = float(p.min()), float(p.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ShapeError(f"equalize_histogram: the image has non-finite values. Expected finite values, got "
                         f"min {lo}, max {hi}. Pass decoded pixels (in [0, 1]).")
    if hi <= lo:
        return np.zeros_like(p)
    # Bins are equal, so a value's bin is found by arithmetic (for the histogram and for the
    # mapping alike), not by np.histogram's and np.interp's searches: 8x faster, and it works
    # for a range of fewer float32 steps than bins, where np.histogram refuses. Two passes over
    # blocks of rows keep the float64 temporaries to a few MB whatever the image size.
    scale = bins / (hi - lo)
    flat_in = p.reshape(p.shape[0], -1)
    step = max(1, (1 << 20) // max(1, flat_in.shape[1]))
    hist = np.zeros(bins, np.int64)
    kept = None  # an image of one block keeps its bin positions for the mapping (a film at working size)
    for r in range(0, flat_in.shape[0], step):
        positions = _bin_positions(flat_in[r:r + step], lo, scale, bins)
        hist += np.bincount(positions[0].ravel(), minlength=bins)
        kept = positions if step >= flat_in.shape[0] else None
    cdf = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    cdf /= cdf[-1]  # cdf[0] = 0 and cdf[-1] = 1: the result spans [0, 1] with no further stretch
    slope = np.diff(cdf)
    out = np.empty(p.shape, np.float32)
    flat_out = out.reshape(out.shape[0], -1)
    for r in range(0, flat_in.shape[0], step):
        i, t = kept if kept is not None else _bin_positions(flat_in[r:r + step], lo, scale, bins)
        t *= slope[i]  # in place: cdf[i] + t * slope[i], the same roundings in float64
        t += cdf[i]
        flat_out[r:r + step] = t
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


def reduced_side(prep: Preprocessing) -> int:
    """The short side, in pixels, that :func:`load` lets a film be decoded down to for ``prep``:
    :data:`REDUCE_MARGIN` times the larger of ``image_size`` and ``working_size``, divided by
    the share of the side that ``border_crop`` leaves."""
    content = max(prep.image_size, prep.working_size or 0)
    return math.ceil(REDUCE_MARGIN * content / (1.0 - 2.0 * prep.border_crop))


def load(path, prep: Preprocessing, version: tuple | None = None) -> tuple[np.ndarray, Decoded]:
    """Decode ``path`` (at reduced size when :data:`REDUCED_DECODING`, down to
    :func:`reduced_side`; ``version`` as :func:`decode` takes it) and preprocess it:
    (float32 (image_size, image_size), Decoded). Training, evaluation and screening all
    read films through here, so they see the same pixels."""
    decoded = decode(path, min_side=reduced_side(prep) if REDUCED_DECODING else None, version=version)
    return preprocess(decoded, prep), decoded
