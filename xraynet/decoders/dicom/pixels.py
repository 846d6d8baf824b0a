"""The pixels of a DICOM dataset read by pydicom (:func:`decode_dataset`):
the checks before any pixel is decoded (Pixel Data present, transfer syntax,
Rows x Columns and bytes per frame, a decoder installed, the first frame
complete and declaring the header's size), then the first frame decoded
(at reduced size where :mod:`.reduced` can), a DCT JPEG frame checked for
image data its decoder filled in (:mod:`xraynet.decoders.jpegscan`), and
the frame turned into grayscale in [0, 1] (:mod:`.display` for monochrome
images)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .. import COPY_AGAIN, IMAGE_KINDS, MAX_PIXELS, check_pixels, describe, image_error, luma, short
from ..jpegscan import check_decoded, check_jpegls
from ..raster.jpeg import jpeg_layout
from ..codestream import (component_transform, declared_precision, declared_sizes, ends_early, items_end_early,
                         lacks_end_marker)
from .detect import UNDEFINED_LENGTH
from .display import grayscale, stretch
from .header import header_warnings
from .reduced import decode_reduced

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
EXPORT_AGAIN = "Export the file again from the archive, or remove it"  # complete but damaged: a new copy won't help
_CONVERT = ("convert it to uncompressed DICOM (gdcmconv --raw, or dcmtk's dcmdjpeg / dcmdrle) "
            "or export it as PNG")


def _unsupported_codec(path, ts, detail: str):
    """``unsupported_codec`` for ``ts``, naming what to install or how to convert the file."""
    packages = _CODEC_PACKAGES.get(str(ts))
    if packages:
        todo = f"Install its decoder: pip install {packages} (or reinstall xraynet, which depends on them)"
    else:
        todo = f"pydicom has no decoder for it, so there is nothing to pip install: {_CONVERT}"
    return image_error(path, f"its pixel data is compressed with {ts.name} ({ts}), which no installed decoder reads",
                       f"an installed decoder for {ts.name}", detail, todo, "unsupported_codec")


def _native_frame_bytes(ds, g: _Geometry) -> int:
    """Bytes of one uncompressed frame (PS3.5 8.1.1; Bits Allocated 1 packs 8 pixels a byte;
    YBR_FULL_422 stores Y Y Cb Cr for each two pixels, 2 samples a pixel, PS3.3 C.7.6.3.1.2)."""
    samples = 2 if g.photometric == "YBR_FULL_422" else int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    pixels = g.rows * g.cols
    return (pixels * samples + 7) // 8 if bits == 1 else pixels * samples * ((bits + 7) // 8)


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
            and length != UNDEFINED_LENGTH:
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



@dataclass
class _Geometry:
    """What the header says one frame is: Rows, Columns, Photometric Interpretation (upper
    case), Bits Stored and the Number of Frames."""

    rows: int
    cols: int
    photometric: str
    bits: int
    frames: int


@dataclass
class _Stored:
    """The Pixel Data value as read (None for Float / Double Float Pixel Data or a value
    pydicom has already converted), its first compressed frame (encapsulated transfer
    syntaxes only, else None), and whether the value is shorter than its declared length."""

    data: bytes | None
    frame: bytes | None
    cut_short: bool


def decode_dataset(path, ds, inferred: str | None, ended_early: str, dicom_content: bool, head: bytes,
                   size: int, reduce=None):
    """The part of :func:`~xraynet.decoders.dicom.decode_dicom` after reading ``ds``; returns
    what it returns. ``inferred``: the encoding :func:`~.detect.raw_encoding` read from a bare
    dataset's first elements, else None; ``ended_early``: pydicom's end-of-file warning, or "";
    ``dicom_content``: whether the content (not just the name) says DICOM; ``reduce``: a
    :class:`~xraynet.decoders.Reduction` or None (:func:`.reduced.decode_reduced`)."""
    pixel_keyword = _pixel_keyword(path, ds, ended_early, dicom_content, head, size)
    ts = _transfer_syntax(path, ds, inferred)
    _check_description(path, ds, ts)
    geometry = _geometry(path, ds)
    decoder = _installed_decoder(path, ts)
    stored = _check_stored(path, ds, pixel_keyword, ts, geometry, ended_early)
    if stored.frame is not None and not stored.cut_short and not ended_early and lacks_end_marker(stored.frame):
        # pydicom's JPEG plugins decode a frame that stops early (or is zero-filled after an
        # interrupted copy) without an error; its end marker is missing.
        raise image_error(path, "its first frame ends early: the codestream has no end marker (EOI / EOC, FF D9)",
                          f"a complete {ts.name} frame", f"{len(stored.frame):,} bytes that stop without one",
                          COPY_AGAIN, "truncated")
    # Every check above has run on the whole frame; only the decoding itself may be smaller.
    arr = None if stored.cut_short or ended_early else decode_reduced(stored.frame, ts, ds, reduce, path)
    decoded_pi = geometry.photometric  # the reduced path takes monochrome frames only
    if arr is None:
        shift = _high_bit_shift(ds, ts, geometry)
        arr, decoded_pi = _decode_first_frame(path, ds, ts, decoder, stored, geometry, ended_early, shift)
        if shift:
            arr = _stored_values(arr, ds, shift)
    frame = stored.frame
    if frame is not None and arr.ndim == 3 and component_transform(frame):
        decoded_pi = "RGB"  # a JPEG 2000 decoder undoes the component transform, whatever the header says
    if frame is not None and frame.startswith(b"\xff\xd8") and arr.size:
        layout = jpeg_layout(io.BytesIO(frame), len(frame))
        check_decoded(path, frame, layout.sof or 0, where="its first frame: ", todo=EXPORT_AGAIN)
        if layout.sof == 0xF7:
            check_jpegls(path, frame, where="its first frame: ", todo=EXPORT_AGAIN)
    gray = _to_gray(path, arr, ds, geometry.photometric, decoded_pi)
    return gray, "dicom", geometry.photometric, geometry.bits, header_warnings(ds)


def _pixel_keyword(path, ds, ended_early: str, dicom_content: bool, head: bytes, size: int) -> str:
    """The keyword of the dataset's pixel data element; for a dataset without one, the reason:
    ``not_an_image``, ``truncated``, ``damaged`` or ``dicom_unsupported`` (a DICOM object that
    holds no image)."""
    pixel_keyword = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if pixel_keyword is not None:
        return pixel_keyword
    if not dicom_content:
        # Read with force=True: without the preamble, a dataset structure
        # or pixel data nothing says this is DICOM at all.
        raise image_error(path, "not an image", IMAGE_KINDS,
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
                          EXPORT_AGAIN, "damaged")
    kind = str(getattr(ds, "Modality", "") or getattr(ds, "SOPClassUID", "") or "unknown")
    raise image_error(path, "is a DICOM file without pixel data (Pixel Data (7FE0,0010) missing)",
                      "a DICOM image", f"a DICOM object of kind {kind!r} (a report or presentation state?)",
                      "Export the image series, not this object", "dicom_unsupported")


def _transfer_syntax(path, ds, inferred: str | None):
    """The dataset's transfer syntax UID; for a bare dataset (no file meta) the encoding pydicom
    read it in, which must agree with ``inferred``, is written into a file meta it is given."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        # A bare dataset: no file meta says how it is encoded, so the first
        # elements tell (raw_encoding); pydicom must have read it the same way.
        implicit, little = ds.original_encoding
        if inferred is not None and (implicit != (inferred == "implicit") or not little):
            raise image_error(path, "its first elements and the rest of the dataset disagree on the encoding",
                              f"{inferred} VR little endian throughout",
                              f"{'implicit' if implicit else 'explicit'} VR "
                              f"{'little' if little else 'big'} endian", EXPORT_AGAIN, "damaged")
        if not little:
            ts = UID("1.2.840.10008.1.2.2")  # Explicit VR Big Endian (retired, PS3.5 A.3)
        else:
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    return UID(str(ts))


