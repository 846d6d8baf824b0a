"""Numba CPU kernels (NHWC activations); each mirrors a function of
:mod:`xraynet.kernels.reference` with the same name, semantics and argument
order.

House rules: outputs are preallocated by the caller and passed first (arrays
updated in place too), then the inputs, then the scalars; ``cache=True``
keeps compile time off the CLI start; no ``fastmath``: the PyTorch
cross-checks want IEEE results.

The kernels here run in parallel over independent outputs (``prange`` over
batch x rows, so no two iterations write one slot). The convolution's block
kernels, serial because the backend's worker threads each run them on their
own block, live in :mod:`xraynet.kernels.cpu_blocks` (and the Winograd
F(4x4, 3x3) ones in :mod:`xraynet.kernels.cpu_winograd4`) and are re-exported
here.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from xraynet.kernels.cpu_blocks import (
    add_bias, bias_maxpool_relu_tiled, bias_relu, col2im_window_add, im2col_window, maxpool_relu_backward_tiled,
    pad_window, winograd_input, winograd_input_adjoint, winograd_output, winograd_output_adjoint,
    winograd_output_pool)
from xraynet.kernels.cpu_winograd4 import winograd4_input, winograd4_output, winograd4_output_pool

#: every CPU kernel: this module's and the block kernels it re-exports
__all__ = ["conv1_plane", "conv1_plane_pool", "relu_forward", "relu_backward", "maxpool2d_forward",
           "maxpool2d_backward", "bias_maxpool_relu", "maxpool_relu_backward", "channel_sum", "adam_update",
           "sgd_update", "add_bias", "bias_maxpool_relu_tiled", "bias_relu", "col2im_window_add", "im2col_window",
           "maxpool_relu_backward_tiled", "pad_window", "winograd_input", "winograd_input_adjoint",
           "winograd_output", "winograd_output_adjoint", "winograd_output_pool", "winograd4_input",
           "winograd4_output", "winograd4_output_pool"]

# Numba's default OpenMP pool spins between parallel regions while OpenBLAS's
# own threads run the GEMMs in between; on a 2-core machine the two pools
# then fight for the cores and a training step runs at half speed. The
# workqueue layer's threads sleep when idle. A user's NUMBA_THREADING_LAYER
# still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_JIT = dict(parallel=True, cache=True, nogil=True)


# ------------------------------------------ one-channel (first-layer) convolution
# A grayscale input's patch matrix has only KH*KW columns: its GEMM is too thin
# for BLAS (K = 9) and building it copies runs of 3 floats. These kernels
# convolve a block of rows of the zero-padded image as one flat plane instead:
# with stride 1, output q of the plane (row stride WP = W + 2*pw) is the sum
# over taps of w[ky, kx] * plane[q + ky*WP + kx], one long unit-stride loop per
# channel and kernel row that vectorises (the KW - 1 columns past each output
# row are computed and dropped). Every output is summed in the same order in
# both kernels, so the fused and the unfused first stage agree bit for bit.


@njit(inline="always")
def _conv1_plane(acc, xr, x, w, bi, oy0, ph, pw):
    """acc (O, R*WP) <- stride-1 conv rows oy0 .. oy0+R-1 of image bi of x
    (N, H, W, 1) by w (O, 1, KH, KW), no bias, in the padded plane's layout;
    ``xr`` is scratch of at least (R + KH - 1)*WP + KW - 1 floats."""
    o, m = acc.shape
    _, h, wd, _ = x.shape
    kh, kw = w.shape[2], w.shape[3]
    wp = wd + 2 * pw
    for i in range(xr.size):
        xr[i] = 0
    for rr in range(m // wp + kh - 1):
        iy = oy0 - ph + rr
        if 0 <= iy < h:
            dst = xr[rr * wp + pw:rr * wp + pw + wd]
            for j in range(wd):
                dst[j] = x[bi, iy, j, 0]
    for oc in range(o):
        a = acc[oc]
        for q in range(m):
            a[q] = 0
        for ky in range(kh):
            if kw == 3:  # the usual first layer: three taps per pass over the plane
                xs = xr[ky * wp:ky * wp + m + 2]
                w0, w1, w2 = w[oc, 0, ky, 0], w[oc, 0, ky, 1], w[oc, 0, ky, 2]
                for q in range(m):
                    a[q] += w0 * xs[q] + w1 * xs[q + 1] + w2 * xs[q + 2]
                continue
            for kx in range(kw):
                xs = xr[ky * wp + kx:ky * wp + kx + m]
                wv = w[oc, 0, ky, kx]
                for q in range(m):
                    a[q] += wv * xs[q]


def _row_chunks(rows, per_row):
    """(chunks, rows per chunk) cutting ``rows`` output rows into pieces of about
    4096 plane floats: long vector loops, scratch that stays in L1/L2."""
    step = max(1, min(rows, 4096 // max(1, per_row)))
    return (rows + step - 1) // step, step


_row_chunks = njit(inline="always")(_row_chunks)


@njit(**_JIT)
def conv1_plane(y, x, w, b, ph, pw, relu):
    """y (N, OH, OW, O) <- stride-1 conv(x) + b of a one-channel x (N, H, W, 1)
    with w (O, 1, KH, KW), ReLU'd when ``relu``; see reference.conv1_plane."""
    n, oh, ow, o = y.shape
    kh, kw = w.shape[2], w.shape[3]
    wp = x.shape[2] + 2 * pw
    nch, step = _row_chunks(oh, wp)
    for t in prange(n * nch):
        bi = t // nch
        oy0 = (t % nch) * step
        r = min(step, oh - oy0)
        acc = np.empty((o, r * wp), y.dtype)
        xr = np.empty((r + kh - 1) * wp + kw, y.dtype)
        _conv1_plane(acc, xr, x, w, bi, oy0, ph, pw)
        for rr in range(r):
            for ox in range(ow):
                for oc in range(o):
                    v = acc[oc, rr * wp + ox] + b[oc]
                    y[bi, oy0 + rr, ox, oc] = (v if v > 0 else 0) if relu else v


