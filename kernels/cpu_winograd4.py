"""Numba kernels of Winograd F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016, section 4.2): the CPU backend's 3x3
stride-1 convolutions in evaluation (:meth:`xraynet.backends.cpu_winograd.WinogradConv.forward_winograd4`).

A 4x4 output tile is ``A^T [(G g G^T) . (B^T d B)] A`` of its 6x6 input tile d:
36 products per tile and channel pair where the direct convolution needs 144
and F(2x2, 3x3) 64 (16 per 2x2 tile), so its 36 GEMMs are 1.78x smaller than
F(2x2, 3x3)'s 16. The price is accuracy: the transforms hold factors up to 8
and 1/24, so float32 results carry a few times more rounding than F(2x2, 3x3)
(tests/test_kernels.py bounds it against the direct convolution); training,
whose gradients meet Adam, keeps F(2x2, 3x3).

Each kernel mirrors the function of :mod:`xraynet.kernels.reference` with the
same name (matrices ``WINOGRAD4_BT``, ``WINOGRAD4_G``, ``WINOGRAD4_AT``). House
rules as in :mod:`xraynet.kernels.cpu_blocks`: serial and ``nogil`` (each worker
thread runs them on its own block), outputs first, ``cache=True``, no fastmath.
The transforms apply the matrices one axis at a time through a small scratch,
so that every inner loop runs along the contiguous channel axis.

Why the input transform's row pass runs one loop per value (from
:data:`~xraynet.kernels.cpu_blocks.WIDE_CHANNELS` channels on). LLVM vectorises
a loop over arrays it cannot prove apart only after checking at run time that
they do not overlap, and gives up past a few pairs of pointers: a loop storing
the six values of ``_bt`` into one scratch row while loading six input columns
ran one channel at a time. Six loops, each storing one value (``_bt(...)[k]``,
the values the whole transform gives, bit for bit), made the transform
1.7-2.3x faster on the 2-core EPYC. The column pass and the output transforms
vectorise as they are (split the same way, the output transforms ran 0.5-0.8x
as fast: the extra loops only cost).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from xraynet.kernels.cpu_blocks import WIDE_CHANNELS

_SERIAL = dict(cache=True, nogil=True)


@njit(inline="always")
def _constants(dtype_source):
    """2, 4, 5 and 8 in the array's dtype (a literal would promote float32 to float64)."""
    one = np.ones(1, dtype_source.dtype)[0]
    two = one + one
    four = two + two
    return two, four, four + one, four + four


@njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5, two, four, five):
    """B^T (6 x 6) applied to six values along one axis (rows of reference.WINOGRAD4_BT)."""
    return (four * d0 - five * d2 + d4, d3 + d4 - four * (d1 + d2), four * (d1 - d2) + d4 - d3,
            two * (d3 - d1) + d4 - d2, two * (d1 - d3) + d4 - d2, four * d1 - five * d3 + d5)


@njit(inline="always")
def _at(m0, m1, m2, m3, m4, m5, two, four, eight):
    """A^T (4 x 6) applied to six values along one axis (rows of reference.WINOGRAD4_AT)."""
    s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s12 + s34, d12 + two * d34, s12 + four * s34, d12 + eight * d34 + m5


@njit(**_SERIAL)
def winograd4_input(v, xp):
    """v (36, T, C) <- B^T d B of every 6x6 tile d (stride 4) of the padded window
    xp (NB, RH, WP, C), TH = (RH - 2)//4, TW = (WP - 2)//4, in rows t < NB*TH*TW
    (T may be larger: rows past those are left alone); v[6*i + j, t] is tile t's
    position (i, j); see reference.winograd4_input."""
    nb, rh, wp, c = xp.shape
    th = (rh - 2) // 4
    tw = (wp - 2) // 4
    two, four, five, _ = _constants(xp)
    e = np.empty((6, 6, c), xp.dtype)  # d B of the tile: row a, column j
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                x0 = 4 * tx
                if c < WIDE_CHANNELS:  # B along each row of the tile, in one loop per row
                    for a in range(6):
                        row = xp[i, 4 * ty + a]
                        ea = e[a]
                        for ci in range(c):
                            ea[0, ci], ea[1, ci], ea[2, ci], ea[3, ci], ea[4, ci], ea[5, ci] = _bt(
                                row[x0, ci], row[x0 + 1, ci], row[x0 + 2, ci], row[x0 + 3, ci], row[x0 + 4, ci],
                                row[x0 + 5, ci], two, four, five)
                else:
                    for a in range(6):  # ... and in one loop per value for wider tiles
                        y = 4 * ty + a
                        for k in range(6):
                            for ci in range(c):
                                e[a, k, ci] = _bt(xp[i, y, x0, ci], xp[i, y, x0 + 1, ci], xp[i, y, x0 + 2, ci],
                                                  xp[i, y, x0 + 3, ci], xp[i, y, x0 + 4, ci], xp[i, y, x0 + 5, ci],
                                                  two, four, five)[k]
                for j in range(6):  # B^T down each column
                    for ci in range(c):
                        v[j, t, ci], v[6 + j, t, ci], v[12 + j, t, ci], v[18 + j, t, ci], v[24 + j, t, ci], \
                            v[30 + j, t, ci] = _bt(e[0, j, ci], e[1, j, ci], e[2, j, ci], e[3, j, ci],
                                                   e[4, j, ci], e[5, j, ci], two, four, five)


