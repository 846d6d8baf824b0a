"""Model files: round trips, the documented layout, atomic writes and every error path."""
from __future__ import annotations

import datetime
import json

import h5py
import numpy as np
import pytest

from xraynet import __version__
from xraynet.archs import builtin_spec
from xraynet.errors import ModelFileError
from xraynet.model import Model
from xraynet.modelfile import (FORMAT_VERSION, LoadedModel, load_model, read_info, restore_optimizer, save_model,
                               weights_digest)
from xraynet.optim import SGD, Adam

from helpers import BN_SPEC

PREP = {"image_size": 16, "grayscale": True, "normalize": {"mean": 0.5, "std": 0.25}}


def _batch(n=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 16, 16)).astype(np.float32)


def _seed_model():
    return Model(builtin_spec("seed", image_size=16), seed=1)


@pytest.fixture
def saved(tmp_path):
    """A valid file with optimiser state and history; returns its path."""
    model = _seed_model()
    opt = Adam(model.named_parameters(), model.bk, lr=1e-3)
    model.train_step(_batch(), np.array([0, 1, 0, 1, 1, 0]), opt)
    path = tmp_path / "model.h5"
    save_model(path, model, classes=["normal", "pneumonia"], preprocessing=PREP, optimizer=opt,
               history=[{"epoch": 1, "loss": 0.5}], metadata={"train_images": 6})
    return path


def _message(path, **kw) -> str:
    with pytest.raises(ModelFileError) as e:
        load_model(path, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    return msg


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("spec,classes", [(builtin_spec("seed", image_size=16), ["normal", "pneumonia"]),
                                          (BN_SPEC, ["normal", "bacterial", "viral"])],
                         ids=["seed", "batchnorm-dropout-gap"])
def test_round_trip_predictions_and_state(tmp_path, spec, classes):
    model = Model(spec, seed=3)
    opt = SGD(model.named_parameters(), model.bk, lr=0.05)
    model.train_step(_batch(), np.array([0, 1, 1, 0, 1, 0]), opt)  # moves BN running stats off 0 / 1
    state = model.state_dict()
    if spec is BN_SPEC:
        assert not np.allclose(state["layers.1.running_mean"], 0)
        assert not np.allclose(state["layers.1.running_var"], 1)
    path = tmp_path / "m.h5"
    save_model(path, model, classes=classes, preprocessing=PREP)
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel) and loaded.path == path
    assert loaded.model.spec == spec and loaded.classes == classes and loaded.preprocessing == PREP
    assert loaded.optimizer_state is None and loaded.history == [] and loaded.metadata == {}
    assert loaded.format_version == FORMAT_VERSION
    got = loaded.model.state_dict()
    assert sorted(got) == sorted(state)
    for name in state:
        np.testing.assert_array_equal(got[name], state[name], err_msg=name)
    x = _batch(seed=7)
    np.testing.assert_array_equal(loaded.model.predict_proba(x), model.predict_proba(x))


def test_optimizer_state_resumes_exactly(tmp_path):
    x, y = _batch(), np.array([0, 1, 0, 1, 1, 0])
    model = _seed_model()
    opt = Adam(model.named_parameters(), model.bk, lr=1e-3)
    for _ in range(2):
        model.train_step(x, y, opt)
    path = tmp_path / "ckpt.h5"
    save_model(path, model, classes=["a", "b"], preprocessing=PREP, optimizer=opt)
    loaded = load_model(path)
    assert loaded.optimizer_state["name"] == "adam"
    assert loaded.optimizer_state["hyperparams"] == opt.hyperparams()
    assert loaded.optimizer_state["state"]["step"] == 2
    opt2 = restore_optimizer(loaded, Adam(loaded.model.named_parameters(), loaded.model.bk, lr=1e-3))
    assert opt2.step_count == 2
    model.train_step(x, y, opt)
    loaded.model.train_step(x, y, opt2)
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.model.named_parameters()):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_restore_optimizer_builds_from_saved_hyperparams_and_checks_kind(saved):
    loaded = load_model(saved)
    opt = restore_optimizer(loaded)
    assert isinstance(opt, Adam) and opt.hyperparams() == loaded.optimizer_state["hyperparams"]
    assert opt.step_count == 1
    with pytest.raises(ModelFileError) as e:
        restore_optimizer(loaded, SGD(loaded.model.named_parameters(), loaded.model.bk))
    assert str(e.value).startswith(f"{saved}: ") and "Expected a 'adam' optimiser, got 'sgd'" in str(e.value)


