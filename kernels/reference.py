"""Plain NumPy references for every kernel: slow, obviously correct, and the
spec the fast kernels are tested against.

Each function has the name of the Numba kernel (:mod:`xraynet.kernels.cpu`)
and the CUDA entry point (``kernels/cuda/*.cu``) that implement it, and takes
their arrays in the same order, minus the outputs, which it returns instead.
Arrays a kernel updates in place (optimiser state) come first and come back
updated.

Layout: activations are NHWC float arrays ``(N, H, W, C)``; conv weights are
``(O, C, KH, KW)``. Padding is symmetric zero padding ``(ph, pw)`` and output
sizes use floor division, as in PyTorch
(:func:`xraynet.backends.geometry.output_size`). Where a result sums, the
references sum in float64 and return float64.

One module of about 430 lines on purpose: the spec of every kernel, CPU and
CUDA, in one place to read and to test against.
"""
from __future__ import annotations

import numpy as np

from xraynet.backends.contract import AdamHyper, SGDHyper
from xraynet.backends.geometry import output_hw


# ----------------------------------------------------------- patch matrices
def im2col_yxc(x, kh, kw, sh, sw, ph, pw):
    """Patch matrix of an NHWC batch, columns ordered ``(ky, kx, c)`` (the CPU's).

    Returns ``cols`` of shape ``(N*OH*OW, KH*KW*C)`` where row
    ``(n*OH + oy)*OW + ox`` holds the window of output pixel ``(oy, ox)`` of
    image ``n``; taps falling in the padding are 0.
    """
    n, h, w, c = x.shape
    oh, ow = output_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    cols = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, :, :, ky, kx, :] = xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
    return cols.reshape(n * oh * ow, kh * kw * c)


