"""Source-robust training: gradient reversal, the source adversary, the model
tap it hangs on, (source, class) balanced batches, the stretch fit, and
training runs that use them (resume included)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers import BACKENDS, SOURCES_SPEC, TAP_SPEC, make_backend
from naive import assert_grad, directional_grad_check, numeric_grad
from xraynet.adversarial import HeadOptions, SourceAdversary, dann_scale
from xraynet.errors import DataError, SpecError
from xraynet.imaging import Preprocessing, preprocess
from xraynet.layers import GradientReversal, layer_from_config
from xraynet.model import Model
from xraynet.modelfile import load_model
from xraynet.sampling import balanced_batches, cell_ids, cell_shares
from xraynet.training import TrainOptions, checkpoint_path_for, train

F64 = np.float64


@pytest.fixture(scope="module", params=BACKENDS)
def bk(request):
    return make_backend(request.param)


# ------------------------------------------------------------ gradient reversal
@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_gradcheck(bk, scale):
    """Forward is the identity (checked against its own finite differences); backward is
    -scale times that gradient, exactly."""
    rng = np.random.default_rng(1)
    layer = GradientReversal(scale)
    layer.build((5,), bk, rng, F64)
    x = bk.asarray(rng.standard_normal((4, 5)))
    r = bk.asarray(rng.standard_normal((4, 5)))
    assert np.array_equal(bk.to_numpy(layer.forward(x, training=True)), bk.to_numpy(x))
    dx = bk.to_numpy(layer.backward(r.copy())).copy()
    numeric = numeric_grad(lambda: float(bk.to_numpy((layer.forward(x, training=True) * r).sum())), x)
    assert_grad(dx, -scale * numeric, what=f"gradient reversal scale {scale}")
    if scale:
        assert_grad(-dx / scale, numeric, what="identity forward")


def test_gradient_reversal_spec_round_trip_and_bad_scale():
    layer = layer_from_config({"type": "gradient_reversal", "scale": 0.5})
    assert isinstance(layer, GradientReversal) and layer.config() == {"type": "gradient_reversal", "scale": 0.5}
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(SpecError, match="gradient_reversal scale"):
            GradientReversal(bad)


def test_dann_scale_ramps_from_zero_to_peak():
    assert dann_scale(0.0, 0.7) == 0.0
    assert abs(dann_scale(1.0, 0.7) - 0.7) < 1e-3
    ramp = [dann_scale(p / 10, 1.0) for p in range(11)]
    assert ramp == sorted(ramp)


# --------------------------------------------------------------- the adversary
def test_source_adversary_gradcheck(bk):
    """Float64 finite differences of the whole head: the reversed feature gradient is
    -scale times d(source loss)/d(features), and every weight gradient matches."""
    rng = np.random.default_rng(2)
    scale = 0.7
    adv = SourceAdversary(6, 3, ["a", "b", "c", "d"], bk, HeadOptions(hidden=5, scale=scale), seed=1, dtype=F64,
                          source_weights=[1.0, 2.0, 0.5, 1.5])
    feats = bk.asarray(rng.standard_normal((7, 6)))
    classes = rng.integers(0, 3, 7)
    sources = rng.integers(0, 4, 7)

    def loss():
        logits = adv.forward(feats, classes)
        value, _ = bk.softmax_cross_entropy(logits, sources, adv.source_weights)
        return float(value)

    logits = adv.forward(feats, classes)
    _, dlogits = bk.softmax_cross_entropy(logits, sources, adv.source_weights)
    dfeat = bk.to_numpy(adv.backward(dlogits)).copy()
    grads = {k: bk.to_numpy(v).copy() for k, v in adv.named_grads().items()}
    assert sorted(grads) == sorted(n for n, _ in adv.named_parameters())
    assert_grad(dfeat, -scale * numeric_grad(loss, feats), what="adversary features (reversed)")
    for name, p in adv.named_parameters():  # each difference runs the whole head: along random directions
        directional_grad_check(loss, p, grads[name], what=name, to_backend=bk.asarray)


def test_source_adversary_needs_two_sources(bk):
    with pytest.raises(SpecError, match="at least two sources"):
        SourceAdversary(4, 2, ["only"], bk)


def test_source_adversary_state_round_trip(bk):
    rng = np.random.default_rng(3)
    a = SourceAdversary(4, 2, ["a", "b"], bk, HeadOptions(hidden=3), seed=0)
    feats = bk.asarray(rng.standard_normal((5, 4)).astype(np.float32))
    a.step(feats, np.array([0, 1, 0, 1, 1]), np.array([0, 0, 1, 1, 0]))
    b = SourceAdversary(4, 2, ["a", "b"], bk, HeadOptions(hidden=3), seed=99)
    b.load_state_arrays(a.state_arrays())
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(bk.to_numpy(x), bk.to_numpy(y), err_msg=n)
    assert b.optimizer.step_count == a.optimizer.step_count == 1


# ------------------------------------------------------------------- model tap
def test_tap_gradient_joins_the_backward_pass(bk):
    """Gradcheck of L = sum(R1 * logits) + sum(R2 * features) through the tap: the
    conv weights get the gradient of both terms."""
    model = Model(TAP_SPEC, device=bk, dtype=F64, seed=4)
    tap = model.feature_layer()
    assert tap == 3
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, 8, 8)) + 0.1
    r1, r2 = bk.asarray(rng.standard_normal((3, 2))), bk.asarray(rng.standard_normal((3, 3)))
    logits, feats = model.forward(x, training=True, tap=tap)
    assert feats.shape == (3, 3)
    model.backward(r1, tap_grad=(tap, r2))
    grads = {k: bk.to_numpy(v).copy() for k, v in model.named_grads().items()}

    def loss():
        z, f = model.forward(x, training=True, tap=tap)
        return float(bk.to_numpy((z * r1).sum() + (f * r2).sum()))

    for name, p in model.named_parameters():
        assert_grad(grads[name], numeric_grad(loss, p), what=name)


def test_tap_inside_a_fused_stage_is_refused():
    model = Model(TAP_SPEC, seed=0)
    with pytest.raises(SpecError, match="inside a fused stage"):
        model.forward(np.zeros((1, 1, 8, 8), np.float32), tap=1)


# ------------------------------------------------------------ balanced batches
def test_cells_and_shares():
    ids, cells = cell_ids(["b", "a", None, "a", "b"], np.array([1, 0, 0, 1, 1]))
    assert cells == [("", 0), ("a", 0), ("a", 1), ("b", 1)]
    assert ids.tolist() == [3, 1, 0, 2, 3]
    assert np.allclose(cell_shares(ids, 0.0), 0.25)
    assert np.allclose(cell_shares(ids, 1.0), [0.2, 0.2, 0.2, 0.4])
    with pytest.raises(SpecError, match="balance power"):
        cell_shares(ids, 1.5)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("batch", [7, 32])
def test_balanced_batches_meet_the_cell_quotas(power, batch):
    rng = np.random.default_rng(6)
    counts = [500, 11, 74, 141, 80, 40, 3]       # one big collection, tiny cells beside it
    ids = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(ids)
    shares = cell_shares(ids, power)
    n = ids.size
    batches = balanced_batches(ids, shares, n, batch, np.random.default_rng([0, 1]))
    assert sum(len(b) for b in batches) == n and all(len(b) == batch for b in batches[:-1])
    drawn = np.zeros(len(counts))
    total = 0
    for b in batches:
        per_cell = np.bincount(ids[b], minlength=len(counts))
        assert (np.abs(per_cell - shares * len(b)) < 2).all(), (per_cell, shares * len(b))
        drawn += per_cell
        total += len(b)
        assert (np.abs(drawn - shares * total) < 1 + 1e-9).all()
    # Without replacement inside a cell until it runs out: a big cell never repeats in an epoch.
    for k in range(len(counts)):
        picked = np.concatenate(batches)[ids[np.concatenate(batches)] == k]
        if len(picked) <= counts[k]:
            assert len(set(picked.tolist())) == len(picked)
    again = balanced_batches(ids, shares, n, batch, np.random.default_rng([0, 1]))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


# ------------------------------------------------------------------ stretch fit
def test_stretch_fills_the_square_without_padding():
    img = np.zeros((60, 120), np.float32)
    img[:, 60:] = 1.0                                 # right half bright
    out = preprocess(img, Preprocessing(image_size=32, fit="stretch", normalize="fixed"))
    assert out.shape == (32, 32)
    assert (out[:, :15] < -1.9).all() and (out[:, 17:] > 1.9).all()   # halves stay halves: no padding rows
    with pytest.raises(SpecError, match='"pad", "crop" or "stretch"'):
        Preprocessing(fit="squash")


# ---------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Two sites with both classes (a central blob is the disease), a third with normals only."""
    root = tmp_path_factory.mktemp("sites")
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[0:28, 0:28] / 28
    rows = []
    for label in ("covid", "normal"):
        (root / label).mkdir()
    for site, n_covid, n_normal in (("a", 20, 14), ("b", 12, 16), ("c", 0, 10)):
        for label, n in (("covid", n_covid), ("normal", n_normal)):
            for i in range(n):
                img = 0.4 + 0.08 * rng.standard_normal((28, 28)) + (0.1 if site == "c" else 0.0)
                if label == "covid":
                    img += 0.4 * np.exp(-(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02))
                name = f"{label}/{site}{i:02d}.png"
                Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / name)
                rows.append({"file": name, "patient_id": f"{site}{label}{i // 2}", "source_repo": site})
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo"])
        w.writeheader()
        w.writerows(rows)
    spec = root.parent / "tiny.json"
    spec.write_text(json.dumps(SOURCES_SPEC))
    return root, spec


