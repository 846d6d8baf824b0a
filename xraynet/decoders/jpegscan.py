"""Whether a Huffman-coded JPEG stream holds all of its image data.

libjpeg -- and with it Pillow, imagecodecs, tifffile and pydicom's JPEG
plugins -- decodes a stream whose entropy-coded data stops early without an
error: it warns (JWRN_HIT_MARKER, which none of those libraries passes on),
gives every block after the cut zero coefficients and returns a full-size
image whose lower part is flat mid-gray. A file cut short and then closed with
an end-of-image marker (FF D9) -- an interrupted transfer that a tool
"repaired", a partial write -- therefore decodes "successfully". Likewise a
progressive JPEG cut between two scans decodes to a blurred film, and a
stretch of zeroed bytes in a stream with restart markers to a band of
garbage (libjpeg resynchronises at the next marker).

:func:`scan_shortfall` finds these without decoding a pixel. It walks the
marker segments (ITU-T T.81 B.2) and, in every scan, the Huffman codes
(T.81 F.2.2.3) of every block -- sequential (F.2.2.1-F.2.2.2) and progressive
(G.1.2: DC first and refinement, AC first with end-of-band runs, AC refinement
with its correction bits) -- counting the MCUs the scan holds against the
number its frame header implies (A.2), and checking that the next marker
follows the last one, every restart marker sits where it belongs, every
component is coded and the stream ends with EOI.

Lossless streams (SOF3, T.81 H.1: each sample a Huffman-coded difference) are
walked the same way, sample by sample.

Walking a stream (:mod:`.jpegwalk`, Numba) takes about as long as
libjpeg-turbo's decode of it at 1/8 scale (8.3 ms against 9.1 ms, and 14 ms at
full size, for a 2048x2500 gray film of 970 KB; 6.2 ms against 7.0 ms for a
lossless 1024x1024 one), and :func:`check_decoded` walks every stream.

Only Huffman-coded, non-hierarchical processes are checked (SOF0 baseline,
SOF1 extended, SOF2 progressive, SOF3 lossless); for hierarchical,
arithmetic-coded and JPEG-LS streams :func:`scan_shortfall` returns None.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from . import COPY_AGAIN, image_error

__all__ = ["Shortfall", "scan_shortfall", "check_decoded", "charls_refuses", "check_jpegls"]

#: What CharLS says of JPEG-LS data it cannot decode (as opposed to a variant it does not
#: support, where another decoder may still be right).
CHARLS_INVALID = "Invalid JPEG-LS stream"

_PROGRESSIVE = 0xC2
_LOSSLESS_SOF = 0xC3
_OTHER_SOF = frozenset({0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})

# Walker modes and outcomes (:mod:`.jpegwalk`'s codes).
_SEQ, _DC_FIRST, _DC_REFINE, _AC_FIRST, _AC_REFINE, _LOSSLESS = range(6)
_OK, _SHORT, _BAD_CODE, _NO_RESTART = range(4)

# A marker that ends entropy-coded data: FF followed by anything but a stuffed
# 00, a restart marker D0-D7 or another fill FF (T.81 B.1.1.5, B.1.1.2).
_END_OF_SCAN = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


class Shortfall(NamedTuple):
    """What :func:`scan_shortfall` found: ``reason`` ("truncated": the data stops and the
    stream ends there; "damaged": data is missing or corrupt inside the stream) and
    ``what``, a clause for the report's message."""

    reason: str
    what: str