@njit(**_JIT)
def conv1_plane_pool(pooled, idx, x, w, b, ph, pw, pkh, pkw, psh, psw):
    """pooled, idx (N, QH, QW, O) <- bias_maxpool_relu of the stride-1 conv of a
    one-channel x (N, H, W, 1) by w (O, 1, KH, KW): the first stage fused, its
    full-size output never stored; see reference.conv1_plane_pool.

    A chunk of pooled rows computes the conv rows they read, pools them
    channel by channel along the plane (selects, so it vectorises), then
    stores NHWC.
    """
    n, qh, qw, o = pooled.shape
    kh, kw = w.shape[2], w.shape[3]
    wp = x.shape[2] + 2 * pw
    nch, step = _row_chunks(qh, psh * wp)
    for t in prange(n * nch):
        bi = t // nch
        py0 = (t % nch) * step
        pr = min(step, qh - py0)
        r = (pr - 1) * psh + pkh
        acc = np.empty((o, r * wp), pooled.dtype)
        xr = np.empty((r + kh - 1) * wp + kw, pooled.dtype)
        best = np.empty((o, pr * qw), pooled.dtype)
        arg = np.empty((o, pr * qw), np.uint8)
        _conv1_plane(acc, xr, x, w, bi, py0 * psh, ph, pw)
        for oc in range(o):
            _pool_plane(best[oc], arg[oc], acc[oc], b[oc], (pr, qw, wp), (pkh, pkw, psh, psw))
        out = pooled[bi, py0:py0 + pr].reshape((pr * qw, o))
        out_idx = idx[bi, py0:py0 + pr].reshape((pr * qw, o))
        for i in range(pr * qw):
            for oc in range(o):
                m = best[oc, i]
                out[i, oc] = m if m > 0 else 0
                out_idx[i, oc] = arg[oc, i]


