"""Loading and launching the CUDA C kernels in ``kernels/cuda``.

The ``.cu`` files are joined into one translation unit per precision (``real``
is float or double), with ``#line`` markers so a compiler message names the
file and line it came from. Each entry point's signature is read from the
source (they are written ``XR_KERNEL(name)(...)``: ``extern "C"``, with the
precision appended to the name), and every launch converts its scalars to exactly the C type
declared there (CuPy would pass a Python int as a 64-bit integer whatever the
kernel expects). With ``checked`` on, array arguments are also checked against
the declared element type and for C-contiguity before the launch: the tests
run that way; production launches skip it, since a `seed` training step is
launch-bound and every microsecond of Python counts.

Every entry point takes its array arguments first (outputs, then inputs) and
its scalars after them; the loader refuses a kernel that mixes the two, and
a launch joins the converted scalars to the pointers by slicing.

Nothing here imports CuPy: ``compile_fn`` builds a module from the source (a
``cupy.RawModule`` on a GPU, the CPU emulator in the tests), and the returned
module only needs ``get_function(name)`` returning ``f(grid, block, args)``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KernelError

#: Kernel sources, in the order they are joined (common.cuh comes first).
SOURCES = ("conv.cu", "pool.cu", "elementwise.cu", "reduce.cu", "norm.cu", "loss.cu", "optim.cu")
COMMON = "common.cuh"
THREADS = 256
_BLOCK = (THREADS,)

_KERNEL_RE = re.compile(r'XR_KERNEL\((\w+)\)\s*\(([^)]*)\)', re.S)
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"common\.cuh"\s*$', re.M)
#: C type of a kernel parameter -> the NumPy scalar type a launch passes for it
C_TYPES = {"double": np.float64, "float": np.float32, "int": np.int32, "long long": np.int64,
            "unsigned char": np.uint8, "unsigned long long": np.uint64}


def source_dir() -> Path:
    """The folder of the installed ``.cu`` files."""
    import xraynet.kernels

    return Path(xraynet.kernels.__file__).resolve().parent / "cuda"


def module_source(directory: Path | None = None) -> str:
    """All kernels as one CUDA C source, each file behind a ``#line`` marker."""
    d = directory or source_dir()
    common = (d / COMMON).read_text().replace("#pragma once", "")
    parts = [f'#line 1 "{COMMON}"', common]
    for name in SOURCES:
        text = _INCLUDE_RE.sub("", (d / name).read_text())  # keeps the line count: markers stay true
        parts += [f'#line 1 "{name}"', text]
    return "\n".join(parts)


_PRECISIONS = {np.dtype(np.float32): ("float", "_f32"), np.dtype(np.float64): ("double", "_f64")}


def kernel_suffix(dtype) -> str:
    """The precision suffix of entry-point names: im2col_cyx_f32, im2col_cyx_f64."""
    return _PRECISIONS[np.dtype(dtype)][1]


def compile_options(dtype) -> tuple[str, ...]:
    """Compiler options for the module of ``dtype`` (float32 or float64)."""
    real, suffix = _PRECISIONS[np.dtype(dtype)]
    return (f"-DXR_REAL={real}", f"-DXR_SUFFIX={suffix}", "-std=c++17")


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str          # base C type: 'real', 'int', 'long long', ...
    pointer: bool


def parse_signatures(source: str) -> dict[str, tuple[Param, ...]]:
    """``{kernel name: parameters}`` of every ``XR_KERNEL(name)(...)`` entry point
    (names without the precision suffix).

    Raises KernelError for a parameter of a type the launcher cannot pass, or
    an array parameter after a scalar one (arrays come first: outputs, inputs)."""
    out = {}
    for name, params in _KERNEL_RE.findall(source):
        parsed = []
        for raw in params.split(","):
            words = raw.replace("*", " * ").split()
            pointer = "*" in words
            words = [w for w in words if w not in ("const", "__restrict__", "*")]
            if len(words) < 2:
                raise KernelError(f"kernel {name}: cannot read parameter {raw.strip()!r}")
            ctype = " ".join(words[:-1])
            if ctype != "real" and ctype not in C_TYPES:
                raise KernelError(f"kernel {name}: parameter {raw.strip()!r} has a type the launcher does not know")
            if pointer and parsed and not parsed[-1].pointer:
                raise KernelError(f"kernel {name}: array parameter {words[-1]} follows a scalar. Expected the "
                                  "arrays first (outputs, then inputs), then the scalars. Reorder the parameters.")
            parsed.append(Param(words[-1], ctype, pointer))
        out[name] = tuple(parsed)
    return out


