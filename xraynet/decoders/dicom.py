"""DICOM files: recognised by their content, declared sizes checked before any
pixel is decoded, pixels decoded by pydicom and its codec plugins, then the
DICOM grayscale display pipeline.

See :func:`xraynet.imaging.decode` for what comes out and :func:`decode_dicom`
for the rules applied, each with its source in the DICOM standard (PS3.x).
"""
from __future__ import annotations

import re
import struct
import warnings
import zlib

import numpy as np

from ..errors import ImageError
from . import COPY_AGAIN, MAX_PIXELS, SIGNATURES, check_pixels, describe, image_error, library_warnings, luma, os_error, short

_DICOM_SUFFIXES = (".dcm", ".dicom")

# ------------------------------------------------------------------ detection
# Value representations (PS3.5 Table 6.2-1). In explicit VR those of _LONG_VRS
# carry two reserved zero bytes and a 32-bit length, the others a 16-bit length
# (PS3.5 7.1.2, Tables 7.1-1 and 7.1-2); implicit VR has a 32-bit length after
# the tag (PS3.5 7.1.3).
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
                 b"UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED_LENGTH_VRS = frozenset(b"OB OW SQ UN".split())  # PS3.5 7.1.2: only these may have length FFFFFFFFH
_UNDEFINED = 0xFFFFFFFF
# Groups an image dataset starts with: the file meta group (0002) of a file
# written without its preamble, else the first group the dataset holds --
# identification (0008) in a complete one; patient, acquisition, relationship
# or image pixel (0010, 0018, 0020, 0028) in a stripped one.
_FIRST_GROUPS = frozenset({0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float, Pixel Data
# Complete elements needed before the head counts as a dataset: each passes
# four structural tests (see _complete_elements), so random bytes pass two
# with a probability far below 1e-12.
_MIN_COMPLETE = 2


def _complete_elements(head: bytes, explicit: bool) -> int:
    """How many whole, well-formed data elements ``head`` starts with when read as a
    little-endian dataset (explicit or implicit VR); -1 as soon as one breaks a rule.

    Rules (PS3.5 7.1): tags strictly increase; no top-level item tags (FFFE) or the
    invalid odd groups 0001-0007; a value length is even (7.1.1) or, in explicit VR,
    FFFFFFFFH only for OB/OW/SQ/UN; explicit VRs are real VR names with zero
    reserved bytes. Group 0002 is explicit VR in every transfer syntax (PS3.10 7.1),
    and reading stops where it ends, at the first undefined length, at Pixel Data
    or where the value runs past ``head``."""
    pos, previous, complete = 0, -1, 0
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        tag = group << 16 | element
        if (tag <= previous or group == 0xFFFE or (group < 0x0008 and group != 0x0002)
                or (previous < 0 and group not in _FIRST_GROUPS)):
            return -1
        if previous >> 16 == 0x0002 and group != 0x0002:
            break  # the file meta group ends here; the dataset may use another encoding
        if explicit or group == 0x0002:
            vr = head[pos + 4:pos + 6]
            if vr not in _VRS:
                return -1
            if vr in _LONG_VRS:
                if pos + 12 > len(head):
                    break
                if head[pos + 6:pos + 8] != b"\0\0":
                    return -1
                length, header = struct.unpack_from("<L", head, pos + 8)[0], 12
            else:
                length, header = struct.unpack_from("<H", head, pos + 6)[0], 8
            if length == _UNDEFINED and vr not in _UNDEFINED_LENGTH_VRS:
                return -1
        else:
            length, header = struct.unpack_from("<L", head, pos + 4)[0], 8
        if length == _UNDEFINED or tag in _PIXEL_TAGS:
            break
        if length % 2:
            return -1
        if pos + header + length > len(head):
            break
        complete += 1
        pos += header + length
        previous = tag
    return complete


def raw_encoding(head: bytes) -> str | None:
    """How a file starting with ``head`` is encoded when it holds a bare DICOM
    dataset (no 128-byte preamble, no ``DICM``; PS3.10 7.1 describes the full
    file): ``"explicit"`` (explicit VR little endian, or a file meta group
    without preamble, which is always explicit), ``"implicit"`` (implicit VR
    little endian, the default transfer syntax, PS3.5 10.1) or None when the
    bytes are not a dataset. Only ``head`` is read: the first
    :data:`~xraynet.decoders.HEAD_BYTES` bytes of the file are enough."""
    for explicit in (True, False):
        if _complete_elements(head, explicit) >= _MIN_COMPLETE:
            return "explicit" if explicit else "implicit"
    return None


def looks_like_dicom(head: bytes, suffix: str = "") -> bool:
    """Whether a file starting with ``head`` (its first :data:`~xraynet.decoders.HEAD_BYTES`
    bytes) is read as DICOM: the ``DICM`` marker at byte 128 (PS3.10 7.1); else,
    unless it starts with a PNG, JPEG, GIF, TIFF or BMP signature, a bare dataset
    (:func:`raw_encoding`), whatever its name (``IM0001``, ``1.2.840...9``) or a
    ``.dcm`` / ``.dicom`` name (``suffix``, any case)."""
    if head[128:132] == b"DICM":
        return True
    if any(head.startswith(sig) for sig, _ in SIGNATURES):
        return False
    return raw_encoding(head) is not None or suffix.lower() in _DICOM_SUFFIXES


# ------------------------------------------- sizes declared by compressed frames
class _BadCodestream(ValueError):
    """A compressed frame's header cannot be read (cut short or malformed)."""


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # ISO/IEC 15444-1 I.5.1
# JPEG start-of-frame markers (ITU-T T.81 Table B.1: C0-CF less DHT C4, JPG C8,
# DAC CC) and JPEG-LS SOF55 (ITU-T T.87 C.2.2, same frame header layout).
_SOF_MARKERS = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}


def _jpeg_size(frame: bytes) -> tuple[str, int, int]:
    """Width and height of a JPEG or JPEG-LS frame header (SOFn: Lf, P, Y, X; T.81 B.2.2)."""
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise _BadCodestream(f"no JPEG marker at byte {pos}")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte (T.81 B.1.1.2)
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise _BadCodestream("no frame header (SOF marker) before the scan")
        if marker in _SOF_MARKERS:
            if pos + 9 > len(frame):
                break
            height, width = struct.unpack_from(">HH", frame, pos + 5)
            what = "the embedded JPEG-LS frame header (SOF55)" if marker == 0xF7 else \
                f"the embedded JPEG frame header (SOF{marker - 0xC0})"
            return what, width, height
        pos += 2 + struct.unpack_from(">H", frame, pos + 2)[0]
    raise _BadCodestream("the frame ends before its JPEG frame header (SOF marker)")


def _j2k_size(frame: bytes, pos: int = 0) -> tuple[str, int, int]:
    """Image size of a JPEG 2000 codestream from its SIZ marker, which directly follows
    SOC: Xsiz - XOsiz by Ysiz - YOsiz (ITU-T T.800 A.5.1)."""
    if frame[pos:pos + 4] != b"\xff\x4f\xff\x51" or pos + 24 > len(frame):
        raise _BadCodestream("the JPEG 2000 codestream does not start with SOC and a whole SIZ marker")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">LLLL", frame, pos + 8)
    if xosiz >= xsiz or yosiz >= ysiz:
        raise _BadCodestream(f"the SIZ marker's image offset ({xosiz}, {yosiz}) lies outside its "
                             f"reference grid ({xsiz}x{ysiz})")
    return "the embedded JPEG 2000 codestream (SIZ marker)", xsiz - xosiz, ysiz - yosiz


