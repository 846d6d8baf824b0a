"""What a JPEG, JPEG-LS or JPEG 2000 stream declares in its own header, read
from its bytes without decoding it: the image size (:func:`declared_sizes`),
the sample precision (:func:`declared_precision`), the component transform;
and whether a stream or an encapsulated DICOM Pixel Data value was cut short.
A stream may declare far more pixels than the file around it (a DICOM header,
a JP2 box): these are checked before any decoder sees the stream. Used by the
DICOM frame decoders (:mod:`.dicom`) and the JPEG 2000 file decoder
(:mod:`.raster.jpeg2000`)."""
from __future__ import annotations

import struct

class _BadCodestream(ValueError):
    """A compressed frame's header cannot be read (cut short or malformed)."""


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # ISO/IEC 15444-1 I.5.1
# JPEG start-of-frame markers (ITU-T T.81 Table B.1: C0-CF less DHT C4, JPG C8,
# DAC CC) and JPEG-LS SOF55 (ITU-T T.87 C.2.2, same frame header layout).
_SOF_MARKERS = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}


def _jpeg_frame_header(frame: bytes) -> tuple[str, int]:
    """(what, position) of a JPEG or JPEG-LS frame's SOFn marker (T.81 B.2.2)."""
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
            what = "the embedded JPEG-LS frame header (SOF55)" if marker == 0xF7 else \
                f"the embedded JPEG frame header (SOF{marker - 0xC0})"
            return what, pos
        pos += 2 + struct.unpack_from(">H", frame, pos + 2)[0]
    raise _BadCodestream("the frame ends before its JPEG frame header (SOF marker)")


def _jpeg_size(frame: bytes) -> tuple[str, int, int]:
    """Width and height of a JPEG or JPEG-LS frame header (SOFn: Lf, P, Y, X; T.81 B.2.2)."""
    what, pos = _jpeg_frame_header(frame)
    height, width = struct.unpack_from(">HH", frame, pos + 5)
    return what, width, height


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


def _jp2_boxes(frame: bytes, start: int, end: int):
    """(type, content start, content end) of the JP2 boxes in frame[start:end] (T.800 I.4)."""
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


def _jp2_sizes(frame: bytes) -> list[tuple[str, int, int]]:
    """Sizes declared by a JP2 file: its Image Header box (ihdr: HEIGHT, WIDTH; T.800
    I.5.3.1) and the SIZ marker of its contiguous codestream box (jp2c)."""
    sizes = []
    for kind, start, end in _jp2_boxes(frame, 0, len(frame)):
        if kind == b"jp2h":
            for sub, s, e in _jp2_boxes(frame, start, end):
                if sub == b"ihdr" and e - s >= 8:
                    height, width = struct.unpack_from(">LL", frame, s)
                    sizes.append(("the embedded JP2 image header box (ihdr)", width, height))
        elif kind == b"jp2c":
            sizes.append(_j2k_size(frame, start))
            break
    if not sizes:
        raise _BadCodestream("the JP2 file holds neither an image header box nor a codestream")
    return sizes


def codestream_span(frame: bytes) -> tuple[int, int] | None:
    """``(start, end)`` of the JPEG 2000 codestream in ``frame``: the whole of a bare
    codestream, the content of a JP2 file's codestream box (jp2c); None for anything else
    or a JP2 file whose boxes cannot be read."""
    if frame.startswith(b"\xff\x4f\xff\x51"):
        return 0, len(frame)
    if frame.startswith(_JP2_SIGNATURE):
        try:
            for kind, start, end in _jp2_boxes(frame, 0, len(frame)):
                if kind == b"jp2c":
                    return (start, end) if frame[start:start + 4] == b"\xff\x4f\xff\x51" else None
        except _BadCodestream:
            return None
    return None


def _codestream_start(frame: bytes) -> int:
    """Where :func:`codestream_span` starts, or -1 where there is no codestream."""
    span = codestream_span(frame)
    return -1 if span is None else span[0]


