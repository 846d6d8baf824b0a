"""Test helpers: comparisons whose failures read well, finite differences, and
slow, obviously-correct NumPy versions of the ops that ``kernels/reference.py``
does not spell out independently (direct convolution and its gradients, batch
norm, the losses).

Everything here is float64 NumPy and loops where a loop is clearer than a trick.
"""
from __future__ import annotations

import numpy as np

# Relative tolerances for kernel-vs-reference checks of ops that sum: a few
# hundred ulps of the dtype, far below any indexing or formula error (which
# shows up at O(1)).
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def _describe(info: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in info.items())


def assert_close(actual, expected, *, op: str, rtol: float = 0.0, atol: float = 0.0, **info) -> None:
    """Element-wise ``|a - e| <= atol + rtol*|e|`` (NaN fails).

    The message names the op, the extra ``info`` (backend, shape, ...), how many
    elements are off, and the worst one (index, actual, expected, difference).
    ``rtol = atol = 0`` asks for bit equality.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    head = f"{op} [{_describe(info)}]"
    if actual.shape != expected.shape:
        raise AssertionError(f"{head}: shape {actual.shape}, expected {expected.shape}")
    if actual.size == 0:
        return
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - e)
    allowed = atol + rtol * np.abs(e)
    bad = ~(diff <= allowed)
    if bad.any():
        excess = np.where(np.isnan(diff), np.inf, diff - allowed)
        i = np.unravel_index(np.argmax(excess), diff.shape)
        raise AssertionError(
            f"{head}: {int(bad.sum())} of {a.size} elements differ (rtol={rtol:g}, atol={atol:g}); "
            f"worst at {tuple(int(v) for v in i)}: got {a[i]!r}, expected {e[i]!r}, "
            f"|diff|={diff[i]:.3e}; max |diff| {np.nanmax(diff):.3e}")


def rel_err(actual, expected) -> float:
    """Norm-wise relative error ``||a - e|| / ||e||`` (0 when both are 0)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    num, den = np.linalg.norm(a - e), np.linalg.norm(e)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def assert_rel(actual, expected, tol: float, *, op: str, **info) -> float:
    """Norm-wise relative error below ``tol``; the message shows it and the worst element."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    head = f"{op} [{_describe(info)}]"
    if actual.shape != expected.shape:
        raise AssertionError(f"{head}: shape {actual.shape}, expected {expected.shape}")
    err = rel_err(actual, expected)
    if not err < tol:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        i = np.unravel_index(np.nanargmax(diff), diff.shape) if diff.size else ()
        raise AssertionError(
            f"{head}: norm-wise relative error {err:.3e} >= {tol:g}; worst element at "
            f"{tuple(int(v) for v in i)}: got {actual[i]!r}, expected {expected[i]!r}")
    return err


# --------------------------------------------------------------- finite differences
def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to every element of
    ``x`` (a NumPy or a device array), which is perturbed in place (and restored)."""
    g = np.zeros(x.shape, np.float64)
    for i in np.ndindex(x.shape):
        old = x[i].item()  # a value: on CuPy x[i] is a 0-d view that the next line would change
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_grad(analytic, numeric, *, what: str, tol: float = 1e-6) -> None:
    """Gradient check: norm-wise relative error of ``analytic`` against the
    central-difference ``numeric`` below ``tol``.

    Why norm-wise: with eps = 1e-6 in float64 the central difference has
    truncation error ~eps^2 * f''' and rounding error ~1e-16 * |f| / eps, so it
    agrees with a correct gradient to ~1e-9 relative to the gradient's norm; an
    element-wise relative measure would instead blow up on entries that are
    themselves ~1e-10. Wrong gradients (a wrong index, factor or sign) are O(1)
    off. On failure the worst element is shown: index, analytic, numeric.
    """
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if a.shape != n.shape:
        raise AssertionError(f"gradcheck {what}: analytic shape {a.shape}, numeric shape {n.shape}")
    err = rel_err(a, n)
    if not err < tol:
        diff = np.abs(a - n)
        i = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(
            f"gradcheck {what} (shape {a.shape}): norm-wise relative error {err:.3e} >= {tol:g}; "
            f"worst element {tuple(int(v) for v in i)}: analytic {a[i]:.10g}, numeric {n[i]:.10g}, "
            f"|diff| {diff[i]:.3e}; ||numeric|| {np.linalg.norm(n):.3e}")


# ------------------------------------------------------------- direct convolution
def conv2d_direct(x, w, b, stride, pad):
    """Direct convolution of NHWC ``x`` with ``w`` (O, C, KH, KW): one einsum per
    kernel tap, no patch matrix (independent of im2col). Returns (N, OH, OW, O)."""
    n, h, wd, c = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = np.zeros((n, oh, ow, o))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
            y += np.einsum("nhwc,oc->nhwo", patch, w[:, :, ky, kx].astype(np.float64))
    if b is not None:
        y += b.astype(np.float64)
    return y


def conv2d_direct_backward(dy, x, w, stride, pad):
    """Gradients of :func:`conv2d_direct`: (dx NHWC, dw (O, C, KH, KW), db (O,))."""
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


# -------------------------------------------------------------------- batch norm
def batchnorm_train(x, gamma, beta, eps):
    """Training-mode batch norm over NHWC ``x`` (float64): (y, mean, biased var)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var


def batchnorm_train_backward(dy, x, gamma, eps):
    """(dx, dgamma, dbeta) of :func:`batchnorm_train`, the textbook formula."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    m = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    xhat = (x - mean) / np.sqrt(var + eps)
    dbeta = dy.sum(axis=(0, 1, 2))
    dgamma = (dy * xhat).sum(axis=(0, 1, 2))
    dx = gamma / np.sqrt(var + eps) * (dy - dbeta / m - xhat * dgamma / m)
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------ losses
def sigmoid_bce(z, y, class_weights=None):
    """Per-sample-weighted mean BCE with logits, log1p form (float64 scalar)."""
    z, y = np.asarray(z, np.float64).reshape(-1), np.asarray(y).reshape(-1)
    w = np.ones(len(z)) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    per = np.logaddexp(0, z) - z * y
    return float((w * per).sum() / w.sum())


def softmax_cross_entropy(z, y, class_weights=None):
    """Per-sample-weighted mean softmax cross-entropy (float64 scalar)."""
    z, y = np.asarray(z, np.float64), np.asarray(y).reshape(-1)
    w = np.ones(len(y)) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    lse = np.logaddexp.reduce(z, axis=1)
    per = lse - z[np.arange(len(y)), y]
    return float((w * per).sum() / w.sum())
