"""Host time of one GPU kernel launch through xraynet.backends.cudakernels, without
the launch itself (a no-op launcher stands in for CuPy): the part of a
launch-bound `seed` training step that xraynet's own Python adds on top of
CuPy's. Runs anywhere; no GPU needed.

    pytest benchmarks/test_launch_bench.py --benchmark-enable
"""
import numpy as np
import pytest

from xraynet.backends.cudakernels import KernelSet


class _NoOpModule:
    def __init__(self):
        self.calls = 0

    def get_function(self, name):
        def launch(grid, block, args):
            self.calls += 1
        return launch


@pytest.fixture(scope="module")
def kernels():
    mod = _NoOpModule()
    return KernelSet(np.float32, lambda source, options: mod), mod


def test_launch_im2col_14_args(benchmark, kernels):
    ks, mod = kernels
    x, cols = np.zeros(10, np.float32), np.zeros(10, np.float32)
    before = mod.calls
    benchmark(ks.im2col_cyx.launch, 1000, cols, x, 7, 6, 3, 3, 3, 1, 1, 1, 1, 5, 4, 1000)
    assert mod.calls > before


def test_launch_relu_3_args(benchmark, kernels):
    ks, _ = kernels
    x, y = np.zeros(10, np.float32), np.zeros(10, np.float32)
    benchmark(ks.relu_forward.launch, 1000, y, x, 1000)


def test_launch_2d_grid_10_args(benchmark, kernels):
    ks, _ = kernels
    x, part = np.zeros(10, np.float32), np.zeros(10, np.float64)
    benchmark(ks.channel_reduce_partial, (2, 3), (32, 8), part, x, x, x, part, 0, 1000, 40, 334, 0)
