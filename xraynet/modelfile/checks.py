"""The defensive checks run before HDF5 reads anything from a model file.

A damaged or hand-made file can make HDF5 hang, allocate gigabytes or read
data from elsewhere; these checks look at the raw bytes or the storage
metadata first: the signature, whether HDF5 can open the file, the global
heaps, where each dataset keeps its data and how much it declares, the
length a variable-length string claims, and the size of the stored
architecture (built on placeholders). :func:`guarded` runs a reader behind
the first three and turns HDF5's own failures into :class:`ModelFileError`.
"""
from __future__ import annotations

import math
import mmap
from pathlib import Path

import h5py
import numpy as np

from ..errors import ModelFileError, SpecError, XraynetError
from .layout import HDF5_SIGNATURE, MAX_COMPRESSION, RESAVE, SLACK_BYTES, file_error


def _describe(head: bytes) -> str:
    """What a non-HDF5 file looks like, for the error message."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head[128:132] == b"DICM":
        return "a DICOM image"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (a PyTorch .pt file is one)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never loaded by xraynet)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"bytes {head[:8]!r}"
    return f"a text file starting {text[:24]!r}"


def check_signature(path: Path) -> None:
    """Refuse a path that is missing, a directory, unreadable or not HDF5 (saying what it is)."""
    if not path.exists():
        raise file_error(path, "no such file", "an xraynet model file (.h5)", "nothing at that path",
                         "Check the path, or train a model first")
    if path.is_dir():
        raise file_error(path, "is a directory", "an xraynet model file (.h5)", "a directory",
                         "Give the path of the model file inside it")
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        raise file_error(path, f"cannot be read ({e.strerror})", "a readable xraynet model file",
                         "an error from the operating system", "Check the path and its permissions") from None
    if not head.startswith(HDF5_SIGNATURE):
        raise file_error(path, "not an HDF5 file", f"an xraynet model (HDF5, starting {HDF5_SIGNATURE!r})",
                         _describe(head), "Pass a model file saved by xraynet")


def open_file(path: Path):
    """The file opened read-only by HDF5; a truncated or damaged one is refused."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        size = path.stat().st_size
        what = "truncated" if "truncated" in str(e).lower() else "damaged"
        raise file_error(path, f"the HDF5 file is {what} and cannot be opened ({e})",
                         "a complete xraynet model file", f"{size} bytes that HDF5 cannot read",
                         "Copy the file again or save the model again") from None


def check_global_heaps(path: Path, f) -> None:
    """Refuse a file whose global heap would make HDF5 loop forever.

    Variable-length strings (the JSON attributes, ``kind``, /history) live in
    global heap collections: "GCOL", version 1, 3 reserved bytes, the
    collection size, then objects of a 2-byte index, 2-byte reference count,
    4 reserved bytes, a size and the data padded to 8 bytes (HDF5 file format
    specification, "Global Heap"). HDF5 2.0 walks a collection object by object
    when it first reads a string from it, and never moves past a free-space
    object (index 0) of size 0. One such object, found by the fuzzer in a
    damaged file, hangs load_model inside the C library, where nothing can
    interrupt it, so the walk is done here first.
    """
    _, size_len = f.id.get_create_plist().get_sizes()
    head = obj_head = 8 + size_len
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = data.find(b"GCOL")
        while pos >= 0:
            if data[pos + 4] == 1 and pos + head <= len(data):
                end = min(pos + int.from_bytes(data[pos + 8:pos + head], "little"), len(data))
                p = pos + head
                while p + obj_head <= end:
                    index = int.from_bytes(data[p:p + 2], "little")
                    size = int.from_bytes(data[p + 8:p + obj_head], "little")
                    step = size if index == 0 else obj_head + (size + 7) // 8 * 8
                    # 0 never advances; a step of 2**63 or more wraps HDF5's pointer back.
                    if step == 0 or step >= 2 ** 63:
                        raise file_error(path, "the HDF5 file is damaged (a global heap object of impossible size)",
                                         "a readable xraynet model file",
                                         f"object {index} of size {size} in the heap at byte {pos}",
                                         "Copy the file again or save the model again")
                    p += step
            pos = data.find(b"GCOL", pos + 4)


