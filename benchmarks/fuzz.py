#!/usr/bin/env python3
"""Fuzz the two readers of untrusted files: image decoding and model loading.

The contract checked: on any file, :func:`xraynet.imaging.decode` and
:func:`xraynet.modelfile.load_model` either return a result or raise an
:class:`~xraynet.errors.XraynetError` subclass (``ImageError``,
``ModelFileError``...). Anything else is a *finding*:

``exception``  any other exception escapes (``ValueError``, ``struct.error``...),
               including a ``MemoryError`` that the harness's limits did not
               provoke (a request larger than the machine's RAM fails anywhere);
``memory``     reading the input took the worker's RSS more than
               ``--memory-limit-mb`` (1.5 GiB) above its baseline, or made an
               allocation fail against the address-space safety net;
``timeout``    one input took more than ``--cpu-limit`` CPU seconds (CPU, not
               wall time: the machine is shared), or ``--wall-limit`` seconds;
``crash``      the worker process died (a segfault or abort in a C library);
``contract``   a result that breaks the documented contract (``Decoded.pixels``
               not 2-D float32 in [0, 1] of the stated size; class names that do
               not fit the model).

Memory is bounded in two ways. The bound that counts is on RSS: the parent
polls the worker every 20 ms and kills it above the bound, and the worker
checks its own peak after each input. An address-space limit (RLIMIT_AS,
``--address-net-mb`` = 8 GiB above the baseline) is only a safety net for the
shared machine: a plain 1.5 GiB address-space limit would also fail the
harmless big reservations that are never touched (Pillow reading a PNG chunk
whose length field says 2 GB allocates a 2 GB buffer and fills 10 bytes of it),
which is not memory use. So a ``MemoryError`` counts as a ``memory`` finding
when the net caused it, and as an ``exception`` finding otherwise: either way
it is a finding, because ``xraynet screen`` re-raises ``MemoryError`` (it stops
the run rather than report a file as broken), so a small damaged file that
makes a reader ask for gigabytes would stop a night's screening.

Inputs are mutated small valid files, generated in code (no binaries, no patient
data): PNG (8/16-bit gray, RGB, palette), JPEG (gray, RGB, progressive, EXIF
rotated), TIFF (8/16-bit, uncompressed, PackBits, Deflate, LZW, big-endian),
DICOM (explicit VR with preamble, implicit VR without preamble or file meta,
RLE Lossless, RGB) and xraynet model files (HDF5). Mutations know each format's
layout: header integer fields set to extremes (PNG IHDR, JPEG SOF/DHT/SOS, TIFF
tags, DICOM Rows/Columns/BitsAllocated and element lengths, the HDF5
superblock), byte flips, deletions, insertions, truncation inside or at the
edge of every region, duplicated chunks, splices; model files are also damaged
through h5py (attributes and datasets of the wrong type or shape, NaN, huge
declared shapes, missing groups, non-UTF-8 and deeply nested JSON, links).

Each input is read by one long-lived worker process, restarted after a crash,
a timeout or a memory finding. Input ``i`` of format ``f`` depends only on
``(--seed, f, i)``, so every finding replays on its own.

    python benchmarks/fuzz.py --per-format 10000 --seed 0 [--formats png,jpeg,tiff,dicom,model] [--json out.json]
    python benchmarks/fuzz.py --replay png:123 --seed 0 --out /tmp/case.png

tests/test_fuzz.py runs a short version of the same campaign.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("png", "jpeg", "tiff", "dicom", "model")
SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "model": ".h5"}
CPU_LIMIT_S = 5.0
WALL_LIMIT_S = 60.0
MEMORY_LIMIT_MB = 1536
ADDRESS_NET_MB = 8192
FINDING_KINDS = ("exception", "memory", "timeout", "crash", "contract")
# Single-threaded libraries: the worker shares two cores with other jobs, and
# per-input CPU time is what the time bound measures.
THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


# ====================================================================== seeds
@dataclass(frozen=True)
class Field:
    """An integer in the file: ``size`` bytes at ``offset``, ``order`` "<" or ">".
    ``crc``: (start, end) of the bytes a CRC-32 stored big-endian at ``end``
    covers (PNG chunks), refreshed after most edits so the mutation gets past the
    checksum. ``values``: format-specific values worth trying (marker codes...)."""

    name: str
    offset: int
    size: int
    order: str = "<"
    crc: tuple | None = None
    values: tuple = ()


@dataclass(frozen=True)
class Text:
    """A DICOM string value with its length field, replaced as a whole."""

    name: str
    offset: int       # of the value
    length: int
    len_offset: int   # of the element's length field
    len_size: int
    choices: tuple


@dataclass(frozen=True)
class Seed:
    """One valid file and where its parts are: ``regions`` (name, start, end) for
    truncation, deletion and duplication; ``fields`` and ``texts`` for value edits."""

    name: str
    data: bytes
    regions: tuple = ()
    fields: tuple = ()
    texts: tuple = ()


def _picture(h: int, w: int, top: int, seed: int = 0):
    """A smooth, film-like gray picture with a few edges (not uniform, not noise:
    it compresses like a radiograph, so seed files stay small)."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = 0.5 + 0.3 * np.sin(xx / (3.0 + seed)) * np.cos(yy / 4.0)
    a[h // 4: h // 2, w // 5: w // 2] *= 0.4
    a[:, -3:] = 1.0
    return np.clip(a * top, 0, top).round()


def _pil_bytes(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_layout(name: str, data: bytes) -> Seed:
    regions, fields = [("signature", 0, 8)], []
    pos = 8
    while pos + 12 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        t = ctype.decode("latin-1")
        crc = (pos + 4, pos + 8 + length)
        regions += [(t, pos, end), (f"{t} data", pos + 8, pos + 8 + length), (f"{t} crc", end - 4, end)]
        fields.append(Field(f"{t} length", pos, 4, ">"))
        if t == "IHDR":
            d = pos + 8
            fields += [Field("IHDR width", d, 4, ">", crc), Field("IHDR height", d + 4, 4, ">", crc),
                       Field("IHDR bit depth", d + 8, 1, ">", crc, (1, 2, 4, 8, 16, 32)),
                       Field("IHDR colour type", d + 9, 1, ">", crc, (0, 2, 3, 4, 6, 7)),
                       Field("IHDR compression", d + 10, 1, ">", crc),
                       Field("IHDR filter", d + 11, 1, ">", crc),
                       Field("IHDR interlace", d + 12, 1, ">", crc, (0, 1))]
        elif t == "IDAT" and length >= 2:
            # zlib header and the first filter-type byte of the first row.
            fields += [Field("IDAT zlib CMF", pos + 8, 1, ">", crc), Field("IDAT zlib FLG", pos + 9, 1, ">", crc)]
        elif t == "PLTE":
            fields.append(Field("PLTE first entry", pos + 8, 1, ">", crc))
        pos = end
    return Seed(name, data, tuple(regions), tuple(fields))


def png_refresh_crcs(data: bytes) -> bytes:
    """Every chunk's CRC recomputed where the chunk still fits, so that damage
    inside chunks reaches the decoders instead of the CRC check."""
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        out[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4:end])) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out)


def png_seeds() -> list[Seed]:
    import numpy as np
    from PIL import Image

    g8 = _picture(40, 48, 255).astype(np.uint8)
    g16 = _picture(36, 44, 65535, 1).astype(np.uint16)
    rgb = np.stack([_picture(30, 34, 255, k) for k in range(3)], -1).astype(np.uint8)
    pal = Image.fromarray(g8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return [png_layout("png-gray8", _pil_bytes(Image.fromarray(g8), "PNG")),
            png_layout("png-gray16", _pil_bytes(Image.fromarray(g16), "PNG")),
            png_layout("png-rgb", _pil_bytes(Image.fromarray(rgb), "PNG")),
            png_layout("png-palette", _pil_bytes(pal, "PNG"))]


_SOF = tuple(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))


def jpeg_layout(name: str, data: bytes) -> Seed:
    regions, fields = [("SOI", 0, 2)], []
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:
            regions.append(("EOI", pos, pos + 2))
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        m = f"FF{marker:02X}"
        regions.append((m, pos, end))
        fields += [Field(f"{m} marker", pos + 1, 1, ">", None, (*_SOF, 0xC4, 0xDA, 0xDB, 0xDD, 0xD9, 0xD8)),
                   Field(f"{m} length", pos + 2, 2, ">")]
        d = pos + 4
        if marker in _SOF:
            fields += [Field("SOF precision", d, 1, ">", None, (8, 12, 16)), Field("SOF height", d + 1, 2, ">"),
                       Field("SOF width", d + 3, 2, ">"), Field("SOF components", d + 5, 1, ">", None, (1, 3, 4))]
            for c in range(data[d + 5]):
                e = d + 6 + 3 * c
                fields += [Field(f"SOF component {c} id", e, 1, ">"),
                           Field(f"SOF component {c} sampling", e + 1, 1, ">", None, (0x11, 0x22, 0x44, 0x12)),
                           Field(f"SOF component {c} table", e + 2, 1, ">", None, (0, 1, 3, 4))]
        elif marker == 0xDB:
            fields.append(Field("DQT precision/id", d, 1, ">", None, (0x00, 0x01, 0x10, 0x13, 0x04)))
        elif marker == 0xC4:
            fields += [Field("DHT class/id", d, 1, ">", None, (0x00, 0x01, 0x10, 0x11, 0x04, 0x20))]
            fields += [Field(f"DHT count {k + 1}", d + 1 + k, 1, ">") for k in range(0, 16, 3)]
        elif marker == 0xDD:
            fields.append(Field("DRI interval", d, 2, ">"))
        elif marker == 0xDA:
            ns = data[d]
            fields.append(Field("SOS components", d, 1, ">", None, (1, 3, 4)))
            for c in range(ns):
                fields += [Field(f"SOS component {c} selector", d + 1 + 2 * c, 1, ">"),
                           Field(f"SOS component {c} tables", d + 2 + 2 * c, 1, ">", None, (0x00, 0x11, 0x44))]
            sp = d + 1 + 2 * ns
            fields += [Field("SOS Ss", sp, 1, ">"), Field("SOS Se", sp + 1, 1, ">", None, (0, 63, 64)),
                       Field("SOS AhAl", sp + 2, 1, ">")]
            # Entropy-coded data runs to the next marker that is not a stuffed
            # 0x00 or a restart marker.
            scan, stuffed = end, (0x00, *range(0xD0, 0xD8))
            while scan + 1 < len(data) and not (data[scan] == 0xFF and data[scan + 1] not in stuffed):
                scan += 1
            regions.append(("scan data", end, scan))
            end = scan
        pos = end
    return Seed(name, data, tuple(regions), tuple(fields))


