"""Each CPU kernel alone, on the shapes the `wide` and `seed` nets give it at batch 32.

Correctness against the NumPy reference is asserted once (on a slice for the
big shapes), then the kernel is timed.
"""
import numpy as np
import pytest

from xraynet.backends import AdamHyper, get_backend
from xraynet.backends.geometry import output_hw
from xraynet.kernels import cpu, reference

RNG = np.random.default_rng(0)
BK = get_backend("cpu")

# (name, N, H, W, C, O, pad): the conv layers whose kernels matter most.
CONVS = [
    ("seed.conv1", 32, 64, 64, 1, 32, 0),
    ("seed.conv2", 32, 31, 31, 32, 32, 0),
    ("wide.conv2", 32, 112, 112, 16, 32, 1),
    ("wide.conv4", 32, 28, 28, 64, 128, 1),
]


def _x(n, h, w, c):
    return RNG.standard_normal((n, h, w, c), dtype=np.float32)


def _window(n, h, w, c, pad):
    """One image zero-padded, as the CPU backend's conv blocks see it."""
    x = _x(n, h, w, c)
    xp = np.empty((1, h + 2 * pad, w + 2 * pad, c), np.float32)
    cpu.pad_window(xp, x, 0, -pad, pad)
    return x, xp


@pytest.mark.parametrize("name,n,h,w,c,o,pad", CONVS, ids=[c[0] for c in CONVS])
def test_im2col_window(benchmark, name, n, h, w, c, o, pad):
    x, xp = _window(n, h, w, c, pad)
    oh, ow = output_hw(h, w, (3, 3), (1, 1), (pad, pad))
    cols = np.empty((oh * ow, 9 * c), np.float32)
    cpu.im2col_window(cols, xp, 3, 3, 1, 1)
    np.testing.assert_array_equal(cols, reference.im2col_yxc(x[:1], 3, 3, 1, 1, pad, pad))
    benchmark(cpu.im2col_window, cols, xp, 3, 3, 1, 1)


@pytest.mark.parametrize("name,n,h,w,c,o,pad", CONVS, ids=[c[0] for c in CONVS])
def test_col2im_window_add(benchmark, name, n, h, w, c, o, pad):
    oh, ow = output_hw(h, w, (3, 3), (1, 1), (pad, pad))
    cols = RNG.standard_normal((oh * ow, 9 * c), dtype=np.float32)
    dxp = np.zeros((1, h + 2 * pad, w + 2 * pad, c), np.float32)
    cpu.col2im_window_add(dxp, cols, 3, 3, 1, 1)
    ref = reference.col2im_yxc(cols, (1, h, w, c), 3, 3, 1, 1, pad, pad)
    np.testing.assert_allclose(dxp[:, pad:pad + h, pad:pad + w], ref, rtol=1e-5, atol=1e-5)
    benchmark(cpu.col2im_window_add, dxp, cols, 3, 3, 1, 1)


@pytest.mark.parametrize("name,n,h,w,c,o,pad", CONVS[1:], ids=[c[0] for c in CONVS[1:]])
def test_winograd_input(benchmark, name, n, h, w, c, o, pad):
    x, xp = _window(n, h + h % 2, w + w % 2, c, pad)
    t = ((xp.shape[1] - 2) // 2) * ((xp.shape[2] - 2) // 2)
    v = np.empty((16, t, c), np.float32)
    cpu.winograd_input(v, xp)
    np.testing.assert_allclose(v, reference.winograd_input(xp), rtol=1e-5, atol=1e-5)
    benchmark(cpu.winograd_input, v, xp)


@pytest.mark.parametrize("name,n,h,w,c,o,pad", CONVS, ids=[c[0] for c in CONVS])
def test_conv_relu_pool_forward(benchmark, name, n, h, w, c, o, pad):
    x = _x(n, h, w, c)
    wt = RNG.standard_normal((o, c, 3, 3), dtype=np.float32) * 0.1
    b = RNG.standard_normal(o, dtype=np.float32)
    y, _ = BK.conv2d_relu_pool_forward(x[:1], wt, b, (1, 1), (pad, pad), (2, 2), (2, 2))
    ref = reference.bias_maxpool_relu(reference.conv2d_forward(x[:1], wt, None, (1, 1), (pad, pad)), b, 2, 2, 2, 2)[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    benchmark(BK.conv2d_relu_pool_forward, x, wt, b, (1, 1), (pad, pad), (2, 2), (2, 2), save=False)


@pytest.mark.parametrize("name,n,h,w,c,o,pad", CONVS, ids=[c[0] for c in CONVS])
def test_conv_relu_pool_backward(benchmark, name, n, h, w, c, o, pad):
    x = _x(n, h, w, c)
    wt = RNG.standard_normal((o, c, 3, 3), dtype=np.float32) * 0.1
    b = np.zeros(o, np.float32)
    y, ctx = BK.conv2d_relu_pool_forward(x, wt, b, (1, 1), (pad, pad), (2, 2), (2, 2))
    dy = RNG.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = BK.conv2d_relu_pool_backward(dy, ctx, wt, need_dx=True)
    assert dx.shape == x.shape and dw.shape == wt.shape and np.isfinite(dw).all()
    benchmark(BK.conv2d_relu_pool_backward, dy, ctx, wt, True)


def test_maxpool_forward(benchmark):
    x = _x(32, 112, 112, 32)
    y, idx = BK.maxpool2d_forward(x, (2, 2), (2, 2))
    ry, ridx = reference.maxpool2d_forward(x[:1], 2, 2, 2, 2)
    np.testing.assert_array_equal(y[:1], ry)
    np.testing.assert_array_equal(idx[:1], ridx)
    benchmark(BK.maxpool2d_forward, x, (2, 2), (2, 2))


def test_adam_seed_params(benchmark):
    """Adam over the 1.6 M parameters of `seed` in one flat array."""
    n = 1_615_713
    p, g = RNG.standard_normal(n, dtype=np.float32), RNG.standard_normal(n, dtype=np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    hyper = AdamHyper(lr=1e-3)
    rp, rm, rv = reference.adam_update(p[:100].copy(), m[:100], v[:100], g[:100], 1, hyper)
    q = p.copy()
    BK.adam_update(q, m.copy(), v.copy(), g, 1, hyper)
    np.testing.assert_allclose(q[:100], rp, rtol=1e-6, atol=1e-7)
    benchmark(BK.adam_update, p, m, v, g, 1, hyper)