def test_restore_optimizer_without_saved_state(tmp_path):
    path = tmp_path / "w.h5"
    save_model(path, _seed_model(), classes=["a", "b"], preprocessing={})
    with pytest.raises(ModelFileError, match="has no optimiser state. Expected"):
        restore_optimizer(load_model(path))


def test_history_metadata_and_root_attrs(tmp_path):
    history = [{"epoch": 1, "loss": np.float32(0.75), "val_auc": 0.6},
               {"epoch": 2, "loss": 0.5, "val_auc": float("nan")}]
    metadata = {"data": {"train": {"normal": 10, "pneumonia": 12}}, "command": "xraynet train data/",
                "sizes": np.array([1, 2])}
    path = tmp_path / "m.h5"
    save_model(path, _seed_model(), classes=["normal", "pneumonia"], preprocessing=PREP, history=history,
               metadata=metadata)
    loaded = load_model(path)
    assert loaded.history[0] == {"epoch": 1, "loss": 0.75, "val_auc": 0.6}
    assert loaded.history[1]["val_auc"] != loaded.history[1]["val_auc"]  # NaN survives
    assert loaded.metadata == {**metadata, "sizes": [1, 2]}
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "xraynet-model" and int(a["format_version"]) == 1
        assert a["xraynet_version"] == __version__
        created = datetime.datetime.fromisoformat(a["created_utc"].replace("Z", "+00:00"))
        assert a["created_utc"].endswith("Z")
        assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(minutes=5)
        assert json.loads(a["architecture"]) == loaded.model.spec
        assert json.loads(a["classes"]) == ["normal", "pneumonia"]
        assert json.loads(a["preprocessing"]) == PREP
        assert a["weights_sha256"] == weights_digest(loaded.model.state_dict())
        assert "optimizer" not in f


def test_layout_matches_the_documentation(saved):
    model = load_model(saved).model
    with h5py.File(saved, "r") as f:
        for name, arr in model.named_parameters():
            layer, _, p = name.rpartition(".")
            ds = f[f"weights/{layer}/{p}"]
            assert ds.shape == arr.shape and ds.dtype == np.float32 and ds.attrs["kind"] == "parameter"
        assert sorted(f["weights"]) == ["layers.0", "layers.3", "layers.7", "layers.9"]
        og = f["optimizer"]
        assert og.attrs["name"] == "adam" and int(og.attrs["step"]) == 1
        assert json.loads(og.attrs["hyperparams"])["lr"] == 1e-3
        assert f["optimizer/m/layers.0.weight"].shape == (32, 1, 3, 3)
        assert sorted(og) == ["m", "v"]
        assert json.loads(f["history"].asstr()[()]) == [{"epoch": 1, "loss": 0.5}]


def test_batchnorm_buffers_are_stored_as_buffers(tmp_path):
    path = tmp_path / "bn.h5"
    save_model(path, Model(BN_SPEC), classes=["a", "b", "c"], preprocessing={})
    with h5py.File(path, "r") as f:
        assert f["weights/layers.1/running_mean"].attrs["kind"] == "buffer"
        assert f["weights/layers.1/weight"].attrs["kind"] == "parameter"
    info = read_info(path)
    assert info["num_parameters"] == Model(BN_SPEC).num_parameters()


def test_no_pickled_or_object_data(saved):
    def check_attrs(obj):
        for key, value in obj.attrs.items():
            assert isinstance(value, (str, np.integer, np.floating)), (obj.name, key, type(value))

    def visit(name, obj):
        check_attrs(obj)
        if isinstance(obj, h5py.Dataset):
            ok = obj.dtype.kind in "fiu" or h5py.check_string_dtype(obj.dtype) is not None
            assert ok, (name, obj.dtype)

    with h5py.File(saved, "r") as f:
        check_attrs(f)
        f.visititems(visit)


