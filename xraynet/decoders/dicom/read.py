"""Reading a DICOM file into a pydicom dataset (:func:`decode_dicom`): the
deflate bomb refused first, then ``pydicom.dcmread`` with the library's
warnings collected, and its failures told apart (not DICOM, cut short,
damaged); the pixels are :mod:`.pixels`' part."""
from __future__ import annotations

import re
import struct
import warnings
import zlib

import numpy as np

from ...errors import ImageError
from .. import COPY_AGAIN, MAX_PIXELS, describe, image_error, library_warnings, os_error, short
from .detect import LONG_VRS, UNDEFINED_LENGTH, raw_encoding
from .pixels import EXPORT_AGAIN, decode_dataset

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
        if vr in LONG_VRS:
            extra = fh.read(4)
            if len(extra) < 4:
                return
            length = struct.unpack("<I", extra)[0]
        else:
            length = struct.unpack_from("<H", element, 6)[0]
        if length == UNDEFINED_LENGTH:
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


def decode_dicom(path, fh, head: bytes, size: int, reduce=None) -> tuple[np.ndarray, str, str, int, list[str]]:
    """Decode the first frame of the DICOM file open as ``fh`` (``head``: its first
    bytes, ``size``: its length in bytes).

    Returns ``(pixels, "dicom", photometric interpretation, bits stored, warnings)``:
    ``pixels`` float32 (Rows, Columns) in [0, 1], 0 = black; ``warnings`` the codes
    of :func:`~.header.header_warnings`. Library warnings are left to the caller's
    :func:`~xraynet.decoders.library_warnings`. ``reduce`` (a
    :class:`~xraynet.decoders.Reduction`, or None): a monochrome JPEG 2000 or 8-bit
    JPEG frame is decoded at a power-of-two fraction of its size
    (:mod:`.reduced`; ``reduce.full_size`` and ``scale`` then say so), any other at
    full size; the caller's area reduction does the rest.

    Reading: a file with the ``DICM`` marker normally; a bare dataset (no preamble
    or file meta, :func:`raw_encoding`) with the transfer syntax its first elements
    show (implicit or explicit VR little endian, PS3.5 10.1 and A.1-A.2).

    Before any pixel is decoded: Rows x Columns (one frame: only the first is
    decoded), and for an encapsulated transfer syntax (PS3.5 A.4) the first
    frame's own header (:func:`~.codestream.declared_sizes`), must stay within
    :data:`~xraynet.decoders.MAX_PIXELS`; the codestream must declare Rows x
    Columns; a decoder for the transfer syntax must be installed.

    Monochrome pixels go through :func:`~.display.grayscale`; RGB and PALETTE COLOR
    (through its palette, PS3.3 C.7.6.3.1.5) become ITU-R 601 luma, and YBR its Y (the
    same luma), at any bit depth, stretched to [0, 1].

    Raises :class:`~xraynet.errors.ImageError` with reason ``dicom_needs_pydicom``
    (pydicom missing), ``not_an_image`` (a ``.dcm`` name on something else),
    ``truncated`` (the file, the pixel data or the first frame ends early),
    ``damaged`` (complete but corrupt, or its headers contradict each other),
    ``too_large``, ``unsupported_codec`` (no installed decoder; names what to pip
    install), ``dicom_unsupported`` (no pixel data, or a pixel layout that is not
    one image), ``unsupported_mode`` (another photometric interpretation) or
    ``unreadable``."""
    _import_pydicom(path)
    has_magic = head[128:132] == b"DICM"
    bare = None if has_magic else raw_encoding(head)
    ds, ended_early = _read_dataset(path, fh, head, size, bare)
    # What the first elements of a bare dataset say; a bare file meta group
    # (always explicit VR) says nothing about the dataset after it.
    inferred = bare if bare is not None and head[:2] != b"\x02\x00" else None
    try:
        return decode_dataset(path, ds, inferred, ended_early, has_magic or bare is not None, head, size, reduce)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 -- pydicom converts header values lazily and raises on corrupt ones
        raise image_error(path, f"a header element cannot be read ({type(e).__name__}: {short(e)})",
                          "well-formed DICOM header values", "a corrupt one", EXPORT_AGAIN, "damaged") from None


def _import_pydicom(path) -> None:
    """"dicom_needs_pydicom" when pydicom (with its NumPy pixel support) cannot be imported."""
    try:
        import pydicom  # noqa: F401
        from pydicom.errors import InvalidDicomError  # noqa: F401
        from pydicom.pixels import pixel_array  # noqa: F401 -- fails here, not later, without numpy support
    except ImportError:
        raise image_error(path, "is a DICOM file, but pydicom is not installed", "pydicom installed",
                          "no pydicom", 'Install it with: pip install "xraynet[dicom]"',
                          "dicom_needs_pydicom") from None


def _read_dataset(path, fh, head: bytes, size: int, bare: str | None):
    """``(dataset, pydicom's end-of-file warning or "")`` of the file; its warnings are issued
    again for the caller's collection. ``bare``: :func:`raw_encoding` of a file without the
    ``DICM`` marker. Raises ``not_an_image``, ``truncated``, ``damaged`` or ``unreadable``."""
    has_magic = head[128:132] == b"DICM"
    _check_deflated(path, fh, head)
    fh.seek(0)
    ds, error, at_end, caught = _dcmread(path, fh, size, force=not has_magic)
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
                          COPY_AGAIN if cut else EXPORT_AGAIN,
                          "truncated" if cut else "damaged") from None
    return ds, ended_early


def _dcmread(path, fh, size: int, *, force: bool):
    """``pydicom.dcmread`` with the library's warnings collected: ``(dataset or None, the error
    it raised or None, whether it had read to the end of the file, [(category, message)])``.
    ``not_an_image`` when pydicom says the file is no DICOM, ``unreadable`` for a disk error."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    ds, error, at_end = None, None, False
    caught: list = []
    try:
        # force=True for a file without the DICM preamble: a bare dataset, or a
        # .dcm name on something that is then judged by what pydicom finds.
        with library_warnings() as caught:
            ds = pydicom.dcmread(fh, force=force)
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
    return ds, error, at_end, caught
