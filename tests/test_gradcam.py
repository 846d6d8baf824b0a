"""Evaluation-mode backward (the `keep` path) and Grad-CAM built on it."""
import numpy as np
import pytest

from xraynet.model import Model

from helpers import CAM_SPEC


def _model(dtype=np.float64):
    m = Model(CAM_SPEC, dtype=dtype, seed=1)
    rng = np.random.default_rng(2)
    bn = m.layers[1]
    bn.buffers["running_mean"][:] = rng.standard_normal(4)
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 4)
    bn.params["weight"][:] = rng.uniform(0.5, 1.5, 4)
    return m


def test_eval_mode_input_gradient_matches_finite_differences():
    m = _model()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 12, 10))
    c = 2

    def score(xx):
        return float(m.bk.to_numpy(m.forward(xx, training=False))[:, c].sum())

    logits = m.forward(x, training=False, keep=True)
    d = np.zeros_like(logits)
    d[:, c] = 1
    dx = m.backward(d, input_grad=True)
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (score(xp) - score(xm)) / (2 * eps)
    err = np.linalg.norm(dx - num) / np.linalg.norm(num)
    assert err < 1e-6, f"eval-mode backward: norm-wise relative error {err:.2e}"


def test_gradcam_with_a_gap_head_is_the_class_activation_map():
    # After the last map, the head is GAP -> (dropout, identity in eval) -> dense, so the
    # Grad-CAM channel weights are the dense weights of the class divided by H*W.
    m = _model(np.float32)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, 12, 10)).astype(np.float32)
    cam = m.gradcam(x, 1)
    h = m.bk.nchw_to_internal(x)
    for _, st in m._stages[:-3]:
        h = st.forward(h, False)
    acts = h  # output of the conv5 + relu stage: (N, 6, 5, 5)
    w = m.layers[8].params["weight"][1] / (acts.shape[1] * acts.shape[2])
    ref = np.maximum((acts * w).sum(axis=3), 0)
    ref = np.where(ref.max(axis=(1, 2), keepdims=True) > 0, ref / np.maximum(ref.max(axis=(1, 2), keepdims=True),
                                                                             1e-30), 0)
    assert cam.shape == (3, 6, 5)
    np.testing.assert_allclose(cam, ref, atol=1e-5)
    assert cam.min() >= 0 and cam.max() <= 1


def test_gradcam_leaves_eval_predictions_unchanged_and_checks_the_class():
    m = _model(np.float32)
    x = np.random.default_rng(5).standard_normal((2, 1, 12, 10)).astype(np.float32)
    before = m.predict_proba(x)
    m.gradcam(x, 0)
    np.testing.assert_array_equal(before, m.predict_proba(x))
    with pytest.raises(Exception, match="gradcam class"):
        m.gradcam(x, 3)