def siz_components(frame: bytes) -> list[tuple[int, bool, int, int]] | None:
    """``[(bits, signed, XRsiz, YRsiz)]``: each component of a JPEG 2000 codestream (or JP2
    file) as its SIZ marker declares it (Ssiz: bit 7 the sign, bits 0-6 the precision less
    one; the horizontal and vertical sub-sampling; ITU-T T.800 A.5.1). None when there is
    no whole SIZ marker."""
    start = _codestream_start(frame)
    if start < 0 or start + 42 > len(frame):
        return None
    count = struct.unpack_from(">H", frame, start + 40)[0]
    if count == 0 or start + 42 + 3 * count > len(frame):
        return None
    return [((b & 0x7F) + 1, bool(b & 0x80), frame[start + 43 + 3 * i], frame[start + 44 + 3 * i])
            for i, b in enumerate(frame[start + 42:start + 42 + 3 * count:3])]


def _jp2_header_boxes(frame: bytes):
    """(type, content start, content end) of the boxes inside a JP2 file's header box (jp2h)."""
    if not frame.startswith(_JP2_SIGNATURE):
        return
    try:
        for kind, start, end in _jp2_boxes(frame, 0, len(frame)):
            if kind == b"jp2h":
                yield from _jp2_boxes(frame, start, end)
                return
    except _BadCodestream:
        return


def jp2_colourspace(frame: bytes) -> tuple[int | str, int | None] | None:
    """``(space, position)`` of a JP2 file's first Colour Specification box (colr, T.800
    I.5.3.3): for METH 1 the enumerated colour space (16 sRGB, 17 greyscale, 18 sYCC...) and
    where its 4 bytes are in ``frame``; for an ICC profile (METH 2, 3) ``"icc:"`` and the
    profile's colour space signature ("icc:GRAY", "icc:RGB", "icc:CMYK", ICC.1 7.2.6), with
    position None. None where there is no such box (a bare codestream)."""
    for sub, s, e in _jp2_header_boxes(frame):
        if sub == b"colr" and e - s >= 7 and frame[s] == 1:
            return struct.unpack_from(">L", frame, s + 3)[0], s + 3
        if sub == b"colr" and e - s >= 3 + 20 and frame[s] in (2, 3):
            return "icc:" + frame[s + 3 + 16:s + 3 + 20].decode("latin-1").strip(), None
    return None


def jp2_palette(frame: bytes) -> list[tuple[int, bool]] | None:
    """``[(bits, signed)]`` of each column of a JP2 file's Palette box (pclr: NE, NPC, then
    B_i, bit 7 the sign, bits 0-6 the depth less one; T.800 I.5.3.4): the precision of the
    samples a decoder gives once it has applied the palette. None without one."""
    for sub, s, e in _jp2_header_boxes(frame):
        if sub == b"pclr" and e - s >= 3:
            columns = frame[s + 2]
            if e - s >= 3 + columns:
                return [((b & 0x7F) + 1, bool(b & 0x80)) for b in frame[s + 3:s + 3 + columns]]
    return None


def jp2_ihdr(frame: bytes) -> tuple[int, int] | None:
    """``(NC, BPC)`` of a JP2 file's Image Header box (ihdr: HEIGHT, WIDTH, NC, BPC; T.800
    I.5.3.1): its number of components and their depth (255: they differ, see the bpcc box;
    else bit 7 the sign, bits 0-6 the depth less one). None without one."""
    for sub, s, e in _jp2_header_boxes(frame):
        if sub == b"ihdr" and e - s >= 11:
            return struct.unpack_from(">HB", frame, s + 8)
    return None


def tile_parts_cut(stream: bytes) -> bool | None:
    """Whether a JPEG 2000 codestream (starting SOC) ends before its tile-parts do: each
    tile-part's SOT marker gives its length (Psot, T.800 A.4.2), and the end-of-codestream
    marker (EOC) must follow the last. True when a tile-part runs past the end, or into zero
    bytes (a copy padded to its full length); False when EOC follows; None when the lengths
    cannot be followed (Psot 0, a malformed header): then only the end marker can tell."""
    pos = 2  # past SOC: the main header's marker segments, up to the first SOT
    while pos + 4 <= len(stream) and stream[pos] == 0xFF and stream[pos + 1] != 0x90:
        pos += 2 + struct.unpack_from(">H", stream, pos + 2)[0]
    if pos + 10 > len(stream):
        return True if pos + 2 > len(stream) else None
    while stream[pos:pos + 2] == b"\xff\x90":
        if pos + 10 > len(stream):
            return True
        psot = struct.unpack_from(">L", stream, pos + 6)[0]
        if psot == 0:
            return None
        pos += psot
        if pos > len(stream):
            return True
    if stream[pos:pos + 2] == b"\xff\xd9":
        return False
    return True if not stream[pos:].strip(b"\0") else None


