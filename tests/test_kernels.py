"""Every Numba kernel of ``xraynet.kernels.cpu`` against its NumPy reference in
``xraynet.kernels.reference``, and the backend's ops against references, on
fixed edge cases (batch 1, 1x1 maps, odd sizes, stride 2 and 3, padding 0-2,
kernels 1/3/5, overlapping pools, max-pool ties) plus hypothesis-drawn shapes.

Outputs are pre-filled with NaN (or 255 for indices) so a slot the kernel
forgets to write fails the comparison. Copy-like ops (im2col, ReLU, max pool,
bias) must match bit for bit; ops that sum get a few hundred ulps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from naive import RTOL, assert_close
from xraynet.backends import AdamHyper, BatchNormStats, SGDHyper
from xraynet.backends.geometry import output_size
from xraynet.kernels import cpu
from xraynet.kernels import reference as ref

DTYPES = [np.float32, np.float64]
HYP = settings(max_examples=12, deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _dt(dtype):
    return np.dtype(dtype).name


# ----------------------------------------------------------------- geometry
# (n, h, w, c, kh, kw, sh, sw, ph, pw)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 0),     # 1x1 map, 1x1 kernel
    (1, 1, 1, 3, 3, 3, 1, 1, 1, 1),     # 1x1 map, 3x3 kernel, padding 1
    (2, 1, 1, 2, 5, 5, 1, 1, 2, 2),     # 1x1 map, 5x5 kernel, padding 2
    (2, 7, 9, 3, 3, 3, 2, 2, 0, 0),     # odd sizes, stride 2, valid
    (1, 8, 8, 2, 3, 3, 3, 3, 1, 1),     # stride 3
    (3, 11, 6, 4, 5, 5, 3, 2, 2, 1),    # 5x5, mixed strides and paddings
    (2, 5, 5, 1, 1, 1, 2, 2, 0, 0),     # 1x1 kernel, stride 2
    (1, 6, 7, 2, 1, 1, 3, 3, 2, 2),     # 1x1 kernel in padding-only rows
    (2, 10, 9, 3, 3, 1, 1, 2, 1, 0),    # rectangular kernel
    (1, 4, 4, 2, 5, 5, 2, 2, 2, 2),     # kernel larger than the map
    (2, 13, 13, 2, 5, 3, 2, 3, 0, 2),
    (2, 4, 5, 3, 1, 1, 1, 1, 0, 0),     # the backend's plain-GEMM path
]


def _conv_id(g):
    n, h, w, c, kh, kw, sh, sw, ph, pw = g
    return f"n{n}-{h}x{w}x{c}-k{kh}x{kw}-s{sh}x{sw}-p{ph}x{pw}"


@st.composite
def conv_geometry(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5]))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    return (n, h, w, c, kh, kw, sh, sw, ph, pw), draw(st.integers(0, 2**31 - 1))


# (n, h, w, c, kh, kw, sh, sw)
POOL_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1),
    (2, 5, 5, 3, 2, 2, 2, 2),     # odd: floor mode drops the last row and column
    (1, 7, 7, 2, 3, 3, 2, 2),     # overlapping windows
    (2, 9, 8, 4, 3, 3, 3, 3),     # stride 3
    (1, 6, 9, 1, 2, 3, 1, 2),
    (3, 4, 4, 5, 4, 4, 1, 1),     # heavy overlap
    (1, 3, 3, 2, 3, 3, 1, 1),     # 1x1 output
    (2, 8, 8, 3, 2, 2, 2, 2),
    (1, 10, 7, 2, 3, 2, 3, 2),
]


def _pool_id(g):
    n, h, w, c, kh, kw, sh, sw = g
    return f"n{n}-{h}x{w}x{c}-k{kh}x{kw}-s{sh}x{sw}"


def pool_input(kind, shape, dtype, rng):
    """Max-pool inputs: 'normal' (distinct), 'integers' (many exact ties),
    'constant' (every window all-equal), 'relu' (ReLU output: runs of exact zeros)."""
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "integers":
        x = rng.integers(-2, 3, shape).astype(np.float64)
    elif kind == "constant":
        x = np.full(shape, -0.75)
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(shape) - 0.8, 0)
    else:
        raise ValueError(kind)
    return x.astype(dtype)


POOL_KINDS = ["normal", "integers", "constant", "relu"]


# ------------------------------------------- padded windows, im2col / col2im
def _window_cases(geom):
    """(b0, nb, iy0, rh) windows of one geometry: the whole padded batch, and a
    few rows of the last image starting inside the top padding and inside the map."""
    n, h, w, c, kh, kw, sh, sw, ph, pw = geom
    rows = output_size(h, kh, sh, ph)
    full = (0, n, -ph, (rows - 1) * sh + kh)
    return [full, (n - 1, 1, -ph, kh), (n - 1, 1, min(h - 1, 1), kh + sh)]


def check_window_kernels(geom, dtype, seed):
    """pad_window, im2col_window and col2im_window_add against their references,
    bit for bit where they copy; over the whole padded batch the window kernels
    are im2col_yxc / col2im_yxc of the padded input."""
    n, h, w, c, kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    info = dict(dtype=_dt(dtype), geometry=_conv_id(geom))
    for b0, nb, iy0, rh in _window_cases(geom):
        win = dict(window=(b0, nb, iy0, rh), **info)
        xp = np.full((nb, rh, w + 2 * pw, c), np.nan, dtype)
        cpu.pad_window(xp, x, b0, iy0, pw)
        assert_close(xp, ref.pad_window(x, b0, iy0, pw, nb, rh), op="pad_window", **win)
        expected = ref.im2col_window(xp, kh, kw, sh, sw)
        cols = np.full(expected.shape, np.nan, dtype)
        cpu.im2col_window(cols, xp, kh, kw, sh, sw)
        assert_close(cols, expected, op="im2col_window", **win)
        dcols = rng.standard_normal(cols.shape).astype(dtype)
        dxp = rng.standard_normal(xp.shape).astype(dtype)
        expected = ref.col2im_window_add(dxp, dcols, kh, kw, sh, sw)
        cpu.col2im_window_add(dxp, dcols, kh, kw, sh, sw)
        assert_close(dxp, expected, op="col2im_window_add", rtol=RTOL[np.dtype(dtype)], atol=RTOL[np.dtype(dtype)],
                     **win)
    b0, nb, iy0, rh = _window_cases(geom)[0]
    xp = np.empty((nb, rh, w + 2 * pw, c), dtype)
    cpu.pad_window(xp, x, b0, iy0, pw)
    cols = np.empty(ref.im2col_window(xp, kh, kw, sh, sw).shape, dtype)
    cpu.im2col_window(cols, xp, kh, kw, sh, sw)
    assert_close(cols, ref.im2col_yxc(x, kh, kw, sh, sw, ph, pw), op="im2col_window of the padded batch", **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", CONV_CASES, ids=_conv_id)
def test_window_kernels_edge_cases(geom, dtype):
    check_window_kernels(geom, dtype, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@HYP
@given(case=conv_geometry())
def test_window_kernels_random(case, dtype):
    geom, seed = case
    check_window_kernels(geom, dtype, seed)


@pytest.mark.parametrize("geom", CONV_CASES, ids=_conv_id)
def test_col2im_window_is_adjoint_of_im2col_window(geom):
    """<im2col(xp), C> == <xp, col2im(C)>: the backward pass is the true adjoint."""
    n, h, w, c, kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(3)
    rh = (output_size(h, kh, sh, ph) - 1) * sh + kh
    xp = rng.standard_normal((n, rh, w + 2 * pw, c))
    cols = np.empty(ref.im2col_window(xp, kh, kw, sh, sw).shape)
    cpu.im2col_window(cols, xp, kh, kw, sh, sw)
    cols_in = rng.standard_normal(cols.shape)
    dxp = np.zeros_like(xp)
    cpu.col2im_window_add(dxp, cols_in, kh, kw, sh, sw)
    lhs, rhs = float((cols * cols_in).sum()), float((xp * dxp).sum())
    assert math.isclose(lhs, rhs, rel_tol=1e-12, abs_tol=1e-12), \
        f"im2col/col2im_window adjoint [{_conv_id(geom)}]: <im2col(x), C> = {lhs!r}, <x, col2im(C)> = {rhs!r}"


# ---------------------------------------------------------------- max pool
def _kernel_pool(x, kh, kw, sh, sw):
    n, h, w, c = x.shape
    y = np.full((n, output_size(h, kh, sh, 0), output_size(w, kw, sw, 0), c), np.nan, x.dtype)
    idx = np.full(y.shape, 255, np.uint8)
    cpu.maxpool2d_forward(y, idx, x, kh, kw, sh, sw)
    return y, idx


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("geom", POOL_CASES, ids=_pool_id)
def test_maxpool2d_forward_backward(geom, kind, dtype):
    n, h, w, c, kh, kw, sh, sw = geom
    rng = np.random.default_rng(4)
    x = pool_input(kind, (n, h, w, c), dtype, rng)
    info = dict(dtype=_dt(dtype), geometry=_pool_id(geom), input=kind)
    y_ref, idx_ref = ref.maxpool2d_forward(x, kh, kw, sh, sw)
    y, idx = _kernel_pool(x, kh, kw, sh, sw)
    assert_close(y, y_ref, op="maxpool2d_forward values", **info)
    assert_close(idx, idx_ref, op="maxpool2d_forward argmax (ties -> first in row-major order)", **info)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx_ref = ref.maxpool2d_backward(dy, idx_ref, x.shape, kh, kw, sh, sw)
    dx = np.full(x.shape, np.nan, dtype)
    cpu.maxpool2d_backward(dx, dy, idx, kh, kw, sh, sw)
    assert_close(dx, dx_ref, op="maxpool2d_backward", rtol=RTOL[np.dtype(dtype)], **info)


TIE_WINDOWS = [  # a 2x2 window, the expected first-maximum position (row-major) and value
    ([[1, 3], [3, 1]], 1, 3),
    ([[0, 0], [0, 0]], 0, 0),
    ([[2, 1], [2, 2]], 0, 2),
    ([[-1, 0], [0, 0]], 1, 0),
    ([[-5, -5], [-5, -4]], 3, -4),
    ([[1, 1], [2, 2]], 2, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("window,pos,value", TIE_WINDOWS, ids=[str(w[0]) for w in TIE_WINDOWS])
def test_maxpool2d_ties_go_to_first_maximum(window, pos, value, dtype):
    x = np.array(window, dtype).reshape(1, 2, 2, 1)
    for name, (y, idx) in (("reference", ref.maxpool2d_forward(x, 2, 2, 2, 2)),
                           ("cpu", _kernel_pool(x, 2, 2, 2, 2))):
        assert (int(idx[0, 0, 0, 0]), float(y[0, 0, 0, 0])) == (pos, value), \
            f"maxpool2d_forward [{name}, {_dt(dtype)}] window {window}: got (position, value) " \
            f"({int(idx[0, 0, 0, 0])}, {float(y[0, 0, 0, 0])}), expected ({pos}, {value})"
    dx = np.full(x.shape, np.nan, dtype)
    cpu.maxpool2d_backward(dx, np.ones((1, 1, 1, 1), dtype), idx, 2, 2, 2, 2)
    expected = np.zeros(4, dtype)
    expected[pos] = 1
    assert_close(dx.reshape(-1), expected, op="maxpool2d_backward tie routing", window=str(window))


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_maxpool2d_overlapping_all_equal(dtype):
    """kernel 3 stride 2 on an all-zero 3x5 map: two windows share column 2;
    each routes to its own first element, (0, 0) and (0, 2)."""
    x = np.zeros((1, 3, 5, 1), dtype)
    y, idx = _kernel_pool(x, 3, 3, 2, 2)
    assert idx.reshape(-1).tolist() == [0, 0], f"maxpool2d_forward k3 s2 all-equal: idx {idx.reshape(-1)}"
    dx = np.full(x.shape, np.nan, dtype)
    cpu.maxpool2d_backward(dx, np.array([1.0, 10.0], dtype).reshape(1, 1, 2, 1), idx, 3, 3, 2, 2)
    expected = np.zeros((3, 5), dtype)
    expected[0, 0], expected[0, 2] = 1, 10
    assert_close(dx[0, :, :, 0], expected, op="maxpool2d_backward k3 s2 all-equal", dtype=_dt(dtype))


# ---------------------------------------------- fused bias + max pool + ReLU
BIAS_KINDS = ["normal", "integers", "mostly_negative"]


def _bias_pool_inputs(kind, shape, dtype, rng):
    c = shape[-1]
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype), rng.standard_normal(c).astype(dtype)
    if kind == "integers":  # exact ties before and after the bias
        return (rng.integers(-2, 3, shape).astype(dtype), rng.integers(-1, 2, c).astype(dtype))
    # most windows end <= 0 after the bias: the ReLU zeroes them
    return rng.standard_normal(shape).astype(dtype), np.full(c, -1.5, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("kind", BIAS_KINDS)
@pytest.mark.parametrize("geom", POOL_CASES, ids=_pool_id)
def test_bias_maxpool_relu_matches_chain(geom, kind, dtype):
    """bias_maxpool_relu == maxpool(relu(x + b)); maxpool_relu_backward == the
    chain's gradient (maxpool backward, then the ReLU mask)."""
    n, h, w, c, kh, kw, sh, sw = geom
    rng = np.random.default_rng(5)
    x, b = _bias_pool_inputs(kind, (n, h, w, c), dtype, rng)
    info = dict(dtype=_dt(dtype), geometry=_pool_id(geom), input=kind)
    r = ref.bias_relu(x, b)
    y_ref, idx_ref = ref.maxpool2d_forward(r, kh, kw, sh, sw)
    y = np.full(y_ref.shape, np.nan, dtype)
    idx = np.full(y_ref.shape, 255, np.uint8)
    cpu.bias_maxpool_relu(y, idx, x, b, kh, kw, sh, sw)
    assert_close(y, y_ref, op="bias_maxpool_relu values", **info)
    # Where the pooled output is 0 the gradient is 0 whichever element idx names.
    live = y_ref > 0
    assert_close(np.where(live, idx, 0), np.where(live, idx_ref, 0), op="bias_maxpool_relu argmax", **info)
    y_spec, idx_spec = ref.bias_maxpool_relu(x, b, kh, kw, sh, sw)
    assert_close(y, y_spec, op="bias_maxpool_relu values against its reference", **info)
    assert_close(idx, idx_spec, op="bias_maxpool_relu argmax against its reference", **info)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx_ref = ref.relu_backward(ref.maxpool2d_backward(dy, idx_ref, x.shape, kh, kw, sh, sw), r)
    dx = np.full(x.shape, np.nan, dtype)
    cpu.maxpool_relu_backward(dx, dy, y, idx, kh, kw, sh, sw)
    assert_close(dx, dx_ref, op="maxpool_relu_backward", rtol=RTOL[np.dtype(dtype)], **info)
    assert_close(dx, ref.maxpool_relu_backward(dy, y_spec, idx_spec, x.shape, kh, kw, sh, sw),
                 op="maxpool_relu_backward against its reference", rtol=RTOL[np.dtype(dtype)], **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_bias_maxpool_relu_tie_created_by_rounding(dtype):
    """x = [0, tiny], b = 1: x + b rounds to [1, 1] in ``dtype``, an exact tie, so
    the chain maxpool(relu(x + b)) (and PyTorch's conv-with-bias + ReLU + pool)
    routes the gradient to the first element. The fused kernel must agree: it
    must compare x + b, not x."""
    tiny = {np.float32: 1e-8, np.float64: 1e-17}[dtype]
    x = np.array([0.0, tiny], dtype).reshape(1, 1, 2, 1)
    b = np.ones(1, dtype)
    assert (x + b)[0, 0, 0, 0] == (x + b)[0, 0, 1, 0], "test premise: x + b must tie after rounding"
    r = ref.bias_relu(x, b)
    y_ref, idx_ref = ref.maxpool2d_forward(r, 1, 2, 1, 2)
    y = np.full(y_ref.shape, np.nan, dtype)
    idx = np.full(y_ref.shape, 255, np.uint8)
    cpu.bias_maxpool_relu(y, idx, x, b, 1, 2, 1, 2)
    assert_close(y, y_ref, op="bias_maxpool_relu values (rounding tie)", dtype=_dt(dtype))
    dx = np.full(x.shape, np.nan, dtype)
    cpu.maxpool_relu_backward(dx, np.ones_like(y), y, idx, 1, 2, 1, 2)
    dx_ref = ref.relu_backward(ref.maxpool2d_backward(np.ones_like(y), idx_ref, x.shape, 1, 2, 1, 2), r)
    assert_close(dx.reshape(-1), dx_ref.reshape(-1),
                 op="maxpool_relu_backward (tie created by rounding x + b: gradient must go to the first element)",
                 dtype=_dt(dtype), fused_idx=int(idx[0, 0, 0, 0]), chain_idx=int(idx_ref[0, 0, 0, 0]))


TILED_POOLS = [(2, 2), (3, 3), (1, 2), (2, 1), (1, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("kind", BIAS_KINDS)
@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (2, 5, 7, 3), (1, 9, 8, 16), (3, 4, 6, 5)], ids=str)
@pytest.mark.parametrize("pool", TILED_POOLS, ids=str)
def test_tiled_pool_kernels(pool, shape, kind, dtype):
    """The block epilogues for windows that tile the map (stride == kernel):
    bias_maxpool_relu_tiled and maxpool_relu_backward_tiled against their
    references (odd sizes: the last row and column are dropped), bit for bit."""
    kh, kw = pool
    rng = np.random.default_rng(22)
    x, b = _bias_pool_inputs(kind, shape, dtype, rng)
    info = dict(dtype=_dt(dtype), shape=shape, pool=pool, input=kind)
    y_ref, idx_ref = ref.bias_maxpool_relu_tiled(x, b, kh, kw)
    y = np.full(y_ref.shape, np.nan, dtype)
    idx = np.full(y_ref.shape, 255, np.uint8)
    cpu.bias_maxpool_relu_tiled(y, idx, x, b, kh, kw)
    assert_close(y, y_ref, op="bias_maxpool_relu_tiled values", **info)
    assert_close(idx, idx_ref, op="bias_maxpool_relu_tiled argmax", **info)
    dy = rng.standard_normal(y.shape).astype(dtype)
    n, h, w, c = shape
    for oy0, r in ((0, h), (1, h - 1), (h - 1, 1), (h // 2, h - h // 2)):  # the whole map, and blocks of rows
        if r < 1:
            continue
        dx = np.full((n, r, w, c), np.nan, dtype)
        cpu.maxpool_relu_backward_tiled(dx, dy, y, idx, kh, kw, oy0)
        assert_close(dx, ref.maxpool_relu_backward_tiled(dy, y_ref, idx_ref, dx.shape, kh, kw, oy0),
                     op="maxpool_relu_backward_tiled", rows=(oy0, r), **info)
    full = ref.maxpool_relu_backward_tiled(dy, y_ref, idx_ref, shape, kh, kw, 0)
    assert_close(full, ref.maxpool_relu_backward(dy, y_ref, idx_ref, shape, kh, kw, kh, kw),
                 op="maxpool_relu_backward_tiled reference == maxpool_relu_backward", **info)


# ------------------------------------------------- one-channel direct convolution
# (n, h, w, o, kh, kw, ph, pw): stride 1, the case the direct kernels cover
CONV1_CASES = [
    (1, 1, 1, 2, 3, 3, 1, 1),       # 1x1 map: every tap but the centre in the padding
    (2, 9, 9, 3, 3, 3, 1, 1),
    (1, 7, 8, 4, 3, 3, 0, 0),       # valid, odd sizes
    (2, 10, 7, 2, 5, 5, 2, 2),
    (1, 6, 9, 3, 2, 3, 0, 1),       # rectangular kernel, mixed padding
    (3, 13, 11, 5, 1, 1, 0, 0),     # 1x1 kernel
    (1, 4, 4, 2, 5, 3, 2, 0),       # kernel taller than the map
    (2, 70, 33, 16, 3, 3, 1, 1),    # several row chunks per image
]
CONV1_POOLS = [(2, 2, 2, 2), (3, 3, 3, 3), (3, 3, 2, 2), (2, 3, 1, 2)]


def _conv1_id(g):
    return "n{}-{}x{}-o{}-k{}x{}-p{}x{}".format(*g)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", CONV1_CASES, ids=_conv1_id)
def test_conv1_plane_kernels(geom, dtype):
    """conv1_plane and conv1_plane_pool against their references; the fused
    kernel equals conv1_plane(relu) + maxpool2d_forward bit for bit (values, and
    positions wherever the output is live), which keeps the fused and the
    unfused first stage identical."""
    n, h, w, o, kh, kw, ph, pw = geom
    rng = np.random.default_rng(23)
    x = rng.standard_normal((n, h, w, 1)).astype(dtype)
    wt = rng.standard_normal((o, 1, kh, kw)).astype(dtype)
    b = (rng.standard_normal(o) * 0.5).astype(dtype)
    tol = RTOL[np.dtype(dtype)]
    info = dict(dtype=_dt(dtype), geometry=_conv1_id(geom))
    for relu in (False, True):
        expected = ref.conv1_plane(x, wt, b, ph, pw, relu)
        y = np.full(expected.shape, np.nan, dtype)
        cpu.conv1_plane(y, x, wt, b, ph, pw, relu)
        assert_close(y, expected, op="conv1_plane", rtol=tol, atol=tol * float(np.abs(expected).max()), relu=relu,
                     **info)
    for pkh, pkw, psh, psw in CONV1_POOLS:
        if y.shape[1] < pkh or y.shape[2] < pkw:
            continue
        pinfo = dict(pool=(pkh, pkw, psh, psw), **info)
        p_ref, i_ref = ref.conv1_plane_pool(x, wt, b, ph, pw, pkh, pkw, psh, psw)
        pooled = np.full(p_ref.shape, np.nan, dtype)
        idx = np.full(p_ref.shape, 255, np.uint8)
        cpu.conv1_plane_pool(pooled, idx, x, wt, b, ph, pw, pkh, pkw, psh, psw)
        assert_close(pooled, p_ref, op="conv1_plane_pool", rtol=tol, atol=tol * float(np.abs(p_ref).max()), **pinfo)
        chain, chain_idx = ref.maxpool2d_forward(y, pkh, pkw, psh, psw)
        assert_close(pooled, chain, op="conv1_plane_pool == conv1_plane(relu) + maxpool", **pinfo)
        live = chain > 0
        assert_close(np.where(live, idx, 0), np.where(live, chain_idx, 0),
                     op="conv1_plane_pool argmax == the chain's", **pinfo)


# ------------------------------------------------------- Winograd F(2x2, 3x3)
# (nb, rh, wp, c, o): padded windows; odd sizes give half-used last tiles
WINO_CASES = [(1, 4, 4, 1, 1), (2, 6, 8, 3, 4), (1, 5, 7, 2, 3), (3, 8, 10, 5, 6), (1, 12, 6, 16, 32), (2, 7, 5, 4, 2)]


def _wino_id(g):
    return "nb{}-{}x{}-c{}-o{}".format(*g)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", WINO_CASES, ids=_wino_id)
def test_winograd_kernels(geom, dtype):
    """The five Winograd kernels against their references; planes longer than
    the tiles (the backend pads them) keep their extra rows untouched."""
    nb, rh, wp, c, o = geom
    rng = np.random.default_rng(24)
    th, tw = (rh - 2) // 2, (wp - 2) // 2
    t = nb * th * tw
    tol = RTOL[np.dtype(dtype)]
    info = dict(dtype=_dt(dtype), geometry=_wino_id(geom))
    xp = rng.standard_normal((nb, rh, wp, c)).astype(dtype)
    v = np.full((16, t + 3, c), np.nan, dtype)
    cpu.winograd_input(v, xp)
    assert_close(v[:, :t], ref.winograd_input(xp), op="winograd_input", rtol=tol, atol=tol * 4, **info)
    assert np.isnan(v[:, t:]).all(), f"winograd_input [{info}]: wrote past its {t} tiles"
    m = rng.standard_normal((16, t, o)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    r, ow = 2 * th - (rh % 2 == 1), 2 * tw - (wp % 2 == 1)  # odd: the last tile row/column half used
    for relu in (False, True):
        y = np.full((nb, r, ow, o), np.nan, dtype)
        cpu.winograd_output(y, m, b, relu)
        assert_close(y, ref.winograd_output(m, b, relu, nb, r, ow), op="winograd_output", rtol=tol, atol=tol * 16,
                     relu=relu, **info)
    y = np.full((nb, th, tw, o), np.nan, dtype)
    idx = np.full(y.shape, 255, np.uint8)
    cpu.winograd_output_pool(y, idx, m, b)
    y_ref, idx_ref = ref.winograd_output_pool(m, b, nb, th, tw)
    assert_close(y, y_ref, op="winograd_output_pool", rtol=tol, atol=tol * 16, **info)
    assert_close(np.where(y_ref > 0, idx, 0), np.where(y_ref > 0, idx_ref, 0), op="winograd_output_pool argmax",
                 **info)
    g = rng.standard_normal((nb, r, ow, o)).astype(dtype)
    dm = np.full((16, t, o), np.nan, dtype)
    cpu.winograd_output_adjoint(dm, g)
    assert_close(dm, ref.winograd_output_adjoint(g), op="winograd_output_adjoint", rtol=tol, atol=tol * 4, **info)
    dv = rng.standard_normal((16, t, c)).astype(dtype)
    dxp = rng.standard_normal(xp.shape).astype(dtype)
    expected = ref.winograd_input_adjoint(dxp, dv)
    cpu.winograd_input_adjoint(dxp, dv)
    assert_close(dxp, expected, op="winograd_input_adjoint", rtol=tol, atol=tol * 16, **info)


# ------------------------------------------------------- Winograd F(4x4, 3x3)
# (nb, th, tw, c, o, r_short, ow_short): TH x TW tiles of 6x6 (stride 4); the outputs
# cover all but the last r_short rows / ow_short columns of the 4*TH x 4*TW tiles
WINO4_CASES = [(1, 1, 1, 1, 1, 0, 0), (2, 2, 3, 3, 4, 1, 3), (1, 3, 2, 2, 5, 2, 1), (3, 2, 2, 5, 6, 3, 2),
               (1, 2, 4, 16, 32, 0, 0), (2, 1, 3, 4, 2, 3, 3)]


def _wino4_id(g):
    return "nb{}-{}x{}tiles-c{}-o{}-short{}x{}".format(*g)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", WINO4_CASES, ids=_wino4_id)
def test_winograd4_kernels(geom, dtype):
    """The three F(4x4, 3x3) kernels against their references, partly used last
    tiles included; planes longer than the tiles keep their extra rows untouched.
    The transforms' factors (up to 8, and 4 and 5 squared in B^T d B) scale the
    rounding, hence the tolerances in units of the inputs' size."""
    nb, th, tw, c, o, r_short, ow_short = geom
    rng = np.random.default_rng(26)
    t = nb * th * tw
    tol = RTOL[np.dtype(dtype)]
    info = dict(dtype=_dt(dtype), geometry=_wino4_id(geom))
    xp = rng.standard_normal((nb, 4 * th + 2, 4 * tw + 2, c)).astype(dtype)
    v = np.full((36, t + 3, c), np.nan, dtype)
    cpu.winograd4_input(v, xp)
    assert_close(v[:, :t], ref.winograd4_input(xp), op="winograd4_input", rtol=tol, atol=tol * 100, **info)
    assert np.isnan(v[:, t:]).all(), f"winograd4_input [{info}]: wrote past its {t} tiles"
    m = rng.standard_normal((36, t, o)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    r, ow = 4 * th - r_short, 4 * tw - ow_short
    for relu in (False, True):
        y = np.full((nb, r, ow, o), np.nan, dtype)
        cpu.winograd4_output(y, m, b, relu)
        assert_close(y, ref.winograd4_output(m, b, relu, nb, r, ow), op="winograd4_output", rtol=tol,
                     atol=tol * 400, relu=relu, **info)
    ph, pw = 2 * th - r_short // 2, 2 * tw - ow_short // 2
    y = np.full((nb, ph, pw, o), np.nan, dtype)
    idx = np.full(y.shape, 255, np.uint8)
    cpu.winograd4_output_pool(y, idx, m, b)
    y_ref, idx_ref = ref.winograd4_output_pool(m, b, nb, ph, pw)
    assert_close(y, y_ref, op="winograd4_output_pool", rtol=tol, atol=tol * 400, **info)
    # positions only where the maximum is clear of rounding (the products are random, not a conv)
    z = ref.winograd4_output(m, b, False, nb, 2 * ph, 2 * pw).reshape(nb, ph, 2, pw, 2, o)
    top2 = np.sort(z.transpose(0, 1, 3, 5, 2, 4).reshape(nb, ph, pw, o, 4), axis=-1)[..., -2:]
    clear = (y_ref > 0) & (top2[..., 1] - top2[..., 0] > tol * 4000)
    assert_close(np.where(clear, idx, 0), np.where(clear, idx_ref, 0), op="winograd4_output_pool argmax", **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_winograd_wide_and_narrow_paths_agree_bit_for_bit(dtype):
    """From WIDE_CHANNELS channels the input transforms and the F(2x2) adjoints run one
    loop per transformed value, below it one loop per tile: channels are independent,
    so a wide call equals, bit for bit, one narrow call per channel."""
    from xraynet.kernels.cpu_blocks import WIDE_CHANNELS

    rng = np.random.default_rng(29)
    c = WIDE_CHANNELS + 3
    cases = [(cpu.winograd_input, 16, rng.standard_normal((2, 8, 10, c)), (2 * 3 * 4)),
             (cpu.winograd4_input, 36, rng.standard_normal((2, 10, 14, c)), (2 * 2 * 3))]
    for kernel, positions, xp, t in cases:
        xp = xp.astype(dtype)
        wide = np.empty((positions, t, c), dtype)
        kernel(wide, xp)
        for ci in range(c):
            narrow = np.empty((positions, t, 1), dtype)
            kernel(narrow, np.ascontiguousarray(xp[..., ci:ci + 1]))
            np.testing.assert_array_equal(wide[..., ci:ci + 1].view(np.uint8), narrow.view(np.uint8),
                                          err_msg=f"{kernel.__name__}: channel {ci}")
    g = rng.standard_normal((2, 7, 9, c)).astype(dtype)  # odd sizes: half-used last tiles
    wide = np.empty((16, 2 * 4 * 5, c), dtype)
    cpu.winograd_output_adjoint(wide, g)
    for oc in range(c):
        narrow = np.empty((16, 2 * 4 * 5, 1), dtype)
        cpu.winograd_output_adjoint(narrow, np.ascontiguousarray(g[..., oc:oc + 1]))
        np.testing.assert_array_equal(wide[..., oc:oc + 1].view(np.uint8), narrow.view(np.uint8),
                                      err_msg=f"winograd_output_adjoint: channel {oc}")
    dv = rng.standard_normal((16, 2 * 3 * 4, c)).astype(dtype)
    wide = rng.standard_normal((2, 8, 10, c)).astype(dtype)  # added onto: overlapping windows
    narrow = [np.ascontiguousarray(wide[..., ci:ci + 1]) for ci in range(c)]
    cpu.winograd_input_adjoint(wide, dv)
    for ci in range(c):
        cpu.winograd_input_adjoint(narrow[ci], np.ascontiguousarray(dv[..., ci:ci + 1]))
        np.testing.assert_array_equal(wide[..., ci:ci + 1].view(np.uint8), narrow[ci].view(np.uint8),
                                      err_msg=f"winograd_input_adjoint: channel {ci}")


def test_winograd4_weights_match_the_reference():
    from xraynet.backends.cpu_winograd import winograd4_weights

    w = np.random.default_rng(27).standard_normal((5, 3, 3, 3))
    assert_close(winograd4_weights(w), ref.winograd4_weights(w), op="winograd4_weights", rtol=1e-14, atol=1e-14)
    w32 = w.astype(np.float32)
    assert winograd4_weights(w32).dtype == np.float32
    assert_close(winograd4_weights(w32), ref.winograd4_weights(w32), op="winograd4_weights float32", rtol=1e-6,
                 atol=1e-6)


def test_winograd4_reference_is_the_convolution():
    """The F(4x4, 3x3) matrices: B^T, G and A^T of the reference give the direct
    convolution exactly (float64), whole tiles and a partly used last one."""
    rng = np.random.default_rng(28)
    x, w, b = rng.standard_normal((2, 9, 11, 3)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    want = ref.conv2d_forward(x, w, b, (1, 1), (1, 1))
    th, tw = 3, 3
    xp = np.zeros((2, 4 * th + 2, 4 * tw + 2, 3))
    xp[:, 1:10, 1:12] = x
    m = np.matmul(ref.winograd4_input(xp), ref.winograd4_weights(w))
    assert_close(ref.winograd4_output(m, b, False, 2, 9, 11), want, op="F(4x4, 3x3) reference", rtol=1e-12,
                 atol=1e-12)


@pytest.mark.parametrize("geom", WINO_CASES, ids=_wino_id)
def test_winograd_adjoints(geom):
    """<winograd_input(x), dV> == <x, winograd_input_adjoint(dV)> and
    <winograd_output(M), dY> == <M, winograd_output_adjoint(dY)> (no bias):
    the backward transforms are the true adjoints of the forward ones."""
    nb, rh, wp, c, o = geom
    rng = np.random.default_rng(25)
    th, tw = (rh - 2) // 2, (wp - 2) // 2
    t = nb * th * tw
    xp, dv = rng.standard_normal((nb, rh, wp, c)), rng.standard_normal((16, t, c))
    v = np.empty((16, t, c))
    cpu.winograd_input(v, xp)
    dxp = np.zeros_like(xp)
    cpu.winograd_input_adjoint(dxp, dv)
    assert math.isclose(float((v * dv).sum()), float((xp * dxp).sum()), rel_tol=1e-12, abs_tol=1e-12)
    r, ow = 2 * th - (rh % 2 == 1), 2 * tw - (wp % 2 == 1)
    m, g = rng.standard_normal((16, t, o)), rng.standard_normal((nb, r, ow, o))
    y = np.empty((nb, r, ow, o))
    cpu.winograd_output(y, m, np.zeros(o), False)
    dm = np.empty((16, t, o))
    cpu.winograd_output_adjoint(dm, g)
    assert math.isclose(float((y * g).sum()), float((m * dm).sum()), rel_tol=1e-12, abs_tol=1e-12)


def test_winograd_weights_match_the_reference():
    from xraynet.backends.cpu_winograd import winograd_weights

    w = np.random.default_rng(26).standard_normal((5, 3, 3, 3))
    expected = np.einsum("ik,ockl,jl->ijco", ref.WINOGRAD_G, w, ref.WINOGRAD_G).reshape(16, 3, 5)
    assert_close(winograd_weights(w), expected, op="winograd_weights", rtol=1e-15, atol=1e-15)


# ------------------------------------------------------------ elementwise
ROWS_COLS = [(1, 1), (5, 3), (37, 8), (1000, 2), (3, 65)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("mc", ROWS_COLS, ids=str)
def test_bias_relu_and_add_bias(mc, dtype):
    rng = np.random.default_rng(6)
    y0 = rng.standard_normal(mc).astype(dtype)
    b = rng.standard_normal(mc[1]).astype(dtype)
    y = y0.copy()
    cpu.bias_relu(y, b)
    assert_close(y, ref.bias_relu(y0, b), op="bias_relu", dtype=_dt(dtype), shape=mc)
    y = y0.copy()
    cpu.add_bias(y, b)
    assert_close(y, ref.add_bias(y0, b), op="add_bias", dtype=_dt(dtype), shape=mc)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("size", [1, 7, 1000, 4099])
def test_relu_and_relu_backward(size, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(size).astype(dtype)
    x[::5] = 0  # exact zeros: the gradient there is 0
    y = np.full_like(x, np.nan)
    cpu.relu_forward(y, x)
    assert_close(y, ref.relu_forward(x), op="relu_forward", dtype=_dt(dtype), size=size)
    inplace = x.copy()
    cpu.relu_forward(inplace, inplace)
    assert_close(inplace, ref.relu_forward(x), op="relu_forward in place", dtype=_dt(dtype), size=size)

    dy = rng.standard_normal(size).astype(dtype)
    dx = np.full_like(x, np.nan)
    cpu.relu_backward(dx, dy, y)
    assert_close(dx, ref.relu_backward(dy, y), op="relu_backward", dtype=_dt(dtype), size=size)


@pytest.mark.parametrize("x_dtype,out_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                               (np.float32, np.float64)], ids=lambda d: _dt(d))
@pytest.mark.parametrize("mc", [(0, 3), (1, 1), (7, 3), (64, 2), (65, 5), (200, 5), (3000, 16)], ids=str)
def test_channel_sum(mc, x_dtype, out_dtype):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(mc) + 0.5).astype(x_dtype)
    out = np.full(mc[1], np.nan, out_dtype)
    cpu.channel_sum(out, x)
    expected = ref.channel_sum(x)
    scale = np.abs(x).astype(np.float64).sum() + 1
    assert_close(out, expected, op="channel_sum", rtol=RTOL[np.dtype(out_dtype)], atol=1e-15 * scale,
                 x_dtype=_dt(x_dtype), out_dtype=_dt(out_dtype), shape=mc)


# ------------------------------------------------------------- optimisers
def _update_tols(p_old, dtype):
    """The step is compared, not the parameter: a parameter tolerance would hide
    an update that is off by a large fraction of lr. Rounding of p itself costs
    a few ulps of max|p|."""
    eps = np.finfo(dtype).eps
    return dict(rtol=RTOL[np.dtype(dtype)], atol=8 * eps * float(np.abs(p_old).max()))


def _state_tols(dtype, *inputs):
    """Moment buffers are differences of O(|g|) terms (m = m + (1-b1)(g - m)) and
    cancel; the kernel rounds once in float64, the reference in ``dtype`` at
    each operation, so allow a few ulps of the inputs' magnitude."""
    eps = np.finfo(dtype).eps
    return dict(rtol=RTOL[np.dtype(dtype)], atol=8 * eps * sum(float(np.abs(a).max()) for a in inputs))


ADAM_CASES = [  # lr, beta1, beta2, eps, weight_decay
    (1e-3, 0.9, 0.999, 1e-8, 0.0),
    (1e-3, 0.9, 0.999, 1e-8, 1e-2),
    (1e-1, 0.5, 0.9, 1e-6, 0.0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("hyper", ADAM_CASES, ids=str)
@pytest.mark.parametrize("size", [1, 13, 1000])
def test_adam_update(size, hyper, dtype):
    lr, b1, b2, eps, wd = hyper
    rng = np.random.default_rng(9)
    p = rng.standard_normal(size).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step in (1, 2, 3):
        g = rng.standard_normal(size).astype(dtype)
        g[0] = 0  # a zero gradient still moves p through m
        p0, m0, v0 = p.copy(), m.copy(), v.copy()
        pr, mr, vr = ref.adam_update(p0, m0, v0, g, step, AdamHyper(lr, b1, b2, eps, wd))
        cpu.adam_update(p, m, v, g, lr, b1, b2, eps, wd, 1 - b1 ** step, math.sqrt(1 - b2 ** step))
        info = dict(dtype=_dt(dtype), size=size, step=step, hyper=hyper)
        assert_close(m, mr, op="adam_update m", **_state_tols(dtype, g, p0, m0), **info)
        assert_close(v, vr, op="adam_update v", **_state_tols(dtype, (g + wd * p0) ** 2, v0), **info)
        assert_close(p - p0, pr - p0, op="adam_update step (p_new - p_old)", **_update_tols(p0, dtype), **info)


SGD_CASES = [  # momentum, nesterov, weight_decay
    (0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0), (0.9, False, 1e-2),
    (0.9, True, 0.0), (0.9, True, 1e-2), (0.5, True, 1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("hyper", SGD_CASES, ids=str)
@pytest.mark.parametrize("size", [1, 13, 1000])
def test_sgd_update(size, hyper, dtype):
    momentum, nesterov, wd = hyper
    lr = 0.05
    rng = np.random.default_rng(10)
    p = rng.standard_normal(size).astype(dtype)
    # Garbage in the buffer at step 1: the first step must start it from g, not read it.
    buf = (rng.standard_normal(size) * 100).astype(dtype)
    for step in (1, 2, 3):
        g = rng.standard_normal(size).astype(dtype)
        p0, buf0 = p.copy(), buf.copy()
        pr, bufr = ref.sgd_update(p0, buf0.copy(), g, step, SGDHyper(lr, momentum, wd, nesterov))
        cpu.sgd_update(p, buf, g, lr, momentum, wd, nesterov, step == 1)
        info = dict(dtype=_dt(dtype), size=size, step=step, momentum=momentum, nesterov=nesterov, wd=wd)
        assert_close(p - p0, pr - p0, op="sgd_update step (p_new - p_old)", **_update_tols(p0, dtype), **info)
        if momentum == 0:
            assert_close(buf, buf0, op="sgd_update without momentum must leave the buffer alone", **info)
        else:
            assert_close(buf, bufr, op="sgd_update momentum buffer", **_state_tols(dtype, g, p0, buf0), **info)


# ====================================================== backend-level ops
def _np(bk, a):
    return np.asarray(bk.to_numpy(a))


BACKEND_CONV = [g for g in CONV_CASES if min(output_size(g[1], g[4], 1, g[8]), output_size(g[2], g[5], 1, g[9])) >= 1]


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", BACKEND_CONV, ids=_conv_id)
def test_backend_conv2d(backend, geom, dtype, relu):
    """conv2d_forward / conv2d_backward against a direct (no im2col) float64 convolution."""
    bk = backend
    n, h, w, c, kh, kw, sh, sw, ph, pw = geom
    o = 3
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((o, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    tol = RTOL[np.dtype(dtype)]
    info = dict(backend=bk.name, dtype=_dt(dtype), geometry=_conv_id(geom), relu=relu)
    y, ctx = bk.conv2d_forward(bk.asarray(x), bk.asarray(wt), bk.asarray(b), (sh, sw), (ph, pw), relu=relu)
    y_exp = ref.conv2d_forward(x, wt, b, (sh, sw), (ph, pw))
    if relu:
        y_exp = np.maximum(y_exp, 0)
    scale = float(np.abs(y_exp).max()) + 1e-30
    y = _np(bk, y)
    assert_close(y, y_exp, op="conv2d_forward", rtol=tol, atol=tol * scale, **info)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = bk.conv2d_backward(bk.asarray(dy), ctx, bk.asarray(wt), need_dx=True)
    dy_eff = np.where(y > 0, dy, 0) if relu else dy
    dx_e, dw_e, db_e = ref.conv2d_backward(dy_eff, x, wt, (sh, sw), (ph, pw))
    for name, got, exp in (("dx", dx, dx_e), ("dw", dw, dw_e), ("db", db, db_e)):
        got = _np(bk, got)
        assert got.dtype == np.dtype(dtype), f"conv2d_backward {name} [{info}]: dtype {got.dtype}, expected {dtype}"
        assert_close(got, exp, op=f"conv2d_backward {name}", rtol=tol,
                     atol=tol * (float(np.abs(exp).max()) + 1e-30), **info)
    _, ctx = bk.conv2d_forward(bk.asarray(x), bk.asarray(wt), bk.asarray(b), (sh, sw), (ph, pw), relu=relu)
    none_dx, _, _ = bk.conv2d_backward(bk.asarray(dy), ctx, bk.asarray(wt), need_dx=False)
    assert none_dx is None, "conv2d_backward(need_dx=False) must skip the input gradient"


# (n, h, w, c, o, k, stride, pad, pool_kernel, pool_stride)
FUSED_CASES = [
    (2, 9, 9, 2, 3, 3, 1, 1, 2, 2),
    (1, 7, 8, 1, 4, 3, 1, 0, 3, 2),     # overlapping pool windows, odd sizes
    (2, 10, 7, 3, 2, 5, 2, 2, 2, 2),    # strided 5x5 conv
    (1, 4, 4, 2, 3, 1, 1, 0, 2, 2),     # 1x1 conv (plain GEMM path)
    (1, 6, 6, 1, 2, 3, 1, 1, 3, 3),
    (1, 3, 3, 1, 2, 3, 1, 1, 3, 3),     # 1x1 pooled output
]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_backend_conv2d_relu_pool_equals_unfused_chain(backend, case, dtype):
    """The fused conv + bias + ReLU + max pool equals the backend's own unfused
    chain (conv2d_forward(relu=True) then maxpool2d), gradients included."""
    bk = backend
    n, h, w, c, o, k, s, p, pk, ps = case
    rng = np.random.default_rng(12)
    x = bk.asarray(rng.standard_normal((n, h, w, c)).astype(dtype))
    wt = bk.asarray(rng.standard_normal((o, c, k, k)).astype(dtype))
    b = bk.asarray((rng.standard_normal(o) * 0.5).astype(dtype))
    info = dict(backend=bk.name, dtype=_dt(dtype), case=case)
    pooled, fctx = bk.conv2d_relu_pool_forward(x, wt, b, (s, s), (p, p), (pk, pk), (ps, ps))
    r, cctx = bk.conv2d_forward(x, wt, b, (s, s), (p, p), relu=True)
    y_chain, idx = bk.maxpool2d_forward(r, (pk, pk), (ps, ps))
    assert_close(_np(bk, pooled), _np(bk, y_chain), op="conv2d_relu_pool_forward", **info)

    dy = bk.asarray(rng.standard_normal(pooled.shape).astype(dtype))
    dx, dw, db = bk.conv2d_relu_pool_backward(dy, fctx, wt, need_dx=True)
    dr = bk.maxpool2d_backward(dy, idx, r.shape, (pk, pk), (ps, ps))
    dx_c, dw_c, db_c = bk.conv2d_backward(dr, cctx, wt, need_dx=True)
    tol = RTOL[np.dtype(dtype)]
    for name, got, exp in (("dx", dx, dx_c), ("dw", dw, dw_c), ("db", db, db_c)):
        exp = _np(bk, exp)
        assert_close(_np(bk, got), exp, op=f"conv2d_relu_pool_backward {name}", rtol=tol,
                     atol=tol * (float(np.abs(exp).max()) + 1e-30), **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("geom", POOL_CASES[1:4], ids=_pool_id)
def test_backend_maxpool2d(backend, geom, kind, dtype):
    bk = backend
    n, h, w, c, kh, kw, sh, sw = geom
    rng = np.random.default_rng(13)
    x = pool_input(kind, (n, h, w, c), dtype, rng)
    info = dict(backend=bk.name, dtype=_dt(dtype), geometry=_pool_id(geom), input=kind)
    y, idx = bk.maxpool2d_forward(bk.asarray(x), (kh, kw), (sh, sw))
    y_ref, idx_ref = ref.maxpool2d_forward(x, kh, kw, sh, sw)
    assert_close(_np(bk, y), y_ref, op="maxpool2d_forward", **info)
    assert_close(_np(bk, idx), idx_ref, op="maxpool2d_forward argmax", **info)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = bk.maxpool2d_backward(bk.asarray(dy), idx, x.shape, (kh, kw), (sh, sw))
    assert_close(_np(bk, dx), ref.maxpool2d_backward(dy, idx_ref, x.shape, kh, kw, sh, sw),
                 op="maxpool2d_backward", rtol=RTOL[np.dtype(dtype)], **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 4), (3, 17)], ids=str)
def test_backend_relu(backend, shape, dtype):
    bk = backend
    rng = np.random.default_rng(14)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::3] = 0
    y = bk.relu_forward(bk.asarray(x))
    assert_close(_np(bk, y), np.maximum(x, 0), op="relu_forward", backend=bk.name, shape=shape)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = bk.relu_backward(bk.asarray(dy), y)
    assert_close(_np(bk, dx), ref.relu_backward(dy, ref.relu_forward(x)), op="relu_backward", backend=bk.name,
                 shape=shape)


def test_backend_ops_accept_noncontiguous_inputs(backend):
    """Backend ops take any strided input (a transposed view here, of a device
    array on the GPU backends) and return the same as for a contiguous copy."""
    bk = backend
    rng = np.random.default_rng(21)
    view = bk.asarray(rng.standard_normal((2, 3, 5, 4)).copy()).transpose(0, 2, 3, 1)  # NHWC view of NCHW
    dense = bk.asarray(np.ascontiguousarray(bk.to_numpy(view)))
    w, b = bk.asarray(rng.standard_normal((3, 3, 3, 3))), bk.asarray(rng.standard_normal(3))
    cases = {
        "relu_forward": lambda a: bk.relu_forward(a),
        "relu_backward (dy)": lambda a: bk.relu_backward(a, bk.relu_forward(dense)),
        "maxpool2d_forward": lambda a: bk.maxpool2d_forward(a, (2, 2), (2, 2))[0],
        "conv2d_forward": lambda a: bk.conv2d_forward(a, w, b, (1, 1), (1, 1))[0],
        "global_avg_pool_forward": lambda a: bk.global_avg_pool_forward(a),
    }
    for op, f in cases.items():
        # rtol: NumPy may sum a strided view in another order (GAP's mean)
        assert_close(_np(bk, f(view)), _np(bk, f(dense)), op=f"{op} on a non-contiguous input", rtol=1e-12,
                     backend=bk.name, shape=view.shape, strides=view.strides)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("nio", [(1, 1, 1), (4, 7, 3), (9, 33, 2)], ids=str)
def test_backend_dense(backend, nio, dtype):
    bk = backend
    n, fin, fout = nio
    rng = np.random.default_rng(15)
    x, w = rng.standard_normal((n, fin)).astype(dtype), rng.standard_normal((fout, fin)).astype(dtype)
    b, dy = rng.standard_normal(fout).astype(dtype), rng.standard_normal((n, fout)).astype(dtype)
    tol = RTOL[np.dtype(dtype)]
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    info = dict(backend=bk.name, dtype=_dt(dtype), shape=nio)
    y = bk.dense_forward(bk.asarray(x), bk.asarray(w), bk.asarray(b))
    exp = x64 @ w64.T + b
    assert_close(_np(bk, y), exp, op="dense_forward", rtol=tol, atol=tol * np.abs(exp).max(), **info)
    dx, dw, db = bk.dense_backward(bk.asarray(dy), bk.asarray(x), bk.asarray(w))
    for name, got, e in (("dx", dx, dy64 @ w64), ("dw", dw, dy64.T @ x64), ("db", db, dy64.sum(0))):
        assert_close(_np(bk, got), e, op=f"dense_backward {name}", rtol=tol, atol=tol * np.abs(e).max(), **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 4), (3, 7, 7, 2)], ids=str)
def test_backend_global_avg_pool(backend, shape, dtype):
    bk = backend
    rng = np.random.default_rng(16)
    x = rng.standard_normal(shape).astype(dtype)
    tol = RTOL[np.dtype(dtype)]
    y = bk.global_avg_pool_forward(bk.asarray(x))
    assert_close(_np(bk, y), ref.global_avg_pool_forward(x), op="global_avg_pool_forward", rtol=tol,
                 atol=tol, backend=bk.name, shape=shape)
    dy = rng.standard_normal((shape[0], shape[3])).astype(dtype)
    dx = bk.global_avg_pool_backward(bk.asarray(dy), shape)
    exp = ref.global_avg_pool_backward(dy, shape)
    assert_close(_np(bk, dx), exp, op="global_avg_pool_backward", rtol=tol, backend=bk.name, shape=shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (4, 3, 5, 3), (2, 1, 1, 6)], ids=str)
def test_backend_batchnorm(backend, shape, dtype):
    bk = backend
    rng = np.random.default_rng(17)
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm0, rv0 = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    rm, rv = bk.asarray(rm0.copy()), bk.asarray(rv0.copy())
    mom, eps = 0.1, 1e-5
    tol = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]
    info = dict(backend=bk.name, dtype=_dt(dtype), shape=shape)
    stats = BatchNormStats(rm, rv, mom, eps)
    y, ctx = bk.batchnorm_forward(bk.asarray(x), bk.asarray(gamma), bk.asarray(beta), stats, True)
    y_e, mean, var = ref.batchnorm_forward_train(x, gamma.astype(np.float64), beta.astype(np.float64), eps)
    assert_close(_np(bk, y), y_e, op="batchnorm_forward (training)", rtol=tol, atol=tol, **info)
    m = shape[0] * shape[1] * shape[2]
    rm_e, rv_e = ref.batchnorm_running_stats(rm0, rv0, mean, var, m, mom)
    assert_close(_np(bk, rm), rm_e, op="batchnorm running_mean", rtol=tol, atol=tol, **info)
    assert_close(_np(bk, rv), rv_e, op="batchnorm running_var (unbiased)", rtol=tol, atol=tol, **info)

    dy = rng.standard_normal(shape).astype(dtype)
    dx, dg, db = bk.batchnorm_backward(bk.asarray(dy), ctx, bk.asarray(gamma))
    if m > 1:  # with one value per channel the batch-normalised output is constant
        dx_e, dg_e, db_e = ref.batchnorm_backward_train(dy, x, gamma.astype(np.float64), eps)
        for name, got, e in (("dx", dx, dx_e), ("dgamma", dg, dg_e), ("dbeta", db, db_e)):
            assert_close(_np(bk, got), e, op=f"batchnorm_backward {name}", rtol=tol,
                         atol=tol * (np.abs(e).max() + 1), **info)

    y, _ = bk.batchnorm_forward(bk.asarray(x), bk.asarray(gamma), bk.asarray(beta),
                                BatchNormStats(bk.asarray(rm0), bk.asarray(rv0), mom, eps), False)
    y_e = ref.batchnorm_forward_eval(x, gamma, beta, rm0, rv0, eps)
    assert_close(_np(bk, y), y_e, op="batchnorm_forward (eval)", rtol=tol, atol=tol, **info)


LOGIT_SCALES = [1.0, 30.0, 800.0]  # 800: exp overflows unless the op is stable


@pytest.mark.parametrize("weights", [None, (0.3, 2.0)], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("scale", LOGIT_SCALES)
def test_backend_sigmoid_bce(backend, scale, weights):
    bk = backend
    rng = np.random.default_rng(18)
    z = rng.standard_normal((7, 1)) * scale
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    loss, dz = bk.sigmoid_bce(bk.asarray(z), y, weights)
    loss_e, dz_e = ref.sigmoid_bce(z, y, weights)
    info = dict(backend=bk.name, scale=scale, weights=weights)
    assert_close(loss, loss_e, op="sigmoid_bce loss", rtol=1e-12, **info)
    assert_close(_np(bk, dz), dz_e, op="sigmoid_bce dlogits", rtol=1e-12, atol=1e-15, **info)


@pytest.mark.parametrize("weights", [None, (0.3, 2.0, 1.1)], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("scale", LOGIT_SCALES)
def test_backend_softmax_cross_entropy(backend, scale, weights):
    bk = backend
    rng = np.random.default_rng(19)
    z = rng.standard_normal((6, 3)) * scale
    y = np.array([0, 1, 2, 2, 1, 0])
    loss, dz = bk.softmax_cross_entropy(bk.asarray(z), y, weights)
    loss_e, dz_e = ref.softmax_cross_entropy(z, y, weights)
    info = dict(backend=bk.name, scale=scale, weights=weights)
    assert_close(loss, loss_e, op="softmax_cross_entropy loss", rtol=1e-12, **info)
    assert_close(_np(bk, dz), dz_e, op="softmax_cross_entropy dlogits", rtol=1e-12, atol=1e-15, **info)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_backend_adam_and_sgd(backend, dtype):
    bk = backend
    rng = np.random.default_rng(20)
    shape = (3, 4, 2)
    p = rng.standard_normal(shape).astype(dtype)
    m, v, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    pa, ma, va = bk.asarray(p.copy()), bk.asarray(m.copy()), bk.asarray(v.copy())
    ps, bs = bk.asarray(p.copy()), bk.asarray(buf.copy())
    pr_s, bufr = p.copy(), buf.copy()
    for step in (1, 2):
        g = rng.standard_normal(shape).astype(dtype)
        p0a, p0s = _np(bk, pa).copy(), _np(bk, ps).copy()
        adam = AdamHyper(1e-3, 0.9, 0.999, 1e-8, 1e-2)
        pr, m, v = ref.adam_update(p0a, m, v, g, step, adam)
        bk.adam_update(pa, ma, va, bk.asarray(g), step, adam)
        assert_close(_np(bk, pa) - p0a, pr - p0a, op="backend adam_update step", backend=bk.name, step=step,
                     **_update_tols(p0a, dtype))
        sgd = SGDHyper(0.1, 0.9, 1e-2, True)
        pr_s, bufr = ref.sgd_update(p0s, bufr, g, step, sgd)
        bk.sgd_update(ps, bs, bk.asarray(g), step, sgd)
        assert_close(_np(bk, ps) - p0s, pr_s - p0s, op="backend sgd_update step", backend=bk.name, step=step,
                     **_update_tols(p0s, dtype))
        m, v = m.astype(dtype), v.astype(dtype)
        bufr = bufr.astype(dtype)


def test_backend_dropout_mask(backend):
    bk = backend
    mask = _np(bk, bk.dropout_mask(bk.rng(0), (200, 50), 0.3, np.float32))
    assert mask.dtype == np.float32
    values = set(np.unique(mask).tolist())
    assert values <= {0.0, np.float32(1 / 0.7)}, f"dropout_mask: values {sorted(values)}, expected {{0, 1/0.7}}"
    frac = float((mask == 0).mean())
    assert abs(frac - 0.3) < 0.02, f"dropout_mask: dropped fraction {frac:.3f}, expected about 0.3"


# ------------------------------------------------------------ more kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_channel_sum_with_mask(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1001, 7)).astype(dtype)
    mask = rng.standard_normal((1001, 7)).astype(dtype)
    out = np.empty(7, np.float64)
    cpu.channel_sum(out, x, mask)
    expected = ref.channel_sum(x, mask)
    assert_close(out, expected, op="channel_sum (masked)", rtol=1e-12, atol=1e-12, shape=x.shape)


def _conv_stage(bk, x, w, b, kind):
    """(output, dx, dw, db) of one conv stage on the CPU backend: 'conv' (stride
    (2, 1), padding (0, 1)), 'relu', 'pool' (3x3 same + ReLU + 2x2/2 pool) or
    'overlap' (the same with a 3x3/2 pool)."""
    if kind in ("pool", "overlap"):
        pk, ps = ((2, 2), (2, 2)) if kind == "pool" else ((3, 3), (2, 2))
        y, ctx = bk.conv2d_relu_pool_forward(x, w, b, (1, 1), (1, 1), pk, ps)
        return (y, *bk.conv2d_relu_pool_backward(np.cos(np.arange(y.size)).reshape(y.shape), ctx, w, need_dx=True))
    stride, pad = ((2, 1), (0, 1)) if kind == "conv" else ((1, 1), (1, 1))
    y, ctx = bk.conv2d_forward(x, w, b, stride, pad, relu=kind == "relu")
    return (y, *bk.conv2d_backward(np.cos(np.arange(y.size)).reshape(y.shape), ctx, w, need_dx=True))


STAGES = ["conv", "relu", "pool", "overlap"]


@pytest.mark.parametrize("kind", STAGES)
@pytest.mark.parametrize("c", [1, 3], ids=["gray", "3ch"])
def test_backend_conv_in_blocks_and_threads(monkeypatch, kind, c):
    """Small blocks (rows of one image, a short last block) give the results of
    one block per batch; and with small blocks, 3 worker threads give exactly
    (bit for bit) the results of 1: the weight gradient is summed in lanes
    that do not depend on the threads."""
    from xraynet.backends.cpu import CPUBackend
    from xraynet.backends.cpu_conv import ConvEngine

    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 9, 8, c))
    w = rng.standard_normal((4, c, 3, 3))
    b = rng.standard_normal(4)
    for direct in (True, False):
        bk = CPUBackend(direct_first_conv=direct)
        bk._conv.set_threads(1)
        whole = _conv_stage(bk, x, w, b, kind)
        monkeypatch.setattr(ConvEngine, "BLOCK_BYTES", 3 * 8 * 9 * c * 8)
        monkeypatch.setattr(ConvEngine, "BACKWARD_BLOCK_BYTES", 2 * 8 * 9 * c * 8)
        plan = bk._conv.plan(x, w, (1, 1), (1, 1), pool_rows=2)
        assert plan.nb == 1 and 1 < plan.r < plan.rows, plan
        one = _conv_stage(bk, x, w, b, kind)
        bk._conv.set_threads(3)
        three = _conv_stage(bk, x, w, b, kind)
        monkeypatch.undo()
        for name, a, e, t in zip(("y", "dx", "dw", "db"), one, whole, three):
            info = dict(kind=kind, c=c, direct=direct)
            assert_close(a, e, op=f"conv in blocks {name}", rtol=1e-12, atol=1e-12, **info)
            assert_close(t, a, op=f"conv on 3 threads {name} (must be bit for bit)", **info)


@pytest.mark.parametrize("kind", STAGES)
@pytest.mark.parametrize("c", [2, 5])
def test_backend_conv_winograd_equals_gemm_path(kind, c):
    """3x3 stride-1 convolutions by Winograd (forward, and dx backward) against
    the patch matrix + GEMM path of the same backend, float64; the stride-2
    'conv' stage takes the GEMM path either way."""
    from xraynet.backends.cpu import CPUBackend

    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 11, 10, c))
    w = rng.standard_normal((4, c, 3, 3))
    b = rng.standard_normal(4)
    results = []
    for winograd in (True, False):
        bk = CPUBackend()
        bk.winograd = winograd
        results.append(_conv_stage(bk, x, w, b, kind))
    for name, a, e in zip(("y", "dx", "dw", "db"), *results):
        assert_close(a, e, op=f"winograd conv {name}", rtol=1e-12, atol=1e-12, kind=kind, c=c)


# (n, h, w, c, o): 3x3 stride-1 convolutions, odd and even sizes, a map smaller than a tile
EVAL_CONV_CASES = [(2, 9, 11, 3, 5), (1, 16, 16, 8, 16), (3, 7, 5, 2, 3), (1, 3, 2, 4, 2), (2, 13, 6, 5, 4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("geom", EVAL_CONV_CASES, ids=str)
def test_backend_conv_in_evaluation_by_winograd4(monkeypatch, geom, dtype):
    """A forward that keeps nothing (save=False: evaluation) runs 3x3 stride-1
    convolutions by Winograd F(4x4, 3x3): conv (+ ReLU) and conv + ReLU + 2x2/2
    pool against the float64 direct convolution, in one block and in blocks of
    4 rows over 3 threads (bit for bit the same as 1 thread)."""
    from xraynet.backends.cpu import CPUBackend
    from xraynet.backends.cpu_conv import ConvEngine

    n, h, w, c, o = geom
    rng = np.random.default_rng(29)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    b = (rng.standard_normal(o) * 0.3).astype(dtype)
    want = ref.conv2d_forward(x, wt, b, (1, 1), (1, 1))
    want_pool, _ = ref.maxpool2d_forward(np.maximum(want, 0), 2, 2, 2, 2)
    # float32: F(4x4, 3x3) rounds a few times more than the direct sum (module docstring)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    bk = CPUBackend(direct_first_conv=False)
    assert bk.winograd4
    runs = []
    for blocks, threads in (("one", 1), ("rows", 1), ("rows", 3)):
        if blocks == "rows":
            monkeypatch.setattr(ConvEngine, "WINOGRAD4_BLOCK_BYTES", 4 * w * 9 * c * x.itemsize)
        bk._conv.set_threads(threads)
        y, ctx = bk.conv2d_forward(x, wt, b, (1, 1), (1, 1), relu=False, save=False)
        yr, _ = bk.conv2d_forward(x, wt, b, (1, 1), (1, 1), relu=True, save=False)
        pooled, pctx = bk.conv2d_relu_pool_forward(x, wt, b, (1, 1), (1, 1), (2, 2), (2, 2), save=False)
        assert ctx is None and pctx is None
        info = dict(dtype=_dt(dtype), geometry=geom, blocks=blocks, threads=threads)
        scale = float(np.abs(want).max())
        assert_close(y, want, op="conv2d_forward (evaluation)", rtol=tol, atol=tol * scale, **info)
        assert_close(yr, np.maximum(want, 0), op="conv2d_forward relu (evaluation)", rtol=tol, atol=tol * scale,
                     **info)
        assert_close(pooled, want_pool, op="conv2d_relu_pool_forward (evaluation)", rtol=tol, atol=tol * scale,
                     **info)
        runs.append((y, yr, pooled))
    if h >= 8:
        plan = bk._conv.plan(x, wt, (1, 1), (1, 1), winograd=4)
        assert plan.r < plan.rows and plan.r % 4 == 0, plan
    for a, e in zip(runs[2], runs[1]):
        assert_close(a, e, op="evaluation conv on 3 threads (must be bit for bit)", geometry=geom)


def test_backend_winograd4_off_and_training_keep_winograd2():
    """XRAYNET_CPU_WINOGRAD4=0 (or winograd4 False) and any saving forward run F(2x2, 3x3): in
    float64 all paths agree to rounding, and a saving forward equals the F(2x2, 3x3) one bit for bit."""
    from xraynet.backends.cpu import CPUBackend

    rng = np.random.default_rng(30)
    x, w, b = rng.standard_normal((2, 10, 9, 3)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    bk = CPUBackend(direct_first_conv=False)
    saved, _ = bk.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True, save=True)
    f4, _ = bk.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True, save=False)
    bk.winograd4 = False
    f2, _ = bk.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True, save=False)
    np.testing.assert_array_equal(saved, f2)
    assert_close(f4, f2, op="F(4x4, 3x3) vs F(2x2, 3x3), float64", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", STAGES)
def test_backend_conv_direct_first_layer_equals_gemm_path(kind):
    """A one-channel input: the direct kernels (conv1_plane*) against the patch
    matrix + GEMM path of the same backend."""
    from xraynet.backends.cpu import CPUBackend

    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 11, 10, 1))
    w = rng.standard_normal((5, 1, 3, 3))
    b = rng.standard_normal(5)
    direct = _conv_stage(CPUBackend(direct_first_conv=True), x, w, b, kind)
    gemm = _conv_stage(CPUBackend(direct_first_conv=False), x, w, b, kind)
    for name, a, e in zip(("y", "dx", "dw", "db"), direct, gemm):
        assert_close(a, e, op=f"direct first layer {name}", rtol=1e-12, atol=1e-12, kind=kind)


def test_backend_dense_split_over_threads():
    """Dense GEMMs split over 3 worker threads (output columns forward, dw rows
    and dx columns backward) equal the whole GEMM."""
    from xraynet.backends.cpu import CPUBackend

    bk = CPUBackend()
    bk._conv.set_threads(3)
    rng = np.random.default_rng(27)
    x, w = rng.standard_normal((5, 301)), rng.standard_normal((257, 301))
    b, dy = rng.standard_normal(257), rng.standard_normal((5, 257))
    y = bk.dense_forward(x, w, b)
    assert_close(y, x @ w.T + b, op="dense_forward on 3 threads", rtol=1e-12, atol=1e-12)
    dx, dw, db = bk.dense_backward(dy, x, w)
    for name, got, exp in (("dx", dx, dy @ w), ("dw", dw, dy.T @ x), ("db", db, dy.sum(0))):
        assert_close(got, exp, op=f"dense_backward {name} on 3 threads", rtol=1e-12, atol=1e-12)