def _opts(spec, **kw):
    base = dict(arch=str(spec), epochs=3, batch_size=8, lr=3e-3, seed=1, patience=10, workers=1, augment=True,
                fit="stretch", balance="source-class", balance_power=0.5, adversarial_source=0.5)
    return TrainOptions(**{**base, **kw})


def test_balanced_adversarial_training_records_and_resumes_exactly(sites, tmp_path):
    root, spec = sites
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = tmp_path / "a" / "m.h5"
    train(root, full, _opts(spec))
    loaded = load_model(full)
    assert loaded.metadata["options"]["balance"] == "source-class"
    assert loaded.metadata["options"]["adversarial_source"] == 0.5
    hist = loaded.history
    assert all(r["source_loss"] is not None and r["source_loss"] > 0 for r in hist)
    assert 0 < hist[0]["source_scale"] < hist[-1]["source_scale"] <= 0.5
    assert not loaded.aux                                  # the shipped model carries no adversary
    assert load_model(checkpoint_path_for(full)).aux       # the checkpoint does
    part = tmp_path / "b" / "m.h5"
    train(root, part, _opts(spec, epochs=2))
    train(root, part, _opts(spec), resume=str(checkpoint_path_for(part)))
    a, b = load_model(checkpoint_path_for(full)), load_model(checkpoint_path_for(part))
    for name, value in a.model.state_dict().items():
        np.testing.assert_array_equal(value, b.model.state_dict()[name], err_msg=name)
    for name, value in a.aux.items():
        np.testing.assert_array_equal(value, b.aux[name], err_msg=name)