def _geometry(path, ds) -> _Geometry:
    """Rows, Columns and the bytes of one frame, checked against the size limits ("too_large")
    before anything is decoded; "damaged" for a missing size or non-numeric counts."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise image_error(path, "its image size is missing (Rows (0028,0010) / Columns (0028,0011))",
                          "Rows and Columns above 0 with the pixel data", f"{rows} rows, {cols} columns",
                          EXPORT_AGAIN, "damaged")
    check_pixels(path, cols, rows, where="the DICOM header (Columns x Rows)")
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError) as e:
        raise image_error(path, f"its Bits Stored or Number of Frames is not a number ({short(e)})",
                          "whole numbers", "something else", EXPORT_AGAIN, "damaged") from None
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
    return _Geometry(rows=rows, cols=cols, photometric=pi, bits=bits, frames=frames)


#: Samples per pixel of each photometric interpretation xraynet turns into gray (PS3.3
#: C.7.6.3.1.2). YBR_ICT and YBR_RCT (JPEG 2000's component transforms) and YBR_PARTIAL_420
#: (MPEG) belong to those codecs only; the retired YBR_PARTIAL_422 is read where a decoder
#: decompresses it (old JPEG files carry it), not uncompressed (pydicom does not unpack it).
_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
            "YBR_ICT": 3, "YBR_RCT": 3, "YBR_PARTIAL_420": 3, "YBR_PARTIAL_422": 3}
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                  "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"})
_MPEG = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))
#: JPEG (DCT and lossless): libjpeg converts colour as the stream's own markers say, and
#: pydicom reports what came out, so a frame under another codec's YBR label still reads right.
_JPEG_OWN_COLOUR = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                              "1.2.840.10008.1.2.4.70"})
#: The interpretations a codec's own colour coding defines, and those codecs' transfer syntaxes.
_COLOUR_CODECS = {"YBR_ICT": ("JPEG 2000", _J2K), "YBR_RCT": ("JPEG 2000", _J2K),
                  "YBR_PARTIAL_420": ("MPEG", _MPEG)}
_READ = "MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB or YBR"
_TO_GRAY = "Convert the file to a grayscale DICOM or PNG"


def _check_description(path, ds, ts) -> None:
    """The photometric interpretation, Samples per Pixel and Bits Allocated, before any
    decoder sees the frame: "unsupported_mode" for an interpretation xraynet does not turn
    into gray (the retired HSV, ARGB and CMYK, uncompressed YBR_PARTIAL_422, or an unknown
    one); "damaged" where the header contradicts itself: a sample count the interpretation
    does not have, 1-bit colour, YBR_ICT / YBR_RCT outside JPEG 2000 or YBR_PARTIAL_420
    outside MPEG (but for JPEG, whose decoder converts colour as the stream says),
    uncompressed YBR_FULL_422 in planes. Without this, a decoder may read such
    data as RGB, or take one sample of three for the film.

    Spellings the standard does not use but that say one thing are set right in ``ds`` for
    the decoders (pydicom refuses them): an interpretation in lower case or with leading
    spaces, and a missing or empty Samples per Pixel of a monochrome or palette image (1)."""
    raw = ds.get("PhotometricInterpretation")
    try:
        value = ds.get("SamplesPerPixel")
        samples = None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        samples = -1
    if raw is None or not str(raw).strip():
        if samples not in (None, 1):
            raise image_error(path, "its Photometric Interpretation (0028,0004) is missing", "one that names the "
                                    f"colour model of its {samples} samples a pixel", "none", EXPORT_AGAIN, "damaged")
        ds.PhotometricInterpretation = "MONOCHROME2"  # one sample: the monochrome default (_geometry)
        return
    pi = str(raw).strip().upper()
    if pi != str(raw).rstrip():
        ds.PhotometricInterpretation = pi
    if pi not in _SAMPLES:
        retired = pi in ("HSV", "ARGB", "CMYK")
        raise image_error(path, f"its photometric interpretation {pi!r} is {'a retired one' if retired else 'unknown'}"
                                f" (PS3.3 C.7.6.3.1.2), which xraynet does not turn into gray", _READ, repr(pi),
                          _TO_GRAY, "unsupported_mode")
    if samples is None and _SAMPLES[pi] == 1:
        ds.SamplesPerPixel = samples = 1
    if samples != _SAMPLES[pi]:
        raise image_error(path, f"its Samples per Pixel (0028,0002) and photometric interpretation {pi!r} disagree",
                          f"{_SAMPLES[pi]} sample(s) a pixel for {pi}", str(ds.get("SamplesPerPixel")),
                          EXPORT_AGAIN, "damaged")
    if samples == 3 and str(ds.get("BitsAllocated", "")) == "1":
        raise image_error(path, f"its header describes 1-bit {pi} pixels", "Bits Allocated 8 or 16 for colour",
                          "Bits Allocated 1", EXPORT_AGAIN, "damaged")
    codec = _COLOUR_CODECS.get(pi)
    if codec is not None and str(ts) not in codec[1] | _JPEG_OWN_COLOUR:
        raise image_error(path, f"its photometric interpretation {pi!r} is defined for {codec[0]} data only (PS3.3 "
                                f"C.7.6.3.1.2)", f"{codec[0]} data", ts.name, EXPORT_AGAIN, "damaged")
    if ts.is_encapsulated:
        return
    if pi == "YBR_FULL_422":
        _check_uncompressed_422(path, ds)
    if pi == "YBR_PARTIAL_422":
        raise image_error(path, "its pixel data is uncompressed YBR_PARTIAL_422, a retired form (PS3.3 "
                                "C.7.6.3.1.2) that xraynet's DICOM decoder (pydicom) does not unpack",
                          "uncompressed RGB, YBR_FULL or YBR_FULL_422", pi, _TO_GRAY, "unsupported_mode")


def _check_uncompressed_422(path, ds) -> None:
    """Uncompressed YBR_FULL_422: Y Y Cb Cr for each two pixels, in raster order, never in
    planes ("damaged" for Planar Configuration 1, PS3.3 C.7.6.3.1.3). Data of three full
    samples a pixel under that label -- what a tool writes that decompresses a JPEG frame
    and keeps its label -- is read as the YBR_FULL it is (pydicom refuses it); an odd number
    of pixels leaves the last without its pair: "damaged"."""
    if str(ds.get("PlanarConfiguration", 0)) == "1":
        raise image_error(path, "its pixel data is uncompressed YBR_FULL_422 in planes (Planar Configuration 1)",
                          "Planar Configuration 0, the only one the standard defines for it (PS3.3 C.7.6.3.1.3)",
                          "1", EXPORT_AGAIN, "damaged")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    raw = ds.get_item(0x7FE00010)  # as read: converting it here would lose its declared length
    data = getattr(raw, "value", None)
    full = rows * cols * 3 * ((int(ds.get("BitsAllocated", 8) or 8) + 7) // 8)
    if isinstance(data, (bytes, bytearray)) and len(data) in (full, full + 1):
        ds.PhotometricInterpretation = "YBR_FULL"
    elif rows * cols % 2:
        raise image_error(path, f"its pixel data is uncompressed YBR_FULL_422 of an odd number of pixels "
                                f"({cols}x{rows})", "an even number: each two pixels share one Cb and Cr (PS3.3 "
                                "C.7.6.3.1.2)", f"{rows * cols:,}", EXPORT_AGAIN, "damaged")


def _installed_decoder(path, ts):
    """pydicom's decoder for ``ts``; "unsupported_codec", naming what to install, without one."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise _unsupported_codec(path, ts, "no pydicom decoder for this transfer syntax") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise _unsupported_codec(path, ts, missing) from None
    return decoder


