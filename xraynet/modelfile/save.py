"""Writing a model file: the weights checksum, the JSON encoding of the root
attributes and history, and the atomic write of the whole layout."""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from .layout import FORMAT, FORMAT_VERSION, file_error


def weights_digest(state: dict) -> str:
    """SHA-256 hex digest of named arrays, independent of byte order and memory layout.

    For each name in sorted order the hash takes ``name`` (UTF-8), NUL, the
    little-endian dtype string (e.g. ``"<f4"``), NUL, the shape as ``"d0,d1,..."``,
    NUL, then the array's raw bytes in little-endian C order. Dtype and shape
    fix the length of the bytes, so the stream parses one way only.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.asarray(state[name])
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(name.encode("utf-8") + b"\0")
        h.update(a.dtype.str.encode("ascii") + b"\0")
        h.update(",".join(str(d) for d in a.shape).encode("ascii") + b"\0")
        h.update(a.tobytes(order="C"))
    return h.hexdigest()


def _json_default(obj):
    # NumPy scalars and arrays turn up in histories (losses, metrics).
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json(path, what: str, value, kind: type) -> str:
    if not isinstance(value, kind):
        raise file_error(path, f"cannot save {what}", f"a {kind.__name__}", type(value).__name__,
                         f"Pass {what} as a {kind.__name__}")
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as e:
        raise file_error(path, f"cannot save {what} ({e})", "JSON-serialisable values (str, numbers, lists, dicts)",
                         "something else", f"Convert {what} to plain Python values") from None


@dataclass
class _Contents:
    """What :func:`save_model` writes, checked and converted before any file is opened:
    root ``attrs``, the model's ``state`` (name -> array) and the ``kinds`` of its entries
    ("parameter" / "buffer"), the ``optimizer`` record (name, hyperparameters JSON,
    ``state_dict()``) or None, the history JSON text and the ``aux`` arrays."""

    attrs: dict
    state: dict
    kinds: dict
    optimizer: tuple | None
    history_json: str
    aux: dict | None


def save_model(path, model, *, classes: list[str], preprocessing: dict, optimizer=None,
               history: list[dict] | None = None, metadata: dict | None = None,
               aux: dict | None = None) -> None:
    """Write ``model`` (architecture, parameters and buffers) to ``path``.

    ``optimizer`` (its state, for resuming training), ``history`` (one dict per
    epoch), ``metadata`` (any JSON-able dict) and ``aux`` (NumPy arrays by
    name, e.g. a training-only head's weights; ``/`` in a name makes
    subgroups) are optional. The file is written to a temporary name in the
    same directory, synced and moved onto ``path`` only once complete
    (:func:`xraynet.atomic.durable_path`), so ``path`` is never left
    half-written. Raises :class:`~xraynet.errors.ModelFileError` for inputs
    that do not fit the model, a missing directory, or a file that cannot be
    written (the ``OSError`` chained).
    """
    path = Path(path)
    classes = list(classes)
    if not all(isinstance(c, str) for c in classes) or len(classes) != model.num_classes:
        raise file_error(path, "cannot save: the class names do not fit the model",
                         f"{model.num_classes} class names (str) for output {model.output!r}", repr(classes),
                         "Pass one name per class, in label order")
    history = [] if history is None else list(history)
    if not all(isinstance(h, dict) for h in history):
        raise file_error(path, "cannot save history", "a list of dicts, one per epoch",
                         repr([type(h).__name__ for h in history]), "Pass history as a list of dicts")
    attrs = _root_attrs(path, model, classes, preprocessing, metadata)
    history_json = _to_json(path, "history", history, list)
    state = model.state_dict()
    attrs["weights_sha256"] = weights_digest(state)
    kinds = {n: "parameter" for n, _ in model.named_parameters()}
    kinds.update({n: "buffer" for n, _ in model.named_buffers()})
    contents = _Contents(attrs, state, kinds, _optimizer_record(path, model, optimizer), history_json, aux)

    if path.is_dir():
        raise file_error(path, "cannot save the model there", "a file path", "a directory", "Give a file name")
    if not path.parent.is_dir():
        raise file_error(path, "cannot save the model: the directory does not exist", "an existing directory",
                         f"missing {path.parent}", "Create the directory first")
    from ..atomic import durable_path

    try:
        with durable_path(path) as tmp, h5py.File(tmp, "w") as f:
            _write_contents(f, contents)
    except OSError as e:
        raise file_error(path, f"cannot be written ({e})", "a writable location with free space",
                         type(e).__name__, "Check the path, permissions and free disk space") from e


def _root_attrs(path, model, classes: list, preprocessing: dict, metadata: dict | None) -> dict:
    """The root attributes but ``weights_sha256`` (see the docstring of xraynet.modelfile)."""
    return {
        "format": FORMAT,
        "format_version": np.int64(FORMAT_VERSION),
        "xraynet_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": _to_json(path, "the architecture", model.spec, dict),
        "classes": json.dumps(classes),
        "preprocessing": _to_json(path, "preprocessing", preprocessing, dict),
        "metadata": _to_json(path, "metadata", {} if metadata is None else metadata, dict),
    }


def _optimizer_record(path, model, optimizer) -> tuple | None:
    """(name, hyperparameters JSON, ``state_dict()``) of an optimiser made for ``model``'s
    parameters, or None without one."""
    if optimizer is None:
        return None
    names = [n for n, _ in optimizer.params]
    if sorted(names) != sorted(n for n, _ in model.named_parameters()):
        raise file_error(path, "cannot save the optimiser: it was made for other parameters",
                         "an optimiser over model.named_parameters()", f"parameters {names}",
                         "Create the optimiser from this model's named_parameters()")
    return (optimizer.name, _to_json(path, "optimiser hyperparameters", optimizer.hyperparams(), dict),
            optimizer.state_dict())


def _write_contents(f: h5py.File, c: _Contents) -> None:
    """Lay ``c`` out in the open file ``f`` as the docstring of xraynet.modelfile describes."""
    for key, value in c.attrs.items():
        f.attrs[key] = value
    weights = f.create_group("weights")
    for name, arr in c.state.items():
        layer, _, pname = name.rpartition(".")
        ds = weights.require_group(layer).create_dataset(pname, data=np.ascontiguousarray(arr))
        ds.attrs["kind"] = c.kinds[name]
    if c.optimizer is not None:
        opt_name, hyperparams, opt_state = c.optimizer
        og = f.create_group("optimizer")
        og.attrs["name"], og.attrs["hyperparams"] = opt_name, hyperparams
        og.attrs["step"] = np.int64(opt_state["step"])
        for key, arr in opt_state.items():
            if key != "step":
                slot, _, pname = key.partition("/")
                og.require_group(slot).create_dataset(pname, data=np.ascontiguousarray(arr))
    f.create_dataset("history", data=c.history_json, dtype=h5py.string_dtype("utf-8"))
    if c.aux:
        ag = f.create_group("aux")
        for name, arr in c.aux.items():
            ag.create_dataset(name, data=np.asarray(arr, order="C"))  # 0-d stays 0-d