def jpeg_seeds() -> list[Seed]:
    import numpy as np
    from PIL import Image

    g8 = Image.fromarray(_picture(37, 45, 255).astype(np.uint8))
    rgb = Image.fromarray(np.stack([_picture(33, 41, 255, k) for k in range(3)], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the EXIF transpose path
    return [jpeg_layout("jpeg-gray", _pil_bytes(g8, "JPEG", quality=80)),
            jpeg_layout("jpeg-rgb420", _pil_bytes(rgb, "JPEG", quality=75, subsampling=2)),
            jpeg_layout("jpeg-rgb-progressive", _pil_bytes(rgb, "JPEG", quality=70, progressive=True)),
            jpeg_layout("jpeg-gray-exif6", _pil_bytes(g8, "JPEG", quality=60, exif=exif.tobytes()))]


_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_TIFF_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
              262: "Photometric", 273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip",
              279: "StripByteCounts", 284: "PlanarConfig", 317: "Predictor", 339: "SampleFormat",
              322: "TileWidth", 323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts"}
_TIFF_VALUES = {259: (1, 2, 5, 7, 8, 32773, 34712, 50000), 262: (0, 1, 2, 3, 4, 5, 6, 8),
                258: (1, 4, 8, 12, 16, 24, 32, 64), 277: (1, 2, 3, 4, 5), 284: (1, 2), 317: (1, 2, 3),
                339: (1, 2, 3, 4, 5, 6)}


def tiff_layout(name: str, data: bytes) -> Seed:
    bo = "<" if data[:2] == b"II" else ">"
    regions, fields = [("header", 0, 8)], [Field("TIFF magic", 2, 2, bo, None, (42, 43)),
                                           Field("first IFD offset", 4, 4, bo)]
    (ifd,) = struct.unpack_from(bo + "I", data, 4)
    seen = set()
    while 0 < ifd < len(data) - 2 and ifd not in seen:
        seen.add(ifd)
        (n,) = struct.unpack_from(bo + "H", data, ifd)
        fields.append(Field("IFD entry count", ifd, 2, bo))
        strips = {}
        for k in range(n):
            e = ifd + 2 + 12 * k
            if e + 12 > len(data):
                break
            tag, typ, count = struct.unpack_from(bo + "HHI", data, e)
            t = _TIFF_TAGS.get(tag, str(tag))
            fields += [Field(f"{t} type", e + 2, 2, bo, None, (1, 3, 4, 16)), Field(f"{t} count", e + 4, 4, bo)]
            size = _TIFF_TYPE_SIZE.get(typ, 1)
            nbytes = size * count
            at = e + 8
            if nbytes > 4:
                (at,) = struct.unpack_from(bo + "I", data, e + 8)
                fields.append(Field(f"{t} value offset", e + 8, 4, bo))
                regions.append((f"{t} values", at, at + nbytes))
            if typ in (3, 4):
                for j in range(min(count, 6)):
                    fields.append(Field(f"{t}[{j}]", at + j * size, size, bo, None, _TIFF_VALUES.get(tag, ())))
                if tag in (273, 279, 324, 325) and at + nbytes <= len(data):
                    strips[tag] = struct.unpack_from(bo + ("H" if typ == 3 else "I") * count, data, at)
        end = ifd + 2 + 12 * n
        regions.append(("IFD", ifd, end + 4))
        fields.append(Field("next IFD offset", end, 4, bo))
        for offs, counts in ((strips.get(273), strips.get(279)), (strips.get(324), strips.get(325))):
            for j, (o, c) in enumerate(zip(offs or (), counts or ())):
                regions.append((f"strip {j}", o, o + c))
        ifd = struct.unpack_from(bo + "I", data, end)[0] if end + 4 <= len(data) else 0
    return Seed(name, data, tuple(regions), tuple(fields))


def tiff_seeds() -> list[Seed]:
    import numpy as np
    import tifffile
    from PIL import Image

    g8 = _picture(34, 40, 255).astype(np.uint8)
    g16 = _picture(30, 38, 65535, 2).astype(np.uint16)

    def tf(a, **kw):
        buf = io.BytesIO()
        tifffile.imwrite(buf, a, photometric="minisblack", **kw)
        return buf.getvalue()

    return [tiff_layout("tiff-gray8", _pil_bytes(Image.fromarray(g8), "TIFF")),
            tiff_layout("tiff-gray8-packbits", _pil_bytes(Image.fromarray(g8), "TIFF", compression="packbits")),
            tiff_layout("tiff-gray16", tf(g16, rowsperstrip=8)),
            tiff_layout("tiff-gray16-bigendian", tf(g16, byteorder=">", rowsperstrip=16)),
            tiff_layout("tiff-gray8-deflate", tf(g8, compression="zlib", rowsperstrip=12)),
            tiff_layout("tiff-gray16-lzw-predictor", tf(g16, compression="lzw", predictor=True, rowsperstrip=10))]


# DICOM: elements whose values are worth setting to extremes, and strings to swap in.
_DICOM_US = {(0x0028, 0x0002): "SamplesPerPixel", (0x0028, 0x0006): "PlanarConfiguration",
             (0x0028, 0x0010): "Rows", (0x0028, 0x0011): "Columns", (0x0028, 0x0100): "BitsAllocated",
             (0x0028, 0x0101): "BitsStored", (0x0028, 0x0102): "HighBit",
             (0x0028, 0x0103): "PixelRepresentation"}
_DICOM_US_VALUES = (1, 3, 8, 12, 16, 32, 64)
_UIDS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
         "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
         "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.3", "", "x" * 64)
_NUMBERS = ("0", "1", "-1", "2", "65535", "4294967296", "1e308", "-1e308", "NaN", "inf", "1\\2", "", "  ", "abc",
            "0.0", "9" * 16)
_DICOM_TEXT = {(0x0002, 0x0010): ("TransferSyntaxUID", _UIDS),
               (0x0028, 0x0004): ("PhotometricInterpretation",
                                  ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
                                   "YBR_FULL_422", "YBR_RCT", "CMYK", "HSV", "ARGB", "", "X")),
               (0x0028, 0x0008): ("NumberOfFrames", _NUMBERS), (0x0028, 0x1052): ("RescaleIntercept", _NUMBERS),
               (0x0028, 0x1053): ("RescaleSlope", _NUMBERS), (0x0028, 0x1050): ("WindowCenter", _NUMBERS),
               (0x0028, 0x1051): ("WindowWidth", _NUMBERS), (0x0008, 0x0060): ("Modality", ("CT", "DX", "", "SR"))}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dicom_layout(name: str, data: bytes) -> Seed:
    """Regions and fields of a DICOM file without sequences (what dicom_seeds writes)."""
    regions, fields, texts = [], [], []
    pos = 0
    if data[128:132] == b"DICM":
        regions += [("preamble", 0, 128), ("DICM", 128, 132)]
        pos = 132
    explicit = True
    ts = None
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002 and ts is not None:
            explicit = ts != "1.2.840.10008.1.2"
        if group != 0x0002 and ts is None and pos == 0:
            explicit = data[4:6].isalpha() and data[4:6].isupper()
        vr = data[pos + 4: pos + 6] if explicit else b""
        if explicit and vr in _LONG_VRS:
            len_off, len_size, start = pos + 8, 4, pos + 12
        elif explicit:
            len_off, len_size, start = pos + 6, 2, pos + 8
        else:
            len_off, len_size, start = pos + 4, 4, pos + 8
        length = int.from_bytes(data[len_off: len_off + len_size], "little")
        tag = f"({group:04X},{elem:04X})"
        fields.append(Field(f"{tag} length", len_off, len_size, "<"))
        if (group, elem) == (0x7FE0, 0x0010) and length == 0xFFFFFFFF:
            # Encapsulated pixel data: items up to the sequence delimiter.
            p, frag = start, 0
            while p + 8 <= len(data):
                ig, ie, ilen = struct.unpack_from("<HHI", data, p)
                fields.append(Field(f"pixel item {frag} length", p + 4, 4, "<"))
                if (ig, ie) != (0xFFFE, 0xE000):
                    regions.append(("sequence delimiter", p, p + 8))
                    p += 8
                    break
                regions.append((f"pixel item {frag}", p, p + 8 + ilen))
                if frag > 0 and ilen >= 64:
                    # An RLE fragment starts with 16 little-endian uint32: the
                    # segment count, then up to 15 segment offsets.
                    fields += [Field(f"RLE fragment {frag} segments", p + 8, 4, "<", None, (1, 2, 3, 15, 16))]
                    fields += [Field(f"RLE fragment {frag} offset {k}", p + 12 + 4 * k, 4, "<") for k in range(3)]
                p += 8 + ilen
                frag += 1
            regions.append(("pixel data", pos, p))
            pos = p
            continue
        end = start + length
        regions.append((tag, pos, end))
        if (group, elem) in _DICOM_US and length == 2:
            fields.append(Field(_DICOM_US[(group, elem)], start, 2, "<", None, _DICOM_US_VALUES))
        if (group, elem) in _DICOM_TEXT:
            what, choices = _DICOM_TEXT[(group, elem)]
            texts.append(Text(what, start, length, len_off, len_size, choices))
        if (group, elem) == (0x0002, 0x0010):
            ts = data[start:end].rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    return Seed(name, data, tuple(regions), tuple(fields), tuple(texts))


