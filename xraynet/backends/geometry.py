"""Output sizes and padding of convolution and pooling: the one place the
formula is written.

Floor mode, symmetric zero padding, as in PyTorch: along one axis an input of
``size`` gives ``(size + 2*pad - kernel) // stride + 1`` outputs. Layers size
their outputs with it, backends allocate with it, the NumPy references slice
with it, and the Numba kernels compile :func:`output_size` itself (so it stays
plain integer arithmetic that Numba can type).

Nothing here imports NumPy or a backend: layers and kernels both use it.
"""
from __future__ import annotations

from ..errors import ShapeError, SpecError


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution or pooling along one axis (floor mode).

    ``size``: input length; ``kernel``, ``stride`` (>= 1), ``pad`` (zeros on
    each side). Zero or negative when the window does not fit."""
    return (size + 2 * pad - kernel) // stride + 1


def output_hw(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
              pad: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """(OH, OW) of a window ``kernel`` moved by ``stride`` over an ``h`` x ``w``
    map padded by ``pad``; pooling passes no padding."""
    return output_size(h, kernel[0], stride[0], pad[0]), output_size(w, kernel[1], stride[1], pad[1])


def conv_output_shape(x_shape: tuple, w_shape: tuple, stride: tuple[int, int],
                      pad: tuple[int, int]) -> tuple[int, int]:
    """(OH, OW) of a convolution of an NHWC batch of ``x_shape`` (N, H, W, C)
    with weights of ``w_shape`` (O, C, KH, KW).

    Raises ShapeError when the input's channel count is not the weights' C."""
    _, h, wd, c = x_shape
    _, c2, kh, kw = w_shape
    if c2 != c:
        raise ShapeError(f"conv2d: input has {c} channels. Expected {c2}, got {c}. Check the layer spec.")
    return output_hw(h, wd, (kh, kw), stride, pad)


def resolve_padding(padding, kernel_size: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Turn a ``padding`` spec into a ``(ph, pw)`` pair of non-negative ints.

    ``padding``: 'valid' (0), 'same' (stride 1 and odd kernels only: k // 2),
    a non-negative int, or a pair of them. Anything else is a SpecError."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1) or kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
            raise SpecError(
                f"padding 'same': only defined here for stride 1 and odd kernels. "
                f"Expected stride (1, 1) and an odd kernel_size, got stride {stride}, kernel_size {kernel_size}. "
                "Give the padding as an integer instead."
            )
        return (kernel_size[0] // 2, kernel_size[1] // 2)
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return (padding, padding)
    if (isinstance(padding, (list, tuple)) and len(padding) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding)):
        return (padding[0], padding[1])
    raise SpecError(
        f"padding: not understood. Expected 'valid', 'same', a non-negative integer or a pair of them, "
        f"got {padding!r}. Fix the layer spec."
    )