class Kernel:
    """One kernel: call ``k(grid, block, *args)`` or ``k.launch(total, *args)``.

    A call costs Python time on every launch, and a `seed` training step is
    a few dozen launches of a few microseconds of GPU work each, so the call
    path is kept short: the scalars' C-type conversion is memoised (a step
    passes the same shapes every time), and since all pointers come first
    the arguments are joined by slicing. Measured with a no-op launcher
    (benchmarks/test_launch_bench.py): im2col, 14 arguments, 8.8 -> 2.6 us
    per call; the ReLU, 3 arguments, 2.7 -> 2.4 us.
    """

    def __init__(self, name, params, fn, dtype, checked, max_blocks, profiler):
        self.name, self.params, self._fn = name, params, fn
        self.dtype = np.dtype(dtype)
        self.checked, self.max_blocks, self._profiler = checked, max_blocks, profiler
        self._nargs = len(params)
        #: the pointers come first (parse_signatures sees to it); the scalars follow
        self._n_ptr = sum(p.pointer for p in params)
        self._casts = tuple(np.dtype(self.dtype if p.ctype == "real" else C_TYPES[p.ctype]).type
                            for p in params[self._n_ptr:])
        self._converted: dict = {}

    def _convert(self, values: tuple) -> tuple:
        out = self._converted.get(values)
        if out is None:
            out = tuple(cast(v) for cast, v in zip(self._casts, values))
            if len(self._converted) >= 1024:  # per-step values (Adam's bias corrections) must not pile up
                self._converted.clear()
            self._converted[values] = out
        return out

    def __call__(self, grid, block, *args):
        if len(args) != self._nargs:
            raise KernelError(f"kernel {self.name}: {len(args)} arguments. Expected {len(self.params)} "
                              f"({', '.join(p.name for p in self.params)}).")
        n = self._n_ptr
        args = args[:n] + self._convert(args[n:])
        if self.checked:
            self._check(args)
        if self._profiler is None:
            self._fn(grid, block, args)
        else:
            with self._profiler.timing(self.name):
                self._fn(grid, block, args)

    def launch(self, total: int, *args):
        """Launch enough 256-thread blocks for ``total`` grid-stride items (capped)."""
        blocks = min(max((total + THREADS - 1) // THREADS, 1), self.max_blocks)
        self((blocks,), _BLOCK, *args)

    def _check(self, args):
        for p, a in zip(self.params, args):
            if not p.pointer:
                continue
            want = np.dtype(self.dtype if p.ctype == "real" else C_TYPES[p.ctype])
            dt = getattr(a, "dtype", None)
            if dt is None or not hasattr(a, "flags"):
                raise KernelError(f"kernel {self.name}: argument {p.name} is {type(a).__name__}. "
                                  f"Expected an array of {want}.")
            if np.dtype(dt) != want:
                raise KernelError(f"kernel {self.name}: argument {p.name} has dtype {dt}. Expected {want}.")
            if not a.flags.c_contiguous:
                raise KernelError(f"kernel {self.name}: argument {p.name} is not C-contiguous. "
                                  "Pass a contiguous array (the kernels index flat memory).")


class Profiler:
    """Per-kernel device time. ``event`` makes a start/stop marker pair (CUDA
    events on a GPU); without it the wall clock is used (the emulator)."""

    def __init__(self, event=None, synchronize=None):
        self._event, self._sync = event, synchronize
        self.records: list[tuple[str, object, object]] = []

    def timing(self, name):
        return _Timing(self, name)

    def totals(self) -> dict[str, tuple[float, int]]:
        """``{name: (milliseconds, launches)}`` over every launch recorded so far."""
        if self._sync is not None:
            self._sync()
        out: dict[str, list] = {}
        for name, start, stop in self.records:
            ms = start.elapsed_ms(stop) if hasattr(start, "elapsed_ms") else (stop - start) * 1e3
            acc = out.setdefault(name, [0.0, 0])
            acc[0] += ms
            acc[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def clear(self) -> None:
        self.records.clear()


class _Timing:
    def __init__(self, prof, name):
        self.prof, self.name = prof, name

    def __enter__(self):
        self.start = self.prof._event() if self.prof._event else time.perf_counter()
        return self

    def __exit__(self, *exc):
        stop = self.prof._event() if self.prof._event else time.perf_counter()
        self.prof.records.append((self.name, self.start, stop))
        return False


class KernelSet:
    """Every kernel of one precision, as attributes: ``ks.im2col_cyx(grid, block, ...)``."""

    def __init__(self, dtype, compile_fn, checked=False, max_blocks=1 << 16, profiler=None, source=None):
        self.dtype = np.dtype(dtype)
        self.source = source if source is not None else module_source()
        self.signatures = parse_signatures(self.source)
        self.module = compile_fn(self.source, compile_options(self.dtype))
        suffix = kernel_suffix(self.dtype)
        self._kernels = {name: Kernel(name + suffix, params, self.module.get_function(name + suffix), self.dtype,
                                      checked, max_blocks, profiler)
                         for name, params in self.signatures.items()}

    def __getattr__(self, name):
        try:
            return self.__dict__["_kernels"][name]
        except KeyError:
            raise AttributeError(f"no CUDA kernel named {name!r}") from None