def _jp2_sizes(frame: bytes) -> list[tuple[str, int, int]]:
    """Sizes declared by a JP2 file: its Image Header box (ihdr: HEIGHT, WIDTH; T.800
    I.5.3.1) and the SIZ marker of its contiguous codestream box (jp2c)."""
    sizes = []

    def boxes(start, end):
        pos = start
        while pos + 8 <= end:
            length, kind = struct.unpack_from(">L4s", frame, pos)
            header = 8
            if length == 1:  # XLBox: a 64-bit length follows
                if pos + 16 > end:
                    raise _BadCodestream("a JP2 box header is cut short")
                length, header = struct.unpack_from(">Q", frame, pos + 8)[0], 16
            elif length == 0:  # the box runs to the end
                length = end - pos
            if length < header:
                raise _BadCodestream(f"the JP2 box {kind!r} has an impossible length {length}")
            yield kind, pos + header, min(pos + length, end)
            pos += length

    for kind, start, end in boxes(0, len(frame)):
        if kind == b"jp2h":
            for sub, s, e in boxes(start, end):
                if sub == b"ihdr" and e - s >= 8:
                    height, width = struct.unpack_from(">LL", frame, s)
                    sizes.append(("the embedded JP2 image header box (ihdr)", width, height))
        elif kind == b"jp2c":
            sizes.append(_j2k_size(frame, start))
            break
    if not sizes:
        raise _BadCodestream("the JP2 file holds neither an image header box nor a codestream")
    return sizes


def declared_sizes(frame: bytes) -> list[tuple[str, int, int]]:
    """The ``(header, width, height)`` declarations at the start of one compressed
    frame, read from its bytes without decoding: a JPEG or JPEG-LS frame header
    (starts FFD8), a JPEG 2000 codestream's SIZ marker (starts FF4F FF51), a JP2
    file's ihdr box and codestream; [] for anything else (RLE declares no size:
    its decoders size their output from Rows and Columns, PS3.5 Annex G).

    Raises ``ValueError`` when a recognised header is cut short or malformed."""
    if frame.startswith(b"\xff\xd8"):
        return [_jpeg_size(frame)]
    if frame.startswith(b"\xff\x4f\xff\x51"):
        return [_j2k_size(frame)]
    if frame.startswith(_JP2_SIGNATURE):
        return _jp2_sizes(frame)
    return []


def _ends_early(frame: bytes) -> bool:
    """A JPEG-family frame that lacks its end marker (EOI / EOC, both FFD9; a frame's
    last item may carry one padding byte, PS3.5 A.4) was cut short."""
    if frame.startswith((b"\xff\xd8", b"\xff\x4f\xff\x51", _JP2_SIGNATURE)):
        return not frame.rstrip(b"\0").endswith(b"\xff\xd9")
    return False


def _items_end_early(data: bytes) -> bool:
    """Whether an encapsulated Pixel Data value (PS3.5 A.4: items FFFE,E000 with a
    32-bit length) ends inside one of its items."""
    pos = 0
    while pos + 8 <= len(data):
        tag, length = struct.unpack_from("<LL", data, pos)
        if tag != 0xE000FFFE:
            return False
        pos += 8 + length
    return pos != len(data)


