"""Numba CPU kernels (NHWC activations); each mirrors a function of
:mod:`xraynet.kernels.reference` with the same name, semantics and argument
order (``im2col_t1`` is the transpose of ``im2col_yxc`` for one channel).

House rules: outputs are preallocated by the caller and passed first (arrays
updated in place too), then the inputs, then the scalars; loops run in
parallel over independent outputs (``prange`` over batch x rows), so no two
iterations write one slot; ``cache=True`` keeps compile time off the CLI
start; no ``fastmath``: the PyTorch cross-checks want IEEE results. Output
sizes come from :func:`xraynet.backends.geometry.output_size`, compiled here.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from xraynet.backends.geometry import output_size

# Numba's default OpenMP pool spins between parallel regions while OpenBLAS's
# own threads run the GEMMs in between; on a 2-core machine the two pools
# then fight for the cores and a training step runs at half speed. The
# workqueue layer's threads sleep when idle. A user's NUMBA_THREADING_LAYER
# still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_JIT = dict(parallel=True, cache=True, nogil=True)

#: the one output-size formula, inlined into the kernels that use it
_output_size = njit(inline="always")(output_size)


@njit(**_JIT)
def im2col_yxc(cols, x, kh, kw, sh, sw, ph, pw):
    """cols (N*OH*OW, KH*KW*C) <- patches of x (N, H, W, C), columns ordered
    (ky, kx, c); see reference.im2col_yxc.

    The KW taps of one kernel row are adjacent in an NHWC image row, so an
    interior window row is one contiguous run of KW*C floats; only windows
    that overlap the padding are copied tap by tap.
    """
    n, h, w, c = x.shape
    oh = _output_size(h, kh, sh, ph)
    ow = _output_size(w, kw, sw, pw)
    run = kw * c
    xr = np.ascontiguousarray(x).reshape((n, h, w * c))  # no copy for the C-ordered arrays xraynet passes
    for r in prange(n * oh):
        b = r // oh
        oy = r % oh
        for ox in range(ow):
            row = r * ow + ox
            ix0 = ox * sw - pw
            for ky in range(kh):
                iy = oy * sh - ph + ky
                base = ky * run
                if iy < 0 or iy >= h:
                    for j in range(run):
                        cols[row, base + j] = 0
                elif ix0 >= 0 and ix0 + kw <= w:
                    src = ix0 * c
                    for j in range(run):
                        cols[row, base + j] = xr[b, iy, src + j]
                else:
                    for kx in range(kw):
                        ix = ix0 + kx
                        if 0 <= ix < w:
                            for ci in range(c):
                                cols[row, base + kx * c + ci] = xr[b, iy, ix * c + ci]
                        else:
                            for ci in range(c):
                                cols[row, base + kx * c + ci] = 0


@njit(**_JIT)
def im2col_t1(cols_t, x, kh, kw, sh, sw, ph, pw):
    """cols_t (KH*KW, N*OH*OW) <- transposed patch matrix of a one-channel
    batch x (N, H, W): cols_t = reference.im2col_yxc(x[..., None], ...).T.

    For the grayscale first layer: the ordinary patch matrix has only KH*KW
    columns, so building it is a scatter of single floats; transposed, every
    row is a run of shifted image rows, copied with unit stride.
    """
    n, h, w = x.shape
    oh = _output_size(h, kh, sh, ph)
    ow = _output_size(w, kw, sw, pw)
    for r in prange(n * oh):
        b = r // oh
        oy = r % oh
        base = r * ow
        for ky in range(kh):
            iy = oy * sh - ph + ky
            for kx in range(kw):
                k = ky * kw + kx
                if iy < 0 or iy >= h:
                    for ox in range(ow):
                        cols_t[k, base + ox] = 0
                    continue
                # output columns whose tap lands inside the row: 0 <= ox*sw - pw + kx < w
                lo = min(ow, max(0, (pw - kx + sw - 1) // sw))
                hi = max(lo, min(ow, (w - 1 + pw - kx) // sw + 1))
                for ox in range(lo):
                    cols_t[k, base + ox] = 0
                if sw == 1:
                    off = kx - pw
                    for ox in range(lo, hi):
                        cols_t[k, base + ox] = x[b, iy, ox + off]
                else:
                    for ox in range(lo, hi):
                        cols_t[k, base + ox] = x[b, iy, ox * sw - pw + kx]
                for ox in range(hi, ow):
                    cols_t[k, base + ox] = 0


@njit(**_JIT)
def col2im_yxc(dx, cols, kh, kw, sh, sw, ph, pw):
    """dx (N, H, W, C) <- sum of patch entries of cols; see reference.col2im_yxc.

    Written as a gather over input rows (each dx row collects the taps that
    read it), so every dx element is written by one iteration only. For each
    tap the input columns it reaches form one range, walked without tests.
    """
    n, h, w, c = dx.shape
    oh = _output_size(h, kh, sh, ph)
    ow = _output_size(w, kw, sw, pw)
    for r in prange(n * h):
        b = r // h
        iy = r % h
        for ix in range(w):
            for ci in range(c):
                dx[b, iy, ix, ci] = 0
        for ky in range(kh):
            ty = iy + ph - ky
            if ty < 0 or ty % sh != 0:
                continue
            oy = ty // sh
            if oy >= oh:
                continue
            rowbase = (b * oh + oy) * ow
            for kx in range(kw):
                off = (ky * kw + kx) * c
                if sw == 1:
                    # ox = ix + pw - kx must lie in [0, ow)
                    lo = max(0, kx - pw)
                    hi = min(w, ow + kx - pw)
                    shift = pw - kx
                    for ix in range(lo, hi):
                        row = rowbase + ix + shift
                        for ci in range(c):
                            dx[b, iy, ix, ci] += cols[row, off + ci]
                else:
                    for ix in range(w):
                        tx = ix + pw - kx
                        if tx < 0 or tx % sw != 0:
                            continue
                        ox = tx // sw
                        if ox >= ow:
                            continue
                        for ci in range(c):
                            dx[b, iy, ix, ci] += cols[rowbase + ox, off + ci]


@njit(**_JIT)
def bias_relu(y, b):
    """In place: y (M, C) <- max(y + b, 0); see reference.bias_relu."""
    m, c = y.shape
    for i in prange(m):
        for ci in range(c):
            v = y[i, ci] + b[ci]
            y[i, ci] = v if v > 0 else 0


@njit(**_JIT)
def add_bias(y, b):
    """In place: y (M, C) <- y + b; see reference.add_bias."""
    m, c = y.shape
    for i in prange(m):
        for ci in range(c):
            y[i, ci] += b[ci]


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
