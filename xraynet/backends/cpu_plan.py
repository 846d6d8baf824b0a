"""Blocks of the CPU backend's convolutions (:mod:`.cpu_conv`): the plan that
cuts a convolution's output rows into blocks, the lanes that make the weight
gradient's sum independent of the threads, and a worker's scratch buffers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .geometry import conv_output_shape

#: Lanes of the weight-gradient sum (see the module docstring): a fixed number,
#: so that dW is the same float32 sum whatever the thread count.
LANES = 16


@dataclass(frozen=True)
class ConvPlan:
    """Geometry of one convolution and its blocks.

    ``rows``: output rows computed (OH, or fewer when a tiling pool drops the
    last ones); ``step``: blocks hold a multiple of this many rows (the pool's
    height, else 1); ``r``: output rows per block, ``nb``: images per block
    (``nb > 1`` only when ``r == rows``: then a block is ``nb`` whole images)."""

    n: int
    h: int
    w: int
    c: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    oh: int
    ow: int
    rows: int
    step: int
    r: int
    nb: int

    @property
    def k(self) -> int:
        """Patch length KH*KW*C: the GEMM's inner dimension."""
        return self.kh * self.kw * self.c

    def window_rows(self, r: int) -> int:
        """Input rows (padded) that ``r`` output rows read."""
        return (r - 1) * self.sh + self.kh

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Forward work units ``(b0, nb, oy0, r)`` in output order."""
        return [(b0, min(self.nb, self.n - b0), oy0, min(self.r, self.rows - oy0))
                for b0 in range(0, self.n, self.nb) for oy0 in range(0, self.rows, self.r)]

    def groups(self) -> list[tuple[int, int]]:
        """Backward work units ``(b0, nb)``: whole images, in order."""
        return [(b0, min(self.nb, self.n - b0)) for b0 in range(0, self.n, self.nb)]


def make_plan(x_shape, w_shape, stride, pad, block_bytes: int, itemsize: int, pool_rows: int = 0) -> ConvPlan:
    """The blocks of a convolution of ``x_shape`` (N, H, W, C) by ``w_shape``
    (O, C, KH, KW). ``pool_rows`` > 0: a tiling pool of that height follows, so
    blocks hold whole pool rows and only the rows it reads are computed."""
    n, h, w, c = x_shape
    o, _, kh, kw = w_shape
    oh, ow = conv_output_shape(x_shape, w_shape, stride, pad)
    step = max(1, pool_rows)
    plan = ConvPlan(n, h, w, c, o, kh, kw, stride[0], stride[1], pad[0], pad[1], oh, ow, oh // step * step, step, 1, 1)
    return resize_plan(plan, block_bytes, itemsize)


def resize_plan(p: ConvPlan, block_bytes: int, itemsize: int) -> ConvPlan:
    """``p`` with blocks of about ``block_bytes`` of patch matrix."""
    m_target = max(1, block_bytes // (p.k * itemsize))
    if p.rows * p.ow <= m_target:
        r, nb = p.rows, max(1, min(p.n, m_target // max(1, p.rows * p.ow)))
    else:
        r, nb = min(p.rows, max(p.step, m_target // p.ow // p.step * p.step)), 1
    return dataclasses.replace(p, r=max(r, 1), nb=nb)


def lanes_of(groups: list, lanes: int = LANES) -> list[list]:
    """``groups`` dealt, in order, to at most ``lanes`` lanes of consecutive groups."""
    n = min(lanes, len(groups))
    return [groups[i * len(groups) // n:(i + 1) * len(groups) // n] for i in range(n)]


def claim(counter, n: int):
    """Indices from the shared ``counter`` until it passes ``n``: each index goes
    to exactly one worker (``next`` on itertools.count is atomic under the GIL)."""
    while (i := next(counter)) < n:
        yield i


class Scratch:
    """One worker's buffers, grown on demand; ``view`` hands out C-contiguous
    arrays of any shape that fits (the kernels need contiguous arrays)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._flat: dict[str, np.ndarray] = {}

    def view(self, name: str, shape) -> np.ndarray:
        size = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.size < size:
            buf = self._flat[name] = np.empty(size, self.dtype)
        return buf[:size].reshape(shape)
