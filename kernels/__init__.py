"""Compute kernels of xraynet (installed as ``xraynet.kernels``).

* ``reference`` -- plain NumPy versions of every kernel; their docstrings are
  the spec (layout, shapes, padding/stride semantics) and the tests compare the
  fast kernels against them.
* ``cpu`` -- the Numba kernels the CPU backend runs.
* ``cuda/`` -- CUDA sources for the GPU backend.

One op, one name: a Numba kernel and a CUDA entry point carry the name of
their reference and take its arrays in the same order, outputs first (the
reference returns those), then inputs, then the scalars (a CUDA kernel adds
the sizes it indexes with). A different layout is a different name:
patch matrices with columns ordered (ky, kx, c) are ``im2col_yxc`` (CPU),
ordered (c, ky, kx) ``im2col_cyx`` (GPU).

Internal activations are NHWC (batch, height, width, channels): a channel
vector is contiguous, so im2col copies whole runs and pooling vectorises over
channels. Weights keep PyTorch's layout (conv ``(O, C, KH, KW)``, dense
``(out, in)``) so model files and the PyTorch cross-checks read naturally.
"""