def dicom_seeds() -> list[Seed]:
    import numpy as np
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

    def dataset(arr, pi, bits, meta=True, **elements):
        ds = Dataset()
        uid = "1.2.826.0.1.3680043.8.498.1"  # fixed: seeds must not change between runs
        if meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "DX"
        set_pixel_data(ds, arr, pi, bits, generate_instance_uid=False)
        if not meta:
            del ds.file_meta  # set_pixel_data adds one; a raw dataset has none
        for k, v in elements.items():
            setattr(ds, k, v)
        return ds

    def written(ds, **kw) -> bytes:
        buf = io.BytesIO()
        dcmwrite(buf, ds, **kw)
        return buf.getvalue()

    mono = _picture(24, 28, 4095).astype(np.uint16)
    explicit = dataset(mono, "MONOCHROME2", 12, RescaleSlope="2", RescaleIntercept="-1024",
                       WindowCenter="3000", WindowWidth="4000")
    raw = dataset(_picture(20, 26, 255, 1).astype(np.uint16), "MONOCHROME1", 8, meta=False)
    rle = dataset(_picture(22, 24, 4095, 2).astype(np.uint16), "MONOCHROME2", 12)
    rle.compress(RLELossless, generate_instance_uid=False)
    rgb = dataset(np.stack([_picture(18, 20, 255, k) for k in range(3)], -1).astype(np.uint8), "RGB", 8)
    return [dicom_layout("dicom-explicit-preamble", written(explicit, enforce_file_format=True)),
            dicom_layout("dicom-implicit-raw", written(raw, implicit_vr=True, little_endian=True)),
            dicom_layout("dicom-rle", written(rle, enforce_file_format=True)),
            dicom_layout("dicom-rgb", written(rgb, enforce_file_format=True))]


TINY_SPEC = {"name": "fuzz-tiny", "input_shape": [1, 8, 8], "output": "sigmoid", "layers": [
    {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
    {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "dropout", "p": 0.5},
    {"type": "dense", "out_features": 1}]}
FIXED_TIME = "2026-01-01T00:00:00Z"  # created_utc of the seeds, so seed bytes do not change between runs


def model_layout(name: str, data: bytes, workdir: Path) -> Seed:
    """The superblock's integers as fields; raw data extents and the metadata
    between them as regions (raw mutations aim at the metadata)."""
    import h5py

    path = workdir / f"{name}.layout.h5"
    path.write_bytes(data)
    extents = []
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset):
                off = obj.id.get_offset()
                if off is not None:
                    extents.append((off, off + obj.id.get_storage_size()))
        f.visititems(visit)
    path.unlink()
    regions, pos = [], 0
    for start, end in sorted(extents):
        if start > pos:
            regions.append((f"metadata@{pos}", pos, start))
        regions.append((f"data@{start}", start, end))
        pos = max(pos, end)
    regions.append((f"metadata@{pos}", pos, len(data)))
    # Superblock version 0 (what h5py writes by default): see the HDF5 file format spec.
    fields = [Field("superblock version", 8, 1, "<", None, (0, 1, 2, 3)), Field("size of offsets", 13, 1),
              Field("size of lengths", 14, 1), Field("group leaf K", 16, 2), Field("group internal K", 18, 2),
              Field("consistency flags", 20, 4), Field("base address", 24, 8), Field("free-space address", 32, 8),
              Field("end-of-file address", 40, 8), Field("driver info address", 48, 8),
              Field("root link name offset", 56, 8), Field("root object header address", 64, 8),
              Field("root cache type", 72, 4), Field("root B-tree address", 80, 8),
              Field("root local heap address", 88, 8)]
    return Seed(name, data, tuple(regions), tuple(fields) if data[8] == 0 else ())


def model_seeds(workdir: Path) -> list[Seed]:
    import h5py
    import numpy as np

    from xraynet.archs import builtin_spec
    from xraynet.model import Model
    from xraynet.modelfile import save_model
    from xraynet.optim import SGD, Adam

    seeds = []
    tiny = Model(TINY_SPEC, seed=1)
    opt = Adam(tiny.named_parameters(), tiny.bk, lr=1e-3)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    tiny.train_step(x, np.array([0, 1, 0, 1]), opt)
    small = Model(builtin_spec("seed", num_classes=3, image_size=12), seed=2)
    sgd = SGD(small.named_parameters(), small.bk, lr=0.01)
    for name, model, kw in (
            ("model-tiny-adam-aux", tiny, dict(classes=["normal", "pneumonia"], optimizer=opt,
                                               history=[{"epoch": 1, "loss": 0.69, "val_auc": float("nan")}],
                                               metadata={"threshold": {"class": "pneumonia", "value": 0.5}},
                                               aux={"adversary/weight": np.ones((2, 3), np.float32),
                                                    "adversary/step": np.int64(3)})),
            ("model-seed-sgd", small, dict(classes=["normal", "bacterial", "viral"], optimizer=sgd))):
        path = workdir / f"{name}.h5"
        save_model(path, model, preprocessing={"image_size": 8, "fit": "pad", "normalize": "per_image"}, **kw)
        with h5py.File(path, "r") as f:
            stamp = f.attrs["created_utc"].encode()
        # Same length, so patching the bytes moves nothing (rewriting the
        # attribute through h5py would leave the old string in the heap).
        data = path.read_bytes().replace(stamp, FIXED_TIME.encode())
        seeds.append(model_layout(name, data, workdir))
        path.unlink()
    return seeds


def build_seeds(fmt: str, workdir: Path) -> list[Seed]:
    if fmt == "model":
        return model_seeds(workdir)
    return {"png": png_seeds, "jpeg": jpeg_seeds, "tiff": tiff_seeds, "dicom": dicom_seeds}[fmt]()


# =================================================================== mutators
def _extremes(size: int) -> tuple:
    top = (1 << (8 * size)) - 1
    return tuple(sorted({0, 1, 2, top, top >> 1, (top >> 1) + 1, 0x7F & top, 0xFF & top, 0x7FFF & top,
                         0xFFFF & top, 0xFFFFFFFF & top}))


def _refresh_crc(data: bytearray, crc) -> None:
    start, end = crc
    if end + 4 <= len(data):
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[start:end])) & 0xFFFFFFFF)


def op_field(data: bytearray, seed: Seed, rng: random.Random, others) -> str:
    f = rng.choice(seed.fields)
    if f.offset + f.size > len(data):
        return f"{f.name}: beyond the end"
    old = int.from_bytes(data[f.offset:f.offset + f.size], "little" if f.order == "<" else "big")
    top = (1 << (8 * f.size)) - 1
    r = rng.random()
    if f.values and r < 0.25:
        new = rng.choice(f.values) & top
    elif r < 0.75:
        new = rng.choice(_extremes(f.size))
    elif r < 0.9:
        new = (old + rng.choice((-1, 1))) & top
    else:
        new = rng.getrandbits(8 * f.size)
    data[f.offset:f.offset + f.size] = new.to_bytes(f.size, "little" if f.order == "<" else "big")
    fixed = f.crc is not None and rng.random() < 0.85
    if fixed:
        _refresh_crc(data, f.crc)
    return f"{f.name} {old:#x} -> {new:#x}{' (CRC refreshed)' if fixed else ''}"


def op_text(data: bytearray, seed: Seed, rng: random.Random, others) -> str:
    t = rng.choice(seed.texts)
    if t.offset + t.length > len(data):
        return f"{t.name}: beyond the end"
    value = rng.choice(t.choices).encode("ascii")
    if len(value) % 2:
        value += b"\0" if t.name == "TransferSyntaxUID" else b" "
    old = bytes(data[t.offset:t.offset + t.length])
    data[t.offset:t.offset + t.length] = value
    if rng.random() < 0.9:  # keep the element's length right, mostly
        data[t.len_offset:t.len_offset + t.len_size] = len(value).to_bytes(t.len_size, "little")
    return f"{t.name} {old!r} -> {value!r}"


def _position(data, seed: Seed, rng: random.Random) -> int:
    """A position, most often at or inside one of the seed's regions."""
    n = len(data)
    if seed.regions and rng.random() < 0.75:
        _, start, end = rng.choice(seed.regions)
        start, end = min(start, n), min(end, n)
        r = rng.random()
        if r < 0.3 or end <= start:
            return start
        if r < 0.45:
            return end
        return rng.randrange(start, end)
    return rng.randrange(max(n, 1))


def op_flip(data: bytearray, seed, rng, others) -> str:
    if not data:
        return "flip: empty"
    at = _position(data, seed, rng)
    spots = []
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        p = min(len(data) - 1, max(0, at + rng.randrange(-8, 9)))
        bit = rng.randrange(8)
        data[p] ^= 1 << bit
        spots.append(f"{p}.{bit}")
    return f"flip bits {','.join(spots)}"


_INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)


def op_set(data: bytearray, seed, rng, others) -> str:
    if not data:
        return "set: empty"
    p = min(_position(data, seed, rng), len(data) - 1)
    k = min(rng.choice((1, 2, 4, 8)), len(data) - p)
    v = bytes(rng.choice(_INTERESTING) for _ in range(k))
    data[p:p + k] = v
    return f"set {k} bytes at {p} to {v.hex()}"


def op_delete(data: bytearray, seed, rng, others) -> str:
    if seed.regions and rng.random() < 0.3:
        name, start, end = rng.choice(seed.regions)
        start, end = min(start, len(data)), min(end, len(data))
        del data[start:end]
        return f"delete region {name} [{start}:{end}]"
    p = _position(data, seed, rng)
    k = rng.choice((1, 1, 2, 3, 4, 8, 16, 64))
    del data[p:p + k]
    return f"delete {k} bytes at {p}"


def op_insert(data: bytearray, seed, rng, others) -> str:
    p = _position(data, seed, rng)
    k = rng.choice((1, 2, 4, 8, 16, 64, 256))
    if rng.random() < 0.5:
        blob = bytes(rng.choice(_INTERESTING) for _ in range(k))
    else:
        blob = rng.randbytes(k)
    data[p:p] = blob
    return f"insert {k} bytes at {p}"


def op_truncate(data: bytearray, seed, rng, others) -> str:
    if seed.regions and rng.random() < 0.8:
        name, start, end = rng.choice(seed.regions)
        r = rng.random()
        cut = start if r < 0.35 else end if r < 0.5 else rng.randrange(start, max(end, start + 1))
        cut = max(0, min(len(data), cut + rng.choice((0, 0, 0, -1, 1, 2))))
        del data[cut:]
        return f"truncate at {cut} (region {name})"
    cut = rng.randrange(len(data) + 1)
    del data[cut:]
    return f"truncate at {cut}"


def op_duplicate(data: bytearray, seed, rng, others) -> str:
    if not seed.regions:
        return "duplicate: no regions"
    name, start, end = rng.choice(seed.regions)
    start, end = min(start, len(data)), min(end, len(data))
    chunk = bytes(data[start:end])
    at = end if rng.random() < 0.7 else _position(data, seed, rng)
    data[at:at] = chunk
    return f"duplicate region {name} ({len(chunk)} bytes) at {at}"


def op_zero(data: bytearray, seed, rng, others) -> str:
    if not seed.regions:
        return "zero: no regions"
    name, start, end = rng.choice(seed.regions)
    start, end = min(start, len(data)), min(end, len(data))
    fill = rng.choice((0x00, 0xFF))
    data[start:end] = bytes([fill]) * (end - start)
    return f"fill region {name} [{start}:{end}] with {fill:#04x}"


def op_splice(data: bytearray, seed, rng, others) -> str:
    other = rng.choice(others)
    i, j = _position(data, seed, rng), rng.randrange(len(other.data) + 1)
    data[i:] = other.data[j:]
    return f"splice {other.name}[{j}:] at {i}"


# (operation, weight, keeps the length): length-keeping edits run first, on the
# seed's own offsets; the others may move everything after them.
BYTE_OPS = ((op_field, 30, True), (op_flip, 15, True), (op_set, 10, True), (op_zero, 4, True),
            (op_text, 0, False), (op_delete, 10, False), (op_insert, 8, False), (op_truncate, 10, False),
            (op_duplicate, 7, False), (op_splice, 5, False))


def mutate_bytes(seed: Seed, rng: random.Random, others: list[Seed], text_weight: int = 0) -> tuple[bytes, list]:
    ops = [(op, w if op is not op_text else text_weight, keeps) for op, w, keeps in BYTE_OPS]
    ops = [(op, w, keeps) for op, w, keeps in ops
           if w and (op is not op_field or seed.fields) and (op is not op_text or seed.texts)]
    n = 1 if rng.random() < 0.5 else rng.randint(2, 4)
    chosen = rng.choices(ops, weights=[w for _, w, _ in ops], k=n)
    # Stable sort: length-keeping edits first, then a DICOM string swap (both on
    # the seed's offsets), then the edits that move bytes.
    chosen.sort(key=lambda o: 0 if o[2] else 1 if o[0] is op_text else 2)
    data, done = bytearray(seed.data), []
    for op, _, _ in chosen:
        done.append(op(data, seed, rng, others))
    return bytes(data), done


# ------------------------------------------------------ model files through h5py
_ROOT_ATTRS = ("format", "format_version", "xraynet_version", "created_utc", "architecture", "classes",
               "preprocessing", "metadata", "weights_sha256")
_JSON_ATTRS = ("architecture", "classes", "preprocessing", "metadata")


def _odd_values(rng: random.Random):
    """(value, description) of attribute values of every wrong kind."""
    import h5py
    import numpy as np

    depth = rng.choice((200, 2000, 30000))
    choices = [
        (np.int64(-(2 ** 63)), "int64 min"), (np.int64(2 ** 63 - 1), "int64 max"),
        (np.uint64(2 ** 64 - 1), "uint64 max"), (np.float64("nan"), "NaN"), (np.float64("inf"), "inf"),
        (np.bool_(True), "bool"), ("", "empty string"), (np.bytes_(b"\xff\xfe\x80{}"), "fixed non-UTF-8 bytes"),
        (np.arange(3, dtype=np.int32), "int array"), (np.full((2, 2), 0.5), "float array"),
        (np.array(["a", "b"], dtype=h5py.string_dtype()), "string array"),
        (h5py.Empty("f4"), "empty dataspace"), (np.complex64(1 + 2j), "complex"),
        ("[" * depth + "]" * depth, f"JSON nested {depth} deep"), ("x" * 60000, "60 kB string"),
        (np.int8(1), "int8 1"), (np.float64(1.0), "float 1.0"), ("1", "string '1'"),
    ]
    return rng.choice(choices)


def _set_attr(attrs, key, value) -> None:
    import h5py

    if key in attrs:
        del attrs[key]
    if isinstance(value, h5py.Empty):
        attrs.create(key, value)
    else:
        attrs[key] = value


def _set_invalid_utf8(attrs, key) -> None:
    """A variable-length UTF-8 string attribute holding bytes that are not UTF-8."""
    import h5py
    import numpy as np

    if key in attrs:
        del attrs[key]
    attrs.create(key, np.array(b'{"a": "\xff\xfe"}', dtype=h5py.string_dtype("utf-8")))


def _datasets(f, under: str = "") -> list[str]:
    import h5py

    out = []
    f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return [n for n in out if n.startswith(under)]


def _mutate_spec(spec, rng: random.Random) -> str:
    """Set one node of an architecture spec to an odd value, or add/remove a part."""
    nodes = []

    def walk(obj):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            nodes.append((obj, k))
            walk(v)
    walk(spec)
    big = rng.choice((2 ** 31, 2 ** 40, 10 ** 30))
    r = rng.random()
    if r < 0.15:
        spec["input_shape"] = [rng.choice((1, 3, big)), rng.choice((1, 8, big)), rng.choice((8, big))]
        return f"input_shape -> {spec['input_shape']}"
    if r < 0.3:
        layer = rng.choice(({"type": "dense", "out_features": big}, {"type": "conv2d", "out_channels": big},
                            {"type": "conv2d", "out_channels": 2, "kernel_size": big},
                            {"type": "conv2d", "out_channels": 2, "stride": 0}, {"type": "batchnorm2d"},
                            {"type": "maxpool2d", "kernel_size": big}, {"type": "nonsense"}, {}, None, 3,
                            {"type": "dropout", "p": float("nan")}, {"type": "dropout", "p": 2.0}))
        spec["layers"].insert(rng.randrange(len(spec["layers"]) + 1), layer)
        return f"insert layer {layer!r}"
    obj, key = rng.choice(nodes)
    if rng.random() < 0.15:
        del obj[key]
        return f"delete spec node {key!r}"
    value = rng.choice((0, -1, 1, big, 2 ** 63, 1.5, float("nan"), float("inf"), True, None, "x", [], {}, [1, 2],
                        "same", "valid", [big, big], list(range(50))))
    obj[key] = value
    return f"spec node {key!r} -> {value!r}"


def _h5_root_attr(f, rng) -> str:
    key = rng.choice(_ROOT_ATTRS)
    r = rng.random()
    if r < 0.2:
        del f.attrs[key]
        return f"delete root attribute {key}"
    if r < 0.3:
        _set_invalid_utf8(f.attrs, key)
        return f"root attribute {key}: UTF-8 string with invalid bytes"
    value, what = _odd_values(rng)
    _set_attr(f.attrs, key, value)
    return f"root attribute {key} -> {what}"


def _h5_json(f, rng) -> str:
    import json as _json

    key = rng.choice(_JSON_ATTRS)
    if key == "architecture" and rng.random() < 0.7:
        spec = _json.loads(f.attrs["architecture"])
        what = _mutate_spec(spec, rng)
        f.attrs["architecture"] = _json.dumps(spec)
        return f"architecture: {what}"
    depth = rng.choice((1000, 30000))
    text = rng.choice(("", "{", "null", "[]", "{}", "1e999", "NaN", "-Infinity", '"\\ud800"', "[" * depth + "]" * depth,
                       '{"a":' * depth + "1" + "}" * depth, "9" * 5000, '["a", 1, null]', '{"":{}}', "\0",
                       '["normal"]', '["a","b","c","d"]', "[1, 2]"))
    f.attrs[key] = text
    return f"root attribute {key} -> JSON {text[:40]!r}{'...' if len(text) > 40 else ''}"


