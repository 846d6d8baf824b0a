"""Run xraynet's CUDA C kernels on the CPU: the same source, compiled by g++
with ``cudaemu.h`` (fibers for CUDA threads, see there), launched through
ctypes. ``compile_module`` has the signature ``KernelSet`` expects of a
compiler, so ``CUDABackend(xp=numpy, compile_fn=compile_module)`` is the GPU
backend's code, kernels and all, running on NumPy arrays.

What this does not show: speed, and behaviour that only real hardware has
(warp scheduling, memory-model races between blocks). The GPU tests, run by
benchmarks/gpu_check.sh on a CUDA machine, cover those.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from xraynet.backends.cudakernels import C_TYPES, kernel_suffix, parse_signatures

HEADER = Path(__file__).with_name("cudaemu.h")
_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int,
           np.int64: ctypes.c_longlong, np.uint8: ctypes.c_ubyte, np.uint64: ctypes.c_ulonglong}


class EmulatorError(RuntimeError):
    pass


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _wrappers(signatures, suffix) -> str:
    lines = []
    for base, params in signatures.items():
        name = base + suffix
        decl = ", ".join(f"{p.ctype}{'*' if p.pointer else ''} {p.name}" for p in params)
        call = ", ".join(p.name for p in params)
        lines.append(
            f'extern "C" int xr_emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f'unsigned bz{", " + decl if decl else ""}) {{\n'
            f"    return cudaemu::run(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, [&] {{ {name}({call}); }});\n}}")
    return "\n".join(lines) + "\n"


def compile_module(source: str, options) -> "EmuModule":
    """Build (or reuse from the temp folder) the emulated module of ``source``."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("no C++ compiler (g++) on PATH: the CUDA emulator needs one")
    signatures = parse_signatures(source)
    real = np.float64 if "-DXR_REAL=double" in options else np.float32
    suffix = kernel_suffix(real)
    text = source + "\n" + _wrappers(signatures, suffix)
    key = hashlib.sha256((text + "\0".join(options) + HEADER.read_text()).encode()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"xraynet-cudaemu-{key}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "module.cpp"
            src.write_text(text)
            out = Path(tmp) / "module.so"
            cmd = [cxx, "-O2", "-shared", "-fPIC", *options, "-include", str(HEADER), str(src), "-o", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise EmulatorError(f"g++ failed on the CUDA kernels:\n{r.stderr[-4000:]}")
            os.replace(out, lib)
    return EmuModule(ctypes.CDLL(str(lib)), signatures, real, suffix)


class EmuModule:
    def __init__(self, lib, signatures, real, suffix):
        self.lib, self.signatures, self.real, self.suffix = lib, signatures, real, suffix

    def get_function(self, name: str):
        fn = getattr(self.lib, f"xr_emu_{name}")
        params = self.signatures[name[:-len(self.suffix)]]
        types = [ctypes.c_uint] * 6
        for p in params:
            types.append(ctypes.c_void_p if p.pointer else
                         _CTYPES[self.real if p.ctype == "real" else C_TYPES[p.ctype]])
        fn.argtypes, fn.restype = types, ctypes.c_int

        def launch(grid, block, args):
            g = (tuple(grid) + (1, 1, 1))[:3]
            b = (tuple(block) + (1, 1, 1))[:3]
            conv = []
            for p, a in zip(params, args):
                if p.pointer:
                    if not isinstance(a, np.ndarray):
                        raise EmulatorError(f"kernel {name}: argument {p.name} must be a NumPy array here")
                    conv.append(a.ctypes.data)
                else:
                    conv.append(a.item() if hasattr(a, "item") else a)
            if fn(*g, *b, *conv) != 0:
                raise EmulatorError(f"kernel {name}: divergent __syncthreads (see stderr)")

        return launch