def test_read_info(saved):
    info = read_info(saved)
    assert info["format"] == "xraynet-model" and info["format_version"] == FORMAT_VERSION
    assert info["architecture"]["name"] == "seed" and info["classes"] == ["normal", "pneumonia"]
    assert info["metadata"] == {"train_images": 6} and info["preprocessing"] == PREP
    assert info["num_parameters"] == _seed_model().num_parameters()
    assert info["optimizer"] == "adam" and info["epochs"] == 1
    assert len(info["weights_sha256"]) == 64


def test_weights_digest_is_layout_independent():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = weights_digest({"x": a, "y": a[0]})
    assert weights_digest({"y": a[0], "x": np.asfortranarray(a)}) == base
    assert weights_digest({"x": a.astype(">f4"), "y": a[0]}) == base
    assert weights_digest({"x": a.reshape(4, 3), "y": a[0]}) != base
    assert weights_digest({"x": a, "y": a[0] + 1}) != base


# ------------------------------------------------------------------ atomic write
def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, saved, monkeypatch):
    before = saved.read_bytes()
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_model(saved, _seed_model(), classes=["x", "y"], preprocessing={})
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]
    assert load_model(saved).classes == ["normal", "pneumonia"]


def test_save_into_missing_directory(tmp_path):
    path = tmp_path / "nope" / "m.h5"
    with pytest.raises(ModelFileError, match="directory does not exist. Expected an existing directory"):
        save_model(path, _seed_model(), classes=["a", "b"], preprocessing={})


def test_save_rejects_bad_inputs(tmp_path):
    model, path = _seed_model(), tmp_path / "m.h5"
    with pytest.raises(ModelFileError, match="class names do not fit the model. Expected 2 class names"):
        save_model(path, model, classes=["a", "b", "c"], preprocessing={})
    with pytest.raises(ModelFileError, match="cannot save metadata .*Expected JSON-serialisable"):
        save_model(path, model, classes=["a", "b"], preprocessing={}, metadata={"f": object()})
    other = Adam(Model(BN_SPEC).named_parameters(), model.bk)
    with pytest.raises(ModelFileError, match="optimiser: it was made for other parameters. Expected"):
        save_model(path, model, classes=["a", "b"], preprocessing={}, optimizer=other)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ error paths
def test_missing_file_and_directory(tmp_path):
    msg = _message(tmp_path / "absent.h5")
    assert "absent.h5: no such file. Expected an xraynet model file" in msg and "Check the path" in msg
    msg = _message(tmp_path)
    assert "is a directory. Expected" in msg


@pytest.mark.parametrize("content,looks_like", [
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
    (b"epoch,loss\n1,0.5\n", "a text file starting 'epoch,loss"),
    (b"", "an empty file"),
    (b"\x80\x04\x95" + bytes(20), "a Python pickle"),
])
def test_not_an_hdf5_file(tmp_path, content, looks_like):
    path = tmp_path / "scan.h5"
    path.write_bytes(content)
    msg = _message(path)
    assert "not an HDF5 file. Expected an xraynet model (HDF5" in msg and f"got {looks_like}" in msg
    assert "Pass a model file saved by xraynet" in msg