def _h5_version(f, rng) -> str:
    import numpy as np

    value = rng.choice((np.int64(0), np.int64(-1), np.int64(2), np.int64(2 ** 63 - 1), np.uint64(2 ** 64 - 1),
                        np.float64(1.0), "1", np.bool_(True), np.int8(1), np.array([1, 1])))
    _set_attr(f.attrs, "format_version", value)
    return f"format_version -> {value!r}"


def _replace_dataset(group, name: str, rng, old) -> str:
    """Rewrite dataset ``name`` of ``group`` (``old`` its array) wrongly."""
    import h5py
    import numpy as np

    kind = old.attrs.get("kind")
    # An earlier edit may have left a huge declared shape with nothing stored:
    # the harness must not read that itself.
    small = old.shape is not None and old.size * old.dtype.itemsize <= min(old.id.get_storage_size(), 2 ** 20)
    arr = old[()] if small else np.zeros(3, np.float32)
    del group[name]
    r = rng.randrange(16)
    a = np.asarray(arr)
    if r == 0:
        dt = rng.choice(("i4", "f2", "f8", "c8", "?", "S4", ">f4", "u1"))
        new, what = group.create_dataset(name, data=a.astype(dt)), f"dtype {dt}"
    elif r == 1:
        shape = rng.choice(((), (0,), a.shape[::-1], (a.size + 1,), (*a.shape, 1), (1, 1)))
        new, what = group.create_dataset(name, shape=shape, dtype=a.dtype), f"shape {shape}"
    elif r == 2:
        b = a.astype(np.float32, copy=True).reshape(-1)
        if b.size:
            b[rng.randrange(b.size)] = rng.choice((np.nan, np.inf, -np.inf))
        new, what = group.create_dataset(name, data=b.reshape(a.shape)), "a NaN/inf value"
    elif r == 3:
        shape = rng.choice(((2 ** 31,), (2 ** 20, 2 ** 20), (2 ** 62,), tuple(4096 * max(d, 1) for d in a.shape)))
        new = group.create_dataset(name, shape=shape, dtype="f4", chunks=True)
        what = f"declared shape {shape}, no data stored"
    elif r == 4:
        new, what = group.create_dataset(name, shape=a.shape, dtype=a.dtype), "same shape, no data stored"
    elif r == 5:
        new = group.create_dataset(name, data=np.array(["x"] * max(a.size, 1), dtype=h5py.string_dtype()))
        what = "strings"
    elif r == 6:
        cd = np.dtype([("a", "<f4"), ("b", "<i4")])
        new, what = group.create_dataset(name, shape=a.shape, dtype=cd), "compound dtype"
    elif r == 7:
        new = group.create_dataset(name, shape=a.shape or (1,), dtype=h5py.vlen_dtype(np.float32))
        what = "variable-length float dtype"
    elif r == 8:
        new = group.create_dataset(name, shape=a.shape, dtype=a.dtype,
                                   external=[("missing-external-data.bin", 0, h5py.h5f.UNLIMITED)])
        what = "external storage in a missing file"
    elif r == 9:
        new, what = group.create_dataset(name, data=h5py.Empty("f4")), "empty dataspace"
    elif r == 10:
        group.create_group(name)
        return f"{group.name}/{name} -> a group"
    elif r == 11:
        group[name] = h5py.SoftLink(rng.choice(("/weights", "/", "/nowhere", f"{group.name}/{name}")))
        return f"{group.name}/{name} -> soft link"
    elif r == 12:
        group[name] = h5py.ExternalLink(rng.choice(("missing.h5", "/dev/zero")), "/x")
        return f"{group.name}/{name} -> external link"
    elif r == 13:
        return f"delete {group.name}/{name}"
    elif r == 14:
        new = group.create_dataset(name, data=a, compression="gzip", shuffle=True) if a.shape \
            else group.create_dataset(name, data=a)
        what = "gzip + shuffle filters"
    else:
        new, what = group.create_dataset(name, data=a.astype(np.float64) * 1e300), "float64 * 1e300"
    if kind is not None:
        new.attrs["kind"] = rng.choice((kind, kind, "buffer" if kind == "parameter" else "parameter", 7))
    return f"{group.name}/{name} -> {what}"


def _h5_dataset(f, rng) -> str:
    names = _datasets(f)
    name = rng.choice(names)
    parent, _, leaf = name.rpartition("/")
    return _replace_dataset(f[parent] if parent else f, leaf, rng, f[name])


def _h5_group(f, rng) -> str:
    import h5py
    import numpy as np

    groups = []
    f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
    target = rng.choice(groups + ["history", "weights", "optimizer", "aux"])
    r = rng.random()
    if target not in f:
        f.create_group(target)
        return f"add empty group {target}"
    if r < 0.4:
        del f[target]
        return f"delete {target}"
    if r < 0.55 and isinstance(f[target], h5py.Group):
        f[target].create_dataset("stray", data=np.zeros(3, np.float32))
        return f"stray dataset in {target}"
    if r < 0.7 and isinstance(f[target], h5py.Group):
        f[target]["loop"] = h5py.SoftLink("/" + target)
        return f"soft link loop in {target}"
    if r < 0.8 and isinstance(f[target], h5py.Group):
        f[target].create_group("stray")
        return f"stray group in {target}"
    del f[target]
    f.create_dataset(target, data=np.arange(4))
    return f"{target} -> an int dataset"


def _h5_optimizer(f, rng) -> str:
    if "optimizer" not in f:
        return "no optimizer group"
    key = rng.choice(("name", "hyperparams", "step"))
    r = rng.random()
    if r < 0.2:
        del f["optimizer"].attrs[key]
        return f"delete optimizer attribute {key}"
    if r < 0.5 and key != "step":
        f["optimizer"].attrs[key] = rng.choice(("sgd", "adam", "ADAM", "lbfgs", "{}", "[]", "{", '{"lr": NaN}'))
        return f"optimizer {key} -> {f['optimizer'].attrs[key]!r}"
    value, what = _odd_values(rng)
    _set_attr(f["optimizer"].attrs, key, value)
    return f"optimizer {key} -> {what}"


def _h5_history(f, rng) -> str:
    import h5py
    import numpy as np

    if "history" in f:
        del f["history"]
    depth = rng.choice((1000, 100000))
    r = rng.randrange(9)
    s = h5py.string_dtype("utf-8")
    if r == 0:
        f.create_dataset("history", data="[" * depth + "]" * depth, dtype=s)
        return f"history: JSON nested {depth} deep"
    if r == 1:
        f.create_dataset("history", data=rng.choice(("{", "[1, 2]", "{}", "[{}, 3]", "NaN", "")), dtype=s)
        return "history: JSON of the wrong shape"
    if r == 2:
        f.create_dataset("history", data=np.array(b'[{"a": "\xff"}]', dtype=s))
        return "history: invalid UTF-8"
    if r == 3:
        size = rng.choice((2 ** 20, 2 ** 31 - 1))
        f.create_dataset("history", shape=(), dtype=f"S{size}")
        return f"history: fixed-length string of {size} bytes, no data stored"
    if r == 4:
        f.create_dataset("history", data=np.array(["[]", "[]"], dtype=s))
        return "history: two strings"
    if r == 5:
        f.create_dataset("history", data=np.int64(3))
        return "history: an int"
    if r == 6:
        f.create_dataset("history", data=np.bytes_(b"[{\"epoch\": 1}]"))
        return "history: fixed-length bytes"
    if r == 7:
        f.create_dataset("history", data=h5py.Empty(s))
        return "history: empty dataspace"
    f.create_dataset("history", data="[" + ",".join(['{"e": 1}'] * 50000) + "]", dtype=s)
    return "history: 50000 epochs"


def _h5_aux(f, rng) -> str:
    import h5py
    import numpy as np

    g = f.require_group("aux") if not isinstance(f.get("aux"), h5py.Dataset) else None
    if g is None:
        return "aux is a dataset"
    r = rng.randrange(8)
    if r == 0:
        shape = rng.choice(((2 ** 31,), (2 ** 16, 2 ** 16), (2 ** 40,), (2 ** 24,)))
        g.create_dataset("huge", shape=shape, dtype="f4", chunks=True)
        return f"aux/huge: declared shape {shape}, no data stored"
    if r == 1:
        g.create_dataset("empty", data=h5py.Empty("f4"))
        return "aux/empty: empty dataspace"
    if r == 2:
        d = g.create_dataset("refs", shape=(2,), dtype=h5py.ref_dtype)
        d[0] = f.ref
        return "aux/refs: object references"
    if r == 3:
        d = g.create_dataset("vlen", shape=(2,), dtype=h5py.vlen_dtype(np.int32))
        d[0] = np.arange(5, dtype=np.int32)
        return "aux/vlen: variable-length ints"
    if r == 4:
        g["self"] = h5py.ExternalLink(f.filename, "/")
        return "aux/self: external link to the file itself"
    if r == 5:
        g.create_dataset("ext", shape=(16,), dtype="f4", external=[("/dev/zero", 0, 64)])
        return "aux/ext: external storage in /dev/zero"
    if r == 6:
        g.create_dataset("big-string", shape=(), dtype="S100000000")
        return "aux/big-string: fixed-length 100 MB string, no data stored"
    g.create_dataset("deep/" + "/".join(["g"] * 200), data=np.zeros(1))
    return "aux: 200 nested groups"


