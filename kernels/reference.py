"""Plain NumPy references for every CPU kernel: slow, obviously correct.

Layout: activations are NHWC float arrays ``(N, H, W, C)``; conv weights are
``(O, C, KH, KW)``. Padding is symmetric zero padding ``(ph, pw)`` and output
sizes use floor division, as in PyTorch:
``OH = (H + 2*ph - KH) // sh + 1``.
"""
from __future__ import annotations

import numpy as np


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (size + 2 * pad - kernel) // stride + 1


def im2col(x, kh, kw, sh, sw, ph, pw):
    """Patch matrix of an NHWC batch.

    Returns ``cols`` of shape ``(N*OH*OW, KH*KW*C)`` where row
    ``(n*OH + oy)*OW + ox`` holds the window of output pixel ``(oy, ox)`` of
    image ``n``, ordered ``(ky, kx, c)``; taps falling in the padding are 0.
    """
    n, h, w, c = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    cols = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, :, :, ky, kx, :] = xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
    return cols.reshape(n * oh * ow, kh * kw * c)


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col`: sums every patch entry back onto its input pixel.

    ``cols`` is ``(N*OH*OW, KH*KW*C)``; returns an NHWC array of ``x_shape``.
    """
    n, h, w, c = x_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(n, oh, ow, kh, kw, c)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), cols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :] += cols[:, :, :, ky, kx, :]
    return xp[:, ph:ph + h, pw:pw + w, :]


def conv2d(x, w, b, stride, pad):
    """Direct convolution (cross-correlation, as in PyTorch) of an NHWC batch.

    ``x`` (N, H, W, C), ``w`` (O, C, KH, KW), ``b`` (O,) or None,
    ``stride``/``pad`` pairs; returns (N, OH, OW, O).
    """
    o, c, kh, kw = w.shape
    cols = im2col(x, kh, kw, stride[0], stride[1], pad[0], pad[1])
    n, h, wd, _ = x.shape
    oh = conv_output_size(h, kh, stride[0], pad[0])
    ow = conv_output_size(wd, kw, stride[1], pad[1])
    y = cols @ w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
    if b is not None:
        y = y + b
    return y.reshape(n, oh, ow, o)


def maxpool2d_forward(x, kh, kw, sh, sw):
    """Max pooling of an NHWC batch, no padding, floor mode.

    Returns ``(y, idx)``: ``y`` (N, OH, OW, C) and ``idx`` (same shape, uint8),
    the row-major position ``ky*KW + kx`` of the window's first maximum: ties
    go to the earliest element, as in PyTorch.
    """
    n, h, w, c = x.shape
    oh, ow = conv_output_size(h, kh, sh, 0), conv_output_size(w, kw, sw, 0)
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


def bias_relu(y, b):
    """``max(y + b, 0)`` with ``b`` broadcast over the last (channel) axis."""
    return np.maximum(y + b, 0)


def relu_backward(dy, y):
    """ReLU gradient from the ReLU *output* ``y``: ``dy`` where ``y > 0``, else 0
    (PyTorch's convention: the gradient at exactly 0 is 0)."""
    return np.where(y > 0, dy, 0).astype(dy.dtype)


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step with PyTorch's formula; returns new ``(p, m, v)``.

    ``g += wd*p``; ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``.
    """
    g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - beta2 ** step) + eps
    p = p - (lr / (1 - beta1 ** step)) * m / denom
    return p, m, v


def sgd_update(p, g, buf, step, lr, momentum, weight_decay, nesterov):
    """One SGD step with PyTorch's momentum formula (dampening 0); returns ``(p, buf)``.

    ``g += wd*p``; ``buf = g`` at step 1, else ``momentum*buf + g``;
    the step is ``g + momentum*buf`` with Nesterov, else ``buf``.
    """
    g = g + weight_decay * p
    if momentum == 0:
        return p - lr * g, buf
    buf = g.copy() if step == 1 else momentum * buf + g
    d = g + momentum * buf if nesterov else buf
    return p - lr * d, buf
