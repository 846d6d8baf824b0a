"""Which compute device to run on: ``auto``, ``cpu`` or ``gpu``.

``gpu`` is the CuPy backend (``xraynet.backends.gpu``): it needs CuPy and a
CUDA device. Nothing here imports CuPy unless a GPU is asked about, so
``import xraynet`` and every CPU run work without it.
"""
from __future__ import annotations

import functools

DEVICES = ("auto", "cpu", "gpu")
INSTALL_HINT = ('install CuPy for your CUDA version: pip install "xraynet[gpu]" (CUDA 12) '
                'or pip install "xraynet[gpu-cuda13]" (CUDA 13)')


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason() -> str | None:
    """None when the GPU backend can run here, else why not (one sentence)."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    except Exception as e:  # a broken CuPy install raises all sorts of things on import
        return f"CuPy failed to import ({type(e).__name__}: {e})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device, driver too old
        return f"CuPy found no usable CUDA device ({e})"
    if count == 0:
        return "CuPy found no CUDA device"
    return None


def normalise(device: str) -> str:
    """Map a user's device name to 'auto', 'cpu' or 'gpu' ('cuda' is taken as 'gpu')."""
    from .errors import BackendError

    name = str(device).strip().lower()
    if name == "cuda":
        return "gpu"
    if name not in DEVICES:
        raise BackendError(f"device {device!r}: unknown. Expected one of {', '.join(DEVICES)}, got {device!r}. "
                           "Pick one of those.")
    return name


def resolve_device(device: str) -> str:
    """'auto' becomes 'gpu' where CuPy and a CUDA device are present, else 'cpu';
    'cpu' and 'gpu' are returned as they are (whether a GPU is really there is
    checked when the backend is made)."""
    name = normalise(device)
    if name == "auto":
        return "gpu" if gpu_unavailable_reason() is None else "cpu"
    return name


def auto_notice(device: str) -> str | None:
    """The one-line notice for ``--device auto`` falling back to the CPU, else None."""
    if normalise(device) != "auto":
        return None
    reason = gpu_unavailable_reason()
    return None if reason is None else f"--device auto: running on the CPU ({reason})."


def device_info() -> dict:
    """What ``xraynet info`` reports: versions, the backend 'auto' picks, and the GPU stack.

    Keys: ``xraynet``, ``python``, ``numpy``, ``numba``, the processor
    (``cpu_model``, ``cpu_target``, ``cpu_simd``, ``cpu_cores``, ``blas``,
    ``machine_kind``: :func:`xraynet.backends.host.cpu_description`), ``auto_device``
    ('cpu' or 'gpu'), ``gpu_available``, ``cupy`` (version, or None when CuPy
    does not import); without a usable GPU ``gpu_unavailable_reason`` and
    ``install_hint``; with one ``device_id``, ``device_name``,
    ``compute_capability``, ``memory_gib``, ``cuda_runtime``, ``cuda_driver``.
    """
    import platform

    import numba
    import numpy as np

    from . import __version__
    from .backends.host import cpu_description

    info = {"xraynet": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, **cpu_description(), "auto_device": resolve_device("auto")}
    reason = gpu_unavailable_reason()
    info["gpu_available"] = reason is None
    if reason is not None:
        info["gpu_unavailable_reason"] = reason
        info["install_hint"] = INSTALL_HINT
        try:
            import cupy
            info["cupy"] = cupy.__version__
        except Exception:
            info["cupy"] = None
        return info
    import cupy

    rt = cupy.cuda.runtime
    dev = cupy.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"]
    info.update({
        "cupy": cupy.__version__,
        "device_id": dev.id,
        "device_name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "cuda_runtime": _cuda_version(rt.runtimeGetVersion()),
        "cuda_driver": _cuda_version(rt.driverGetVersion()),
    })
    return info


def _cuda_version(v: int) -> str:
    """CUDA encodes versions as 1000*major + 10*minor."""
    return f"{v // 1000}.{(v % 1000) // 10}"
