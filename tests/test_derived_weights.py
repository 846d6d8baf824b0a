"""Weights derived once and kept across evaluation batches (:mod:`xraynet.backends.derived`):
the folded batch norm of a conv + batch norm + ReLU stage and the CPU backend's
Winograd filters. A kept value must never outlive the weights it came from, however
they change: in place (an optimiser step, an assignment into ``params``), by a new
array, by a NaN."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from helpers import BACKENDS, STAGES_SPEC, make_backend
from xraynet.backends.derived import DerivedWeights, Memo
from xraynet.kernels import reference
from xraynet.model import Model
from xraynet.optim import Adam


class _Counted:
    """A derive function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a):
        self.calls += 1
        return self.fn(*a)


# ------------------------------------------------------------------ Memo
def test_memo_keeps_the_value_while_the_sources_are_unchanged():
    a, b = np.arange(6.0).reshape(2, 3), np.ones(3)
    derive = _Counted(lambda x, y: x * y)
    memo = Memo()
    first = memo.get((a, b), derive)
    assert memo.get((a, b), derive) is first
    assert memo.get((a.copy(), b.copy()), derive) is first, "equal content, other arrays: the same value"
    assert derive.calls == 1


@pytest.mark.parametrize("change", ["one element in place", "new array", "new shape", "new dtype"])
def test_memo_derives_again_when_a_source_changes(change):
    a, b = np.arange(6.0).reshape(2, 3), np.ones(3)
    derive = _Counted(lambda x, y: x * y)
    memo = Memo()
    memo.get((a, b), derive)
    if change == "one element in place":
        b[2] = 5.0
    elif change == "new array":
        b = np.full(3, 2.0)
    elif change == "new shape":
        a = np.arange(3.0).reshape(1, 3)
    else:
        a = a.astype(np.float32)
    np.testing.assert_array_equal(memo.get((a, b), derive), a * b)
    assert derive.calls == 2


def test_memo_with_a_nan_derives_every_time_and_stays_right():
    a = np.array([1.0, np.nan])
    derive = _Counted(lambda x: x + 1)
    memo = Memo()
    for _ in range(3):
        np.testing.assert_array_equal(memo.get((a,), derive), a + 1)
    assert derive.calls == 3
    a[1] = 4.0
    np.testing.assert_array_equal(memo.get((a,), derive), [2.0, 5.0])


def test_memo_value_belongs_to_its_copy_when_a_source_changes_while_deriving():
    # Another thread writing into the weights during the derivation (simulated inside
    # derive), then the weights set back: the kept value must be the one of the copy.
    a = np.arange(4.0)

    def derive(x):
        a[:] = 100.0
        return x * 2

    memo = Memo()
    memo.get((a,), derive)
    a[:] = np.arange(4.0)
    np.testing.assert_array_equal(memo.get((a,), lambda x: x * 2), np.arange(4.0) * 2)


def test_memo_keeps_nothing_for_sources_that_are_not_numpy_arrays():
    derive = _Counted(lambda x: [v * 2 for v in x])
    memo = Memo()
    assert memo.get(([1, 2],), derive) == [2, 4]
    assert memo.get(([1, 2],), derive) == [2, 4]
    assert derive.calls == 2 and memo.nbytes == 0


# ------------------------------------------------------------------ DerivedWeights
def test_derived_weights_follow_in_place_changes_and_kinds():
    cache = DerivedWeights()
    w = np.arange(8.0)
    double, square = _Counted(lambda x: x * 2), _Counted(lambda x: x ** 2)
    assert cache.get(w, "double", double) is cache.get(w, "double", double)
    np.testing.assert_array_equal(cache.get(w, "square", square), w ** 2)
    w *= 3  # in place, as an optimiser step
    np.testing.assert_array_equal(cache.get(w, "double", double), np.arange(8.0) * 6)
    np.testing.assert_array_equal(cache.get(w, "square", square), (np.arange(8.0) * 3) ** 2)
    assert (double.calls, square.calls) == (2, 2)


def test_derived_weights_hold_no_array_alive_and_drop_its_entry():
    cache = DerivedWeights()
    w = np.ones(4)
    cache.get(w, "double", lambda x: x * 2)
    del w
    gc.collect()
    other = np.full(4, 5.0)  # may reuse the freed array's id: its own value all the same
    np.testing.assert_array_equal(cache.get(other, "double", lambda x: x * 2), np.full(4, 10.0))
    assert len(cache._memos) == 1, "the entry of the freed array was not dropped"