def check_decoded(path, data, sof: int, where: str = "", todo: str = COPY_AGAIN) -> None:
    """After a JPEG stream decoded: raise :class:`~xraynet.errors.ImageError` ("truncated" or
    "damaged", the message naming ``path``, prefixed by ``where``) when its scans lack image
    data the decoder filled in or made up (:func:`scan_shortfall`). ``data``: the stream's
    bytes, or a callable returning them; ``sof``: its frame marker (0xC0-0xCF, 0xF7).

    Every Huffman-coded stream is walked. Damage inside a sequential stream without restart
    markers -- a flipped bit, a zeroed sector -- leaves no mark a decoded image shows
    reliably (the decoder may end on real-looking garbage), and walking costs about what
    libjpeg-turbo's decode at 1/8 scale does. ``todo``: what the message tells the user to
    do about damaged data."""
    if sof not in (0xC0, 0xC1, _PROGRESSIVE, _LOSSLESS_SOF):
        return
    found = scan_shortfall(data() if callable(data) else data)
    if found is None:
        return
    cut = found.reason == "truncated"
    raise image_error(path, f"{where}{found.what}", "a complete JPEG stream with image data for the whole frame",
                      f"{'part of the image' if cut else 'damaged image data'}, which decoders fill in "
                      f"without an error", COPY_AGAIN if cut else todo, found.reason)


def charls_refuses(e: BaseException) -> bool:
    """Whether CharLS raised ``e`` because the JPEG-LS data itself is invalid."""
    return CHARLS_INVALID in str(e)


def check_jpegls(path, data: bytes, where: str = "", todo: str = COPY_AGAIN) -> None:
    """A JPEG-LS stream (ITU-T T.87) that another decoder took: raise "damaged" when CharLS
    (imagecodecs) finds its data invalid. A JPEG-LS scan cannot be walked without decoding
    it -- its Golomb parameters follow the decoded values -- and pylibjpeg-libjpeg decodes
    one cut short and closed with EOI without an error, where CharLS refuses it. Does
    nothing when imagecodecs' CharLS is not installed."""
    try:
        import imagecodecs
    except (ImportError, OSError):
        return
    if not getattr(getattr(imagecodecs, "JPEGLS", None), "available", False):
        return
    try:
        imagecodecs.jpegls_decode(data)
    except Exception as e:  # noqa: BLE001 -- imagecodecs raises its own JpeglsError
        if charls_refuses(e):
            raise image_error(path, f"{where}the JPEG-LS data does not decode (CharLS: {e})",
                              "JPEG-LS data that decodes", "a stream cut short, or damaged", todo,
                              "damaged") from None


class _Component(NamedTuple):
    cid: int
    h: int
    v: int
    blocks_wide: int  # T.81 A.2.2: ceil(ceil(X * H / Hmax) / 8)
    blocks_high: int
    samples_wide: int  # ceil(X * H / Hmax): a lossless scan codes samples, not blocks (H.1.1)
    samples_high: int


_LOOKAHEAD = 12  # bits a code is looked up by at once; longer codes are searched (as libjpeg does)


def _huffman_table(counts: bytes, values: bytes):
    """T.81 C.2 and F.2.2.3: (maxcode[0..17], valptr, mincode) for DECODE, the values, and a
    lookup by the next _LOOKAHEAD bits of every code of at most that length: ``value |
    (bits << 8) | (whole << 16)``, where ``bits`` is the code's length plus, when they fit
    too (``whole`` 1), the ``value & 15`` magnitude bits that follow it (T.81 F.1.2.1-F.1.2.2);
    0 for a longer (or no) code."""
    maxcode = np.full(18, -1, np.int32)
    valptr = np.zeros(17, np.int32)
    mincode = np.zeros(17, np.int32)
    lookup = np.zeros(1 << _LOOKAHEAD, np.int32)
    code = k = 0
    for length in range(1, 17):
        n = counts[length - 1]
        if n:
            valptr[length] = k
            mincode[length] = code
            if length <= _LOOKAHEAD:
                for i in range(n):
                    value = values[k + i]
                    whole = length + (value & 15) <= _LOOKAHEAD
                    bits = length + (value & 15) if whole else length
                    first = (code + i) << (_LOOKAHEAD - length)
                    lookup[first:first + (1 << (_LOOKAHEAD - length))] = value | (bits << 8) | (whole << 16)
            code += n
            k += n
            maxcode[length] = code - 1
        code <<= 1
    maxcode[17] = 0x7FFFFFFF  # sentinel: a 17-bit code ends the search as invalid
    huffval = np.zeros(256, np.uint8)
    huffval[:len(values)] = np.frombuffer(values, np.uint8)
    return maxcode, valptr, mincode, huffval, lookup