# ------------------------------------------------------------ header gates
# View Position (0018,5101), PS3.3 C.8.11.5 (DX Positioning) and C.8.1.1 (CR
# Series): AP and PA are the frontal projections; LL, RL, LAT(ERAL), the
# obliques (RLO, LLO...) and the lateral decubitus views (RLD, LLD, frontal
# beam on a patient lying on the side, so the film is turned 90 degrees) are not.
# Vendors write "AP SUPINE", "PA_ERECT": the first word decides.
_FRONTAL_VIEWS = frozenset({"AP", "PA"})
# Modality (0008,0060), PS3.3 C.7.3.1.1.1: CR, DX and RG (film) are projection
# radiography; DF (retired digital fluoroscopy) and DR (not a defined term, but
# written by digital radiography devices) count too. OT ("other") says nothing
# either way, and Secondary Capture copies of films carry it, so it gives no
# warning; every other value (CT, MR, US, NM, PT, MG, XA, RF, PX, IO...) names a
# different technique or target.
_RADIOGRAPHY = frozenset({"CR", "DX", "RG", "DF", "DR", "OT"})
# Body Part Examined (0018,0015), PS3.3 C.7.3.1, defined terms in PS3.16 Annex L:
# CHEST (also CHESTABDOMEN, CHEST_TO_PELVIS...: words starting CHEST), THORAX;
# LUNG(S) and the Spanish/Portuguese TORAX seen in the field.
_CHEST_WORDS = frozenset({"THORAX", "TORAX", "LUNG", "LUNGS"})
# Presentation Intent Type (0008,0068), PS3.3 C.8.11.1; the "For Processing" SOP
# classes (PS3.4 B.5) of DX, mammography and intra-oral imaging say the same.
_FOR_PROCESSING_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1",
                                         "1.2.840.10008.5.1.4.1.1.1.3.1"})