@njit(inline="always")
def _pool_plane(best, arg, a, bias, shape, window):
    """best, arg (PR*QW,) <- max pool (first maximum, row-major window order) of
    one channel's plane ``a`` + bias; ``shape`` (PR, QW, WP), ``window``
    (PKH, PKW, PSH, PSW). A 2x2/2 window has its own loop: constant strides
    and selects, so it vectorises."""
    pr, qw, wp = shape
    pkh, pkw, psh, psw = window
    for py in range(pr):
        if pkh == pkw == psh == psw == 2:
            r0 = a[2 * py * wp:2 * py * wp + 2 * qw]
            r1 = a[(2 * py + 1) * wp:(2 * py + 1) * wp + 2 * qw]
            bo = best[py * qw:(py + 1) * qw]
            ko = arg[py * qw:(py + 1) * qw]
            for px in range(qw):
                m, k = r0[2 * px] + bias, np.uint8(0)
                v = r0[2 * px + 1] + bias
                m, k = (v, np.uint8(1)) if v > m else (m, k)
                v = r1[2 * px] + bias
                m, k = (v, np.uint8(2)) if v > m else (m, k)
                v = r1[2 * px + 1] + bias
                m, k = (v, np.uint8(3)) if v > m else (m, k)
                bo[px] = m
                ko[px] = k
            continue
        for px in range(qw):
            base = py * psh * wp + px * psw
            m, k = a[base] + bias, np.uint8(0)
            for wy in range(pkh):
                for wx in range(pkw):
                    v = a[base + wy * wp + wx] + bias
                    if v > m:
                        m, k = v, np.uint8(wy * pkw + wx)
            best[py * qw + px] = m
            arg[py * qw + px] = k


@njit(**_JIT)
def relu_forward(y, x):
    """y <- max(x, 0) over flat arrays (y may be x); see reference.relu_forward."""
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else 0


@njit(**_JIT)
def relu_backward(dx, dy, y):
    """dx <- dy where y > 0 else 0, over flat arrays (y is the ReLU output);
    see reference.relu_backward."""
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@njit(**_JIT)
def maxpool2d_forward(y, idx, x, kh, kw, sh, sw):
    """y, idx (N, OH, OW, C) <- max pooling of x (N, H, W, C); ties to the first
    maximum in row-major window order; see reference.maxpool2d_forward."""
    n, oh, ow, c = y.shape
    for r in prange(n * oh):
        b = r // oh
        oy = r % oh
        y0 = oy * sh
        for ox in range(ow):
            x0 = ox * sw
            for ci in range(c):
                y[b, oy, ox, ci] = x[b, y0, x0, ci]
                idx[b, oy, ox, ci] = 0
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    k = ky * kw + kx
                    for ci in range(c):
                        v = x[b, y0 + ky, x0 + kx, ci]
                        if v > y[b, oy, ox, ci]:
                            y[b, oy, ox, ci] = v
                            idx[b, oy, ox, ci] = k


