"""Telling DICOM by its content: the ``DICM`` marker, or a bare dataset (no
preamble, no file meta) recognised by the structure of its first data
elements (:func:`raw_encoding`), whatever the file's name."""
from __future__ import annotations

import struct

from .. import SIGNATURES

_DICOM_SUFFIXES = (".dcm", ".dicom")

# Value representations (PS3.5 Table 6.2-1). In explicit VR those of LONG_VRS
# carry two reserved zero bytes and a 32-bit length, the others a 16-bit length
# (PS3.5 7.1.2, Tables 7.1-1 and 7.1-2); implicit VR has a 32-bit length after
# the tag (PS3.5 7.1.3).
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
                 b"UR US UT UV".split())
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED_LENGTH_VRS = frozenset(b"OB OW SQ UN".split())  # PS3.5 7.1.2: only these may have length FFFFFFFFH
UNDEFINED_LENGTH = 0xFFFFFFFF
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
            if vr in LONG_VRS:
                if pos + 12 > len(head):
                    break
                if head[pos + 6:pos + 8] != b"\0\0":
                    return -1
                length, header = struct.unpack_from("<L", head, pos + 8)[0], 12
            else:
                length, header = struct.unpack_from("<H", head, pos + 6)[0], 8
            if length == UNDEFINED_LENGTH and vr not in _UNDEFINED_LENGTH_VRS:
                return -1
        else:
            length, header = struct.unpack_from("<L", head, pos + 4)[0], 8
        if length == UNDEFINED_LENGTH or tag in _PIXEL_TAGS:
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