def _text(ds, keyword: str) -> str:
    """An element's (first) value, stripped and upper case; "" when absent or unreadable."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 -- pydicom converts lazily and raises on a corrupt value
        return ""
    if value is None or isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if value else ""
    return str(value).strip().upper()


def header_warnings(ds) -> list[str]:
    """Warning codes (keys of :data:`xraynet.imaging.WARNING_CODES`) for a dataset whose
    header says it is not a frontal chest radiograph for presentation: ``not_frontal``,
    ``not_radiograph``, ``not_chest``, ``for_processing``, in that order. A missing or
    empty tag gives no warning. The values that count as frontal, radiograph and chest,
    and their sources, are the module constants above."""
    out = []
    view = _text(ds, "ViewPosition")
    words = re.split(r"[^A-Z0-9]+", view)
    if view and words[0] not in _FRONTAL_VIEWS:
        out.append("not_frontal")
    elif not view:
        # No View Position: the coded view (0054,0220) of the DX Positioning Module.
        try:
            meaning = str(ds.ViewCodeSequence[0].get("CodeMeaning", "")) if ds.get("ViewCodeSequence") else ""
        except Exception:  # noqa: BLE001 -- a corrupt optional sequence gives no gate
            meaning = ""
        if re.search(r"lateral|oblique|decubitus", meaning, re.IGNORECASE):
            out.append("not_frontal")
    modality = _text(ds, "Modality")
    if modality and modality not in _RADIOGRAPHY:
        out.append("not_radiograph")
    part = _text(ds, "BodyPartExamined")
    if part and not any(w.startswith("CHEST") or w in _CHEST_WORDS for w in re.split(r"[^A-Z]+", part)):
        out.append("not_chest")
    if (_text(ds, "PresentationIntentType") == "FOR PROCESSING"
            or _text(ds, "SOPClassUID") in _FOR_PROCESSING_SOP_CLASSES):
        out.append("for_processing")
    return out


# ------------------------------------------------------- grayscale pipeline
_CHUNK_PIXELS = 1 << 20  # float64 working set of the non-LUT path: 8 MB per chunk


def displays_inverted(ds, photometric: str) -> bool:
    """Whether the grayscale pipeline's last stage inverts: True when the minimum
    output value is to be shown white.

    Rule: a Presentation LUT Shape (2050,0020) of IDENTITY or INVERSE decides on
    its own; without one (or with another value), MONOCHROME1 inverts and
    MONOCHROME2 does not.

    Sources: PS3.3 C.7.6.3.1.2 (MONOCHROME1: minimum shown white; MONOCHROME2:
    black); PS3.3 C.11.6.1.2 (INVERSE: P-Value = maximum - output; IDENTITY: the
    output is already P-Values, whose minimum is black, PS3.14); PS3.4 N.2.1.4
    (the Presentation LUT is the last stage; its output, P-Values, is what is
    displayed, and Note 1: the pipeline then overrides Photometric Interpretation).
    The image IODs that carry the shape make it restate the photometric
    interpretation, not add to it: INVERSE shall be used with MONOCHROME1,
    IDENTITY with MONOCHROME2 (PS3.3 C.8.11.3 DX Image Module, C.7.6.1 General
    Image Module), so MONOCHROME1 + INVERSE is one inversion, not two. Files that
    break that rule (MONOCHROME2 + INVERSE, MONOCHROME1 + IDENTITY) get what
    their last stage says, as a conforming display would show them."""
    shape = _text(ds, "PresentationLUTShape")
    if shape in ("IDENTITY", "INVERSE"):
        return shape == "INVERSE"
    return photometric == "MONOCHROME1"


def _to_unit(values: np.ndarray, inverted: bool) -> np.ndarray:
    """float64 display values -> float32 in [0, 1] by their min and max, inverted
    if asked; non-finite values become black (before inversion), so does an image
    without contrast."""
    finite = np.isfinite(values)
    if not finite.any():
        out = np.zeros(values.shape)
    else:
        lo, hi = values[finite].min(), values[finite].max()
        out = np.where(finite, values, lo) - lo
        if hi > lo:
            out /= hi - lo
    if inverted:
        out = 1.0 - out
    return out.astype(np.float32)


def _stretch(a: np.ndarray, inverted: bool) -> np.ndarray:
    """In place on float32 ``a``: its min and max to [0, 1], inverted if asked;
    non-finite values become black. Rounding: float32, within a few ulp of the
    float64 computation."""
    finite = np.isfinite(a)
    if not finite.all():
        np.copyto(a, np.float32(np.nan), where=~finite)
        lo = np.nanmin(a) if finite.any() else np.float32(0)
        np.copyto(a, lo, where=~finite)
    del finite
    lo, hi = a.min(), a.max()
    a -= lo
    if hi > lo:
        a /= hi - lo
    if inverted:
        np.subtract(np.float32(1), a, out=a)
    return a


def _modality(values: np.ndarray, ds, path) -> np.ndarray:
    """Stage 1 (PS3.4 N.2.1.1, PS3.3 C.11.1): the Modality LUT Sequence or Rescale
    Slope/Intercept, through pydicom (float64 for a rescale)."""
    from pydicom.pixels import apply_modality_lut

    try:
        return apply_modality_lut(values, ds)
    except Exception as e:  # noqa: BLE001 -- a malformed Modality LUT Sequence
        raise image_error(path, f"its Modality LUT cannot be applied ({type(e).__name__}: {short(e)})",
                           "a Modality LUT or Rescale Slope/Intercept that fits the pixel data",
                           "a malformed one", COPY_AGAIN, "damaged") from None


def _window(center: float, width: float, function: str):
    """The window of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) or
    C.11.2.1.3.1 (SIGMOID) onto the output range [0, 1], as a float64 function.

    Written out rather than taken from pydicom, whose apply_windowing derives the
    output range from Rescale Slope/Intercept and so turns a window upside down
    when the slope is negative (PS3.3 C.11.1.1.2 allows any slope)."""
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError(f"Window Width {width:g} is not allowed for {function} (LINEAR needs >= 1, others > 0)")
    if function == "SIGMOID":
        def sigmoid(x):
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-4.0 * (np.asarray(x, dtype=np.float64) - center) / width))
        return sigmoid
    c, w = (center, width) if function == "LINEAR_EXACT" else (center - 0.5, width - 1.0)

    def linear(x):
        x = np.asarray(x, dtype=np.float64)
        ramp = (x - c) / w + 0.5 if w > 0 else np.zeros_like(x)  # LINEAR width 1: a step, no ramp
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, ramp))
    return linear


def _first(value):
    """The first of a multi-valued element's values (VM 1-n), as PS3.3 C.11.2.1.2 asks."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _voi_stage(ds, probe: np.ndarray):
    """Stage 2 (PS3.4 N.2.1.2, PS3.3 C.11.2) as a function of Modality LUT output:
    the first VOI LUT Sequence item (through pydicom; preferred when a window is
    there too, as pydicom does), else the first Window Center/Width with its VOI
    LUT Function (:func:`_window`; LINEAR when absent). None when the dataset has
    neither, or when it cannot be applied (a LUT is tried on ``probe``, a few
    Modality LUT output values): ``warnings.warn`` then says why, and the image
    keeps its full range, which the min-max stretch still displays."""
    from pydicom.pixels import apply_voi

    try:
        if ds.get("VOILUTSequence"):
            def voi(values):
                if values.dtype.kind == "f" and np.all(values == np.round(values)):
                    # A VOI LUT is indexed by integers; a rescale with integral
                    # results hands it floats that pydicom would warn about.
                    values = values.astype(np.int64)
                return apply_voi(values, ds, index=0)

            voi(probe)
            return voi
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center in (None, "") or width in (None, ""):
            return None  # absent or empty: no window (an empty Type 1C/3 element says nothing)
        function = _text(ds, "VOILUTFunction") or "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            warnings.warn(f"VOI LUT Function {function!r} is not one of LINEAR, LINEAR_EXACT, SIGMOID "
                          f"(PS3.3 C.11.2.1.3); LINEAR used", stacklevel=2)
            function = "LINEAR"
        return _window(float(center), float(width), function)
    except Exception as e:  # noqa: BLE001 -- pydicom raises ValueError, NotImplementedError, TypeError...
        warnings.warn(f"VOI LUT / window not applied, the image is shown over its full range: "
                      f"{type(e).__name__}: {short(e)}", stacklevel=2)
        return None