def _check_stored(path, ds, pixel_keyword: str, ts, g: _Geometry, ended_early: str) -> _Stored:
    """The Pixel Data value before decoding: for an encapsulated transfer syntax its first
    frame (:func:`_first_frame`); for a native one, enough bytes for one frame ("truncated"
    when the file cut the value short, "damaged" when the header asks for more than it holds)."""
    # The length Pixel Data declares, read before the value is converted: a
    # value shorter than that was cut by the end of the file.
    declared = getattr(ds.get_item(pixel_keyword), "length", None)
    data = ds.PixelData if pixel_keyword == "PixelData" else None
    cut_short = isinstance(data, (bytes, bytearray)) and isinstance(declared, int) \
        and declared != UNDEFINED_LENGTH and len(data) < declared
    frame = None
    if ts.is_encapsulated and isinstance(data, (bytes, bytearray)):
        frame = _first_frame(path, ds, data, ts, g, ended_early)
    elif isinstance(data, (bytes, bytearray)) and len(data) < _native_frame_bytes(ds, g):
        expected = f"{_native_frame_bytes(ds, g):,} bytes for one {g.cols}x{g.rows} frame"
        if cut_short:
            raise image_error(path, "its pixel data ends early", expected, f"{len(data):,} bytes", COPY_AGAIN,
                              "truncated")
        raise image_error(path, "its header and its complete pixel data disagree on the image size", expected,
                          f"{len(data):,} bytes (all that Pixel Data declares)", EXPORT_AGAIN, "damaged")
    return _Stored(data=data, frame=frame, cut_short=cut_short)