def _h5_digest(f) -> str:
    """Recompute weights_sha256 so a damaged weight gets past the checksum."""
    import h5py

    from xraynet.modelfile import weights_digest

    state = {}
    g = f.get("weights")
    if isinstance(g, h5py.Group):
        for lname, sub in g.items():
            if isinstance(sub, h5py.Group):
                for dname, ds in sub.items():
                    if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiu" and ds.size < 2 ** 20:
                        state[f"{lname}.{dname}"] = ds[()]
    f.attrs["weights_sha256"] = weights_digest(state)
    return "weights_sha256 recomputed"


H5_OPS = ((_h5_root_attr, 12), (_h5_json, 22), (_h5_version, 4), (_h5_dataset, 24), (_h5_group, 10),
          (_h5_optimizer, 8), (_h5_history, 8), (_h5_aux, 8))


def mutate_model(seed: Seed, rng: random.Random, others, workdir: Path) -> tuple[bytes, list]:
    import h5py

    done = []
    r = rng.random()
    if r < 0.35:
        return mutate_bytes(seed, rng, others)
    path = workdir / "h5-edit.h5"
    path.write_bytes(seed.data)
    with h5py.File(path, "r+") as f:
        for op in rng.choices([o for o, _ in H5_OPS], weights=[w for _, w in H5_OPS], k=rng.choice((1, 1, 2))):
            try:
                done.append(op(f, rng))
            except Exception as e:  # noqa: BLE001 -- h5py refuses some edits; the case is still deterministic
                done.append(f"{op.__name__}: h5py refused ({type(e).__name__}: {str(e)[:60]})")
        if rng.random() < 0.4:
            try:
                done.append(_h5_digest(f))
            except Exception as e:  # noqa: BLE001
                done.append(f"digest not recomputed ({type(e).__name__})")
    data = path.read_bytes()
    path.unlink()
    if r > 0.85:  # structural damage, then raw bytes on top
        raw, more = mutate_bytes(Seed(seed.name, data, seed.regions, seed.fields), rng, others)
        return raw, done + more
    return data, done


@dataclass
class Case:
    fmt: str
    index: int
    seed_name: str
    data: bytes
    ops: list


class Corpus:
    """The seeds of every format, built once."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._seeds: dict[str, list[Seed]] = {}

    def seeds(self, fmt: str) -> list[Seed]:
        if fmt not in self._seeds:
            self._seeds[fmt] = build_seeds(fmt, self.workdir)
        return self._seeds[fmt]

    def case(self, fmt: str, index: int, seed: int) -> Case:
        rng = random.Random(f"xraynet-fuzz:{seed}:{fmt}:{index}")
        seeds = self.seeds(fmt)
        s = rng.choice(seeds)
        others = [o for o in seeds if o is not s] or seeds
        if fmt == "model":
            data, ops = mutate_model(s, rng, others, self.workdir)
        else:
            data, ops = mutate_bytes(s, rng, others, text_weight=10 if fmt == "dicom" else 0)
            if fmt == "png" and rng.random() < 0.5:
                data, ops = png_refresh_crcs(data), ops + ["all CRCs refreshed"]
        return Case(fmt, index, s.name, data, ops)


# ===================================================================== worker
def _status_bytes(key: str, pid="self") -> int:
    """``VmSize`` / ``VmRSS`` of a process from /proc, in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _contract(kind: str, result) -> str | None:
    """What is wrong with a returned result, or None."""
    import numpy as np

    if kind == "selftest":
        return None if result is None else f"self-test returned {type(result).__name__}"
    if kind == "image":
        from xraynet.imaging import Decoded

        if not isinstance(result, Decoded):
            return f"decode returned {type(result).__name__}, not Decoded"
        p = result.pixels
        if not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.ndim != 2:
            return f"pixels are {type(p).__name__} {getattr(p, 'dtype', '')} {getattr(p, 'shape', '')}"
        if p.shape != (result.height, result.width) or 0 in p.shape:
            return f"pixels {p.shape} vs height x width {result.height}x{result.width}"
        if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
            return "pixels not finite or outside [0, 1]"
        if not all(isinstance(w, str) for w in result.warnings):
            return "warnings are not all strings"
        return None
    from xraynet.modelfile import LoadedModel

    if not isinstance(result, LoadedModel):
        return f"load_model returned {type(result).__name__}, not LoadedModel"
    if len(result.classes) != result.model.num_classes or not all(isinstance(c, str) for c in result.classes):
        return f"classes {result.classes!r} do not fit the model"
    return None


def _frame(tb_entry) -> str:
    return f"{Path(tb_entry.filename).name}:{tb_entry.name}:{tb_entry.lineno}"


def _signature(kind: str, e: BaseException) -> tuple[str, str]:
    """A finding's signature (kind, type, innermost frame, last xraynet frame)
    and the traceback tail."""
    tb = traceback.extract_tb(e.__traceback__)
    inner = _frame(tb[-1]) if tb else "?"
    ours = [t for t in tb if f"{os.sep}xraynet{os.sep}" in t.filename]
    via = f" via {_frame(ours[-1])}" if ours and ours[-1] is not tb[-1] else ""
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-8:])
    return f"{kind}: {type(e).__name__} in {inner}{via}", tail[-3000:]