def _grayscale(arr: np.ndarray, ds, photometric: str, path) -> np.ndarray:
    """Stored monochrome values (h, w) -> float32 (h, w) in [0, 1], 0 = black.

    Pipeline (PS3.4 N.2.1): Modality LUT Sequence or Rescale Slope/Intercept
    (PS3.3 C.11.1); VOI LUT Sequence or the first Window Center/Width with its
    VOI LUT Function (PS3.3 C.11.2), see :func:`_voi_stage`; min-max to [0, 1];
    the polarity of :func:`displays_inverted`.

    Memory: the LUT stages compute in float64. For 8- and 16-bit samples
    (every radiograph) they run only on the distinct stored values (at most
    65,536), giving a float32 table indexed by the samples: the only full-size
    array made is the float32 result, identical to the float64 computation
    rounded once to float32. Other samples (32-bit, float) go through in chunks
    of 1 M pixels."""
    inverted = displays_inverted(ds, photometric)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        index = arr.view(f"u{arr.dtype.itemsize}")  # signed values index by their bit pattern
        present = np.zeros(1 << (8 * arr.dtype.itemsize), dtype=bool)
        present[index] = True
        stored = np.flatnonzero(present).astype(index.dtype).view(arr.dtype)
        values = _modality(stored, ds, path)
        voi = _voi_stage(ds, values[:1])
        if voi is not None:
            values = voi(values)
        lut = np.zeros(present.size, dtype=np.float32)
        lut[present] = _to_unit(np.asarray(values, dtype=np.float64), inverted)
        return lut[index]
    out = np.empty(arr.shape, dtype=np.float32)
    voi = _voi_stage(ds, _modality(arr[:1, :1].ravel(), ds, path))
    step = max(1, _CHUNK_PIXELS // max(1, arr.shape[-1]))
    for i in range(0, arr.shape[0], step):
        values = _modality(arr[i:i + step], ds, path)
        out[i:i + step] = voi(values) if voi is not None else values
    return _stretch(out, inverted)


# ---------------------------------------------------------------- decoding
# What to install for each compressed transfer syntax: the pylibjpeg plugins
# that pydicom 3 uses (core dependencies of xraynet).
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG, "1.2.840.10008.1.2.4.51": _LIBJPEG, "1.2.840.10008.1.2.4.57": _LIBJPEG,
    "1.2.840.10008.1.2.4.70": _LIBJPEG, "1.2.840.10008.1.2.4.80": _LIBJPEG, "1.2.840.10008.1.2.4.81": _LIBJPEG,
    "1.2.840.10008.1.2.4.90": _OPENJPEG, "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": _OPENJPEG, "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG, "1.2.840.10008.1.2.5": "pydicom (its own RLE decoder)",
}
_EXPORT_AGAIN = "Export the file again from the archive, or remove it"  # complete but damaged: a new copy won't help
_CONVERT = ("convert it to uncompressed DICOM (gdcmconv --raw, or dcmtk's dcmdjpeg / dcmdrle) "
            "or export it as PNG")


def _unsupported_codec(path, ts, detail: str):
    packages = _CODEC_PACKAGES.get(str(ts))
    if packages:
        todo = f"Install its decoder: pip install {packages} (or reinstall xraynet, which depends on them)"
    else:
        todo = f"pydicom has no decoder for it, so there is nothing to pip install: {_CONVERT}"
    return image_error(path, f"its pixel data is compressed with {ts.name} ({ts}), which no installed decoder reads",
                       f"an installed decoder for {ts.name}", detail, todo, "unsupported_codec")


