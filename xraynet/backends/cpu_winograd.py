"""Winograd F(2x2, 3x3) and F(4x4, 3x3) for the CPU backend's 3x3 stride-1
convolutions (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016).

A 2x2 output tile is ``A^T [(G g G^T) . (B^T d B)] A`` of its 4x4 input tile
d: per tile and channel pair 16 multiplies instead of 36, so the convolution
becomes 16 GEMMs (tiles x C) @ (C x O), 2.25x fewer FLOPs than the patch
matrix's GEMM. On the 2-core EPYC the `wide` convolutions 2-5 ran 1.35-1.55x
faster forward (one core, CPU time, whole fused stage); the transforms
(kernels.cpu_blocks.winograd_*) are additions only. Forward and the input
gradient use it; the weight gradient stays a patch-matrix GEMM (see
:meth:`WinogradConv.backward_winograd` for why).

Evaluation (a forward that keeps nothing for backward) runs F(4x4, 3x3)
instead (:meth:`WinogradConv.forward_winograd4`, kernels in
:mod:`xraynet.kernels.cpu_winograd4`): 36 products per 4x4 output tile, so
GEMMs 1.78x smaller than F(2x2, 3x3)'s, at a few times its float32 rounding.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .cpu_plan import ConvPlan, resize_plan

#: Winograd F(2x2, 3x3) weight transform G (4 x 3): u = G g G^T, g a 3x3 filter.
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _apply_g(a0, a1, a2):
    """G applied along one axis, given that axis' three slices: four slices back."""
    return a0, (a0 + a1 + a2) * 0.5, (a0 - a1 + a2) * 0.5, a2


def winograd_weights(w) -> np.ndarray:
    """U (16, C, O) of 3x3 weights w (O, C, 3, 3): ``G g G^T`` of every filter,
    row 4*i + j holding tile position (i, j), in w's dtype (G's halves are
    exact). Whole-array sums: a batched matmul of the 3x3 pieces took 6 ms for
    256 x 128 filters, this about 2."""
    return _transform_filters(w, _apply_g, 4)


def _transform_filters(w, apply_g, a: int) -> np.ndarray:
    """U (a*a, C, O) = ``G g G^T`` of every 3x3 filter of w (O, C, 3, 3), G (a x 3) given
    as ``apply_g`` (three slices along an axis -> a slices), in w's dtype."""
    o, c, _, _ = w.shape
    wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (ky, kx, C, O)
    u = np.empty((a, a, c, o), w.dtype)
    for i, rows in enumerate(apply_g(wt[0], wt[1], wt[2])):  # along ky
        for j, part in enumerate(apply_g(rows[0], rows[1], rows[2])):  # along kx
            u[i, j] = part
    return u.reshape(a * a, c, o)


def _apply_g4(a0, a1, a2):
    """Winograd F(4x4, 3x3)'s G (6 x 3, reference.WINOGRAD4_G) applied along one
    axis, given that axis' three slices: six slices back."""
    even = a0 + a2
    return (a0 * 0.25, (even + a1) * (-1 / 6), (even - a1) * (-1 / 6),
            a0 * (1 / 24) + a1 * (1 / 12) + a2 * (1 / 6), a0 * (1 / 24) - a1 * (1 / 12) + a2 * (1 / 6), a2)


def winograd4_weights(w) -> np.ndarray:
    """U (36, C, O) of 3x3 weights w (O, C, 3, 3): ``G g G^T`` of every filter,
    row 6*i + j holding tile position (i, j), in w's dtype (G's quarters are
    exact, its sixths, twelfths and 24ths round there). Whole-array sums as
    :func:`winograd_weights`: 1.75 ms for 256 x 128 filters, against 2.9 for a
    float64 tensordot. Evaluation keeps the result while the weights are unchanged
    (``CPUBackend._filters``)."""
    return _transform_filters(w, _apply_g4, 6)


def winograd_eligible(w_shape, stride) -> bool:
    """Winograd F(2x2, 3x3) covers 3x3 kernels at stride 1 (any padding)."""
    return tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)


def _unaliased(rows: int, row_bytes: int) -> int:
    """At least ``rows`` rows, so many that 16 planes of them do not start a
    multiple of 4 KiB apart: the Winograd kernels write (and read) all 16 tile
    positions at once, and 16 streams on one L1 set ran 5x slower."""
    while min((rows * row_bytes) % 4096, -(rows * row_bytes) % 4096) < 256:
        rows += 1
    return rows