class _Tables:
    """The Huffman tables in force: DC 0-3 at rows 0-3, AC 0-3 at rows 4-7."""

    def __init__(self):
        self.maxcode = np.full((8, 18), -1, np.int32)
        self.maxcode[:, 17] = 0x7FFFFFFF
        self.valptr = np.zeros((8, 17), np.int32)
        self.mincode = np.zeros((8, 17), np.int32)
        self.huffval = np.zeros((8, 256), np.uint8)
        self.lookup = np.zeros((8, 1 << _LOOKAHEAD), np.int32)
        self.defined = [False] * 8

    def read(self, body: bytes) -> bool:
        """Read a DHT segment's tables (T.81 B.2.4.2); False when it is malformed."""
        pos = 0
        while pos < len(body):
            if pos + 17 > len(body):
                return False
            tc, th = body[pos] >> 4, body[pos] & 15
            counts = body[pos + 1:pos + 17]
            n = sum(counts)
            if tc > 1 or th > 3 or n > 256 or pos + 17 + n > len(body):
                return False
            row = 4 * tc + th
            (self.maxcode[row], self.valptr[row], self.mincode[row], self.huffval[row],
             self.lookup[row]) = _huffman_table(counts, body[pos + 17:pos + 17 + n])
            self.defined[row] = True
            pos += 17 + n
        return True


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _mcu_count(frame, scan_components, hmax, vmax, width, height, lossless=False):
    """(MCUs in the scan, blocks -- for a lossless scan samples -- per MCU as component
    indices): T.81 A.2.2-A.2.3, H.1.1."""
    if len(scan_components) == 1:
        c = frame[scan_components[0]]
        if lossless:
            return c.samples_wide * c.samples_high, [scan_components[0]]
        return c.blocks_wide * c.blocks_high, [scan_components[0]]
    unit = 1 if lossless else 8
    n = _ceil_div(width, unit * hmax) * _ceil_div(height, unit * vmax)
    blocks = [i for i in scan_components for _ in range(frame[i].h * frame[i].v)]
    return n, blocks


#: Segments that set up the next scan (T.81 B.2.4): Huffman tables, quantisation tables,
#: the restart interval.
_TABLE_SEGMENTS = {0xC4: "Huffman tables", 0xDB: "quantisation tables", 0xDD: "restart interval"}

#: Bytes a scan's data may hold after its last MCU before the next marker: none in a clean
#: stream (the last byte is padded with 1-bits, T.81 F.1.2.3); one padding byte, stuffed
#: (FF 00), is allowed. More is data where a marker belongs (libjpeg skips it with a
#: warning, "extraneous bytes before marker").
_SPARE_BYTES = 2