def _selftest(path: str):
    """Actions that check the oracle itself (tests/test_fuzz.py)."""
    action = Path(path).read_text().strip()
    if action == "raise":
        raise ZeroDivisionError("self-test")
    if action == "abort":
        os.abort()
    if action == "spin":
        while True:
            pass
    if action.startswith("alloc "):
        import numpy as np

        return np.ones(int(action.split()[1]) // 8)  # touched: RSS grows
    if action == "alloc-impossible":
        import numpy as np

        return np.empty(2 ** 60, np.uint8)  # fails whatever the bounds
    if action == "bad-result":
        return "not a Decoded"
    return None


def _read(kind: str, path: str):
    if kind == "image":
        from xraynet.imaging import decode

        return decode(path)
    if kind == "model":
        from xraynet.modelfile import load_model

        return load_model(path)
    return _selftest(path)


def _run_one(req: dict, rss_base_kb: int, limit: int, address_limit: int) -> dict:
    from xraynet.errors import ImageError, XraynetError

    kind, path = req["kind"], req["path"]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    out: dict = {"outcome": "ok"}
    try:
        result = _read(kind, path)
        problem = _contract(kind, result)
        if problem:
            out = {"outcome": "finding", "kind": "contract", "signature": f"contract: {problem}", "tail": ""}
        del result
    except XraynetError as e:
        out = {"outcome": "own", "error": type(e).__name__,
               "reason": e.reason if isinstance(e, ImageError) else type(e).__name__}
    except MemoryError as e:
        # Whether the harness's address-space net made the allocation fail: a
        # request larger than the machine's RAM fails on any machine, and one
        # that fitted under the net failed for another reason; both escape as
        # an exception. numpy's MemoryError says how much it asked for; the
        # others do not and are put down to the net.
        asked = getattr(e, "_total_size", None)
        by_net = asked is None or (asked <= _physical_memory() and _status_bytes("VmSize") + asked > address_limit)
        kind_ = "memory" if by_net else "exception"
        sig, tail = _signature(kind_, e)
        out = {"outcome": "finding", "kind": kind_, "signature": sig, "tail": tail, "restart": True,
               "message": str(e)[:300]}
    except BaseException as e:  # noqa: BLE001 -- every escape is what the fuzzer looks for
        sig, tail = _signature("exception", e)
        out = {"outcome": "finding", "kind": "exception", "signature": sig, "tail": tail, "message": str(e)[:300]}
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would start at the
    # parent's peak when the worker was forked.
    peak = _status_bytes("VmHWM") // 1024
    out["maxrss_kb"] = peak
    if peak - rss_base_kb > limit // 1024 and out.get("kind") != "memory":
        out = {**out, "outcome": "finding", "kind": "memory", "restart": True, "tail": "",
               "message": f"peak RSS {peak // 1024} MB",
               "signature": f"memory: peak RSS over the bound ({limit // 2 ** 20} MB above the baseline)"}
    return out


def worker_main(warmup: str, limit: int, net: int) -> int:
    """Read one JSON request per line on stdin, answer one JSON line each.

    ``limit``: the RSS bound above the baseline after warm-up (bytes). ``net``:
    the address-space limit set above the baseline (bytes), a safety net for
    the shared machine in case the parent's RSS watch is too slow; it sits well
    above ``limit`` so that large reservations that are never touched (a 2 GB
    ``read()`` buffer of which 10 bytes get used) are not mistaken for memory use.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a C library printing to stdout must not corrupt the protocol
    # Load every reader's libraries (Pillow plugins, pydicom handlers, h5py,
    # Numba) on the seed files before the bound is measured and set.
    for p in sorted(Path(warmup).iterdir()):
        try:
            _read("model" if p.suffix == ".h5" else "image", str(p))
        except Exception:  # noqa: BLE001 -- the parent checks the seeds; warm-up only loads code
            pass
    rss_base = _status_bytes("VmRSS") // 1024
    address_limit = _status_bytes("VmSize") + net
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_limit, hard))
    proto.write(json.dumps({"ready": True, "rss_base_kb": rss_base, "address_limit": address_limit}) + "\n")
    for line in sys.stdin:
        reply = _run_one(json.loads(line), rss_base, limit, address_limit)
        proto.write(json.dumps(reply) + "\n")
    return 0


# ===================================================================== oracle
def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Oracle:
    """One worker process reading inputs, restarted after a crash, a timeout or
    a memory finding. ``run(kind, path)`` returns the worker's verdict dict with
    ``outcome`` "ok", "own" or "finding" (then ``kind``, ``signature``, ``tail``).

    While an input is read the parent polls the worker every 20 ms: CPU time
    over ``cpu_limit``, wall time over ``wall_limit`` or RSS more than
    ``memory_limit_mb`` above the worker's baseline kill it (a finding). The
    worker itself checks its peak RSS after each input, which catches a peak
    between two polls.
    """

    POLL_S = 0.02

    def __init__(self, warmup_dir: Path, logdir: Path, cpu_limit: float = CPU_LIMIT_S,
                 wall_limit: float = WALL_LIMIT_S, memory_limit_mb: int = MEMORY_LIMIT_MB,
                 address_net_mb: int = ADDRESS_NET_MB):
        self.warmup_dir, self.logdir = Path(warmup_dir), Path(logdir)
        self.cpu_limit, self.wall_limit = cpu_limit, wall_limit
        self.memory_limit_mb, self.address_net_mb = memory_limit_mb, address_net_mb
        self.proc = None
        self.starts = 0
        self._buf = b""

    def _start(self) -> None:
        self.starts += 1
        self.errlog = self.logdir / "worker-stderr.log"
        env = {**os.environ, **THREAD_ENV, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.warmup_dir),
                 "--memory-limit-mb", str(self.memory_limit_mb), "--address-net-mb", str(self.address_net_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0, cwd=str(ROOT), env=env)
        self._buf = b""
        line = self._readline(300.0, watch=False)
        if not isinstance(line, str):
            self._kill()
            raise RuntimeError(f"fuzz worker did not start: {self._stderr_tail()}")
        self.ready = json.loads(line)
        self.rss_cap = self.ready["rss_base_kb"] * 1024 + self.memory_limit_mb * 2 ** 20

    def _stderr_tail(self, n: int = 1500) -> str:
        try:
            return self.errlog.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _readline(self, wall: float, watch: bool = True, cpu0: float = 0.0):
        """A line from the worker; None on EOF; ("timeout"|"memory", what, detail) past a bound."""
        fd = self.proc.stdout.fileno()
        t0 = time.monotonic()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], self.POLL_S)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
                continue
            if watch:
                rss = _status_bytes("VmRSS", self.proc.pid)
                if rss > self.rss_cap:
                    return ("memory", f"RSS over the bound ({self.memory_limit_mb} MB above the baseline)",
                            f"RSS {rss // 2 ** 20} MB")
                if _proc_cpu_s(self.proc.pid) - cpu0 > self.cpu_limit:
                    return ("timeout", f"over the CPU limit ({self.cpu_limit:g} s)", "")
            if time.monotonic() - t0 > wall:
                return ("timeout", f"over the wall-time limit ({wall:g} s)", "")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def run(self, kind: str, path) -> dict:
        if self.proc is None:
            self._start()
        cpu0 = _proc_cpu_s(self.proc.pid)
        try:
            self.proc.stdin.write((json.dumps({"kind": kind, "path": str(path)}) + "\n").encode())
        except BrokenPipeError:
            pass  # the worker died: the read below sees EOF
        line = self._readline(self.wall_limit, cpu0=cpu0)
        if isinstance(line, tuple):
            used = _proc_cpu_s(self.proc.pid) - cpu0
            self._kill()
            return {"outcome": "finding", "kind": line[0], "cpu_s": used, "tail": "", "message": line[2],
                    "signature": f"{line[0]}: {line[1]}, killed"}
        if line is None:
            self.proc.wait()
            rc = self.proc.returncode
            tail = self._stderr_tail()
            self._kill()
            what = signal.Signals(-rc).name if rc is not None and rc < 0 else f"exit status {rc}"
            # Killed by a signal nobody here sent: the kernel's OOM killer uses SIGKILL.
            kind_ = "memory" if what == "SIGKILL" else "crash"
            return {"outcome": "finding", "kind": kind_, "signature": f"{kind_}: worker died ({what})",
                    "tail": tail, "cpu_s": 0.0}
        reply = json.loads(line)
        if reply.get("restart"):
            self._kill()
        return reply


# ==================================================================== campaign
TARGET = {"png": "image", "jpeg": "image", "tiff": "image", "dicom": "image", "model": "model"}


def write_warmup(corpus: Corpus, formats, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        for s in corpus.seeds(fmt):
            (folder / f"{s.name}{SUFFIX[fmt]}").write_bytes(s.data)


def _finding_entry(case: Case, reply: dict) -> dict:
    return {"format": case.fmt, "index": case.index, "seed_file": case.seed_name, "ops": case.ops,
            "signature": reply["signature"], "kind": reply["kind"], "message": reply.get("message", ""),
            "tail": reply.get("tail", ""), "size": len(case.data)}


def minimize(data: bytes, reproduces, max_trials: int = 300) -> bytes:
    """Delta debugging by deletion: drop chunks while ``reproduces(candidate)``."""
    n, trials = 2, 0
    while len(data) >= 2 and trials < max_trials:
        chunk = math.ceil(len(data) / n)
        for i in range(n):
            cand = data[:i * chunk] + data[(i + 1) * chunk:]
            trials += 1
            if cand and reproduces(cand):
                data, n = cand, max(n - 1, 2)
                break
            if trials >= max_trials:
                break
        else:
            if n >= len(data):
                break
            n = min(len(data), 2 * n)
    return data


def fuzz_format(fmt: str, per_format: int, seed: int, corpus: Corpus, oracle: Oracle, workdir: Path,
                start: int = 0, progress=None, save_dir: Path | None = None, do_minimize: bool = False) -> dict:
    """Run inputs ``start .. start+per_format-1`` of ``fmt``; return the tally."""
    path = Path(workdir) / f"input{SUFFIX[fmt]}"
    stats = {"format": fmt, "inputs": 0, "results": 0, "own_errors": 0, "findings": 0, "reasons": {},
             "by_signature": {}, "examples": [], "max_input_cpu_s": 0.0, "slowest_index": None,
             "peak_rss_kb": 0, "peak_rss_index": None,
             "worker_starts_before": oracle.starts}
    t0 = time.monotonic()
    for i in range(start, start + per_format):
        case = corpus.case(fmt, i, seed)
        path.write_bytes(case.data)
        reply = oracle.run(TARGET[fmt], path)
        stats["inputs"] += 1
        cpu = reply.get("cpu_s", 0.0)
        if cpu > stats["max_input_cpu_s"]:
            stats["max_input_cpu_s"], stats["slowest_index"] = cpu, i
        if reply.get("maxrss_kb", 0) > stats["peak_rss_kb"]:
            # The worker's peak over its life: the first input that reports it set it.
            stats["peak_rss_kb"], stats["peak_rss_index"] = reply["maxrss_kb"], i
        if reply["outcome"] == "ok":
            stats["results"] += 1
        elif reply["outcome"] == "own":
            stats["own_errors"] += 1
            stats["reasons"][reply["reason"]] = stats["reasons"].get(reply["reason"], 0) + 1
        else:
            stats["findings"] += 1
            sig = reply["signature"]
            entry = stats["by_signature"].setdefault(sig, {"count": 0, "indexes": []})
            entry["count"] += 1
            if len(entry["indexes"]) < 5:
                entry["indexes"].append(i)
            if entry["count"] == 1:
                ex = _finding_entry(case, reply)
                if save_dir is not None:
                    save_dir.mkdir(parents=True, exist_ok=True)
                    out = save_dir / f"{fmt}-{i}{SUFFIX[fmt]}"
                    out.write_bytes(case.data)
                    ex["saved"] = str(out)
                    # Memory findings and timeouts cost a worker restart or seconds per trial.
                    if do_minimize and reply["kind"] in ("exception", "contract", "crash"):
                        small = _minimized(case.data, fmt, sig, oracle, Path(workdir))
                        mout = save_dir / f"{fmt}-{i}.min{SUFFIX[fmt]}"
                        mout.write_bytes(small)
                        ex["minimized"] = str(mout)
                        ex["minimized_hex"] = small.hex() if len(small) <= 4096 else None
                        ex["minimized_size"] = len(small)
                stats["examples"].append(ex)
        if progress and (i - start + 1) % progress == 0:
            print(f"  {fmt}: {i - start + 1}/{per_format} inputs, {stats['findings']} findings, "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    stats["wall_s"] = time.monotonic() - t0
    stats["worker_starts"] = oracle.starts - stats.pop("worker_starts_before")
    return stats


def _minimized(data: bytes, fmt: str, sig: str, oracle: Oracle, workdir: Path) -> bytes:
    path = workdir / f"minimize{SUFFIX[fmt]}"
    max_trials = 60 if sig.startswith(("crash", "memory")) else 300  # each reproduction restarts the worker

    def reproduces(cand: bytes) -> bool:
        path.write_bytes(cand)
        return oracle.run(TARGET[fmt], path).get("signature") == sig

    return minimize(data, reproduces, max_trials)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        flags = " ".join(f for f in ("avx2", "avx512f") if f" {f} " in text or f" {f}\n" in text)
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model or platform.processor()} ({flags or 'no AVX2'}), {platform.system()}"


def versions() -> str:
    import h5py
    import numpy
    import PIL
    import pydicom
    import tifffile

    return (f"Python {platform.python_version()}, Pillow {PIL.__version__}, pydicom {pydicom.__version__}, "
            f"tifffile {tifffile.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
            f"NumPy {numpy.__version__}")


def format_lines(s: dict) -> list[str]:
    """One format's figures, own errors by reason, and findings by signature."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items(), key=lambda kv: -kv[1]))
    lines = [f"{s['format']}: {s['inputs']} inputs: {s['results']} results, {s['own_errors']} own errors, "
             f"{s['findings']} findings ({len(s['by_signature'])} distinct); "
             f"{s['wall_s']:.0f} s wall, {s['cpu_s']:.0f} s CPU (harness + worker), "
             f"peak RSS worker {s['peak_rss_mb']:.0f} MB (#{s['peak_rss_index']}) / harness "
             f"{s['harness_peak_rss_mb']:.0f} MB, slowest input {s['max_input_cpu_s'] * 1000:.0f} ms "
             f"CPU (#{s['slowest_index']}), worker started {s['worker_starts']}x",
             f"  own errors by reason: {reasons or 'none'}"]
    for sig, e in sorted(s["by_signature"].items(), key=lambda kv: -kv[1]["count"]):
        lines.append(f"  FINDING x{e['count']}: {sig}  (inputs {', '.join(map(str, e['indexes']))})")
    return lines


def report_lines(all_stats: list[dict], header: dict) -> list[str]:
    lines = [f"# xraynet fuzz run: {header['command']}", f"# machine: {header['machine']}",
             f"# {header['versions']}", f"# {header['code']}",
             f"# bounds per input: {header['cpu_limit_s']:g} s CPU, {header['wall_limit_s']:g} s wall, "
             f"{header['memory_limit_mb']} MB RSS above the worker's baseline; seed {header['seed']}", ""]
    for s in all_stats:
        lines += format_lines(s)
    total = sum(s["inputs"] for s in all_stats)
    lines += ["", f"total: {total} inputs, {sum(s['findings'] for s in all_stats)} findings, "
                  f"{sum(len(s['by_signature']) for s in all_stats)} distinct, "
                  f"{sum(s['wall_s'] for s in all_stats):.0f} s wall, {sum(s['cpu_s'] for s in all_stats):.0f} s CPU"]
    return lines


def findings_markdown(all_stats: list[dict], header: dict) -> str:
    out = [f"# Fuzz findings ({header['command']})", "", f"Machine: {header['machine']}. {header['versions']}.", "",
           f"Code fuzzed: {header['code']}.", "",
           "Each finding replays on its own: `python benchmarks/fuzz.py --replay FORMAT:INDEX --seed "
           f"{header['seed']} --out FILE` rebuilds the input from the seed files and runs it.", ""]
    for s in all_stats:
        for ex in s["examples"]:
            e = s["by_signature"][ex["signature"]]
            out += [f"## {ex['format']}: {ex['signature']}", "",
                    f"- count: {e['count']} of {s['inputs']} inputs (e.g. {', '.join(map(str, e['indexes']))})",
                    f"- seed file: {ex['seed_file']}; mutations: {'; '.join(ex['ops'])}",
                    f"- replay: `python benchmarks/fuzz.py --replay {ex['format']}:{ex['index']} --seed "
                    f"{header['seed']} --out /tmp/case{SUFFIX[ex['format']]}`"]
            if ex.get("message"):
                out.append(f"- message: `{ex['message'][:300]}`")
            if ex.get("minimized_hex"):
                fn = "decode" if ex["format"] != "model" else "load_model"
                mod = "xraynet.imaging" if ex["format"] != "model" else "xraynet.modelfile"
                hexs = ex["minimized_hex"]
                wrapped = "\n".join(f'    "{hexs[k:k + 96]}"' for k in range(0, len(hexs), 96))
                out += [f"- minimal reproducer ({ex['minimized_size']} bytes, from {ex['size']}):", "",
                        "```python", "from pathlib import Path", f"from {mod} import {fn}", "",
                        f"data = bytes.fromhex(\n{wrapped}\n)",
                        f'Path("/tmp/repro{SUFFIX[ex["format"]]}").write_bytes(data)',
                        f'{fn}("/tmp/repro{SUFFIX[ex["format"]]}")', "```"]
            if ex.get("tail"):
                out += ["", "```", ex["tail"].rstrip()[-2000:], "```"]
            out.append("")
    if not any(s["examples"] for s in all_stats):
        out.append("No findings.")
    return "\n".join(out) + "\n"


def run_campaign(formats, per_format: int, seed: int, *, cpu_limit=CPU_LIMIT_S, wall_limit=WALL_LIMIT_S,
                 memory_limit_mb=MEMORY_LIMIT_MB, address_net_mb=ADDRESS_NET_MB, progress=1000, save_dir=None,
                 do_minimize=False, command="") -> tuple[list[dict], dict]:
    work = Path(tempfile.mkdtemp(prefix="xraynet-fuzz-"))
    try:
        corpus = Corpus(work)
        write_warmup(corpus, formats, work / "seeds")
        all_stats = []
        for fmt in formats:
            # A fresh worker per format, so its peak RSS is that format's.
            oracle = Oracle(work / "seeds", work, cpu_limit, wall_limit, memory_limit_mb, address_net_mb)
            c0 = os.times()
            try:
                stats = fuzz_format(fmt, per_format, seed, corpus, oracle, work, progress=progress,
                                    save_dir=save_dir, do_minimize=do_minimize)
            finally:
                oracle.close()
            c1 = os.times()
            stats["cpu_s"] = sum(c1[k] - c0[k] for k in range(4))
            stats["peak_rss_mb"] = stats["peak_rss_kb"] / 1024
            stats["harness_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            all_stats.append(stats)
            print(format_lines(stats)[0], file=sys.stderr, flush=True)
        return all_stats, _header(seed, cpu_limit, wall_limit, memory_limit_mb, command)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def code_digests() -> str:
    """Which readers were fuzzed: the commit, and a digest of each reader file
    (the working tree may differ from the commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        head = "?"
    files = (sorted((ROOT / "xraynet" / "decoders").rglob("*.py")) + [ROOT / "xraynet" / "imaging.py"]
             + sorted((ROOT / "xraynet" / "modelfile").glob("*.py")))
    parts = [f"{p.relative_to(ROOT / 'xraynet')} {hashlib.sha256(p.read_bytes()).hexdigest()[:10]}"
             for p in files if p.exists()]
    return f"commit {head}; sha256 of " + ", ".join(parts)


def _header(seed, cpu_limit, wall_limit, memory_limit_mb, command) -> dict:
    return {"command": command, "machine": machine(), "versions": versions(), "code": code_digests(),
            "seed": seed, "cpu_limit_s": cpu_limit, "wall_limit_s": wall_limit, "memory_limit_mb": memory_limit_mb}


def replay(spec: str, seed: int, out: str | None) -> int:
    fmt, _, index = spec.partition(":")
    work = Path(tempfile.mkdtemp(prefix="xraynet-fuzz-"))
    try:
        corpus = Corpus(work)
        case = corpus.case(fmt, int(index), seed)
        target = Path(out) if out else Path(f"fuzz-{fmt}-{index}{SUFFIX[fmt]}")
        target.write_bytes(case.data)
        print(f"{target}: {len(case.data)} bytes from seed file {case.seed_name}; mutations:")
        for op in case.ops:
            print(f"  {op}")
        write_warmup(corpus, [fmt], work / "seeds")
        oracle = Oracle(work / "seeds", work)
        try:
            reply = oracle.run(TARGET[fmt], target)
        finally:
            oracle.close()
        print(json.dumps({k: v for k, v in reply.items() if k != "tail"}, indent=1))
        if reply.get("tail"):
            print(reply["tail"])
        return 1 if reply["outcome"] == "finding" else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-format", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--json", help="write the full results (every finding with its traceback) to this file")
    ap.add_argument("--findings-md", help="write the findings as Markdown, with reproducers, to this file")
    ap.add_argument("--save-cases", help="folder for the input behind each distinct finding")
    ap.add_argument("--minimize", action="store_true", help="shrink each distinct finding's input (needs --save-cases)")
    ap.add_argument("--cpu-limit", type=float, default=CPU_LIMIT_S)
    ap.add_argument("--wall-limit", type=float, default=WALL_LIMIT_S)
    ap.add_argument("--memory-limit-mb", type=int, default=MEMORY_LIMIT_MB, help="RSS bound above the baseline")
    ap.add_argument("--address-net-mb", type=int, default=ADDRESS_NET_MB,
                    help="address-space limit above the baseline (a safety net, far above the RSS bound)")
    ap.add_argument("--progress", type=int, default=1000, help="print progress every N inputs (0: never)")
    ap.add_argument("--replay", metavar="FORMAT:INDEX", help="rebuild one input, write it to --out and read it")
    ap.add_argument("--out")
    ap.add_argument("--worker", metavar="WARMUP_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.memory_limit_mb * 2 ** 20, args.address_net_mb * 2 ** 20)
    if args.replay:
        return replay(args.replay, args.seed, args.out)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        ap.error(f"unknown formats {bad}. Expected some of {','.join(FORMATS)}")
    command = "python benchmarks/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
    all_stats, header = run_campaign(formats, args.per_format, args.seed, cpu_limit=args.cpu_limit,
                                     wall_limit=args.wall_limit, memory_limit_mb=args.memory_limit_mb,
                                     address_net_mb=args.address_net_mb,
                                     progress=args.progress,
                                     save_dir=Path(args.save_cases) if args.save_cases else None,
                                     do_minimize=args.minimize, command=command)
    print("\n".join(report_lines(all_stats, header)))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "formats": all_stats}, indent=1))
    if args.findings_md:
        Path(args.findings_md).write_text(findings_markdown(all_stats, header))
    return 1 if any(s["findings"] for s in all_stats) else 0


if __name__ == "__main__":
    sys.exit(main())