class WinogradConv:
    """The Winograd paths of :class:`.cpu_conv.ConvEngine` (which supplies
    ``_k``, ``_each_block``, ``_by_lanes`` and the block sizes)."""

    def forward_winograd(self, x, u, b, p: ConvPlan, relu: bool, pool: bool):
        """A 3x3 stride-1 conv by Winograd F(2x2, 3x3) (kernels.cpu.winograd_input):
        ``u`` (16, C, O) from :func:`winograd_weights`. ``pool``: returns (pooled,
        idx) of bias + ReLU + 2x2/2 max pool (``p`` planned with pool_rows=2);
        else y (N, OH, OW, O) = conv + b, ReLU'd if ``relu``."""
        return self._forward_tiles(x, u, b, p, relu, pool, 2)

    def forward_winograd4(self, x, u, b, p: ConvPlan, relu: bool, pool: bool):
        """A 3x3 stride-1 conv by Winograd F(4x4, 3x3), for evaluation: ``u`` (36,
        C, O) from :func:`winograd4_weights`, ``p`` from ``plan(..., winograd=4)``
        (blocks of whole 4-row tile rows). Returns as :meth:`forward_winograd`:
        ``(pooled, idx)`` of bias + ReLU + 2x2/2 max pool with ``pool``, else y
        (N, OH, OW, O) = conv + b, ReLU'd if ``relu``."""
        return self._forward_tiles(x, u, b, p, relu, pool, 4)

    def _forward_tiles(self, x, u, b, p: ConvPlan, relu: bool, pool: bool, tile: int):
        """Both forwards: F(``tile`` x ``tile``, 3x3), ``tile`` 2 or 4, block by block. Each
        block pads its window of (tile + 2)-square input tiles (stride ``tile``),
        transforms it, runs one GEMM per tile position and transforms back into the
        output (with ``pool``, each tile holds (tile / 2)^2 whole 2x2 pool windows)."""
        k = self._k
        into, out_of, out_of_pool = ((k.winograd_input, k.winograd_output, k.winograd_output_pool) if tile == 2
                                     else (k.winograd4_input, k.winograd4_output, k.winograd4_output_pool))
        positions = (tile + 2) ** 2
        if pool:
            out = np.empty((p.n, p.oh // 2, p.ow // 2, p.o), x.dtype)
            idx = np.empty(out.shape, np.uint8)
            tw = -(-(p.ow // 2) // (tile // 2))
        else:
            out, idx = np.empty((p.n, p.oh, p.ow, p.o), x.dtype), None
            tw = -(-p.ow // tile)

        def block(scratch, b0, nb, oy0, r):
            th = -(-r // tile)
            xp = scratch.view("xp", (nb, tile * th + 2, tile * tw + 2, p.c))
            self._k.pad_window(xp, x, b0, oy0 - p.ph, p.pw)
            # Planes padded past the t tiles (see _unaliased); the kernels take the
            # whole, C-contiguous arrays and use the first t rows of each plane.
            t = nb * th * tw
            v = scratch.view("v", (positions, _unaliased(t, p.c * x.itemsize), p.c))
            into(v, xp)
            m = scratch.view("m", (positions, _unaliased(t, p.o * x.itemsize), p.o))
            np.matmul(v[:, :t], u, out=m[:, :t])  # one GEMM per tile position
            imgs = slice(b0, b0 + nb)
            if pool:  # r is even: blocks hold whole pool rows
                rows = slice(oy0 // 2, (oy0 + r) // 2)
                out_of_pool(out[imgs, rows], idx[imgs, rows], m, b)
            else:
                out_of(out[imgs, oy0:oy0 + r], m, b, relu)

        self._each_block(p, x.dtype, block)
        return (out, idx) if pool else out

    def backward_winograd(self, grad_rows, x, wmat, u, p: ConvPlan, need_dx: bool):
        """``(dx or None, dwmat (K, O))`` of a 3x3 stride-1 conv, ``grad_rows``,
        ``wmat`` and lanes as :meth:`backward`: dW from the patch matrix, dx by
        Winograd F(2x2, 3x3) (``u`` from :func:`winograd_weights`): per block
        dM = A dY A^T of the output gradient's tiles (winograd_output_adjoint),
        dV = dM U^T (16 GEMMs), added back onto the input
        (winograd_input_adjoint).

        Why not dW by Winograd too (dU = V^T dM, dW = G^T dU G): where the exact
        gradient is 0 (a tap that meets only zeros, common behind ReLU and
        padding), the transform leaves float32 rounding of either sign instead,
        and Adam's first step moves such a weight by up to lr where PyTorch and
        the patch matrix leave it alone (the PyTorch cross-check caught it)."""
        p = resize_plan(dataclasses.replace(p, rows=p.oh, step=2), self.BACKWARD_BLOCK_BYTES, x.itemsize)
        return self._by_lanes(self._winograd_group, (grad_rows, x, np.ascontiguousarray(u.transpose(0, 2, 1)), p),
                              need_dx)

    def _winograd_group(self, scratch, job, group, acc, dx):
        """One image group of backward_winograd: its blocks added to the lane's
        dW (``acc``: the lane's sum and a scratch of its shape), its dx written."""
        grad_rows, x, u_t, p = job
        dw, tmp = acc
        b0, nb = group
        tw = (p.ow + 1) // 2
        hw, wp = 2 * ((p.oh + 1) // 2) + 2, 2 * tw + 2
        if dx is not None:
            dxp = scratch.view("dxp", (nb, hw, wp, p.c))
            dxp[...] = 0
        for oy0 in range(0, p.oh, p.r):
            r = min(p.r, p.oh - oy0)
            th = (r + 1) // 2
            g = grad_rows(scratch, b0, nb, oy0, r)
            # dW: the patch matrix of the block (the window's first W + 2*pw columns)
            cols = scratch.view("cols", (nb * r * p.ow, p.k))
            xw = scratch.view("xw", (nb, r + 2, p.w + 2 * p.pw, p.c))
            self._k.pad_window(xw, x, b0, oy0 - p.ph, p.pw)
            self._k.im2col_window(cols, xw, 3, 3, 1, 1)
            np.matmul(cols.T, g, out=tmp)
            dw += tmp
            if dx is not None:
                t = nb * th * tw
                dm = scratch.view("dm", (16, _unaliased(t, p.o * x.itemsize), p.o))
                self._k.winograd_output_adjoint(dm, g.reshape(nb, r, p.ow, p.o))
                dv = scratch.view("dv", (16, _unaliased(t, p.c * x.itemsize), p.c))
                np.matmul(dm[:, :t], u_t, out=dv[:, :t])
                self._k.winograd_input_adjoint(dxp[:, oy0:oy0 + 2 * th + 2], dv)
        if dx is not None:
            dx[b0:b0 + nb] = dxp[:, p.ph:p.ph + p.h, p.pw:p.pw + p.w]