def _first_frame(path, ds, data: bytes, ts, g: _Geometry, ended_early: str) -> bytes:
    """The first frame of encapsulated pixel data (PS3.5 A.4), whose own header must declare
    no more than MAX_PIXELS, the size of the DICOM header (:func:`declared_sizes`) and samples
    that fit Bits Allocated (:func:`declared_precision`)."""
    from pydicom.encaps import get_frame

    frame = None
    eot = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frame = get_frame(data, 0, number_of_frames=g.frames, extended_offsets=eot)
        sizes = declared_sizes(frame)
    except Exception as e:  # noqa: BLE001 -- pydicom's item parser and ours raise ValueError and others
        cut = bool(ended_early) or items_end_early(data) or (frame is not None and ends_early(frame))
        raise image_error(path, f"its first compressed frame cannot be read ({short(e)})",
                          f"a complete {ts.name} frame", f"{len(data):,} bytes of encapsulated pixel data",
                          COPY_AGAIN if cut else EXPORT_AGAIN,
                          "truncated" if cut else "damaged") from None
    for where, width, height in sizes:
        check_pixels(path, width, height, where=where)
    for where, width, height in sizes:
        if (width, height) != (g.cols, g.rows):
            raise image_error(path, f"{where} and the DICOM header disagree on the image size",
                              f"{g.cols}x{g.rows} (Columns x Rows)", f"{width}x{height}",
                              EXPORT_AGAIN, "damaged")
    precision = declared_precision(frame)
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    if precision is not None and precision[1] <= 8 < allocated and frame.startswith(b"\xff\xd8") \
            and int(ds.get("BitsStored", allocated) or allocated) <= 8:
        # 8-bit JPEG samples under Bits Allocated 16 (Bits Stored 8): pydicom sizes the decoded
        # buffer by Bits Allocated and refuses the JPEG decoder's 8-bit one.
        ds.BitsAllocated = 8
    elif precision is not None and precision[1] > allocated:
        # Samples wider than the header allocates: a JPEG 2000 decoder writes them into the
        # narrower type, and the film comes out as garbage without an error.
        raise image_error(path, f"{precision[0]} and the DICOM header disagree on the sample depth",
                          f"samples of at most {allocated} bits (Bits Allocated)", f"{precision[1]}-bit samples",
                          EXPORT_AGAIN, "damaged")
    return frame