def col2im_yxc(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col_yxc`: sums every patch entry back onto its input pixel.

    ``cols`` is ``(N*OH*OW, KH*KW*C)``; returns an NHWC array of ``x_shape``.
    """
    n, h, w, c = x_shape
    oh, ow = output_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    cols = cols.reshape(n, oh, ow, kh, kw, c)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), cols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :] += cols[:, :, :, ky, kx, :]
    return xp[:, ph:ph + h, pw:pw + w, :]


def _yxc_to_cyx(cols, kh, kw):
    """Reorder patch columns (ky, kx, c) -> (c, ky, kx)."""
    m, k = cols.shape
    return np.ascontiguousarray(cols.reshape(m, kh, kw, k // (kh * kw)).transpose(0, 3, 1, 2)).reshape(m, k)


def im2col_cyx(x, kh, kw, sh, sw, ph, pw):
    """:func:`im2col_yxc` with the columns ordered ``(c, ky, kx)`` (the GPU's): the
    order of the weights' own (O, C, KH, KW) layout, so ``cols @ w.reshape(O, -1).T``
    is the convolution."""
    return _yxc_to_cyx(im2col_yxc(x, kh, kw, sh, sw, ph, pw), kh, kw)


def col2im_cyx(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col_cyx` (``cols`` (N*OH*OW, C*KH*KW))."""
    m, k = cols.shape
    yxc = np.ascontiguousarray(cols.reshape(m, k // (kh * kw), kh, kw).transpose(0, 2, 3, 1)).reshape(m, k)
    return col2im_yxc(yxc, x_shape, kh, kw, sh, sw, ph, pw)


def pad_window(x, b0, iy0, pw, nb, rh):
    """Rows ``iy0 .. iy0+rh-1`` of images ``b0 .. b0+nb-1`` of the NHWC batch ``x``,
    zero-padded: returns ``(nb, rh, W + 2*pw, C)``. Rows outside the image
    (``iy0`` may be negative: the top padding) and ``pw`` columns on each side are 0."""
    _, h, w, c = x.shape
    out = np.zeros((nb, rh, w + 2 * pw, c), x.dtype)
    for r in range(rh):
        if 0 <= iy0 + r < h:
            out[:, r, pw:pw + w] = x[b0:b0 + nb, iy0 + r]
    return out


def im2col_window(xp, kh, kw, sh, sw):
    """:func:`im2col_yxc` of a window that :func:`pad_window` already padded (no
    padding of its own): ``(NB*R*OW, KH*KW*C)`` from ``xp`` (NB, RH, WP, C), with
    ``R = (RH - KH)//sh + 1`` and ``OW = (WP - KW)//sw + 1``."""
    return im2col_yxc(xp, kh, kw, sh, sw, 0, 0)


def col2im_window_add(dxp, dcols, kh, kw, sh, sw):
    """``dxp + `` the adjoint of :func:`im2col_window` applied to ``dcols``: every
    patch entry added back onto the pixel of ``dxp`` (NB, RH, WP, C) it came from."""
    return dxp + col2im_yxc(dcols, dxp.shape, kh, kw, sh, sw, 0, 0)


# -------------------------------------------------------------- convolution
def conv2d_forward(x, w, b, stride, pad):
    """Direct convolution (cross-correlation, as in PyTorch) of an NHWC batch, in float64.

    ``x`` (N, H, W, C), ``w`` (O, C, KH, KW), ``b`` (O,) or None, ``stride`` and
    ``pad`` pairs; returns (N, OH, OW, O). One einsum per kernel tap: no patch
    matrix, so it checks the im2col kernels independently."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    oh, ow = output_hw(h, wd, (kh, kw), stride, pad)
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = np.zeros((n, oh, ow, o))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
            y += np.einsum("nhwc,oc->nhwo", patch, w[:, :, ky, kx].astype(np.float64))
    if b is not None:
        y += b.astype(np.float64)
    return y


def conv2d_backward(dy, x, w, stride, pad):
    """Gradients of :func:`conv2d_forward` from ``dy`` (N, OH, OW, O), in float64:
    ``(dx (N, H, W, C), dw (O, C, KH, KW), db (O,))``."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    oh, ow = dy.shape[1:3]
    dy = dy.astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros((o, c, kh, kw))
    for ky in range(kh):
        for kx in range(kw):
            sl = (slice(None), slice(ky, ky + sh * (oh - 1) + 1, sh), slice(kx, kx + sw * (ow - 1) + 1, sw),
                  slice(None))
            dw[:, :, ky, kx] = np.einsum("nhwo,nhwc->oc", dy, xp[sl])
            dxp[sl] += np.einsum("nhwo,oc->nhwc", dy, w[:, :, ky, kx].astype(np.float64))
    return dxp[:, ph:ph + h, pw:pw + wd, :], dw, dy.sum(axis=(0, 1, 2))


def conv1_plane(x, w, b, ph, pw, relu):
    """Stride-1 :func:`conv2d_forward` of a one-channel batch ``x`` (N, H, W, 1),
    ReLU'd when ``relu``: the first layer, which the CPU runs without a patch
    matrix."""
    y = conv2d_forward(x, w, b, (1, 1), (ph, pw))
    return np.maximum(y, 0) if relu else y


def conv1_plane_pool(x, w, b, ph, pw, pkh, pkw, psh, psw):
    """The fused first stage: :func:`bias_maxpool_relu` of the bias-free stride-1
    :func:`conv2d_forward` of a one-channel ``x`` (N, H, W, 1)."""
    return bias_maxpool_relu(conv2d_forward(x, w, None, (1, 1), (ph, pw)), b, pkh, pkw, psh, psw)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 2x2 output tile of a 3x3 stride-1
# convolution is A^T [(G g G^T) . (B^T d B)] A of its 4x4 input tile d.
WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def _tiles(th, tw):
    return [(ty, tx) for ty in range(th) for tx in range(tw)]


def _winograd_input(xp, bt, m):
    """``B^T d B`` of every tile ``d`` (a x a, a = len(bt), stride m) of ``xp``: (a*a, T, C), float64."""
    nb, rh, wp, c = xp.shape
    a = len(bt)
    th, tw = (rh - 2) // m, (wp - 2) // m
    v = np.empty((a, a, nb, th * tw, c))
    for t, (ty, tx) in enumerate(_tiles(th, tw)):
        d = xp[:, m * ty:m * ty + a, m * tx:m * tx + a].astype(np.float64)
        v[:, :, :, t] = np.einsum("ik,nklc,jl->ijnc", bt, d, bt)
    return v.reshape(a * a, nb * th * tw, c)


def _winograd_outputs_of(m, nb, th, tw, at):
    """``A^T M A`` of every tile of m (a*a, NB*TH*TW, O): (NB, s*TH, s*TW, O), s = len(at), float64."""
    s, a = at.shape
    o = m.shape[2]
    mt = m[:, :nb * th * tw].astype(np.float64).reshape(a, a, nb, th, tw, o)
    y = np.einsum("ai,ijntso,bj->ntasbo", at, mt, at)
    return y.reshape(nb, s * th, s * tw, o)


def winograd_input(xp):
    """``B^T d B`` of every 4x4 tile ``d`` (stride 2) of the padded window ``xp``
    (NB, RH, WP, C), in float64: ``(16, NB*TH*TW, C)``, TH = (RH - 2)//2,
    TW = (WP - 2)//2, row ``4*i + j`` the tile position (i, j), tiles ordered
    (image, ty, tx)."""
    return _winograd_input(xp, WINOGRAD_BT, 2)


def _winograd_outputs(m, nb, th, tw):
    """``A^T M A`` of every tile of m (16, NB*TH*TW, O): (NB, 2*TH, 2*TW, O), float64."""
    return _winograd_outputs_of(m, nb, th, tw, WINOGRAD_AT)


def winograd_output(m, bias, relu, nb, r, ow):
    """The convolution (NB, R, OW, O) from the tiles' products ``m`` (16, T, O)
    (TH = ceil(R/2), TW = ceil(OW/2) tiles; an odd last row or column half
    used) plus ``bias``, ReLU'd when ``relu``, in float64."""
    y = _winograd_outputs(m, nb, (r + 1) // 2, (ow + 1) // 2)[:, :r, :ow] + bias
    return np.maximum(y, 0) if relu else y


def winograd_output_pool(m, bias, nb, th, tw):
    """:func:`bias_maxpool_relu` (2x2/2) of the tiles' outputs: every tile is one
    pool window. Returns ``(y, idx)`` (NB, TH, TW, O)."""
    return bias_maxpool_relu(_winograd_outputs(m, nb, th, tw), bias, 2, 2, 2, 2)


# Winograd F(4x4, 3x3) (Lavin & Gray 2016, section 4.2; interpolation points 0,
# 1, -1, 2, -2 and infinity): a 4x4 output tile from its 6x6 input tile, 36
# products for 144 multiplies of the direct convolution.
WINOGRAD4_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
WINOGRAD4_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
WINOGRAD4_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                        np.float64)


def winograd4_weights(w):
    """``G g G^T`` of every 3x3 filter of w (O, C, 3, 3): (36, C, O) float64, row
    ``6*i + j`` the tile position (i, j)."""
    u = np.einsum("ik,ockl,jl->ijco", WINOGRAD4_G, np.asarray(w, np.float64), WINOGRAD4_G)
    return u.reshape(36, w.shape[1], w.shape[0])


def winograd4_input(xp):
    """``B^T d B`` of every 6x6 tile ``d`` (stride 4) of the padded window ``xp``
    (NB, RH, WP, C), float64: ``(36, NB*TH*TW, C)``, TH = (RH - 2)//4,
    TW = (WP - 2)//4, tiles ordered (image, ty, tx)."""
    return _winograd_input(xp, WINOGRAD4_BT, 4)


def winograd4_output(m, bias, relu, nb, r, ow):
    """The convolution (NB, R, OW, O) from the tiles' products ``m`` (36, T, O)
    (TH = ceil(R/4), TW = ceil(OW/4) tiles, the last row or column of tiles
    partly used) plus ``bias``, ReLU'd when ``relu``, in float64."""
    y = _winograd_outputs_of(m, nb, -(-r // 4), -(-ow // 4), WINOGRAD4_AT)[:, :r, :ow] + bias
    return np.maximum(y, 0) if relu else y


def winograd4_output_pool(m, bias, nb, ph, pw):
    """:func:`bias_maxpool_relu` (2x2/2) of the tiles' outputs, (NB, PH, PW, O):
    each 4x4 tile holds four pool windows; TH = ceil(PH/2), TW = ceil(PW/2)
    tiles. Returns ``(y, idx)``."""
    y = _winograd_outputs_of(m, nb, -(-ph // 2), -(-pw // 2), WINOGRAD4_AT)[:, :2 * ph, :2 * pw]
    return bias_maxpool_relu(y, bias, 2, 2, 2, 2)


def winograd_output_adjoint(g):
    """``A dY A^T`` of every 2x2 tile ``dY`` of ``g`` (NB, R, OW, O), zero-extended
    to even sizes: ``(16, NB*TH*TW, O)`` in float64, the gradient of the tiles'
    products from the outputs' (the adjoint of :func:`winograd_output`)."""
    nb, r, ow, o = g.shape
    th, tw = (r + 1) // 2, (ow + 1) // 2
    ge = np.zeros((nb, 2 * th, 2 * tw, o))
    ge[:, :r, :ow] = g
    gt = ge.reshape(nb, th, 2, tw, 2, o)
    dm = np.einsum("ai,ntasbo,bj->ijntso", WINOGRAD_AT, gt, WINOGRAD_AT)
    return dm.reshape(16, nb * th * tw, o)


def winograd_input_adjoint(dxp, dv):
    """``dxp + `` the adjoint of :func:`winograd_input` applied to ``dv``
    (16, T, C): ``B dV B^T`` of every tile added onto its 4x4 window of
    ``dxp`` (NB, RH, WP, C), in float64."""
    nb, rh, wp, c = dxp.shape
    th, tw = (rh - 2) // 2, (wp - 2) // 2
    out = dxp.astype(np.float64)
    dvt = dv[:, :nb * th * tw].astype(np.float64).reshape(4, 4, nb, th * tw, c)
    for t, (ty, tx) in enumerate(_tiles(th, tw)):
        out[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4] += np.einsum("ia,ijnc,jb->nabc", WINOGRAD_BT, dvt[:, :, :, t],
                                                                  WINOGRAD_BT)
    return out


def add_bias(y, b):
    """``y + b`` with ``b`` broadcast over the last (channel) axis."""
    return y + b


def bias_relu(y, b):
    """``max(y + b, 0)`` with ``b`` broadcast over the last (channel) axis."""
    return np.maximum(y + b, 0)


# ------------------------------------------------------------------ pooling
def maxpool2d_forward(x, kh, kw, sh, sw):
    """Max pooling of an NHWC batch, no padding, floor mode.

    Returns ``(y, idx)``: ``y`` (N, OH, OW, C) and ``idx`` (same shape, uint8),
    the row-major position ``ky*KW + kx`` of the window's first maximum: ties
    go to the earliest element, as in PyTorch.
    """
    n, h, w, c = x.shape
    oh, ow = output_hw(h, w, (kh, kw), (sh, sw))
    y = np.empty((n, oh, ow, c), x.dtype)
    idx = np.zeros((n, oh, ow, c), np.uint8)
    for oy in range(oh):
        for ox in range(ow):
            win = x[:, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw, :].reshape(n, kh * kw, c)
            idx[:, oy, ox, :] = np.argmax(win, axis=1)  # argmax returns the first maximum
            y[:, oy, ox, :] = win.max(axis=1)
    return y, idx


def maxpool2d_backward(dy, idx, x_shape, kh, kw, sh, sw):
    """Gradient of :func:`maxpool2d_forward`: each ``dy`` entry goes to its window's
    recorded maximum (summed where windows overlap); returns NHWC ``x_shape``."""
    n, oh, ow, c = dy.shape
    dx = np.zeros(x_shape, dy.dtype)
    nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for oy in range(oh):
        for ox in range(ow):
            k = idx[:, oy, ox, :].astype(np.int64)
            np.add.at(dx, (nn_, oy * sh + k // kw, ox * sw + k % kw, cc), dy[:, oy, ox, :])
    return dx


def bias_maxpool_relu(x, bias, kh, kw, sh, sw):
    """The fused conv epilogue: ``(y, idx)`` with ``y = max(maxpool(x + bias), 0)``
    and ``idx`` that of :func:`maxpool2d_forward` of ``x + bias``.

    Equal to ``maxpool(relu(x + bias))`` (ReLU is monotone); the positions
    differ from that chain's only in windows whose maximum is <= 0, where the
    gradient is 0 whichever element they name."""
    y, idx = maxpool2d_forward(x + bias, kh, kw, sh, sw)
    return np.maximum(y, 0), idx


def maxpool_relu_backward(dy, y, idx, x_shape, kh, kw, sh, sw):
    """Gradient of :func:`bias_maxpool_relu` with respect to its input: ``dy``
    where the pooled output ``y`` > 0, routed as :func:`maxpool2d_backward`."""
    return maxpool2d_backward(np.where(y > 0, dy, 0).astype(dy.dtype), idx, x_shape, kh, kw, sh, sw)


def bias_maxpool_relu_tiled(x, bias, kh, kw):
    """:func:`bias_maxpool_relu` with stride = kernel (windows that tile the map,
    as the usual 2x2/2 pool), on a block of rows."""
    return bias_maxpool_relu(x, bias, kh, kw, kh, kw)


def maxpool_relu_backward_tiled(dy, y, idx, x_shape, kh, kw, oy0):
    """:func:`maxpool_relu_backward` with stride = kernel, rows ``oy0 .. oy0+R-1``
    of it, ``x_shape`` = (N, R, OW, C): a block of the gradient of
    :func:`bias_maxpool_relu_tiled`, from the pooled ``dy``, ``y``, ``idx`` of
    whole images."""
    n, r, ow, c = x_shape
    rows = max(oy0 + r, dy.shape[1] * kh)
    full = maxpool_relu_backward(dy, y, idx, (n, rows, ow, c), kh, kw, kh, kw)
    return full[:, oy0:oy0 + r]


def global_avg_pool_forward(x):
    """(N, H, W, C) -> (N, C): the mean over H and W, in float64."""
    return x.astype(np.float64).mean(axis=(1, 2))


def global_avg_pool_backward(dy, x_shape):
    """dy (N, C) -> (N, H, W, C): ``dy / (H*W)`` at every position, in float64."""
    n, h, w, c = x_shape
    return np.broadcast_to(dy.astype(np.float64)[:, None, None, :] / (h * w), x_shape).copy()


# -------------------------------------------------------------- elementwise
def relu_forward(x):
    """``max(x, 0)``."""
    return np.maximum(x, 0)


def relu_backward(dy, y):
    """ReLU gradient from the ReLU *output* ``y``: ``dy`` where ``y > 0``, else 0
    (PyTorch's convention: the gradient at exactly 0 is 0)."""
    return np.where(y > 0, dy, 0).astype(dy.dtype)


def channel_sum(x, mask=None):
    """Column sums of ``x`` (M, C) in float64, only where ``mask`` (M, C) > 0 if given."""
    x = x.astype(np.float64)
    return (x if mask is None else np.where(mask > 0, x, 0)).sum(axis=0)


# --------------------------------------------------------------- batch norm
def batchnorm_forward_train(x, gamma, beta, eps):
    """Training-mode batch norm over the last axis of ``x`` (..., C), in float64:
    ``(y, mean, var)``, y shaped like x, with the batch's mean and biased variance."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var


def batchnorm_backward_train(dy, x, gamma, eps):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_forward_train` (the textbook formula)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    xhat = (x - mean) / np.sqrt(var + eps)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dx = gamma / np.sqrt(var + eps) * (dy - dbeta / m - xhat * dgamma / m)
    return dx, dgamma, dbeta


def batchnorm_running_stats(running_mean, running_var, mean, var, m, momentum):
    """The running statistics after a training batch of ``m`` rows with batch
    ``mean`` and biased ``var``: ``(1 - momentum) * old + momentum * new``, the
    variance made unbiased (``var * m / (m - 1)``), as PyTorch."""
    unbiased = var * m / max(m - 1, 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * unbiased


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps):
    """Evaluation-mode batch norm, in float64: the affine map of the running statistics."""
    x = x.astype(np.float64)
    return (x - running_mean) / np.sqrt(running_var.astype(np.float64) + eps) * gamma + beta


# ------------------------------------------------------------------- losses
def _sample_weights(labels, class_weights):
    return np.ones(len(labels)) if class_weights is None else np.asarray(class_weights, np.float64)[labels]


def sigmoid_bce(z, labels, class_weights=None):
    """Binary cross-entropy with logits ``z`` (N, 1) and labels (N,) in {0, 1}, in
    float64: ``(loss, dz)``, the per-sample-weighted mean ``sum(w_i l_i) / sum(w_i)``
    (w_i = class_weights[label_i], or 1) and its gradient (N, 1)."""
    z, y = np.asarray(z, np.float64).reshape(-1), np.asarray(labels).reshape(-1)
    w = _sample_weights(y, class_weights)
    per = np.logaddexp(0, z) - z * y
    sig = 0.5 * (1 + np.tanh(z / 2))  # the sigmoid, without overflow
    return float((w * per).sum() / w.sum()), (w * (sig - y) / w.sum())[:, None]


def softmax_cross_entropy(z, labels, class_weights=None):
    """Softmax cross-entropy with logits ``z`` (N, K) and integer labels (N,), in
    float64: ``(loss, dz)``, weighted as :func:`sigmoid_bce`."""
    z, y = np.asarray(z, np.float64), np.asarray(labels).reshape(-1)
    w = _sample_weights(y, class_weights)
    lse = np.logaddexp.reduce(z, axis=1)
    per = lse - z[np.arange(len(y)), y]
    p = np.exp(z - lse[:, None])
    p[np.arange(len(y)), y] -= 1
    return float((w * per).sum() / w.sum()), p * (w / w.sum())[:, None]


# --------------------------------------------------------------- optimisers
def adam_update(p, m, v, g, step, hyper: AdamHyper):
    """Step ``step`` (from 1) of Adam with PyTorch's formula; returns new ``(p, m, v)``.

    ``g += wd*p``; ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``.
    """
    h = hyper
    g = g + h.weight_decay * p
    m = m + (1 - h.beta1) * (g - m)
    v = h.beta2 * v + (1 - h.beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - h.beta2 ** step) + h.eps
    p = p - (h.lr / (1 - h.beta1 ** step)) * m / denom
    return p, m, v


def sgd_update(p, buf, g, step, hyper: SGDHyper):
    """Step ``step`` (from 1) of SGD with PyTorch's momentum formula (dampening 0);
    returns ``(p, buf)``.

    ``g += wd*p``; ``buf = g`` at step 1, else ``momentum*buf + g``;
    the step is ``g + momentum*buf`` with Nesterov, else ``buf``.
    """
    h = hyper
    g = g + h.weight_decay * p
    if h.momentum == 0:
        return p - h.lr * g, buf
    buf = g.copy() if step == 1 else h.momentum * buf + g
    d = g + h.momentum * buf if h.nesterov else buf
    return p - h.lr * d, buf
