"""Shared fixtures: ``backend`` runs one test body per compute backend:

* ``cpu``: NumPy + Numba;
* ``gpu-emu``: the GPU backend's code and CUDA C kernels on NumPy arrays, the
  kernels compiled by g++ and run by the CPU emulator in tests/cudaemu (every
  kernel argument checked against its declared C type);
* ``gpu``: the GPU backend on a real CUDA device (skips with the reason where
  there is none), arguments checked too.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from xraynet.backend import get_backend


@functools.lru_cache(maxsize=None)
def emulated_gpu_backend():
    """The GPU backend on NumPy arrays with emulated kernels; grids capped at 4
    blocks (the kernels loop grid-stride) so emulation stays quick."""
    from cudaemu import compiler
    from xraynet.gpu_backend import CUDABackend

    if compiler() is None:
        pytest.skip("backend 'gpu-emu' needs a C++ compiler (g++) on PATH to build the CUDA emulator")
    from cudaemu import compile_module

    return CUDABackend(xp=np, compile_fn=compile_module, checked=True, max_blocks=4)


@functools.lru_cache(maxsize=None)
def real_gpu_backend():
    from xraynet.devices import gpu_unavailable_reason
    from xraynet.gpu_backend import CUDABackend

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend 'gpu' unavailable here: {reason}")
    return CUDABackend(checked=True)


def make_backend(name: str):
    if name == "cpu":
        return get_backend("cpu")
    if name == "gpu-emu":
        return emulated_gpu_backend()
    return real_gpu_backend()


BACKENDS = ["cpu", "gpu-emu", pytest.param("gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return make_backend(request.param)