def test_derived_weights_stay_within_their_byte_bound():
    cache = DerivedWeights(max_bytes=3 * 2 * 8 * 100)  # three entries of a copy and a value, 100 float64 each
    ws = [np.full(100, float(i)) for i in range(6)]
    for w in ws:
        cache.get(w, "double", lambda x: x * 2)
    assert sum(memo.nbytes for _, memo in cache._memos.values()) <= cache.max_bytes
    for i, w in enumerate(ws):  # evicted or not, every value is right
        np.testing.assert_array_equal(cache.get(w, "double", lambda x: x * 2), np.full(100, 2.0 * i))


# ------------------------------------------------------------------ the backend's Winograd filters
@pytest.mark.parametrize("pool", [False, True])
def test_cpu_evaluation_convolution_follows_weights_changed_in_place(pool):
    bk = make_backend("cpu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)

    def run():
        if pool:
            return bk.conv2d_relu_pool_forward(x, w, b, (1, 1), (1, 1), (2, 2), (2, 2), save=False)[0]
        return bk.conv2d_forward(x, w, b, (1, 1), (1, 1), relu=True, save=False)[0]

    def want():
        y = np.maximum(reference.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b, (1, 1), (1, 1)), 0)
        return reference.maxpool2d_forward(y, 2, 2, 2, 2)[0] if pool else y

    for step in range(3):  # the filters are kept from the first call on; each change must reach the output
        np.testing.assert_allclose(run(), want(), rtol=0, atol=1e-4, err_msg=f"step {step}")
        np.testing.assert_allclose(run(), want(), rtol=0, atol=1e-4, err_msg=f"step {step}, again")
        w[step % 6, 1, 2, 0] += 1.5  # one tap of one filter, in place


# ------------------------------------------------------------------ the model
def _spec():
    # conv + batch norm (folded, two stages) and a conv + ReLU without one (its own weights
    # go to the backend's kept filters); see helpers.STAGES_SPEC
    return STAGES_SPEC


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_between_training_steps_uses_the_current_weights(backend):
    # Evaluate, train a step (Adam updates parameters and running statistics in place),
    # evaluate again: each evaluation must equal the layer-by-layer chain (fuse=False,
    # nothing kept) with the weights of that moment.
    bk = make_backend(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 24, 20)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    model = Model(_spec(), device=bk, seed=1)
    plain = Model(_spec(), device=bk, seed=1, fuse=False)
    opt = Adam(model.named_parameters(), bk, lr=0.05)
    before = None
    for step in range(3):
        plain.load_state_dict(model.state_dict())
        got = model.predict_proba(x)
        np.testing.assert_allclose(got, plain.predict_proba(x), rtol=0, atol=2e-6, err_msg=f"step {step}")
        if before is not None:
            assert np.abs(got - before).max() > 1e-4, "the step did not change the outputs: the check is weak"
        before = got
        model.train_step(bk.asarray(x), bk.asarray(labels), opt)


def test_evaluation_follows_an_assignment_into_the_batch_norm_statistics():
    bk = make_backend("cpu")
    x = np.random.default_rng(1).standard_normal((4, 1, 24, 20)).astype(np.float32)
    model = Model(_spec(), device=bk, seed=2)
    plain = Model(_spec(), device=bk, seed=2, fuse=False)
    model.predict_proba(x)  # folds and keeps
    norm = model.layers[5]
    norm.buffers["running_var"][...] = 4.0  # in place, as a user restoring statistics by hand
    norm.buffers["running_mean"][2] = 0.5
    plain.load_state_dict(model.state_dict())
    np.testing.assert_allclose(model.predict_proba(x), plain.predict_proba(x), rtol=0, atol=2e-6)


def test_evaluation_follows_a_changed_batch_norm_epsilon():
    bk = make_backend("cpu")
    x = np.random.default_rng(4).standard_normal((4, 1, 24, 20)).astype(np.float32)
    model = Model(_spec(), device=bk, seed=3)
    plain = Model(_spec(), device=bk, seed=3, fuse=False)
    model.predict_proba(x)
    for m in (model, plain):
        m.layers[1].eps = 1.0
    np.testing.assert_allclose(model.predict_proba(x), plain.predict_proba(x), rtol=0, atol=2e-6)
