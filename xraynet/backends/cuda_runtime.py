"""What the GPU backend needs from CuPy besides its arrays: the module itself,
compiling the kernel source (``cupy.RawModule``), CUDA events for timing, and
a device random generator.

With :mod:`xraynet.devices` this is the only module that imports CuPy, always
inside a function, so ``import xraynet`` and every CPU run work without it.
"""
from __future__ import annotations

import numpy as np


def cupy_module():
    """The ``cupy`` module (ImportError where CuPy is not installed)."""
    import cupy

    return cupy


def cupy_compile(source: str, options):
    """A compiled module of ``source`` (CuPy caches the binary on disk), in the
    form the loader expects of a ``compile_fn``: ``get_function(name)`` gives
    ``launch(grid, block, args)``."""
    import cupy

    return _CupyModule(cupy.RawModule(code=source, options=options))


class _CupyModule:
    def __init__(self, mod):
        self.mod = mod

    def get_function(self, name):
        fn = self.mod.get_function(name)

        def launch(grid, block, args):
            fn(grid, block, args)
        return launch


class CudaEvent:
    """A CUDA event recorded on the current stream when made; ``elapsed_ms(stop)``."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.ev = cupy.cuda.Event()
        self.ev.record()

    def elapsed_ms(self, stop: "CudaEvent") -> float:
        return self.cupy.cuda.get_elapsed_time(self.ev, stop.ev)


class DeviceRNG:
    """Uniform draws on the device for dropout masks (CuPy's legacy cuRAND
    generator: unlike the XORWOW Generator it has no cap on draws per call)."""

    def __init__(self, xp, seed):
        state = np.random.SeedSequence(seed).generate_state(2, np.uint32)
        self.rs = xp.random.RandomState(int(state[0]) << 31 ^ int(state[1]))

    def random(self, shape):
        return self.rs.random_sample(shape, dtype=np.float32)


def time_with_events(step, n: int, synchronize) -> list[float]:
    """Seconds per call of ``n`` calls of ``step``, timed the way PyTorch's CUDA
    benchmark times itself (../shared/bench/torch_reference.py): a CUDA event
    between calls and one synchronise at the end, so time the GPU spends
    waiting for the host counts, and the host never waits per call."""
    import cupy

    events = [cupy.cuda.Event() for _ in range(n + 1)]
    synchronize()
    events[0].record()
    for i in range(n):
        step()
        events[i + 1].record()
    events[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(events[i], events[i + 1]) / 1e3 for i in range(n)]
