"""Compute backends: the contract every backend implements, and the registry
that hands them out.

* :mod:`.contract` -- :class:`Backend`, the op list with shapes, dtypes and
  semantics; layers, model, optimisers and the benchmark call nothing else.
* :mod:`.geometry` -- output sizes and padding of convolution and pooling.
* :mod:`.cpu` -- ``CPUBackend``: NumPy, the Numba kernels, BLAS. Name 'cpu'.
* :mod:`.gpu` -- ``CUDABackend``: CuPy, the CUDA C kernels (loaded by
  :mod:`.cudakernels`), cuBLAS. Name 'gpu'. The tests also run it on NumPy
  arrays with the kernels emulated on the CPU
  (``CUDABackend(xp=numpy, compile_fn=cudaemu.compile_module)``, tests/cudaemu);
  that backend is named 'gpu' as well.

``get_backend(device)`` returns the backend for a device name, made once per
process; callers never need to know which one they hold.
"""
from __future__ import annotations

import functools

from ..errors import BackendError
from .contract import CONTRACT_ATTRIBUTES, CONTRACT_OPS, AdamHyper, Array, Backend, BatchNormStats, SGDHyper

__all__ = ["AdamHyper", "Array", "BACKEND_NAMES", "Backend", "BatchNormStats", "CONTRACT_ATTRIBUTES", "CONTRACT_OPS",
           "SGDHyper", "backend_class", "get_backend"]

#: The registered backend names; each class is imported on first use (the CPU
#: one loads Numba, the GPU one needs CuPy).
BACKEND_NAMES = ("cpu", "gpu")


def backend_class(name: str) -> type:
    """The class registered as ``name`` ('cpu' or 'gpu'); BackendError for another name."""
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend
    if name == "gpu":
        from .gpu import CUDABackend

        return CUDABackend
    raise BackendError(f"backend {name!r}: unknown. Expected one of {', '.join(BACKEND_NAMES)}, got {name!r}. "
                       "Pick one of those.")


def get_backend(name: str = "cpu") -> Backend:
    """The backend for device ``name`` ('cpu', 'gpu' or 'auto'; 'cuda' means
    'gpu'), created once per process. 'auto' picks the GPU where CuPy and a
    CUDA device are present, else the CPU. A GPU that cannot be used is a
    BackendError saying why and what to install."""
    from ..devices import resolve_device

    return _make_backend(resolve_device(name))


@functools.lru_cache(maxsize=None)
def _make_backend(device: str) -> Backend:
    from ..devices import INSTALL_HINT, gpu_unavailable_reason

    if device == "gpu":
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise BackendError(f"device 'gpu': {reason}. To use a GPU, {INSTALL_HINT}; "
                               "or run on the CPU with --device cpu.")
    return backend_class(device)()