@njit(**_JIT)
def maxpool2d_backward(dx, dy, idx, kh, kw, sh, sw):
    """dx (N, H, W, C) <- dy routed to each window's recorded maximum; see
    reference.maxpool2d_backward.

    Parallel over images: windows may overlap (stride < kernel), and within
    one image the scatter-adds then run in one thread, so no slot races.
    """
    n, oh, ow, c = dy.shape
    for b in prange(n):
        dx[b] = 0
        for oy in range(oh):
            for ox in range(ow):
                for ci in range(c):
                    k = idx[b, oy, ox, ci]
                    dx[b, oy * sh + k // kw, ox * sw + k % kw, ci] += dy[b, oy, ox, ci]


@njit(**_JIT)
def bias_maxpool_relu(y, idx, x, bias, kh, kw, sh, sw):
    """Fused conv epilogue: y = relu(maxpool(x + bias)); idx as maxpool2d_forward
    of x + bias; see reference.bias_maxpool_relu.

    Equals maxpool(relu(x + bias)) exactly: ReLU is monotone, so the pooled
    maximum is the same, and where the window's maximum is <= 0 the ReLU
    gradient zeroes the routed gradient whichever element holds it. The bias
    is added before comparing, so a tie that rounding creates (x_i > x_j but
    x_i + b == x_j + b) goes to the first element, as in the unfused chain.
    Reading the big pre-activation once instead of three times is the point.
    """
    n, oh, ow, c = y.shape
    for r in prange(n * oh):
        b = r // oh
        oy = r % oh
        y0 = oy * sh
        for ox in range(ow):
            x0 = ox * sw
            for ci in range(c):
                y[b, oy, ox, ci] = x[b, y0, x0, ci] + bias[ci]
                idx[b, oy, ox, ci] = 0
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    k = ky * kw + kx
                    for ci in range(c):
                        v = x[b, y0 + ky, x0 + kx, ci] + bias[ci]
                        if v > y[b, oy, ox, ci]:
                            y[b, oy, ox, ci] = v
                            idx[b, oy, ox, ci] = k
            for ci in range(c):
                if y[b, oy, ox, ci] < 0:
                    y[b, oy, ox, ci] = 0


@njit(**_JIT)
def maxpool_relu_backward(dx, dy, y, idx, kh, kw, sh, sw):
    """Gradient of bias_maxpool_relu with respect to its input x (N, H, W, C):
    dy where the pooled output y > 0, routed to the recorded maximum; see
    reference.maxpool_relu_backward.

    Windows that tile the map (stride == kernel, the usual 2x2/2) are written
    row by row in one pass with no zeroing pass first; overlapping windows
    fall back to a scatter-add, parallel over images.
    """
    n, oh, ow, c = dy.shape
    _, h, w, _ = dx.shape
    if sh == kh and sw == kw:
        for r in prange(n * h):
            b = r // h
            iy = r % h
            py = iy // kh
            ky = iy % kh
            if py >= oh:
                for ix in range(w):
                    for ci in range(c):
                        dx[b, iy, ix, ci] = 0
                continue
            for ix in range(w):
                px = ix // kw
                if px >= ow:
                    for ci in range(c):
                        dx[b, iy, ix, ci] = 0
                    continue
                k = ky * kw + ix % kw
                for ci in range(c):
                    hit = idx[b, py, px, ci] == k and y[b, py, px, ci] > 0
                    dx[b, iy, ix, ci] = dy[b, py, px, ci] if hit else 0
        return
    for b in prange(n):
        dx[b] = 0
        for oy in range(oh):
            for ox in range(ow):
                for ci in range(c):
                    if y[b, oy, ox, ci] > 0:
                        k = idx[b, oy, ox, ci]
                        dx[b, oy * sh + k // kw, ox * sw + k % kw, ci] += dy[b, oy, ox, ci]


@njit(**_JIT)
def channel_sum(out, x, mask=None):
    """out (C,) <- sum of x (M, C) over rows, where ``mask`` (M, C) > 0 if given;
    see reference.channel_sum.

    Accumulates in float64, in per-chunk partial sums added at the end: a
    float32 running sum over the ~400 k rows of a `wide` layer would lose
    about four digits.
    """
    m, c = x.shape
    nchunk = 64
    step = (m + nchunk - 1) // nchunk
    part = np.zeros((nchunk, c), np.float64)
    for j in prange(nchunk):
        for i in range(j * step, min(m, (j + 1) * step)):
            if mask is None:
                for ci in range(c):
                    part[j, ci] += x[i, ci]
            else:
                for ci in range(c):
                    if mask[i, ci] > 0:
                        part[j, ci] += x[i, ci]
    for ci in range(c):
        s = 0.0
        for j in range(nchunk):
            s += part[j, ci]
        out[ci] = s


@njit(**_JIT)
def adam_update(p, m, v, g, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt):
    """In place, flat arrays: one Adam step with PyTorch's formula (see reference.adam_update);
    one pass reads p, m, v, g and writes p, m, v. ``bias_c1`` = 1 - beta1**step,
    ``bias_c2_sqrt`` = sqrt(1 - beta2**step)."""
    step_size = lr / bias_c1
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        mi = m[i] + (1 - beta1) * (gi - m[i])
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi) / bias_c2_sqrt + eps)


@njit(**_JIT)
def sgd_update(p, buf, g, lr, momentum, weight_decay, nesterov, first):
    """In place, flat arrays: one SGD step with PyTorch's momentum formula
    (see reference.sgd_update); ``first`` marks step 1, where buf starts as g."""
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            bi = gi if first else momentum * buf[i] + gi
            buf[i] = bi
            gi = gi + momentum * bi if nesterov else bi
        p[i] -= lr * gi