def guarded(path: Path, read):
    """Run ``read(h5file)``; low-level failures inside a file that opened are damage."""
    check_signature(path)
    f = open_file(path)
    try:
        with f:
            check_global_heaps(path, f)
            return read(f)
    except XraynetError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise file_error(path, f"the HDF5 file is damaged ({type(e).__name__}: {e})", "a readable xraynet model file",
                         "data HDF5 cannot read", "Copy the file again or save the model again") from None


def check_backed(path, ds, name: str) -> None:
    """Refuse a dataset whose declared size its storage in this file cannot back
    (see the docstring of xraynet.modelfile), before anything reads it."""
    if ds.external or ds.is_virtual:
        raise file_error(path, f"dataset {name!r} keeps its data outside this file",
                         "arrays stored in the model file itself",
                         "external storage" if ds.external else "a virtual dataset", RESAVE)
    declared = ds.size * ds.dtype.itemsize if ds.shape is not None else 0
    stored = ds.id.get_storage_size()
    if declared > MAX_COMPRESSION * stored + SLACK_BYTES:
        raise file_error(path, f"dataset {name!r} declares more data than the file holds",
                         f"at most {MAX_COMPRESSION} x its {stored:,} stored bytes",
                         f"shape {ds.shape} of {ds.dtype} ({declared:,} bytes)", RESAVE)


def vlen_claim(path, ds) -> int | None:
    """The byte length a scalar variable-length string dataset says its value
    has, read from the file without HDF5; None where it has no contiguous data.

    HDF5 keeps such a value as a 4-byte little-endian length and a global heap
    ID in the dataset's raw data (HDF5 file format specification, "Variable-length
    data"). HDF5 2.0 allocates and clears that many bytes before it checks them
    against the heap, so one damaged length would cost up to 4 GiB.
    """
    offset = ds.id.get_offset()
    if offset is None:
        return None
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(4)
    return int.from_bytes(raw, "little") if len(raw) == 4 else None


class _SizingBackend:
    """Stands in for the compute backend while an architecture is sized: every
    array it hands out is a zero-stride placeholder (no memory), and it stops
    as soon as the arrays asked for outgrow ``budget`` values."""

    name = "sizing"

    class Exceeded(Exception):
        pass

    def __init__(self, budget: int):
        self.left = budget

    def _array(self, shape, dtype):
        self.left -= math.prod(int(d) for d in shape)
        if self.left < 0:
            raise self.Exceeded
        return np.broadcast_to(np.zeros((), dtype), tuple(shape))

    def random_normal(self, rng, shape, std, dtype):
        return self._array(shape, dtype)

    def zeros(self, shape, dtype):
        return self._array(shape, dtype)

    def asarray(self, a, dtype):
        return self._array(np.shape(a), dtype)

    def rng(self, seed):
        return None


def check_architecture_size(path, spec: dict, stored: int) -> None:
    """Size the architecture on placeholders before it is built, so that a
    damaged size in the spec cannot make building the model allocate gigabytes.

    A valid file's architecture needs exactly the values /weights stores; the
    budget is twice that plus 2**20, so a file that lacks a few arrays still
    gets the weight check's detailed list of what is missing."""
    from ..model import Model

    budget = 2 * stored + 2 ** 20
    # Batch norm makes its ones with NumPy, from the channel count, before the
    # backend sees them; every layer with parameters has at least as many
    # values as input channels, so more channels than the budget cannot fit.
    channels = spec["input_shape"][0]
    try:
        if channels > budget:
            raise _SizingBackend.Exceeded
        Model(spec, device=_SizingBackend(budget))
    except _SizingBackend.Exceeded:
        raise file_error(path, "the stored architecture is far larger than the stored weights",
                         f"an architecture needing about the {stored:,} values /weights holds",
                         f"architecture {spec.get('name', '')!r} (input_shape {spec['input_shape']}) needing over "
                         f"{budget:,}", RESAVE) from None
    except SpecError as e:
        raise ModelFileError(f"{path}: the stored architecture cannot be built: {e}") from None
    except (ArithmeticError, ValueError) as e:
        # Sizes near 2**63 overflow the layers' shape arithmetic (NumPy integers wrap).
        raise file_error(path, f"the stored architecture's sizes cannot be computed ({type(e).__name__}: {e})",
                         "an architecture with sizes of a real network", f"input_shape {spec['input_shape']}",
                         RESAVE) from None