def test_hdf5_but_not_xraynet(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    assert "not an xraynet model. Expected root attribute format='xraynet-model', got no 'format'" in _message(path)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15"
        f.create_group("model_weights")
    assert "looks like a Keras model" in _message(path)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "something-else"
    assert "got format='something-else'" in _message(path)
    with pytest.raises(ModelFileError, match="not an xraynet model"):
        read_info(path)


def test_newer_format_version(saved):
    with h5py.File(saved, "r+") as f:
        f.attrs["format_version"] = np.int64(FORMAT_VERSION + 1)
        f.attrs["xraynet_version"] = "9.0.0"
    msg = _message(saved)
    assert "written by a newer xraynet (version 9.0.0)" in msg
    assert f"Expected format_version {FORMAT_VERSION} or lower" in msg
    assert f"got format_version {FORMAT_VERSION + 1}" in msg
    assert "Upgrade xraynet: pip install -U xraynet" in msg


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:len(data) // 2])
    msg = _message(cut)
    assert "truncated" in msg and "Expected a complete xraynet model file" in msg
    assert f"got {len(data) // 2} bytes" in msg and "Copy the file again" in msg


def test_missing_weight_dataset(saved):
    with h5py.File(saved, "r+") as f:
        del f["weights/layers.3/bias"]
    msg = _message(saved)
    assert "weights do not match the architecture 'seed'" in msg and "Expected 8 arrays" in msg
    assert "got 7 arrays" in msg and "layers.3.bias: missing" in msg


def test_extra_weight_dataset(saved):
    with h5py.File(saved, "r+") as f:
        f.create_group("weights/layers.5").create_dataset("weight", data=np.zeros(3, np.float32))
    msg = _message(saved)
    assert "got 9 arrays" in msg and "layers.5.weight: not in the architecture" in msg


def test_wrong_weight_shape(saved):
    with h5py.File(saved, "r+") as f:
        del f["weights/layers.9/weight"]
        f["weights/layers.9"].create_dataset("weight", data=np.zeros((2, 256), np.float32))
    msg = _message(saved)
    assert "layers.9.weight (1, 256)" in msg  # expected
    assert "layers.9.weight: shape (2, 256) instead of (1, 256)" in msg  # got


def test_checksum_mismatch(saved):
    with h5py.File(saved, "r+") as f:
        f["weights/layers.0/weight"][0, 0, 0, 0] += 1.0
    msg = _message(saved)
    assert "the weights are corrupted (checksum mismatch). Expected SHA-256" in msg and "Copy the file again" in msg


@pytest.mark.parametrize("key,value,expect", [
    ("architecture", "{not json", "root attribute 'architecture' is not valid JSON"),
    ("architecture", json.dumps([1, 2]), "root attribute 'architecture' has the wrong type. Expected a JSON dict"),
    ("architecture", json.dumps({"layers": []}), "the stored architecture: missing key 'input_shape'"),
    ("architecture", json.dumps({"input_shape": [1, 16, 16], "output": "sigmoid",
                                 "layers": [{"type": "warp"}]}), "layer type 'warp': unknown"),
    ("classes", json.dumps(["only-one"]), "class names do not fit the architecture. Expected 2 names"),
    ("preprocessing", "[]", "root attribute 'preprocessing' has the wrong type"),
    ("format_version", "one", "'format_version' is missing or malformed. Expected an integer"),
])
def test_malformed_attributes(saved, key, value, expect):
    with h5py.File(saved, "r+") as f:
        f.attrs[key] = value
    assert expect in _message(saved)


def test_missing_attributes_and_groups(saved, tmp_path):
    with h5py.File(saved, "r+") as f:
        del f.attrs["classes"], f.attrs["metadata"]
    msg = _message(saved)
    assert "root attributes missing: classes, metadata. Expected all of format, format_version" in msg
    path = tmp_path / "g.h5"
    save_model(path, _seed_model(), classes=["a", "b"], preprocessing={})
    with h5py.File(path, "r+") as f:
        del f["history"]
    assert "the 'history' dataset is missing or malformed. Expected" in _message(path)
    with h5py.File(path, "r+") as f:
        del f["weights"]
    assert "the 'weights' group is missing. Expected" in _message(path)


def test_bad_optimizer_state(saved):
    with h5py.File(saved, "r+") as f:
        del f["optimizer/v/layers.0.bias"]
    msg = _message(saved)
    assert "the adam optimiser state does not match the model's parameters. Expected 16 arrays" in msg
    assert "v/layers.0.bias: missing" in msg
    with h5py.File(saved, "r+") as f:
        f["optimizer"].attrs["name"] = "rmsprop"
    assert "unknown optimiser. Expected one of ['adam', 'sgd'], got 'rmsprop'" in _message(saved)


def test_read_info_reports_the_same_errors(tmp_path, saved):
    with pytest.raises(ModelFileError, match="no such file"):
        read_info(tmp_path / "absent.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(saved.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="truncated"):
        read_info(cut)