def scan_shortfall(data) -> Shortfall | None:
    """What is missing from the JPEG stream ``data`` (bytes-like, from SOI), or None when
    nothing is: every scan holds all its MCUs and is followed by the next marker, every
    component of the frame is coded, and the stream ends with an end-of-image marker.
    "truncated": the stream stops inside a scan or a marker segment, or without EOI;
    "damaged": data is missing or corrupt inside it. Returns None, too, for what this
    module does not check: hierarchical, arithmetic-coded and JPEG-LS streams, and data
    that does not start with SOI.

    Not checked: whether a progressive stream's scans bring every coefficient to full
    precision. A valid scan script may stop short of it (djpeg reads such files without a
    warning), so a stream cut exactly at the end of a scan and closed again passes; one cut
    after the tables of the next scan (encoders write them right before it) does not."""
    buf = bytes(data)
    if not buf.startswith(b"\xff\xd8"):
        return None
    seg = np.frombuffer(buf, np.uint8)
    tables = _Tables()
    frame = None
    sof = 0
    width = height = hmax = vmax = 0
    restart = 0
    coded = set()
    nz = None
    scan_index = 0
    pending = ""  # a table segment after the last scan, waiting for the scan it belongs to
    pos = 2

    def ends_here(where: str) -> Shortfall:
        after = f"after scan {scan_index}" if scan_index else "before its first scan"
        return Shortfall("truncated", f"the JPEG stream ends {where} {after}, with no end-of-image marker")

    while True:
        while pos + 1 < len(buf) and buf[pos] == 0xFF and buf[pos + 1] == 0xFF:
            pos += 1
        if pos + 1 >= len(buf):
            return ends_here("between two marker segments")
        if buf[pos] != 0xFF or buf[pos + 1] == 0x00:
            # Stray bytes between segments (libjpeg skips them): on to the next marker.
            m = _END_OF_SCAN.search(buf, pos + 1)
            if m is None:
                return ends_here("in stray data")
            pos = m.start()
            continue
        marker = buf[pos + 1]
        if marker == 0xD9:
            if pending:
                # Encoders write a scan's tables right before it: the stream was cut between
                # them and the scan (a stream ending after a whole scan is valid, see above).
                return Shortfall("truncated", f"the JPEG stream ends after scan {scan_index} and the {pending} "
                                              f"for a next scan, with no scan after them")
            break
        if scan_index and marker in _TABLE_SEGMENTS:
            pending = _TABLE_SEGMENTS[marker]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
        body = buf[pos + 4:pos + 2 + length]
        if pos + 4 > len(buf) or len(body) < length - 2:
            # An end-of-image marker inside a segment's declared length: the stream was cut
            # inside the segment (a DHT between two scans, say) and closed again.
            after = f"after scan {scan_index}" if scan_index else "before its first scan"
            return Shortfall("truncated", f"the JPEG stream ends inside a marker segment (0xFF{marker:02X}) {after}")
        if length < 2:
            return None
        if marker in _OTHER_SOF:
            return None
        if marker in (0xC0, 0xC1, 0xC2, _LOSSLESS_SOF) and frame is None:
            if len(body) < 6:
                return None
            height, width, n = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
            if len(body) < 6 + 3 * n or n == 0 or width == 0 or height == 0:
                return None
            raw = [(body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(n)]
            hmax = max(h for _, h, _ in raw)
            vmax = max(v for _, _, v in raw)
            if min(min(h, v) for _, h, v in raw) < 1:
                return None
            frame = [_Component(cid, h, v, _ceil_div(_ceil_div(width * h, hmax), 8),
                                _ceil_div(_ceil_div(height * v, vmax), 8), _ceil_div(width * h, hmax),
                                _ceil_div(height * v, vmax)) for cid, h, v in raw]
            sof = marker
            if sof == _PROGRESSIVE:
                nz = [np.zeros(c.blocks_wide * c.blocks_high, np.uint64) for c in frame]
        elif marker == 0xC4:
            if not tables.read(body):
                return None
        elif marker == 0xDD and len(body) >= 2:
            restart = int.from_bytes(body[:2], "big")
        elif marker == 0xDA:
            pending = ""
            if frame is None or len(body) < 1:
                return None
            ns = body[0]
            if len(body) < 4 + 2 * ns:
                return None
            ids = [c.cid for c in frame]
            try:
                comps = [ids.index(body[1 + 2 * i]) for i in range(ns)]
            except ValueError:
                return Shortfall("damaged", f"scan {scan_index + 1} names a component the frame header lacks")
            if any(body[2 + 2 * i] >> 4 > 3 or body[2 + 2 * i] & 15 > 3 for i in range(ns)):
                return Shortfall("damaged", f"scan {scan_index + 1} names a Huffman table over number 3")
            dc = {comps[i]: body[2 + 2 * i] >> 4 for i in range(ns)}
            ac = {comps[i]: 4 + (body[2 + 2 * i] & 15) for i in range(ns)}
            ss, se, ah = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns] >> 4
            scan_index += 1
            coded.update(comps)
            if sof == _PROGRESSIVE:
                if ss == 0:
                    mode = _DC_FIRST if ah == 0 else _DC_REFINE
                else:
                    mode = _AC_FIRST if ah == 0 else _AC_REFINE
                    if ns != 1 or se < ss or se > 63:
                        return None  # libjpeg refuses these progression parameters itself
            else:
                mode = _LOSSLESS if sof == _LOSSLESS_SOF else _SEQ
            start = pos + 2 + length
            n_mcus, blocks = _mcu_count(frame, comps, hmax, vmax, width, height, mode == _LOSSLESS)
            dc_t = np.array([dc[c] for c in blocks], np.int64)
            ac_t = np.array([ac[c] for c in blocks], np.int64)
            needed = ([] if mode in (_AC_FIRST, _AC_REFINE) else list(dc_t)) + \
                     ([] if mode in (_DC_FIRST, _DC_REFINE, _LOSSLESS) else list(ac_t))
            if mode != _DC_REFINE and not all(tables.defined[t] for t in needed):
                return Shortfall("damaged", f"scan {scan_index} uses a Huffman table that was never defined")
            block_nz = nz[comps[0]] if mode in (_AC_FIRST, _AC_REFINE) else np.zeros(1, np.uint64)
            from .jpegwalk import walk_scan  # Numba: imported only when a stream is walked

            outcome, done, reached, left = walk_scan(seg[start:], n_mcus, dc_t, ac_t, restart, mode, ss, se,
                                                     block_nz, tables.maxcode, tables.valptr, tables.mincode,
                                                     tables.huffval, tables.lookup)
            if outcome != _OK:
                return _walk_failure(buf, start + reached, outcome, scan_index, done, n_mcus)
            m = _END_OF_SCAN.search(buf, start + reached)
            if m is None:
                return ends_here("at the end of its image data")
            fill = m.start()
            while fill > start + reached and buf[fill - 1] == 0xFF:
                fill -= 1  # fill bytes before a marker (T.81 B.1.1.2) are not data
            spare = fill - (start + reached) + left // 8  # plus bytes read ahead but not used
            if spare > _SPARE_BYTES:
                return Shortfall("damaged", f"scan {scan_index} holds all its {n_mcus:,} MCUs, then {spare:,} "
                                            f"bytes of data where the next marker belongs")
            pos = m.start()
            continue
        pos += 2 + length
    if frame is None or scan_index == 0:
        return None
    missing = [i for i in range(len(frame)) if i not in coded]
    if missing:
        names = ", ".join(str(frame[i].cid) for i in missing)
        return Shortfall("truncated", f"the JPEG image data ends after scan {scan_index}, and component(s) "
                                      f"{names} of its frame are never coded")
    return None


def _walk_failure(buf: bytes, stop: int, outcome: int, scan: int, done: int, total: int) -> Shortfall:
    where = f"scan {scan} holds {done:,} of its {total:,} MCUs"
    if outcome == _BAD_CODE:
        return Shortfall("damaged", f"{where}, then a code that is not in its Huffman table")
    if outcome == _NO_RESTART:
        return Shortfall("damaged", f"{where}, then data where a restart marker belongs")
    # The data stopped at a marker (or at the end). At EOI, or at the end, the stream was
    # cut; at anything else, data is missing inside the stream.
    rest = buf[stop:].lstrip(b"\xff")
    if not rest:
        return Shortfall("truncated", f"the JPEG image data stops early: {where}, then the data ends with no "
                                      f"end-of-image marker")
    if rest[0] == 0xD9:
        return Shortfall("truncated", f"the JPEG image data stops early: {where}, then the end-of-image marker follows")
    return Shortfall("damaged", f"the JPEG image data of scan {scan} stops early: it holds {done:,} of its {total:,} "
                                f"MCUs, then another segment starts")