def test_holdout_source_leaves_its_images_out(sites, tmp_path):
    root, spec = sites
    out = tmp_path / "m.h5"
    summary = train(root, out, _opts(spec, epochs=1, adversarial_source=0.0, holdout_sources=["c"]))
    assert summary["train_images"] + summary["val_images"] == 62
    assert load_model(out).metadata["options"]["holdout_sources"] == ["c"]
    with pytest.raises(DataError, match="no images of source"):
        train(root, tmp_path / "n.h5", _opts(spec, epochs=1, holdout_sources=["nowhere"]))


def test_cosine_schedule_runs_from_lr_to_a_hundredth():
    from xraynet.training import epoch_lr

    opts = TrainOptions(lr=2e-3, epochs=5, lr_schedule="cosine")
    lrs = [epoch_lr(opts, e) for e in range(1, 6)]
    assert lrs[0] == 2e-3 and abs(lrs[-1] - 2e-5) < 1e-12 and lrs == sorted(lrs, reverse=True)
    assert abs(lrs[2] - (2e-5 + 0.5 * (2e-3 - 2e-5))) < 1e-12
    assert epoch_lr(TrainOptions(lr=2e-3, epochs=5), 4) == 2e-3


def test_options_are_checked_before_any_decoding():
    from xraynet.errors import XraynetError

    for bad, match in ((dict(balance="foo"), "balance 'foo': unknown"),
                       (dict(lr_schedule="step"), "lr schedule 'step': unknown"),
                       (dict(adversarial_source=float("inf")), "adversarial-source: not usable"),
                       (dict(adversarial_source=-0.1), "adversarial-source: not usable")):
        with pytest.raises(XraynetError, match=match):
            TrainOptions(**bad)


def test_a_diverging_run_stops_with_a_message(sites, tmp_path):
    from xraynet.errors import XraynetError

    root, spec = sites
    with pytest.raises(XraynetError, match=r"training diverged in epoch 1.*lower --lr"):
        train(root, tmp_path / "m.h5", _opts(spec, epochs=1, lr=1e30, adversarial_source=0.0))