@njit(inline="always")
def _tile_outputs(z, m, t, bias, s, two, four, eight):
    """z (4, 4, O) <- A^T M A + bias of tile t of the products m (36, T, O); s (6, 4, O) scratch."""
    o = m.shape[2]
    for a in range(6):
        b = 6 * a
        sa = s[a]
        for oc in range(o):
            sa[0, oc], sa[1, oc], sa[2, oc], sa[3, oc] = _at(m[b, t, oc], m[b + 1, t, oc], m[b + 2, t, oc],
                                                             m[b + 3, t, oc], m[b + 4, t, oc], m[b + 5, t, oc],
                                                             two, four, eight)
    for q in range(4):
        for oc in range(o):
            y0, y1, y2, y3 = _at(s[0, q, oc], s[1, q, oc], s[2, q, oc], s[3, q, oc], s[4, q, oc], s[5, q, oc],
                                 two, four, eight)
            bc = bias[oc]
            z[0, q, oc], z[1, q, oc], z[2, q, oc], z[3, q, oc] = y0 + bc, y1 + bc, y2 + bc, y3 + bc


@njit(**_SERIAL)
def winograd4_output(y, m, bias, relu):
    """y (NB, R, OW, O) <- A^T M A + bias, ReLU'd when ``relu``, of the tiles'
    products m (36, T >= NB*TH*TW, O), TH = ceil(R/4), TW = ceil(OW/4) (the last
    row or column of tiles partly used); see reference.winograd4_output."""
    nb, r, ow, o = y.shape
    th = (r + 3) // 4
    tw = (ow + 3) // 4
    two, four, _, eight = _constants(y)
    zero = np.zeros(1, y.dtype)[0]
    s = np.empty((6, 4, o), y.dtype)
    z = np.empty((4, 4, o), y.dtype)
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                _tile_outputs(z, m, t, bias, s, two, four, eight)
                for p in range(min(4, r - 4 * ty)):
                    yrow = y[i, 4 * ty + p]
                    for q in range(min(4, ow - 4 * tx)):
                        dst = yrow[4 * tx + q]
                        src = z[p, q]
                        if relu:
                            for oc in range(o):
                                val = src[oc]
                                dst[oc] = val if val > zero else zero
                        else:
                            for oc in range(o):
                                dst[oc] = src[oc]


@njit(**_SERIAL)
def winograd4_output_pool(y, idx, m, bias):
    """y, idx (NB, PH, PW, O) <- relu(maxpool 2x2/2 (A^T M A + bias)) of the tiles'
    products m (36, T >= NB*TH*TW, O), TH = ceil(PH/2), TW = ceil(PW/2): each 4x4
    tile holds four pool windows (positions 0..3 row-major, first maximum); see
    reference.winograd4_output_pool."""
    nb, ph, pw, o = y.shape
    th = (ph + 1) // 2
    tw = (pw + 1) // 2
    two, four, _, eight = _constants(y)
    zero = np.zeros(1, y.dtype)[0]
    s = np.empty((6, 4, o), y.dtype)
    z = np.empty((4, 4, o), y.dtype)
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                _tile_outputs(z, m, t, bias, s, two, four, eight)
                for wy in range(min(2, ph - 2 * ty)):
                    for wx in range(min(2, pw - 2 * tx)):
                        yo = y[i, 2 * ty + wy, 2 * tx + wx]
                        ko = idx[i, 2 * ty + wy, 2 * tx + wx]
                        z0, z1 = z[2 * wy, 2 * wx], z[2 * wy, 2 * wx + 1]
                        z2, z3 = z[2 * wy + 1, 2 * wx], z[2 * wy + 1, 2 * wx + 1]
                        for oc in range(o):
                            best, k = z0[oc], np.uint8(0)
                            v = z1[oc]
                            best, k = (v, np.uint8(1)) if v > best else (best, k)
                            v = z2[oc]
                            best, k = (v, np.uint8(2)) if v > best else (best, k)
                            v = z3[oc]
                            best, k = (v, np.uint8(3)) if v > best else (best, k)
                            yo[oc] = best if best > zero else zero
                            ko[oc] = k