def _high_bit_shift(ds, ts, g: _Geometry) -> int:
    """How far above bit 0 an uncompressed monochrome frame's stored values sit: High Bit +
    1 - Bits Stored (PS3.5 8.1.1; the standard now asks for 0, older devices wrote values
    high in the word, 12 bits under High Bit 15). 0 for compressed data (codecs return
    values from bit 0), colour, and a High Bit that cannot hold the stored bits (pydicom
    reads those from bit 0, as before)."""
    if ts.is_encapsulated or g.photometric not in ("MONOCHROME1", "MONOCHROME2") or "HighBit" not in ds:
        return 0
    try:
        high, allocated = int(ds.HighBit), int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return 0
    shift = high + 1 - g.bits
    return shift if 0 < shift and high < allocated else 0


def _stored_values(arr: np.ndarray, ds, shift: int) -> np.ndarray:
    """The stored values of a frame decoded with its unused bits kept (int32): Bits Stored bits
    from bit ``shift`` (:func:`_high_bit_shift`), sign-extended where Pixel Representation is 1.
    Where the bits below ``shift`` hold data, the High Bit is wrong and the values start at bit
    0, as pydicom would read them."""
    bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0) or 0) == 1
    word = arr.astype(np.int64) & ((1 << int(ds.BitsAllocated)) - 1)  # the bits as stored, unsigned
    if not (word & ((1 << shift) - 1)).any():
        word >>= shift
    word &= (1 << bits) - 1
    if signed:
        word = np.where(word >= 1 << (bits - 1), word - (1 << bits), word)
    return word.astype(np.int32)


#: pydicom's option to keep the bits above Bits Stored, given only where they are needed: its
#: defaults differ by codec (JPEG 2000 and JPEG-LS keep theirs).
_KEEP_UNUSED_BITS = {"correct_unused_bits": False}


