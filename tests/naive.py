"""Test helpers: comparisons whose failures read well, and gradient checks by
finite differences (every element, or along random directions where every
element would cost seconds). The slow, obviously-correct references of the
ops themselves live in :mod:`xraynet.kernels.reference`.

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


def directional_grad_check(f, x, analytic, *, what: str, to_backend=np.asarray, directions: int = 2,
                           eps: float = 1e-6, tol: float = 1e-6) -> None:
    """Gradient check along random directions, as Chainer's ``check_backward``:
    for random unit vectors ``v`` the directional derivative ``<analytic, v>``
    must match the central difference ``(f(x + eps v) - f(x - eps v)) / 2 eps``.

    Two evaluations of ``f`` per direction instead of two per element: for the
    checks where every element would cost seconds. ``x`` (NumPy or backend
    array, ``to_backend`` makes one from NumPy) is moved in place and restored.
    The measure is :func:`assert_grad`'s norm-wise one seen through ``v``:
    ``|<analytic, v> - numeric| <= tol * ||analytic||``. A wrong gradient is O(1)
    off in norm, so O(1/sqrt(size)) off along a random direction: far above tol.
    On failure the full element-wise check runs, so the message shows the
    worst element with both values, after both directional values.
    """
    a = np.asarray(analytic, np.float64)
    if a.shape != tuple(x.shape):
        raise AssertionError(f"gradcheck {what}: analytic shape {a.shape}, input shape {tuple(x.shape)}")
    rng = np.random.default_rng(0)
    norm = float(np.linalg.norm(a))
    orig = x.copy()
    for k in range(directions):
        v = rng.standard_normal(a.shape)
        v /= np.linalg.norm(v)
        step = to_backend((eps * v).astype(orig.dtype))
        try:
            x[...] = orig + step
            fp = f()
            x[...] = orig - step
            fm = f()
        finally:
            x[...] = orig
        numeric = (fp - fm) / (2 * eps)
        along = float((a * v).sum())
        if abs(along - numeric) <= tol * norm:
            continue
        head = (f"gradcheck {what} (shape {a.shape}) along random direction {k}: <analytic, v> {along:.10g}, "
                f"numeric {numeric:.10g}, |diff| {abs(along - numeric):.3e} >= {tol:g} * ||analytic|| ({norm:.3e})")
        try:
            assert_grad(a, numeric_grad(f, x, eps), what=what, tol=tol)
        except AssertionError as e:
            raise AssertionError(f"{head}\n{e}") from None
        raise AssertionError(f"{head}; the element-wise check passes, so the direction was unlucky")