def _native_frame_bytes(ds, rows: int, cols: int) -> int:
    """Bytes of one uncompressed frame (PS3.5 8.1.1; Bits Allocated 1 packs 8 pixels a byte)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return (rows * cols * samples + 7) // 8 if bits == 1 else rows * cols * samples * ((bits + 7) // 8)


_IMAGE_PIXEL_KEYWORDS = ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                         "BitsStored", "HighBit", "PixelRepresentation")


_FIXED_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


def _plausible_element(ds, raw) -> bool:
    """Whether a raw element whose value runs past the end of the file looks like a
    real element cut short rather than garbage: a public tag pydicom knows whose
    length fits its VR and fixed multiplicity (PS3.5 Table 6.2-1, PS3.6), or a
    private one (odd group above 0008, PS3.5 7.8.1) whose creator element is there."""
    from pydicom.datadict import dictionary_has_tag, dictionary_VM, dictionary_VR

    tag = raw.tag
    group, element = tag >> 16, tag & 0xFFFF
    if dictionary_has_tag(tag):
        size, vm = _FIXED_SIZES.get(dictionary_VR(tag)), dictionary_VM(tag)
        return not (size and vm.isdigit() and raw.length != size * int(vm))
    if group % 2 and 0x0008 < group < 0xFFFF:
        return 0x0010 <= element <= 0x00FF or (group << 16 | element >> 8) in ds
    return False


def _why_no_pixels(ds, size: int) -> tuple[str, str] | None:
    """Why a DICOM dataset read without pixel data is not simply an object without an
    image: ``("truncated", why)`` when nothing follows the file meta, when the file
    ends inside the last element's value or inside the header after it (under 12
    bytes, PS3.5 7.1.2; pydicom reads both short without a word), or when Image
    Pixel Module attributes are there but not the Pixel Data they describe;
    ``("damaged", why)`` when the element whose value runs past the end is garbage
    (:func:`_plausible_element`); else None."""
    tags = [tag for tag in ds.keys() if tag >> 16 != 0x0002]
    if not tags:
        return "truncated", "no data element follows the file header"
    ts = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    raw = ds.get_item(max(tags))
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    # Deflated: offsets count inflated bytes; a converted element has no offsets.
    if ts != "1.2.840.10008.1.2.1.99" and isinstance(tell, int) and isinstance(length, int) \
            and length != _UNDEFINED:
        if tell + length > size:
            if not _plausible_element(ds, raw):
                return "damaged", f"element {raw.tag} at byte {tell:,} is garbage ({length:,} bytes)"
            return "truncated", f"element {raw.tag} declares {length:,} bytes at byte {tell:,}, the file has {size:,}"
        if 0 < size - (tell + length) < 12:
            return "truncated", f"the file ends inside the header of the element after {raw.tag}"
    if any(k in ds for k in _IMAGE_PIXEL_KEYWORDS):
        # The Image Pixel Module is there but its Pixel Data, Type 1 and the
        # last element by tag order (PS3.3 C.7.6.3, PS3.5 7.1), is not.
        return "truncated", "it ends before the Pixel Data its header describes"
    return None


_DEFLATED_TS = b"1.2.840.10008.1.2.1.99"
#: Most bytes a deflated dataset may inflate to: two frames of MAX_PIXELS 16-bit
#: samples. pydicom inflates the whole dataset while reading it, before any size
#: can be checked, so the bound is applied to the stream first.
_MAX_INFLATED = 4 * MAX_PIXELS


def _check_deflated(path, fh, head: bytes) -> None:
    """Refuse ("too_large") a Deflated Explicit VR Little Endian file (PS3.5 A.5)
    whose dataset inflates past :data:`_MAX_INFLATED` bytes, counting the inflated
    bytes a block at a time and keeping none of them. The dataset starts where the
    file meta group (group 0002, always explicit VR little endian, PS3.10 7.1) ends,
    found by walking its elements, with or without the preamble and group length."""
    if _DEFLATED_TS not in head:
        return
    pos = 132 if head[128:132] == b"DICM" else 0
    fh.seek(pos)
    while True:
        element = fh.read(8)
        if len(element) < 8:
            return  # no dataset after the meta group: pydicom reports it
        group, _, vr = struct.unpack_from("<HH2s", element)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            extra = fh.read(4)
            if len(extra) < 4:
                return
            length = struct.unpack("<I", extra)[0]
        else:
            length = struct.unpack_from("<H", element, 6)[0]
        if length == _UNDEFINED:
            return  # not a well-formed meta group: pydicom reports it
        pos = fh.tell() + length
        fh.seek(pos)
    start = pos
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    fh.seek(start)
    try:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            data = block
            while data:
                # max_length bounds each piece: a tiny block may hold gigabytes.
                total += len(inflater.decompress(data, 1 << 24))
                if total > _MAX_INFLATED:
                    raise image_error(path, f"its deflated dataset inflates to more than {_MAX_INFLATED:,} bytes",
                                      f"at most {_MAX_INFLATED:,} bytes (two frames of {MAX_PIXELS:,} "
                                      "16-bit pixels)", "more", "Downscale the image before screening it "
                                      "(a possible decompression bomb is refused)", "too_large")
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        return  # pydicom reports the damaged stream in its own words
    finally:
        fh.seek(0)


def decode_dicom(path, fh, head: bytes, size: int) -> tuple[np.ndarray, str, str, int, list[str]]:
    """Decode the first frame of the DICOM file open as ``fh`` (``head``: its first
    bytes, ``size``: its length in bytes).

    Returns ``(pixels, "dicom", photometric interpretation, bits stored, warnings)``:
    ``pixels`` float32 (Rows, Columns) in [0, 1], 0 = black; ``warnings`` the codes
    of :func:`header_warnings`. Library warnings are left to the caller's
    :func:`~xraynet.decoders.library_warnings`.

    Reading: a file with the ``DICM`` marker normally; a bare dataset (no preamble
    or file meta, :func:`raw_encoding`) with the transfer syntax its first elements
    show (implicit or explicit VR little endian, PS3.5 10.1 and A.1-A.2).

    Before any pixel is decoded: Rows x Columns (one frame: only the first is
    decoded), and for an encapsulated transfer syntax (PS3.5 A.4) the first
    frame's own header (:func:`declared_sizes`), must stay within
    :data:`~xraynet.decoders.MAX_PIXELS`; the codestream must declare Rows x
    Columns; a decoder for the transfer syntax must be installed.

    Monochrome pixels go through :func:`_grayscale`; RGB and YBR (converted to RGB
    by pydicom) and PALETTE COLOR (through its palette, PS3.3 C.7.6.3.1.5) become
    ITU-R 601 luma, stretched to [0, 1].

    Raises :class:`~xraynet.errors.ImageError` with reason ``dicom_needs_pydicom``
    (pydicom missing), ``not_an_image`` (a ``.dcm`` name on something else),
    ``truncated`` (the file, the pixel data or the first frame ends early),
    ``damaged`` (complete but corrupt, or its headers contradict each other),
    ``too_large``, ``unsupported_codec`` (no installed decoder; names what to pip
    install), ``dicom_unsupported`` (no pixel data, or a pixel layout that is not
    one image), ``unsupported_mode`` (another photometric interpretation) or
    ``unreadable``."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import pixel_array  # noqa: F401 -- fails here, not later, without numpy support
    except ImportError:
        raise image_error(path, "is a DICOM file, but pydicom is not installed", "pydicom installed",
                           "no pydicom", 'Install it with: pip install "xraynet[dicom]"',
                           "dicom_needs_pydicom") from None
    has_magic = head[128:132] == b"DICM"
    bare = None if has_magic else raw_encoding(head)
    _check_deflated(path, fh, head)
    fh.seek(0)
    caught: list = []
    try:
        # force=True for a file without the DICM preamble: a bare dataset, or a
        # .dcm name on something that is then judged by what pydicom finds.
        with library_warnings() as caught:
            ds = pydicom.dcmread(fh, force=not has_magic)
        error = None
    except InvalidDicomError as e:
        raise image_error(path, f"not a readable DICOM file ({short(e)})", "a DICOM file", "something else",
                           "Remove the file from the folder or convert it", "not_an_image") from None
    except OSError as e:
        if e.errno is not None:
            raise os_error(path, e) from None
        error = e
    except Exception as e:  # noqa: BLE001 -- pydicom raises many types on damaged files
        error = e
    if error is not None:
        try:
            # pydicom fails this way on a header cut short only once it has read
            # the whole file.
            at_end = fh.tell() >= size
        except (OSError, ValueError):
            at_end = False
    # pydicom meets the end of a cut file with a warning and keeps no element
    # of the level it was reading; the warning tells a cut file from a damaged
    # one or one without pixel data. Handed on, it reaches the caller's collection.
    ended_early = ""
    for category, message in caught:
        warnings.warn(message, category, stacklevel=1)
        if re.search("end of file", message, re.IGNORECASE):
            ended_early = message
    if error is not None and not has_magic and bare is None:
        raise image_error(path, f"not a readable DICOM file ({type(error).__name__}: {short(error)})",
                           "a DICOM file", f"a {path.suffix} name without DICOM content ({describe(head, size)})",
                           "Remove the file from the folder or convert it", "not_an_image") from None
    if error is not None:
        cut = bool(ended_early) or at_end or isinstance(error, EOFError) or re.search("end of file", str(error), re.I)
        raise image_error(path, f"the DICOM file cannot be parsed ({type(error).__name__}: {short(error)})",
                           "a complete DICOM file", f"{size:,} bytes" + (" that end early" if cut else ""),
                           COPY_AGAIN if cut else _EXPORT_AGAIN,
                           "truncated" if cut else "damaged") from None
    # What the first elements of a bare dataset say; a bare file meta group
    # (always explicit VR) says nothing about the dataset after it.
    inferred = bare if bare is not None and head[:2] != b"\x02\x00" else None
    try:
        return _decode_dataset(path, ds, inferred, ended_early, has_magic or bare is not None, head, size)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 -- pydicom converts header values lazily and raises on corrupt ones
        raise image_error(path, f"a header element cannot be read ({type(e).__name__}: {short(e)})",
                           "well-formed DICOM header values", "a corrupt one", _EXPORT_AGAIN, "damaged") from None