def _decode_first_frame(path, ds, ts, decoder, stored: _Stored, g: _Geometry,
                        ended_early: str, shift: int = 0) -> tuple[np.ndarray, str]:
    """The first frame's stored values, decoded by pydicom, and the photometric
    interpretation they are in; a decoder's failure is "truncated" when the data ends
    early, else "damaged".

    YBR data is taken as the decoder gives it, not converted to RGB (``as_rgb=False``):
    pydicom's conversion takes 8-bit samples only, and a 12-bit colour JPEG (what dcmtk's
    ``dcmcjpeg`` writes for 16-bit RGB) would fail there as if it were damaged; the Y of
    YBR is the luma :func:`_to_gray` wants anyway. Where a decoder converts to RGB itself,
    pydicom says so in the interpretation returned. ``shift``: :func:`_high_bit_shift`; when
    not 0 the unused bits are kept, for :func:`_stored_values` to take the stored ones."""
    from pydicom.pixels.utils import as_pixel_options
    from pydicom.uid import RLELossless

    # RLE: pydicom's own decoder (numpy, ~0.1 s for 5 M pixels). On a corrupt
    # segment it raises, and it warns about non-conformant padding; the
    # pylibjpeg-rle plugin panics instead (a BaseException, with a Rust
    # backtrace printed on stderr, which breaks a cron run's silence).
    plugin = "pydicom" if ts == RLELossless and "pydicom" in decoder.available_plugins else ""
    try:
        arr, meta = decoder.as_array(ds, index=0, validate=True, decoding_plugin=plugin,
                                     **as_pixel_options(ds, as_rgb=False, **_KEEP_UNUSED_BITS if shift else {}))
        return arr, str(meta.get("photometric_interpretation", g.photometric)).strip()
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 -- codecs raise many types on bad data, Rust ones panic
        if isinstance(e, RuntimeError) and "missing dependencies" in str(e):
            raise _unsupported_codec(path, ts, short(e)) from None
        data, frame = stored.data, stored.frame
        if ts.is_encapsulated and isinstance(data, (bytes, bytearray)):
            cut = items_end_early(data) or (frame is not None and ends_early(frame))
        else:
            cut = stored.cut_short
        cut = cut or bool(ended_early)
        raise image_error(path, f"its pixel data cannot be decoded ({type(e).__name__}: {short(e)})",
                          f"{g.cols}x{g.rows} pixels of {g.bits}-bit {ts.name} data",
                          "data that ends early" if cut else "data the decoder rejects",
                          COPY_AGAIN if cut else EXPORT_AGAIN,
                          "truncated" if cut else "damaged") from None


def _to_gray(path, arr: np.ndarray, ds, pi: str, decoded_pi: str) -> np.ndarray:
    """Decoded values -> float32 (Rows, Columns) in [0, 1]: monochrome through the display
    pipeline (:func:`~.display.grayscale`); PALETTE COLOR through its palette and RGB as
    ITU-R BT.601 luma; YBR as its Y, stretched. ``pi``: the dataset's photometric
    interpretation (checked by :func:`_check_description`); ``decoded_pi``: that of ``arr``
    (RGB where the decoder converted YBR). "unsupported_mode" for decoded data of another
    shape or interpretation.

    Y is the luma: YBR_FULL's and YBR_ICT's Y is 0.299 R + 0.587 G + 0.114 B (PS3.3
    C.7.6.3.1.2), YBR_PARTIAL's the same scaled into 16-235 and YBR_RCT's (R + 2G + B) / 4,
    and the stretch to [0, 1] takes out the scale."""
    from pydicom.pixels import apply_color_lut

    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise image_error(path, f"unexpected pixel array shape {arr.shape}", "one 2-D frame",
                              f"shape {arr.shape}", "Convert the file to a single-frame grayscale DICOM",
                              "dicom_unsupported")
        return grayscale(arr, ds, pi, path)
    if pi == "PALETTE COLOR":
        return stretch(luma(apply_color_lut(arr, ds)), False)
    if arr.ndim == 3 and arr.shape[-1] == 3 and decoded_pi.startswith("YBR"):
        return stretch(arr[..., 0].astype(np.float32), False)
    if arr.ndim == 3 and arr.shape[-1] == 3 and decoded_pi == "RGB":
        return stretch(luma(arr), False)
    raise image_error(path, f"its decoded pixels ({decoded_pi}, shape {arr.shape}) are not a picture xraynet "
                            f"turns into gray", f"{_READ} data of the header's size", f"shape {arr.shape}",
                      _TO_GRAY, "unsupported_mode")
