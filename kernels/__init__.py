"""Compute kernels of xraynet (installed as ``xraynet.kernels``).

* ``reference`` -- plain NumPy versions of every op; their docstrings are the
  spec (layout, shapes, padding/stride semantics) and the tests compare the
  fast kernels against them.
* ``cpu`` -- the Numba kernels the CPU backend runs.
* ``cuda/`` -- CUDA sources for the GPU backend.

Internal activations are NHWC (batch, height, width, channels): a channel
vector is contiguous, so im2col copies whole runs and pooling vectorises over
channels. Weights keep PyTorch's layout (conv ``(O, C, KH, KW)``, dense
``(out, in)``) so model files and the PyTorch cross-checks read naturally.
"""