def _decode_dataset(path, ds, inferred: str | None, ended_early: str, dicom_content: bool, head: bytes,
                    size: int):
    """The part of :func:`decode_dicom` after reading ``ds``. ``inferred``: the
    encoding :func:`raw_encoding` read from a bare dataset's first elements, else
    None; ``ended_early``: pydicom's end-of-file warning, or ""; ``dicom_content``:
    whether the content (not just the name) says DICOM."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import get_frame
    from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

    pixel_keyword = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if pixel_keyword is None:
        if not dicom_content:
            # Read with force=True: without the preamble, a dataset structure
            # or pixel data nothing says this is DICOM at all.
            raise image_error(path, "not an image", "a PNG, JPEG, BMP, TIFF or DICOM file",
                               f"a {path.suffix} name without DICOM content ({describe(head, size)})",
                               "Remove the file from the folder or convert it", "not_an_image")
        why = ("truncated", ended_early) if ended_early else _why_no_pixels(ds, size)
        if why is not None:
            reason, detail = why
            if reason == "truncated":
                raise image_error(path, f"the file ends early ({short(detail)})", "a complete DICOM file",
                                   f"{size:,} bytes", COPY_AGAIN, "truncated")
            raise image_error(path, f"its data elements are corrupt ({detail})", "a well-formed DICOM file",
                               "garbage where an element should start",
                               _EXPORT_AGAIN, "damaged")
        kind = str(getattr(ds, "Modality", "") or getattr(ds, "SOPClassUID", "") or "unknown")
        raise image_error(path, "is a DICOM file without pixel data (Pixel Data (7FE0,0010) missing)",
                           "a DICOM image", f"a DICOM object of kind {kind!r} (a report or presentation state?)",
                           "Export the image series, not this object", "dicom_unsupported")

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        # A bare dataset: no file meta says how it is encoded, so the first
        # elements tell (raw_encoding); pydicom must have read it the same way.
        implicit, little = ds.original_encoding
        if inferred is not None and (implicit != (inferred == "implicit") or not little):
            raise image_error(path, "its first elements and the rest of the dataset disagree on the encoding",
                               f"{inferred} VR little endian throughout",
                               f"{'implicit' if implicit else 'explicit'} VR "
                               f"{'little' if little else 'big'} endian", _EXPORT_AGAIN, "damaged")
        if not little:
            ts = UID("1.2.840.10008.1.2.2")  # Explicit VR Big Endian (retired, PS3.5 A.3)
        else:
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    ts = UID(str(ts))

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise image_error(path, "its image size is missing (Rows (0028,0010) / Columns (0028,0011))",
                           "Rows and Columns above 0 with the pixel data", f"{rows} rows, {cols} columns",
                           _EXPORT_AGAIN, "damaged")
    check_pixels(path, cols, rows, where="the DICOM header (Columns x Rows)")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError) as e:
        raise image_error(path, f"its Bits Stored or Number of Frames is not a number ({short(e)})",
                           "whole numbers", "something else", _EXPORT_AGAIN, "damaged") from None
    # Pixels alone do not bound memory: 3 samples of 32 bits at the pixel limit would be 1.2 GB
    # for one decoded frame. The frame's bytes must stay within what MAX_PIXELS 32-bit samples take.
    try:
        samples = max(1, int(ds.get("SamplesPerPixel", 1) or 1))
        allocated = max(1, int(ds.get("BitsAllocated", 16) or 16))
    except (TypeError, ValueError):
        samples, allocated = 1, 16
    frame_bytes = rows * cols * samples * ((allocated + 7) // 8)
    if frame_bytes > 4 * MAX_PIXELS:
        raise image_error(path, f"one frame would take {frame_bytes:,} bytes ({cols}x{rows}, {samples} sample(s) of "
                                f"{allocated} bits)", f"at most {4 * MAX_PIXELS:,} bytes a frame", f"{frame_bytes:,}",
                          "Downscale the image before screening it (a possible decompression bomb is refused)",
                          "too_large")

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise _unsupported_codec(path, ts, "no pydicom decoder for this transfer syntax") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise _unsupported_codec(path, ts, missing) from None

    frame = None
    # The length Pixel Data declares, read before the value is converted: a
    # value shorter than that was cut by the end of the file.
    declared = getattr(ds.get_item(pixel_keyword), "length", None)
    data = ds.PixelData if pixel_keyword == "PixelData" else None
    cut_short = isinstance(data, (bytes, bytearray)) and isinstance(declared, int) \
        and declared != _UNDEFINED and len(data) < declared
    if ts.is_encapsulated and isinstance(data, (bytes, bytearray)):
        eot = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        try:
            frame = get_frame(data, 0, number_of_frames=frames, extended_offsets=eot)
            sizes = declared_sizes(frame)
        except Exception as e:  # noqa: BLE001 -- pydicom's item parser and ours raise ValueError and others
            cut = bool(ended_early) or _items_end_early(data) or (frame is not None and _ends_early(frame))
            raise image_error(path, f"its first compressed frame cannot be read ({short(e)})",
                               f"a complete {ts.name} frame", f"{len(data):,} bytes of encapsulated pixel data",
                               COPY_AGAIN if cut else _EXPORT_AGAIN,
                               "truncated" if cut else "damaged") from None
        for where, width, height in sizes:
            check_pixels(path, width, height, where=where)
        for where, width, height in sizes:
            if (width, height) != (cols, rows):
                raise image_error(path, f"{where} and the DICOM header disagree on the image size",
                                   f"{cols}x{rows} (Columns x Rows)", f"{width}x{height}",
                                   _EXPORT_AGAIN, "damaged")
    elif isinstance(data, (bytes, bytearray)) and len(data) < _native_frame_bytes(ds, rows, cols):
        expected = f"{_native_frame_bytes(ds, rows, cols):,} bytes for one {cols}x{rows} frame"
        if cut_short:
            raise image_error(path, "its pixel data ends early", expected, f"{len(data):,} bytes", COPY_AGAIN,
                               "truncated")
        raise image_error(path, "its header and its complete pixel data disagree on the image size", expected,
                           f"{len(data):,} bytes (all that Pixel Data declares)", _EXPORT_AGAIN, "damaged")

    # RLE: pydicom's own decoder (numpy, ~0.1 s for 5 M pixels). On a corrupt
    # segment it raises, and it warns about non-conformant padding; the
    # pylibjpeg-rle plugin panics instead (a BaseException, with a Rust
    # backtrace printed on stderr, which breaks a cron run's silence).
    plugin = "pydicom" if ts == RLELossless and "pydicom" in decoder.available_plugins else ""
    try:
        arr = pixel_array(ds, index=0, decoding_plugin=plugin)
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 -- codecs raise many types on bad data, Rust ones panic
        if isinstance(e, RuntimeError) and "missing dependencies" in str(e):
            raise _unsupported_codec(path, ts, short(e)) from None
        if ts.is_encapsulated and isinstance(data, (bytes, bytearray)):
            cut = _items_end_early(data) or (frame is not None and _ends_early(frame))
        else:
            cut = cut_short
        cut = cut or bool(ended_early)
        raise image_error(path, f"its pixel data cannot be decoded ({type(e).__name__}: {short(e)})",
                           f"{cols}x{rows} pixels of {bits}-bit {ts.name} data",
                           "data that ends early" if cut else "data the decoder rejects",
                           COPY_AGAIN if cut else _EXPORT_AGAIN,
                           "truncated" if cut else "damaged") from None

    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise image_error(path, f"unexpected pixel array shape {arr.shape}", "one 2-D frame",
                               f"shape {arr.shape}", "Convert the file to a single-frame grayscale DICOM",
                               "dicom_unsupported")
        gray = _grayscale(arr, ds, pi, path)
    elif pi == "PALETTE COLOR":
        gray = _stretch(luma(apply_color_lut(arr, ds)), False)
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = _stretch(luma(arr), False)  # RGB, and YBR already converted to RGB by pydicom
    else:
        raise image_error(path, f"unsupported photometric interpretation {pi!r}",
                           "MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR", repr(pi),
                           "Convert the file to a grayscale DICOM or PNG", "unsupported_mode")
    return gray, "dicom", pi, bits, header_warnings(ds)
