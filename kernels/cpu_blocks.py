"""Numba block kernels of the CPU backend's convolution (NHWC activations):
the serial kernels that each worker thread of :mod:`xraynet.backends.cpu_conv`
runs on its own block of rows, and the Winograd F(2x2, 3x3) transforms of
:mod:`xraynet.backends.cpu_winograd`. Each mirrors a function of
:mod:`xraynet.kernels.reference` with the same name, semantics and argument
order; :mod:`xraynet.kernels.cpu` re-exports them, so ``cpu.<name>`` names
every CPU kernel.

Serial because the workers call them concurrently, which Numba's parallel
regions do not allow; ``nogil`` so that they do run concurrently. House rules
as in :mod:`xraynet.kernels.cpu`: outputs first, ``cache=True``, no fastmath.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from xraynet.backends.geometry import output_size

_SERIAL = dict(cache=True, nogil=True)

#: Channels from which the Winograd transforms run one loop per transformed value (each
#: vectorises, see kernels.cpu_winograd4) rather than one loop per tile (whose loop
#: overhead is paid once). The 2-core EPYC, F(2x2) / F(4x4) input transform, new / old
#: time: 1.0 / 0.57 at 16 channels, 1.6 / 1.1 at 8, 3.6 / 2.0 at 1.
WIDE_CHANNELS = 16

#: the one output-size formula, inlined into the kernels that use it
_output_size = njit(inline="always")(output_size)

# ------------------------------------------------- convolution by row blocks
# The CPU backend's convolution (xraynet.backends.cpu_conv) runs one pipeline
# per worker thread: pad a block of input rows, build its patch matrix, one
# single-threaded GEMM, then the epilogue, all in that core's cache. These
# kernels are serial (_SERIAL): the worker threads call them concurrently,
# which Numba's parallel regions do not allow. They index flat arrays with
# unsigned offsets: Numba wraps negative signed indices, and that test in the
# copy loops kept LLVM from vectorising them (5x slower).


@njit(**_SERIAL)
def pad_window(xp, x, b0, iy0, pw):
    """xp (NB, RH, WP, C) <- rows iy0 .. iy0+RH-1 of images b0 .. b0+NB-1 of x
    (N, H, W, C), shifted right by pw columns, zero outside the image; see
    reference.pad_window.

    ``iy0`` may be negative (the top padding); WP may be wider or narrower than
    W + 2*pw (columns past WP are left out). x and xp must be C-contiguous.
    """
    nb, rh, wp, c = xp.shape
    _, h, w, _ = x.shape
    xf = x.reshape(-1)
    pf = xp.reshape(-1)
    row = np.uint64(wp * c)
    left = np.uint64(min(pw, wp) * c)
    run = np.uint64(max(0, min(w, wp - pw)) * c)
    for i in range(nb):
        for r in range(rh):
            d = np.uint64((i * rh + r) * wp * c)
            iy = iy0 + r
            if iy < 0 or iy >= h:
                for j in range(row):
                    pf[d + j] = 0
                continue
            s = np.uint64(((b0 + i) * h + iy) * w * c)
            for j in range(left):
                pf[d + j] = 0
            for j in range(run):
                pf[d + left + j] = xf[s + j]
            for j in range(left + run, row):
                pf[d + j] = 0


@njit(**_SERIAL)
def im2col_window(cols, xp, kh, kw, sh, sw):
    """cols (NB*R*OW, KH*KW*C) <- patch matrix of the already padded window xp
    (NB, RH, WP, C), R = (RH - KH)//sh + 1, OW = (WP - KW)//sw + 1; columns
    ordered (ky, kx, c); see reference.im2col_window.

    The KW taps of one kernel row are adjacent in an NHWC row, so each
    (patch, ky) is one contiguous run of KW*C floats, for any stride.
    """
    nb, rh, wp, c = xp.shape
    r = _output_size(rh, kh, sh, 0)
    ow = _output_size(wp, kw, sw, 0)
    run = np.uint64(kw * c)
    xf = xp.reshape(-1)
    cf = cols.reshape(-1)
    for i in range(nb):
        for oy in range(r):
            for ox in range(ow):
                d0 = ((i * r + oy) * ow + ox) * kh * kw * c
                for ky in range(kh):
                    d = np.uint64(d0 + ky * kw * c)
                    s = np.uint64(((i * rh + oy * sh + ky) * wp + ox * sw) * c)
                    for j in range(run):
                        cf[d + j] = xf[s + j]


@njit(**_SERIAL)
def col2im_window_add(dxp, dcols, kh, kw, sh, sw):
    """In place: dxp (NB, RH, WP, C) += the adjoint of im2col_window applied to
    dcols (NB*R*OW, KH*KW*C): every patch entry added back onto the pixel it
    was copied from; see reference.col2im_window_add.

    Serial, so overlapping windows (stride < kernel) add in a fixed order.
    """
    nb, rh, wp, c = dxp.shape
    r = _output_size(rh, kh, sh, 0)
    ow = _output_size(wp, kw, sw, 0)
    run = np.uint64(kw * c)
    xf = dxp.reshape(-1)
    cf = dcols.reshape(-1)
    for i in range(nb):
        for oy in range(r):
            for ox in range(ow):
                d0 = ((i * r + oy) * ow + ox) * kh * kw * c
                for ky in range(kh):
                    d = np.uint64(d0 + ky * kw * c)
                    s = np.uint64(((i * rh + oy * sh + ky) * wp + ox * sw) * c)
                    for j in range(run):
                        xf[s + j] += cf[d + j]


# Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
# Networks", 2016) for 3x3 stride-1 convolutions: a 2x2 output tile is
# A^T [(G g G^T) . (B^T d B)] A of its 4x4 input tile d, so the 36 multiplies
# per tile and channel pair become 16: the conv is 16 GEMMs (tiles x C) @ (C x O),
# one per tile position, 2.25x fewer FLOPs than the patch-matrix GEMM. B and A
# hold only 0 and +-1 (additions), G halves (exact). The output tile is a 2x2
# pool window when tiles start at even rows and columns, so the fused stage
# pools straight out of the transform.


@njit(**_SERIAL)
def winograd_input(v, xp):
    """v (16, T, C) <- B^T d B of every 4x4 tile d (stride 2) of the padded window
    xp (NB, RH, WP, C), TH = (RH - 2)//2, TW = (WP - 2)//2, in rows t < NB*TH*TW
    (T may be larger: rows past those are left alone); v[4*i + j, t] is tile
    t's position (i, j); see reference.winograd_input.

    B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], down the rows (into ``a``),
    then along them. Each loop stores one value per channel, so that it vectorises
    (see kernels.cpu_winograd4): storing all 16 in one loop ran it a channel at a
    time, 1.4-2.8x slower on the 2-core EPYC from 32 channels. Under
    :data:`WIDE_CHANNELS` channels the 32 short loops cost more than they gain
    (3-5x slower for 1-4 channels), and one loop per tile stores all 16."""
    nb, rh, wp, c = xp.shape
    th = (rh - 2) // 2
    tw = (wp - 2) // 2
    if c < WIDE_CHANNELS:
        for i in range(nb):
            for ty in range(th):
                r0, r1, r2, r3 = xp[i, 2 * ty], xp[i, 2 * ty + 1], xp[i, 2 * ty + 2], xp[i, 2 * ty + 3]
                for tx in range(tw):
                    t = (i * th + ty) * tw + tx
                    p0, p1, p2, p3 = 2 * tx, 2 * tx + 1, 2 * tx + 2, 2 * tx + 3
                    for ci in range(c):  # B^T d (rows), then (B^T d) B (columns)
                        a00, a01, a02, a03 = (r0[p0, ci] - r2[p0, ci], r0[p1, ci] - r2[p1, ci],
                                              r0[p2, ci] - r2[p2, ci], r0[p3, ci] - r2[p3, ci])
                        a10, a11, a12, a13 = (r1[p0, ci] + r2[p0, ci], r1[p1, ci] + r2[p1, ci],
                                              r1[p2, ci] + r2[p2, ci], r1[p3, ci] + r2[p3, ci])
                        a20, a21, a22, a23 = (r2[p0, ci] - r1[p0, ci], r2[p1, ci] - r1[p1, ci],
                                              r2[p2, ci] - r1[p2, ci], r2[p3, ci] - r1[p3, ci])
                        a30, a31, a32, a33 = (r1[p0, ci] - r3[p0, ci], r1[p1, ci] - r3[p1, ci],
                                              r1[p2, ci] - r3[p2, ci], r1[p3, ci] - r3[p3, ci])
                        v[0, t, ci], v[1, t, ci], v[2, t, ci], v[3, t, ci] = (a00 - a02, a01 + a02, a02 - a01,
                                                                              a01 - a03)
                        v[4, t, ci], v[5, t, ci], v[6, t, ci], v[7, t, ci] = (a10 - a12, a11 + a12, a12 - a11,
                                                                              a11 - a13)
                        v[8, t, ci], v[9, t, ci], v[10, t, ci], v[11, t, ci] = (a20 - a22, a21 + a22, a22 - a21,
                                                                                a21 - a23)
                        v[12, t, ci], v[13, t, ci], v[14, t, ci], v[15, t, ci] = (a30 - a32, a31 + a32, a32 - a31,
                                                                                  a31 - a33)
        return
    a = np.empty((4, 4, c), xp.dtype)  # B^T d of the tile: row r, column j
    for i in range(nb):
        for ty in range(th):
            y = 2 * ty
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                for j in range(4):
                    x = 2 * tx + j
                    for k in range(4):
                        for ci in range(c):
                            a[k, j, ci] = _bt4(xp[i, y, x, ci], xp[i, y + 1, x, ci], xp[i, y + 2, x, ci],
                                               xp[i, y + 3, x, ci])[k]
                for r in range(4):
                    for k in range(4):
                        for ci in range(c):
                            v[4 * r + k, t, ci] = _bt4(a[r, 0, ci], a[r, 1, ci], a[r, 2, ci], a[r, 3, ci])[k]


@njit(inline="always")
def _bt4(d0, d1, d2, d3):
    """B^T (4 x 4, Winograd F(2x2, 3x3)) applied to four values along one axis."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _winograd_tile(m, t, oc):
    """The 2x2 output tile A^T M A of tile t, channel oc, of the products m (16, T, O);
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    r00 = m[0, t, oc] + m[4, t, oc] + m[8, t, oc]
    r01 = m[1, t, oc] + m[5, t, oc] + m[9, t, oc]
    r02 = m[2, t, oc] + m[6, t, oc] + m[10, t, oc]
    r03 = m[3, t, oc] + m[7, t, oc] + m[11, t, oc]
    r10 = m[4, t, oc] - m[8, t, oc] - m[12, t, oc]
    r11 = m[5, t, oc] - m[9, t, oc] - m[13, t, oc]
    r12 = m[6, t, oc] - m[10, t, oc] - m[14, t, oc]
    r13 = m[7, t, oc] - m[11, t, oc] - m[15, t, oc]
    return r00 + r01 + r02, r01 - r02 - r03, r10 + r11 + r12, r11 - r12 - r13


@njit(**_SERIAL)
def winograd_output(y, m, bias, relu):
    """y (NB, R, OW, O) <- A^T M A + bias, ReLU'd when ``relu``, of the tiles'
    products m (16, T >= NB*TH*TW, O), TH = ceil(R/2), TW = ceil(OW/2) (an odd last
    row or column of tiles is half used); see reference.winograd_output."""
    nb, r, ow, o = y.shape
    th = (r + 1) // 2
    tw = (ow + 1) // 2
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                oy, ox = 2 * ty, 2 * tx
                full = oy + 1 < r and ox + 1 < ow
                for oc in range(o):
                    y00, y01, y10, y11 = _winograd_tile(m, t, oc)
                    bc = bias[oc]
                    v00, v01, v10, v11 = y00 + bc, y01 + bc, y10 + bc, y11 + bc
                    if relu:
                        v00, v01 = (v00 if v00 > 0 else 0), (v01 if v01 > 0 else 0)
                        v10, v11 = (v10 if v10 > 0 else 0), (v11 if v11 > 0 else 0)
                    y[i, oy, ox, oc] = v00
                    if full:
                        y[i, oy, ox + 1, oc] = v01
                        y[i, oy + 1, ox, oc] = v10
                        y[i, oy + 1, ox + 1, oc] = v11
                    else:
                        if ox + 1 < ow:
                            y[i, oy, ox + 1, oc] = v01
                        if oy + 1 < r:
                            y[i, oy + 1, ox, oc] = v10


@njit(**_SERIAL)
def winograd_output_pool(y, idx, m, bias):
    """y, idx (NB, TH, TW, O) <- relu(maxpool 2x2/2 (A^T M A + bias)) of the tiles'
    products m (16, T >= NB*TH*TW, O): each output tile is one pool window
    (positions 0..3 row-major, first maximum); see reference.winograd_output_pool."""
    nb, th, tw, o = y.shape
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                yo = y[i, ty, tx]
                ko = idx[i, ty, tx]
                for oc in range(o):
                    y00, y01, y10, y11 = _winograd_tile(m, t, oc)
                    bc = bias[oc]
                    best, k = y00 + bc, np.uint8(0)
                    v = y01 + bc
                    best, k = (v, np.uint8(1)) if v > best else (best, k)
                    v = y10 + bc
                    best, k = (v, np.uint8(2)) if v > best else (best, k)
                    v = y11 + bc
                    best, k = (v, np.uint8(3)) if v > best else (best, k)
                    yo[oc] = best if best > 0 else 0
                    ko[oc] = k


@njit(**_SERIAL)
def winograd_output_adjoint(dm, g):
    """dm (16, T, O) <- A dY A^T of every 2x2 tile dY of g (NB, R, OW, O) (the
    adjoint of winograd_output: the gradient of a tile's products from its
    outputs' gradient), TH = ceil(R/2), TW = ceil(OW/2) tiles, the missing row
    or column of a half tile taken as 0; rows t < NB*TH*TW; see
    reference.winograd_output_adjoint."""
    nb, r, ow, o = g.shape
    th = (r + 1) // 2
    tw = (ow + 1) // 2
    zero = np.zeros(1, dm.dtype)[0]
    h = np.empty((4, 2, o), dm.dtype)  # A dY of the tile: row q, column j
    for i in range(nb):
        for ty in range(th):
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                oy, ox = 2 * ty, 2 * tx
                right, down = ox + 1 < ow, oy + 1 < r
                # A = [[1, 0], [1, 1], [1, -1], [0, -1]]: down the rows, then along them
                if o < WIDE_CHANNELS:  # in one loop per tile (see winograd_input)
                    for oc in range(o):
                        g00 = g[i, oy, ox, oc]
                        g01 = g[i, oy, ox + 1, oc] if right else zero
                        g10 = g[i, oy + 1, ox, oc] if down else zero
                        g11 = g[i, oy + 1, ox + 1, oc] if right and down else zero
                        h10, h11 = g00 + g10, g01 + g11
                        h20, h21 = g00 - g10, g01 - g11
                        dm[0, t, oc], dm[1, t, oc], dm[2, t, oc], dm[3, t, oc] = g00, g00 + g01, g00 - g01, -g01
                        dm[4, t, oc], dm[5, t, oc], dm[6, t, oc], dm[7, t, oc] = h10, h10 + h11, h10 - h11, -h11
                        dm[8, t, oc], dm[9, t, oc], dm[10, t, oc], dm[11, t, oc] = h20, h20 + h21, h20 - h21, -h21
                        dm[12, t, oc], dm[13, t, oc], dm[14, t, oc], dm[15, t, oc] = -g10, -g10 - g11, g11 - g10, g11
                    continue
                for k in range(4):  # wider: one loop per value, through h
                    for oc in range(o):
                        h[k, 0, oc] = _a4(g[i, oy, ox, oc], g[i, oy + 1, ox, oc] if down else zero)[k]
                    for oc in range(o):
                        h[k, 1, oc] = _a4(g[i, oy, ox + 1, oc] if right else zero,
                                          g[i, oy + 1, ox + 1, oc] if right and down else zero)[k]
                for q in range(4):
                    for k in range(4):
                        for oc in range(o):
                            dm[4 * q + k, t, oc] = _a4(h[q, 0, oc], h[q, 1, oc])[k]


@njit(inline="always")
def _a4(g0, g1):
    """A (4 x 2, Winograd F(2x2, 3x3)) applied to two values along one axis."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(**_SERIAL)
def winograd_input_adjoint(dxp, dv):
    """In place: dxp (NB, RH, WP, C) += B dV B^T of every tile's dV (16, T, C),
    added onto the 4x4 window it came from (windows overlap by 2); the adjoint
    of winograd_input; see reference.winograd_input_adjoint. Serial, so the
    overlapping adds happen in a fixed order. From :data:`WIDE_CHANNELS` channels
    each loop stores one thing (see winograd_input)."""
    nb, rh, wp, c = dxp.shape
    th = (rh - 2) // 2
    tw = (wp - 2) // 2
    e = np.empty((4, c), dxp.dtype)  # (dV B^T)[a, j] of one column j of the tile
    for i in range(nb):
        for ty in range(th):
            r0, r1, r2, r3 = dxp[i, 2 * ty], dxp[i, 2 * ty + 1], dxp[i, 2 * ty + 2], dxp[i, 2 * ty + 3]
            for tx in range(tw):
                t = (i * th + ty) * tw + tx
                for j in range(4):  # column j of the tile: B applied down the rows
                    p = 2 * tx + j
                    if c < WIDE_CHANNELS:
                        for ci in range(c):
                            # columns first: e_a = (dV B^T)[a, j]
                            e0 = _wino_col(dv, 0, j, t, ci)
                            e1 = _wino_col(dv, 4, j, t, ci)
                            e2 = _wino_col(dv, 8, j, t, ci)
                            e3 = _wino_col(dv, 12, j, t, ci)
                            r0[p, ci] += e0
                            r1[p, ci] += e1 - e2 + e3
                            r2[p, ci] += e1 + e2 - e0
                            r3[p, ci] -= e3
                        continue
                    for a in range(4):
                        for ci in range(c):
                            e[a, ci] = _wino_col(dv, 4 * a, j, t, ci)
                    for ci in range(c):
                        r0[p, ci] += e[0, ci]
                    for ci in range(c):
                        r1[p, ci] += e[1, ci] - e[2, ci] + e[3, ci]
                    for ci in range(c):
                        r2[p, ci] += e[1, ci] + e[2, ci] - e[0, ci]
                    for ci in range(c):
                        r3[p, ci] -= e[3, ci]


@njit(inline="always")
def _wino_col(dv, row, j, t, ci):
    """(dV B^T)[row/4, j] of one tile: B^T's column j applied to dV's row ``row``."""
    if j == 0:
        return dv[row, t, ci]
    if j == 1:
        return dv[row + 1, t, ci] - dv[row + 2, t, ci] + dv[row + 3, t, ci]
    if j == 2:
        return dv[row + 1, t, ci] + dv[row + 2, t, ci] - dv[row, t, ci]
    return -dv[row + 3, t, ci]


@njit(**_SERIAL)
def bias_maxpool_relu_tiled(y, idx, x, bias, kh, kw):
    """bias_maxpool_relu for windows that tile the map (stride == kernel), one
    block of rows: y, idx (NB, R//KH, OW//KW, C) from x (NB, R, OW, C); see
    reference.bias_maxpool_relu_tiled. Serial (a worker thread's epilogue).

    Selects instead of branches, so the channel loop vectorises; comparing
    x + bias keeps the first-maximum rule of the unfused chain (see
    bias_maxpool_relu).
    """
    nb, pr, pw, c = y.shape
    _, r, ow, _ = x.shape
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    kf = idx.reshape(-1)
    cu = np.uint64(c)
    for i in range(nb):
        for py in range(pr):
            for px in range(pw):
                o = np.uint64(((i * pr + py) * pw + px) * c)
                s = np.uint64(((i * r + py * kh) * ow + px * kw) * c)
                for ci in range(cu):
                    yf[o + ci] = xf[s + ci] + bias[ci]
                    kf[o + ci] = 0
                for ky in range(kh):
                    for kx in range(kw):
                        if ky == 0 and kx == 0:
                            continue
                        k = np.uint8(ky * kw + kx)
                        s = np.uint64(((i * r + py * kh + ky) * ow + px * kw + kx) * c)
                        for ci in range(cu):
                            v = xf[s + ci] + bias[ci]
                            m = yf[o + ci]
                            gt = v > m
                            yf[o + ci] = v if gt else m
                            kf[o + ci] = k if gt else kf[o + ci]
                for ci in range(cu):
                    m = yf[o + ci]
                    yf[o + ci] = m if m > 0 else 0


@njit(**_SERIAL)
def maxpool_relu_backward_tiled(dx, dy, y, idx, kh, kw, oy0):
    """maxpool_relu_backward for windows that tile the map (stride == kernel),
    one block: dx (NB, R, OW, C), the gradient of rows oy0 .. oy0+R-1, from dy,
    y, idx (NB, PH, PW, C) of whole images; rows and columns past the last
    whole window get 0; see reference.maxpool_relu_backward_tiled. Serial (a
    worker thread's)."""
    nb, r, ow, c = dx.shape
    _, pr, pw, _ = dy.shape
    df = dx.reshape(-1)
    gf = dy.reshape(-1)
    yf = y.reshape(-1)
    kf = idx.reshape(-1)
    cu = np.uint64(c)
    for i in range(nb):
        for rr in range(r):
            py = (oy0 + rr) // kh
            for ox in range(ow):
                px = ox // kw
                d = np.uint64(((i * r + rr) * ow + ox) * c)
                if py >= pr or px >= pw:
                    for ci in range(cu):
                        df[d + ci] = 0
                    continue
                k = np.uint8(((oy0 + rr) % kh) * kw + ox % kw)
                s = np.uint64(((i * pr + py) * pw + px) * c)
                for ci in range(cu):
                    hit = kf[s + ci] == k and yf[s + ci] > 0
                    df[d + ci] = gf[s + ci] if hit else 0


@njit(**_SERIAL)
def bias_relu(y, b):
    """In place: y (M, C) <- max(y + b, 0); see reference.bias_relu. Serial: the
    conv worker threads run it on their own block."""
    m, c = y.shape
    for i in range(m):
        for ci in range(c):
            v = y[i, ci] + b[ci]
            y[i, ci] = v if v > 0 else 0


@njit(**_SERIAL)
def add_bias(y, b):
    """In place: y (M, C) <- y + b; see reference.add_bias. Serial, as bias_relu."""
    m, c = y.shape
    for i in range(m):
        for ci in range(c):
            y[i, ci] += b[ci]
