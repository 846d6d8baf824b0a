"""Float64 finite-difference gradient checks of every layer, of the fused
conv + ReLU (+ max pool) stage, of the conv + batch norm + ReLU (+ max pool)
stage whose evaluation forward folds the batch norm into the convolution, and
of both losses.

Each check uses a random projection ``L = sum(R * layer(x))`` so that every
output element carries a distinct weight, compares the analytic input gradient
and every parameter gradient with central differences (eps = 1e-6) and asks
for a norm-wise relative error below 1e-6 (see ``naive.assert_grad`` for why).
Single layers are checked element by element (cheap); the whole model, where
each difference is a forward pass of every stage (seconds on the emulated
GPU), along random directions (``naive.directional_grad_check``).
Piecewise-linear layers get inputs away from their kinks: max-pool inputs are
a permutation of well-separated distinct values, ReLU inputs stay off 0.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BACKENDS, make_backend
from naive import assert_grad, directional_grad_check, numeric_grad
from xraynet.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D,
                            ReLU)
from xraynet.model import Model

F64 = np.float64


@pytest.fixture(scope="module", params=BACKENDS)
def bk(request):
    """Every check runs on each backend: float64 kernels on the GPU too."""
    return make_backend(request.param)


def _internal(in_shape, n):
    """NHWC batch shape for a sample shape (C, H, W), or (N, F) for vectors."""
    if len(in_shape) == 3:
        c, h, w = in_shape
        return (n, h, w, c)
    return (n,) + tuple(in_shape)


def check_layer(layer, x, *, before_forward=None, what=""):
    """Gradcheck ``layer`` (already built, float64) at internal input ``x``:
    the input gradient and every parameter gradient."""
    bk = layer.bk
    rng = np.random.default_rng(100)
    x = bk.asarray(x)
    if before_forward:
        before_forward()
    y = layer.forward(x, training=True)
    r = bk.asarray(rng.standard_normal(y.shape))
    dx = bk.to_numpy(layer.backward(r.copy())).copy()
    grads = {k: bk.to_numpy(v).copy() for k, v in layer.grads.items()}
    assert sorted(grads) == sorted(layer.params), \
        f"{what}: gradients for {sorted(grads)}, parameters {sorted(layer.params)}"

    def loss():
        if before_forward:
            before_forward()
        return float(bk.to_numpy((layer.forward(x, training=True) * r).sum()))

    assert_grad(dx, numeric_grad(loss, x), what=f"{what} input")
    for name, p in layer.params.items():
        assert_grad(grads[name], numeric_grad(loss, p), what=f"{what} {name}")


# ---------------------------------------------------------------------- conv
CONV_CASES = [  # in (C, H, W), out_channels, kernel, stride, padding, batch
    ((2, 5, 5), 3, 3, 1, "same", 2),
    ((3, 7, 6), 2, 3, 2, 1, 1),          # stride 2, int padding, odd sizes, batch 1
    ((2, 6, 7), 3, 3, 1, "valid", 2),
    ((1, 9, 8), 2, 5, 3, 2, 1),          # 5x5, stride 3, padding 2
    ((2, 4, 4), 3, 1, 1, "valid", 2),    # 1x1 kernel (plain GEMM path)
    ((2, 5, 6), 2, (3, 1), (2, 1), (1, 0), 2),
    ((1, 1, 1), 2, 3, 1, "same", 2),     # 1x1 map
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d(bk, case):
    in_shape, out, k, s, p, n = case
    rng = np.random.default_rng(1)
    layer = Conv2D(out, kernel_size=k, stride=s, padding=p)
    layer.build(in_shape, bk, rng, F64)
    layer.params["bias"][...] = bk.asarray(rng.standard_normal(out))
    x = rng.standard_normal(_internal(in_shape, n))
    check_layer(layer, x, what=f"conv2d {case}")


# ------------------------------------------------------------------ max pool
POOL_CASES = [  # in (C, H, W), kernel, stride, batch
    ((2, 5, 5), 2, None, 2),      # odd size: floor mode
    ((2, 7, 7), 3, 2, 1),         # overlapping windows
    ((1, 6, 6), 3, 1, 2),         # heavy overlap
    ((3, 6, 9), (2, 3), (1, 2), 1),
    ((1, 2, 2), 2, 2, 1),         # 1x1 output
]


def distinct_values(shape, rng, gap=0.05):
    """A random permutation of well-separated values: no near-ties, so the
    max-pool argmax does not move under a +-1e-6 perturbation."""
    return (rng.permutation(int(np.prod(shape))) * gap - 1.0).reshape(shape)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d(bk, case):
    in_shape, k, s, n = case
    rng = np.random.default_rng(2)
    layer = MaxPool2D(kernel_size=k, stride=s)
    layer.build(in_shape, bk, rng, F64)
    check_layer(layer, distinct_values(_internal(in_shape, n), rng), what=f"maxpool2d {case}")


# ------------------------------------------------------- elementwise & shape
@pytest.mark.parametrize("in_shape", [(3, 4, 5), (7,)], ids=str)
def test_relu(bk, in_shape):
    rng = np.random.default_rng(3)
    layer = ReLU()
    layer.build(in_shape, bk, rng, F64)
    x = rng.standard_normal(_internal(in_shape, 2))
    x += np.sign(x) * 0.05  # keep off the kink at 0
    check_layer(layer, x, what=f"relu {in_shape}")


@pytest.mark.parametrize("fin,fout,n", [(5, 3, 2), (1, 1, 1), (12, 4, 3)])
def test_dense(bk, fin, fout, n):
    rng = np.random.default_rng(4)
    layer = Dense(fout)
    layer.build((fin,), bk, rng, F64)
    layer.params["bias"][...] = bk.asarray(rng.standard_normal(fout))
    check_layer(layer, rng.standard_normal((n, fin)), what=f"dense {fin}->{fout}")


@pytest.mark.parametrize("in_shape", [(3, 2, 4), (1, 1, 1), (5,)], ids=str)
def test_flatten(bk, in_shape):
    rng = np.random.default_rng(5)
    layer = Flatten()
    layer.build(in_shape, bk, rng, F64)
    check_layer(layer, rng.standard_normal(_internal(in_shape, 2)), what=f"flatten {in_shape}")


def test_flatten_uses_nchw_order(bk):
    """Flatten's output must read as PyTorch's nn.Flatten of the NCHW tensor."""
    layer = Flatten()
    layer.build((3, 2, 4), bk, None, F64)
    nchw = np.arange(2 * 3 * 2 * 4, dtype=F64).reshape(2, 3, 2, 4)
    out = bk.to_numpy(layer.forward(bk.asarray(nchw.transpose(0, 2, 3, 1))))
    assert np.array_equal(out, nchw.reshape(2, -1)), "flatten: output is not in NCHW (channel-major) order"


@pytest.mark.parametrize("in_shape", [(3, 4, 5), (2, 1, 1)], ids=str)
def test_global_avg_pool2d(bk, in_shape):
    rng = np.random.default_rng(6)
    layer = GlobalAvgPool2D()
    layer.build(in_shape, bk, rng, F64)
    check_layer(layer, rng.standard_normal(_internal(in_shape, 2)), what=f"global_avg_pool2d {in_shape}")


@pytest.mark.parametrize("in_shape", [(3, 4, 5), (9,)], ids=str)
def test_dropout_training_fixed_mask(bk, in_shape):
    rng = np.random.default_rng(7)
    layer = Dropout(0.4)
    layer.build(in_shape, bk, rng, F64)

    def same_mask():  # every forward draws the same mask
        layer.rng = bk.rng(1234)

    same_mask()
    y = bk.to_numpy(layer.forward(bk.asarray(np.ones(_internal(in_shape, 2))), training=True))
    assert 0 < (y == 0).mean() < 1, "dropout: expected some but not all elements dropped at p=0.4"
    check_layer(layer, rng.standard_normal(_internal(in_shape, 2)), before_forward=same_mask,
                what=f"dropout {in_shape}")


@pytest.mark.parametrize("in_shape,n", [((3, 4, 5), 2), ((2, 3, 3), 1), ((4, 1, 1), 5)], ids=str)
def test_batchnorm2d_training(bk, in_shape, n):
    rng = np.random.default_rng(8)
    layer = BatchNorm2D()
    layer.build(in_shape, bk, rng, F64)
    c = in_shape[0]
    layer.params["weight"][...] = bk.asarray(rng.standard_normal(c))
    layer.params["bias"][...] = bk.asarray(rng.standard_normal(c))
    x = rng.standard_normal(_internal(in_shape, n)) * 2 + 1
    check_layer(layer, x, what=f"batchnorm2d {in_shape} n={n}")


# ----------------------------------------------------- fused stages, in a Model
def _fused_spec():
    """conv+relu+pool (overlapping 3x3/2 pool, fused), conv 1x1 + relu (fused
    without pool), a strided conv+relu+pool, then flatten and a softmax head."""
    return {"name": "gradcheck", "input_shape": [2, 9, 11], "output": "softmax", "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 3, "stride": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 1, "padding": "valid"},
        {"type": "relu"},
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2, "stride": 1},
        {"type": "flatten"},
        {"type": "dense", "out_features": 3},
    ]}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_model_conv_relu_pool_stage(bk, fuse):
    rng = np.random.default_rng(9)
    model = Model(_fused_spec(), device=bk, dtype=F64, seed=3, fuse=fuse)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p[...] = bk.asarray(rng.standard_normal(p.shape) * 0.1)
    x = bk.asarray(rng.standard_normal((2, 2, 9, 11)))
    r = bk.asarray(rng.standard_normal((2, 3)))
    _check_model(model, x, r, dict(training=True), "fused" if fuse else "unfused")


def _check_model(model, x, r, forward_options: dict, what: str):
    """Gradcheck a whole model (float64) at input ``x`` for the loss sum(r * logits): the
    gradients of one forward with ``forward_options`` and backward, against differences of
    the evaluation forward, for the input and every parameter."""
    bk = model.bk
    model.forward(x, **forward_options)
    dx = bk.to_numpy(model.backward(r.copy(), input_grad=True)).copy()
    grads = {k: bk.to_numpy(v).copy() for k, v in model.named_grads().items()}
    assert sorted(grads) == sorted(n for n, _ in model.named_parameters())

    def loss():
        return float(bk.to_numpy((model.forward(x, training=False) * r).sum()))

    directional_grad_check(loss, x, dx, what=f"model ({what}) input", to_backend=bk.asarray)
    for name, p in model.named_parameters():
        directional_grad_check(loss, p, grads[name], what=f"model ({what}) {name}", to_backend=bk.asarray)


def _batchnorm_spec():
    """conv+batchnorm+relu+pool, conv+batchnorm+relu without a pool, a flatten and a softmax head."""
    return {"name": "gradcheck-bn", "input_shape": [2, 8, 10], "output": "softmax", "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2, "stride": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "out_features": 3},
    ]}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_model_conv_batchnorm_relu_stage_in_evaluation(bk, fuse):
    # The gradient comes from the kept, layer-by-layer evaluation forward (as Grad-CAM's);
    # the differences from the plain evaluation forward, which with fuse folds the batch
    # norm into the convolution. So the check also ties the folded forward to the chain.
    rng = np.random.default_rng(11)
    model = Model(_batchnorm_spec(), device=bk, dtype=F64, seed=4, fuse=fuse)
    for name, p in model.named_parameters():
        p[...] = bk.asarray(np.asarray(bk.to_numpy(p)) + rng.standard_normal(p.shape) * 0.1)
    for name, b in model.named_buffers():
        base = rng.uniform(0.5, 2.0, b.shape) if name.endswith("running_var") else rng.standard_normal(b.shape) * 0.2
        b[...] = bk.asarray(base)
    x = bk.asarray(rng.standard_normal((2, 2, 8, 10)))
    r = bk.asarray(rng.standard_normal((2, 3)))
    _check_model(model, x, r, dict(training=False, keep=True), "batch norm, " + ("fused" if fuse else "unfused"))


# -------------------------------------------------------------------- losses
@pytest.mark.parametrize("weights", [None, (0.25, 3.0)], ids=["unweighted", "weighted"])
def test_sigmoid_bce(bk, weights):
    rng = np.random.default_rng(10)
    z = bk.asarray(rng.standard_normal((6, 1)) * 3)
    y = np.array([0, 1, 1, 0, 1, 1])
    _, dz = bk.sigmoid_bce(z, y, weights)
    dz = bk.to_numpy(dz)
    numeric = numeric_grad(lambda: bk.sigmoid_bce(z, y, weights)[0], z)
    assert_grad(dz, numeric, what=f"sigmoid_bce weights={weights}")


@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 1.5, 0.1)], ids=["unweighted", "weighted"])
def test_softmax_cross_entropy(bk, weights):
    rng = np.random.default_rng(11)
    z = bk.asarray(rng.standard_normal((5, 4)) * 3)
    y = np.array([0, 3, 1, 1, 2])
    _, dz = bk.softmax_cross_entropy(z, y, weights)
    dz = bk.to_numpy(dz)
    numeric = numeric_grad(lambda: bk.softmax_cross_entropy(z, y, weights)[0], z)
    assert_grad(dz, numeric, what=f"softmax_cross_entropy weights={weights}")