def component_transform(frame: bytes) -> bool:
    """Whether a JPEG 2000 codestream (or JP2 file) codes its first three components with
    the multiple component transform (the COD marker's MCT, T.800 A.6.1): a decoder then
    returns them as RGB, whatever the DICOM header calls them. False for anything else."""
    pos = _codestream_start(frame)
    if pos < 0 or pos + 4 > len(frame):
        return False
    pos += 2  # past SOC: the main header's marker segments, up to the first tile-part (SOT)
    while pos + 4 <= len(frame) and frame[pos] == 0xFF and frame[pos + 1] != 0x90:
        length = struct.unpack_from(">H", frame, pos + 2)[0]
        if frame[pos + 1] == 0x52:  # COD: Lcod, Scod, SGcod = progression order, layers (2), MCT
            return pos + 8 < len(frame) and frame[pos + 8] == 1
        pos += 2 + length
    return False


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


def declared_precision(frame: bytes) -> tuple[str, int] | None:
    """``(header, bits)``: the sample precision one compressed frame declares in its own
    header, read without decoding: a JPEG or JPEG-LS frame header's P (T.81 B.2.2), or the
    widest component of a JPEG 2000 codestream's SIZ marker (Ssiz, T.800 A.5.1), also
    inside a JP2 file. None for anything else, or a header that cannot be read (the size
    checks say why)."""
    try:
        if frame.startswith(b"\xff\xd8"):
            what, pos = _jpeg_frame_header(frame)
            return what, frame[pos + 4]
    except _BadCodestream:
        return None
    start = _codestream_start(frame)
    if start < 0 or start + 42 > len(frame):
        return None
    components = struct.unpack_from(">H", frame, start + 40)[0]
    ssiz = frame[start + 42:start + 42 + 3 * components:3]
    if not ssiz:
        return None
    return "the embedded JPEG 2000 codestream (SIZ marker)", max((b & 0x7F) + 1 for b in ssiz)


def ends_early(frame: bytes) -> bool:
    """A JPEG-family frame that lacks its end marker (EOI / EOC, both FFD9; a frame's
    last item may carry one padding byte, PS3.5 A.4) was cut short; a JPEG 2000 one also
    when its tile-parts run past its end (:func:`tile_parts_cut`: cut, then closed with an
    end marker)."""
    span = codestream_span(frame)
    if span is not None:
        cut = tile_parts_cut(frame[span[0]:span[1]])
        if cut is not None:
            return cut
    if frame.startswith((b"\xff\xd8", b"\xff\x4f\xff\x51", _JP2_SIGNATURE)):
        return not frame.rstrip(b"\0").endswith(b"\xff\xd9")
    return False


def lacks_end_marker(frame: bytes) -> bool:
    """A JPEG-family frame with no end marker (EOI / EOC, FF D9) in its last KiB once trailing
    zero bytes are set aside: cut short, or zero-filled after an interrupted copy. Bytes
    after the marker (a non-zero pad byte, a comment) are allowed; FF D9 cannot occur inside
    JPEG entropy-coded data (byte stuffing, T.81 B.1.1.5) nor JPEG 2000 packet data (T.800
    B.10.1), so its absence there is the stream's end missing."""
    if not frame.startswith((b"\xff\xd8", b"\xff\x4f\xff\x51", _JP2_SIGNATURE)):
        return False
    return b"\xff\xd9" not in frame.rstrip(b"\0")[-1024:]


def items_end_early(data: bytes) -> bool:
    """Whether an encapsulated Pixel Data value (PS3.5 A.4: items FFFE,E000 with a
    32-bit length) ends inside one of its items."""
    pos = 0
    while pos + 8 <= len(data):
        tag, length = struct.unpack_from("<LL", data, pos)
        if tag != 0xE000FFFE:
            return False
        pos += 8 + length
    return pos != len(data)
