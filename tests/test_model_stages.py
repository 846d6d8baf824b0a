"""The execution plan of :class:`xraynet.model.Model`: which layers run as one
stage, and that a fused stage gives what the layer-by-layer chain gives.

The conv + batch norm + ReLU (+ max pool) stage folds the batch norm into the
convolution in plain evaluation: compared here with ``fuse=False`` and with the
reference kernels; training, which runs the chain, must stay bit-identical.
(Its gradient, through the folded forward, is checked in test_gradcheck.py.)
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BACKENDS, STAGES_SPEC, make_backend
from xraynet.kernels import reference
from xraynet.model import Model
from xraynet.optim import Adam


@pytest.fixture(scope="module", params=BACKENDS)
def bk(request):
    return make_backend(request.param)


def _spec():
    return STAGES_SPEC


def _trained_pair(bk, dtype=np.float32, steps=3):
    """Two models, fused and not, from the same seed, after the same Adam steps
    (so the running statistics, gamma and beta are far from their start)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 24, 20)).astype(dtype) * 2 + 0.5
    labels = np.array([0, 1, 2, 0, 1, 2])
    models = []
    for fuse in (True, False):
        m = Model(_spec(), device=bk, dtype=dtype, seed=1, fuse=fuse)
        opt = Adam(m.named_parameters(), bk, lr=0.05)
        for _ in range(steps):
            m.train_step(bk.asarray(x, dtype), bk.asarray(labels), opt)
        models.append(m)
    return models, x


def test_plan_groups_conv_batchnorm_relu_pool():
    m = Model(_spec(), seed=0)
    stages = [[l.type for l in m.layers[first:nxt]] for (first, _), nxt in
              zip(m._stages, [f for f, _ in m._stages[1:]] + [len(m.layers)])]
    assert stages == [["conv2d", "batchnorm2d", "relu", "maxpool2d"], ["conv2d", "batchnorm2d", "relu"],
                      ["conv2d", "relu"], ["global_avg_pool2d"], ["dense"]]
    assert len(Model(_spec(), seed=0, fuse=False)._stages) == len(_spec()["layers"])


def test_training_is_bit_identical_with_and_without_fusion(bk):
    (fused, plain), _ = _trained_pair(bk)
    a, b = fused.state_dict(), plain.state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_folded_evaluation_matches_the_chain(bk):
    (fused, plain), x = _trained_pair(bk)
    got, want = fused.predict_proba(x), plain.predict_proba(x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert np.abs(want - 1 / 3).max() > 0.05, "training left the outputs uniform: the check would be weak"


def test_folded_evaluation_in_float64_matches_to_rounding(bk):
    (fused, plain), x = _trained_pair(bk, np.float64)
    np.testing.assert_allclose(bk.to_numpy(fused.forward(x)), bk.to_numpy(plain.forward(x)), rtol=1e-12,
                               atol=1e-12)


def test_folded_weights_against_the_reference_batch_norm():
    # conv(x, w', b') == batchnorm_eval(conv(x, w, b)) with the reference kernels, float64.
    (fused, _), x = _trained_pair(make_backend("cpu"), np.float64)
    stage = fused._stages[1][1]
    conv, norm = stage.conv, stage.norm
    rng = np.random.default_rng(2)
    h = rng.standard_normal((2, 6, 5, 4))  # NHWC, 4 channels in
    w_fold, b_fold = stage.folded_weights()
    want = reference.batchnorm_forward_eval(
        reference.conv2d_forward(h, conv.params["weight"], conv.params["bias"], conv.stride, conv.pad),
        norm.params["weight"], norm.params["bias"], norm.buffers["running_mean"], norm.buffers["running_var"],
        norm.eps)
    got = reference.conv2d_forward(h, w_fold, b_fold, conv.stride, conv.pad)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_kept_forward_and_gradcam_run_the_chain(bk):
    # keep=True (what a backward pass needs) runs layer by layer in both models: equal bit for bit.
    (fused, plain), x = _trained_pair(bk)
    np.testing.assert_array_equal(bk.to_numpy(fused.forward(x, keep=True)), bk.to_numpy(plain.forward(x, keep=True)))
    np.testing.assert_allclose(fused.gradcam(x, 1), plain.gradcam(x, 1), atol=1e-5)
