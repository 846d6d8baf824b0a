"""Model files: save and load a trained network as HDF5 (never pickle).

One file holds everything needed to screen with a model or to resume training
it: architecture, weights, class names, preprocessing, optimiser state,
training history and free-form metadata. Writing is atomic; reading is strict
and every problem raises :class:`~xraynet.errors.ModelFileError` saying what
was expected and what was found.

File layout, format version 1
-----------------------------
Root attributes (strings are variable-length UTF-8; "JSON" means a string
holding JSON text)::

    format           str    "xraynet-model"
    format_version   int64  1 (FORMAT_VERSION); files with a larger version are
                            refused with a request to upgrade xraynet
    xraynet_version  str    xraynet.__version__ of the writer, e.g. "0.1.0"
    created_utc      str    ISO 8601 UTC time of writing, "2024-05-01T12:34:56Z"
    architecture     JSON   the architecture spec (model.spec, see xraynet.archs)
    classes          JSON   list of class names, index = label; as many names
                            as the model has classes (2 for a sigmoid output)
    preprocessing    JSON   object: how images were prepared for the network
    metadata         JSON   object: anything else (data summary, command line...)
    weights_sha256   str    64 hex digits: weights_digest() of the weights below

Groups and datasets::

    /weights/layers.<i>/<name>     one dataset per parameter and buffer of layer
                                   <i> of the spec (model.named_parameters() and
                                   model.named_buffers() name it
                                   "layers.<i>.<name>"), stored in the model's
                                   dtype (float32) and its PyTorch layout, e.g.
                                   weights/layers.0/weight  (O, C, KH, KW)
                                   weights/layers.0/bias    (O,)
                                   weights/layers.1/running_mean (C,)
                                   Attribute kind: "parameter" or "buffer".
                                   Layers without arrays have no group.
    /optimizer                     only when an optimiser was saved. Attributes:
                                   name ("adam" | "sgd"), hyperparams (JSON
                                   object, Optimizer.hyperparams()), step (int64,
                                   updates taken so far)
    /optimizer/<slot>/<param>      one dataset per state slot and parameter, as
                                   Optimizer.state_dict() names them "<slot>/<param>":
                                   optimizer/m/layers.0.weight, optimizer/v/...
                                   (Adam), optimizer/momentum_buffer/... (SGD)
    /aux/<name>                    optional arrays of training-only parts (the source
                                   adversary's weights and Adam state in a checkpoint);
                                   ignored when a model is used
    /history                       scalar variable-length UTF-8 string dataset:
                                   JSON list of per-epoch objects ("[]" if none)

JSON is written by Python's ``json`` (NaN and Infinity allowed, as a diverged
run's loss needs); NumPy scalars and arrays are stored as numbers and lists.

Every dataset is numeric or a string; nothing is pickled, and loading never
executes anything stored in the file.

The weights checksum (:func:`weights_digest`) is SHA-256 over the arrays in
sorted name order; for each: the name in UTF-8, a NUL byte, the little-endian
dtype string (``"<f4"``), a NUL byte, the shape as decimal sizes joined by
``","`` (``"32,1,3,3"``), a NUL byte, then the raw little-endian C-order bytes.
It covers parameters and buffers, not the optimiser state or the attributes.

Loading (:func:`load_model`) checks, in order: the file exists and starts
with the HDF5 signature; HDF5 can open it (a truncated copy fails here);
``format`` and ``format_version``; every root attribute is present and
well-formed; the file's global heaps are sound; the architecture is not far
larger than the weights stored under /weights, and builds; the class count
fits the output; the weights have exactly the names, kinds and shapes the
architecture needs; the checksum; the optimiser state (if any) fits the
parameters; /history is a scalar string no longer than the file.

Every dataset is checked before it is read: it must keep its data in this file
(no external storage, no virtual dataset) and declare no more bytes than its
storage can hold (:data:`MAX_COMPRESSION` times the bytes stored, plus 1 MiB),
and /aux arrays must have a fixed-size dtype. A damaged or hand-made file can
declare a shape of 2**31 with nothing stored behind it; reading that would
allocate and fill gigabytes. The same goes for an architecture whose sizes were
damaged: it is sized on placeholder arrays before anything is allocated.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .archs import validate_spec
from .errors import ModelFileError, ShapeError, SpecError, XraynetError, message
from .optim import OPTIMIZERS, make_optimizer

FORMAT = "xraynet-model"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ROOT_ATTRS = ("format", "format_version", "xraynet_version", "created_utc", "architecture", "classes",
              "preprocessing", "metadata", "weights_sha256")

_RESAVE = "The file is damaged or was not written by xraynet; copy it again or save the model again"

#: How many times its stored bytes a dataset may declare. zlib, the usual HDF5
#: filter, compresses by 1032:1 at best, so a genuine compressed dataset stays
#: under it.
MAX_COMPRESSION = 1032
_SLACK_BYTES = 2 ** 20


@dataclass
class LoadedModel:
    """What :func:`load_model` returns. ``optimizer_state`` is None, or
    ``{"name": "adam"|"sgd", "hyperparams": {...}, "state": {"step": int,
    "<slot>/<param>": ndarray, ...}}`` (``Optimizer.state_dict()`` form)."""

    model: object
    classes: list
    preprocessing: dict
    optimizer_state: dict | None
    history: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    path: Path | None = None
    aux: dict = field(default_factory=dict)


def _error(where, what: str, expected: str, got: str, todo: str) -> ModelFileError:
    return ModelFileError(message(where, what, expected, got, todo))


# ------------------------------------------------------------------ checksum
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


# -------------------------------------------------------------------- saving
def _json_default(obj):
    # NumPy scalars and arrays turn up in histories (losses, metrics).
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json(path, what: str, value, kind: type) -> str:
    if not isinstance(value, kind):
        raise _error(path, f"cannot save {what}", f"a {kind.__name__}", type(value).__name__,
                     f"Pass {what} as a {kind.__name__}")
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as e:
        raise _error(path, f"cannot save {what} ({e})", "JSON-serialisable values (str, numbers, lists, dicts)",
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
        raise _error(path, "cannot save: the class names do not fit the model",
                     f"{model.num_classes} class names (str) for output {model.output!r}", repr(classes),
                     "Pass one name per class, in label order")
    history = [] if history is None else list(history)
    if not all(isinstance(h, dict) for h in history):
        raise _error(path, "cannot save history", "a list of dicts, one per epoch",
                     repr([type(h).__name__ for h in history]), "Pass history as a list of dicts")
    attrs = _root_attrs(path, model, classes, preprocessing, metadata)
    history_json = _to_json(path, "history", history, list)
    state = model.state_dict()
    attrs["weights_sha256"] = weights_digest(state)
    kinds = {n: "parameter" for n, _ in model.named_parameters()}
    kinds.update({n: "buffer" for n, _ in model.named_buffers()})
    contents = _Contents(attrs, state, kinds, _optimizer_record(path, model, optimizer), history_json, aux)

    if path.is_dir():
        raise _error(path, "cannot save the model there", "a file path", "a directory", "Give a file name")
    if not path.parent.is_dir():
        raise _error(path, "cannot save the model: the directory does not exist", "an existing directory",
                     f"missing {path.parent}", "Create the directory first")
    from .atomic import durable_path

    try:
        with durable_path(path) as tmp, h5py.File(tmp, "w") as f:
            _write_contents(f, contents)
    except OSError as e:
        raise _error(path, f"cannot be written ({e})", "a writable location with free space",
                     type(e).__name__, "Check the path, permissions and free disk space") from e


def _root_attrs(path, model, classes: list, preprocessing: dict, metadata: dict | None) -> dict:
    """The root attributes but ``weights_sha256`` (see the module docstring)."""
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
        raise _error(path, "cannot save the optimiser: it was made for other parameters",
                     "an optimiser over model.named_parameters()", f"parameters {names}",
                     "Create the optimiser from this model's named_parameters()")
    return (optimizer.name, _to_json(path, "optimiser hyperparameters", optimizer.hyperparams(), dict),
            optimizer.state_dict())


def _write_contents(f: h5py.File, c: _Contents) -> None:
    """Lay ``c`` out in the open file ``f`` as the module docstring describes."""
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


# ------------------------------------------------------------------- loading
def _describe(head: bytes) -> str:
    """What a non-HDF5 file looks like, for the error message."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head[128:132] == b"DICM":
        return "a DICOM image"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (a PyTorch .pt file is one)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never loaded by xraynet)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"bytes {head[:8]!r}"
    return f"a text file starting {text[:24]!r}"


def _check_signature(path: Path) -> None:
    if not path.exists():
        raise _error(path, "no such file", "an xraynet model file (.h5)", "nothing at that path",
                     "Check the path, or train a model first")
    if path.is_dir():
        raise _error(path, "is a directory", "an xraynet model file (.h5)", "a directory",
                     "Give the path of the model file inside it")
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        raise _error(path, f"cannot be read ({e.strerror})", "a readable xraynet model file",
                     "an error from the operating system", "Check the path and its permissions") from None
    if not head.startswith(HDF5_SIGNATURE):
        raise _error(path, "not an HDF5 file", f"an xraynet model (HDF5, starting {HDF5_SIGNATURE!r})",
                     _describe(head), "Pass a model file saved by xraynet")


def _open(path: Path):
    try:
        return h5py.File(path, "r")
    except OSError as e:
        size = path.stat().st_size
        what = "truncated" if "truncated" in str(e).lower() else "damaged"
        raise _error(path, f"the HDF5 file is {what} and cannot be opened ({e})",
                     "a complete xraynet model file", f"{size} bytes that HDF5 cannot read",
                     "Copy the file again or save the model again") from None


def _attr(attrs, key):
    v = attrs.get(key)
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode("utf-8", "replace")
    return v


def _json_attr(path, f, key: str, kind: type):
    raw = _attr(f.attrs, key)
    if not isinstance(raw, str):
        raise _error(path, f"root attribute {key!r} is malformed", "a JSON string", type(raw).__name__, _RESAVE)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _error(path, f"root attribute {key!r} is not valid JSON ({e})", f"a JSON {kind.__name__}",
                     repr(raw[:60]), _RESAVE) from None
    if not isinstance(value, kind):
        raise _error(path, f"root attribute {key!r} has the wrong type", f"a JSON {kind.__name__}",
                     type(value).__name__, _RESAVE)
    return value


def _read_header(path: Path, f) -> dict:
    """Check format, version and root attributes; return them decoded."""
    fmt = _attr(f.attrs, "format")
    if fmt != FORMAT:
        got = "no 'format' attribute" if fmt is None else f"format={fmt!r}"
        if "keras_version" in f.attrs or "model_weights" in f:
            got += " (it looks like a Keras model)"
        raise _error(path, "an HDF5 file, but not an xraynet model", f"root attribute format={FORMAT!r}", got,
                     "Pass a model file saved by xraynet")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
        raise _error(path, "root attribute 'format_version' is missing or malformed", "an integer",
                     repr(version), _RESAVE)
    version = int(version)
    if version > FORMAT_VERSION:
        writer = _attr(f.attrs, "xraynet_version") or "unknown"
        raise _error(path, f"written by a newer xraynet (version {writer}) in model format {version}",
                     f"format_version {FORMAT_VERSION} or lower (what xraynet {__version__} supports)",
                     f"format_version {version}", 'Upgrade xraynet: pip install -U xraynet')
    if version < 1:
        raise _error(path, "unknown model format version", f"format_version 1 to {FORMAT_VERSION}",
                     f"format_version {version}", _RESAVE)
    missing = [k for k in ROOT_ATTRS if k not in f.attrs]
    if missing:
        raise _error(path, f"root attributes missing: {', '.join(missing)}", f"all of {', '.join(ROOT_ATTRS)}",
                     f"{', '.join(sorted(f.attrs)) or 'none'}", _RESAVE)
    for key in ("xraynet_version", "created_utc", "weights_sha256"):
        if not isinstance(_attr(f.attrs, key), str):
            raise _error(path, f"root attribute {key!r} is malformed", "a string",
                         type(f.attrs[key]).__name__, _RESAVE)
    spec = _json_attr(path, f, "architecture", dict)
    try:
        validate_spec(spec, "architecture")
    except SpecError as e:
        raise ModelFileError(f"{path}: the stored {e}") from None
    classes = _json_attr(path, f, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise _error(path, "root attribute 'classes' is malformed", "a non-empty list of class names",
                     repr(classes), _RESAVE)
    return {
        "format": fmt,
        "format_version": version,
        "xraynet_version": _attr(f.attrs, "xraynet_version"),
        "created_utc": _attr(f.attrs, "created_utc"),
        "architecture": spec,
        "classes": classes,
        "preprocessing": _json_attr(path, f, "preprocessing", dict),
        "metadata": _json_attr(path, f, "metadata", dict),
        "weights_sha256": _attr(f.attrs, "weights_sha256"),
    }


def _weight_datasets(path, f) -> tuple[dict, list]:
    """{'layers.<i>.<name>': dataset} under /weights, and the stray objects found there."""
    g = f.get("weights")
    if not isinstance(g, h5py.Group):
        raise _error(path, "the 'weights' group is missing", "a group 'weights' with one subgroup per layer",
                     "none" if g is None else type(g).__name__, _RESAVE)
    found, stray = {}, []
    for lname, sub in g.items():
        if not isinstance(sub, h5py.Group):
            stray.append(f"weights/{lname}")
            continue
        for dname, ds in sub.items():
            if isinstance(ds, h5py.Dataset):
                found[f"{lname}.{dname}"] = ds
            else:
                stray.append(f"weights/{lname}/{dname}")
    return found, stray


def _check_backed(path, ds, name: str) -> None:
    """Refuse a dataset whose declared size its storage in this file cannot back
    (see the module docstring), before anything reads it."""
    if ds.external or ds.is_virtual:
        raise _error(path, f"dataset {name!r} keeps its data outside this file",
                     "arrays stored in the model file itself",
                     "external storage" if ds.external else "a virtual dataset", _RESAVE)
    declared = ds.size * ds.dtype.itemsize if ds.shape is not None else 0
    stored = ds.id.get_storage_size()
    if declared > MAX_COMPRESSION * stored + _SLACK_BYTES:
        raise _error(path, f"dataset {name!r} declares more data than the file holds",
                     f"at most {MAX_COMPRESSION} x its {stored:,} stored bytes",
                     f"shape {ds.shape} of {ds.dtype} ({declared:,} bytes)", _RESAVE)


def _weights_stored(path, f) -> int:
    """How many values /weights declares (0 when it is missing or malformed;
    the weight check reports that)."""
    g = f.get("weights")
    found, _ = _weight_datasets(path, f) if isinstance(g, h5py.Group) else ({}, [])
    for name, ds in found.items():
        _check_backed(path, ds, f"weights/{name}")
    return sum(int(ds.size) for ds in found.values() if ds.shape is not None)


class _SizingBackend:
    """Stands in for the compute backend while an architecture is sized: every
    array it hands out is a zero-stride placeholder (no memory), and it stops
    as soon as the arrays asked for outgrow ``budget`` values."""

    name = "sizing"

    class Exceeded(Exception):
        pass

    def __init__(self, budget: int):
        self.left = budget

    def _array(self, shape, dtype):
        self.left -= math.prod(int(d) for d in shape)
        if self.left < 0:
            raise self.Exceeded
        return np.broadcast_to(np.zeros((), dtype), tuple(shape))

    def random_normal(self, rng, shape, std, dtype):
        return self._array(shape, dtype)

    def zeros(self, shape, dtype):
        return self._array(shape, dtype)

    def asarray(self, a, dtype):
        return self._array(np.shape(a), dtype)

    def rng(self, seed):
        return None


def _check_architecture_size(path, spec: dict, stored: int) -> None:
    """Size the architecture on placeholders before it is built, so that a
    damaged size in the spec cannot make building the model allocate gigabytes.

    A valid file's architecture needs exactly the values /weights stores; the
    budget is twice that plus 2**20, so a file that lacks a few arrays still
    gets the weight check's detailed list of what is missing."""
    from .model import Model

    budget = 2 * stored + 2 ** 20
    # Batch norm makes its ones with NumPy, from the channel count, before the
    # backend sees them; every layer with parameters has at least as many
    # values as input channels, so more channels than the budget cannot fit.
    channels = spec["input_shape"][0]
    try:
        if channels > budget:
            raise _SizingBackend.Exceeded
        Model(spec, device=_SizingBackend(budget))
    except _SizingBackend.Exceeded:
        raise _error(path, "the stored architecture is far larger than the stored weights",
                     f"an architecture needing about the {stored:,} values /weights holds",
                     f"architecture {spec.get('name', '')!r} (input_shape {spec['input_shape']}) needing over "
                     f"{budget:,}", _RESAVE) from None
    except SpecError as e:
        raise ModelFileError(f"{path}: the stored architecture cannot be built: {e}") from None
    except (ArithmeticError, ValueError) as e:
        # Sizes near 2**63 overflow the layers' shape arithmetic (NumPy integers wrap).
        raise _error(path, f"the stored architecture's sizes cannot be computed ({type(e).__name__}: {e})",
                     "an architecture with sizes of a real network", f"input_shape {spec['input_shape']}",
                     _RESAVE) from None


def _read_weights(path, f, model) -> dict:
    """The stored arrays, checked name by name against the model's own."""
    expected = {n: ("parameter", tuple(a.shape)) for n, a in model.named_parameters()}
    expected.update({n: ("buffer", tuple(a.shape)) for n, a in model.named_buffers()})
    found, stray = _weight_datasets(path, f)
    problems = [f"{n}: missing" for n in sorted(set(expected) - set(found))]
    problems += [f"{n}: not in the architecture" for n in sorted(set(found) - set(expected))]
    problems += [f"{s}: not a layer array" for s in stray]
    for name in sorted(set(expected) & set(found)):
        kind, shape = expected[name]
        ds = found[name]
        if tuple(ds.shape) != shape:
            problems.append(f"{name}: shape {tuple(ds.shape)} instead of {shape}")
        if ds.dtype.kind != "f":
            problems.append(f"{name}: dtype {ds.dtype} instead of a float type")
        got_kind = _attr(ds.attrs, "kind")
        if got_kind != kind:
            problems.append(f"{name}: kind {got_kind!r} instead of {kind!r}")
    if problems:
        listing = ", ".join(f"{n} {s}" for n, (_, s) in expected.items())
        raise _error(path, f"the weights do not match the architecture {model.spec.get('name', '')!r}",
                     f"{len(expected)} arrays ({listing})",
                     f"{len(found)} arrays with these problems: {'; '.join(problems)}",
                     "Use a file saved for this architecture, or save the model again")
    for n, ds in found.items():
        _check_backed(path, ds, f"weights/{n}")
    return {n: ds[...] for n, ds in found.items()}


def _read_optimizer(path, f, model) -> dict | None:
    og = f.get("optimizer")
    if og is None:
        return None
    if not isinstance(og, h5py.Group):
        raise _error(path, "'optimizer' is malformed", "a group", type(og).__name__, _RESAVE)
    name = _attr(og.attrs, "name")
    if name not in OPTIMIZERS:
        raise _error(path, "the optimiser state names an unknown optimiser", f"one of {sorted(OPTIMIZERS)}",
                     repr(name), _RESAVE)
    raw = _attr(og.attrs, "hyperparams")
    try:
        hyper = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        hyper = None
    if not isinstance(hyper, dict):
        raise _error(path, "optimizer attribute 'hyperparams' is malformed", "a JSON object", repr(raw), _RESAVE)
    step = og.attrs.get("step")
    if not isinstance(step, (int, np.integer)) or isinstance(step, (bool, np.bool_)) or step < 0:
        raise _error(path, "optimizer attribute 'step' is malformed", "a non-negative integer", repr(step),
                     _RESAVE)
    # The optimiser itself says which slots it keeps, so the check cannot drift from optim.py.
    probe = make_optimizer(name, model.named_parameters(), model.bk)
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items() if k != "step"}
    found = {}
    for slot, sg in og.items():
        if isinstance(sg, h5py.Group):
            found.update({f"{slot}/{p}": ds for p, ds in sg.items()})
        else:
            found[slot] = sg
    problems = [f"{k}: missing" for k in sorted(set(expected) - set(found))]
    problems += [f"{k}: not expected" for k in sorted(set(found) - set(expected))]
    problems += [f"{k}: not a dataset" for k in sorted(set(expected) & set(found))
                 if not isinstance(found[k], h5py.Dataset)]
    problems += [f"{k}: shape {found[k].shape} instead of {expected[k]}" for k in sorted(set(expected) & set(found))
                 if isinstance(found[k], h5py.Dataset) and found[k].shape != expected[k]]
    if problems:
        raise _error(path, f"the {name} optimiser state does not match the model's parameters",
                     f"{len(expected)} arrays, one per slot and parameter", "; ".join(problems),
                     "Train again without resuming, or save the model again")
    for k, ds in found.items():
        _check_backed(path, ds, f"optimizer/{k}")
    state = {"step": int(step), **{k: ds[...] for k, ds in found.items()}}
    return {"name": name, "hyperparams": hyper, "state": state}


def _vlen_claim(path, ds) -> int | None:
    """The byte length a scalar variable-length string dataset says its value
    has, read from the file without HDF5; None where it has no contiguous data.

    HDF5 keeps such a value as a 4-byte little-endian length and a global heap
    ID in the dataset's raw data (HDF5 file format specification, "Variable-length
    data"). HDF5 2.0 allocates and clears that many bytes before it checks them
    against the heap, so one damaged length would cost up to 4 GiB.
    """
    offset = ds.id.get_offset()
    if offset is None:
        return None
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(4)
    return int.from_bytes(raw, "little") if len(raw) == 4 else None


def _read_history(path, f) -> list:
    ds = f.get("history")
    raw = None
    if isinstance(ds, h5py.Dataset) and ds.shape == () and h5py.check_string_dtype(ds.dtype) is not None:
        _check_backed(path, ds, "history")
        claim = _vlen_claim(path, ds) if h5py.check_string_dtype(ds.dtype).length is None else None
        size = path.stat().st_size
        if claim is not None and claim > size:
            raise _error(path, "the 'history' dataset is damaged", f"a string of at most the file's {size:,} bytes",
                         f"a string claiming {claim:,} bytes", _RESAVE)
        raw = ds[()]
    if isinstance(raw, (bytes, np.bytes_)):
        raw = raw.decode("utf-8", "replace")
    try:
        history = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        history = None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise _error(path, "the 'history' dataset is missing or malformed",
                     "a scalar string dataset holding a JSON list of objects", repr(raw)[:60], _RESAVE)
    return history


def _check_global_heaps(path: Path, f) -> None:
    """Refuse a file whose global heap would make HDF5 loop forever.

    Variable-length strings (the JSON attributes, ``kind``, /history) live in
    global heap collections: "GCOL", version 1, 3 reserved bytes, the
    collection size, then objects of a 2-byte index, 2-byte reference count,
    4 reserved bytes, a size and the data padded to 8 bytes (HDF5 file format
    specification, "Global Heap"). HDF5 2.0 walks a collection object by object
    when it first reads a string from it, and never moves past a free-space
    object (index 0) of size 0. One such object, found by the fuzzer in a
    damaged file, hangs load_model inside the C library, where nothing can
    interrupt it, so the walk is done here first.
    """
    _, size_len = f.id.get_create_plist().get_sizes()
    head = obj_head = 8 + size_len
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = data.find(b"GCOL")
        while pos >= 0:
            if data[pos + 4] == 1 and pos + head <= len(data):
                end = min(pos + int.from_bytes(data[pos + 8:pos + head], "little"), len(data))
                p = pos + head
                while p + obj_head <= end:
                    index = int.from_bytes(data[p:p + 2], "little")
                    size = int.from_bytes(data[p + 8:p + obj_head], "little")
                    step = size if index == 0 else obj_head + (size + 7) // 8 * 8
                    # 0 never advances; a step of 2**63 or more wraps HDF5's pointer back.
                    if step == 0 or step >= 2 ** 63:
                        raise _error(path, "the HDF5 file is damaged (a global heap object of impossible size)",
                                     "a readable xraynet model file",
                                     f"object {index} of size {size} in the heap at byte {pos}",
                                     "Copy the file again or save the model again")
                    p += step
            pos = data.find(b"GCOL", pos + 4)


def _guarded(path: Path, read):
    """Run ``read(h5file)``; low-level failures inside a file that opened are damage."""
    _check_signature(path)
    f = _open(path)
    try:
        with f:
            _check_global_heaps(path, f)
            return read(f)
    except XraynetError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise _error(path, f"the HDF5 file is damaged ({type(e).__name__}: {e})", "a readable xraynet model file",
                     "data HDF5 cannot read", "Copy the file again or save the model again") from None


def load_model(path, device: str = "cpu") -> LoadedModel:
    """Read a model file written by :func:`save_model`, validating everything.

    Builds ``Model(spec, device=device)`` and loads parameters and buffers into
    it (in the model's float32). Raises :class:`ModelFileError` naming the file
    for any problem.
    """
    from .model import Model  # imports the backend (Numba): only when a model is built

    path = Path(path)

    def read(f):
        header = _read_header(path, f)
        _check_architecture_size(path, header["architecture"], _weights_stored(path, f))
        try:
            model = Model(header["architecture"], device=device)
        except SpecError as e:
            raise ModelFileError(f"{path}: the stored architecture cannot be built: {e}") from None
        if len(header["classes"]) != model.num_classes:
            raise _error(path, "the class names do not fit the architecture",
                         f"{model.num_classes} names for output {model.output!r}", repr(header["classes"]),
                         _RESAVE)
        state = _read_weights(path, f, model)
        digest = weights_digest(state)
        if digest != header["weights_sha256"]:
            raise _error(path, "the weights are corrupted (checksum mismatch)",
                         f"SHA-256 {header['weights_sha256']}", digest,
                         "Copy the file again from its source, or save the model again")
        try:
            model.load_state_dict(state)
        except ShapeError as e:
            raise ModelFileError(f"{path}: {e}") from None
        return LoadedModel(model=model, classes=header["classes"], preprocessing=header["preprocessing"],
                           optimizer_state=_read_optimizer(path, f, model), history=_read_history(path, f),
                           metadata=header["metadata"], format_version=header["format_version"], path=path,
                           aux=_read_aux(path, f))

    return _guarded(path, read)


def _read_aux(path, f) -> dict:
    """The ``/aux`` arrays by name (path inside the group); {} when absent."""
    group = f.get("aux")
    if not isinstance(group, h5py.Group):
        return {}
    found = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    for name, ds in found.items():
        if ds.dtype.hasobject:
            # Variable-length items (strings, sequences, references) carry
            # their own lengths, which a damaged file can set to gigabytes.
            raise _error(path, f"dataset 'aux/{name}' is not a plain array", "a fixed-size dtype (numbers)",
                         f"dtype {h5py.check_dtype(vlen=ds.dtype) or ds.dtype}", _RESAVE)
        _check_backed(path, ds, f"aux/{name}")
    return {name: ds[()] for name, ds in found.items()}


def read_info(path) -> dict:
    """The header of a model file, without building the model or reading weights.

    Keys: ``path``, ``format``, ``format_version``, ``xraynet_version``,
    ``created_utc``, ``architecture`` (spec dict), ``classes``,
    ``preprocessing``, ``metadata``, ``weights_sha256``, ``num_parameters``
    (trainable values), ``optimizer`` (name or None), ``epochs`` (history
    length). Checks format, version and attributes as :func:`load_model` does;
    the checksum is not verified.
    """
    path = Path(path)

    def read(f):
        info = {"path": str(path), **_read_header(path, f)}
        found, _ = _weight_datasets(path, f)
        info["num_parameters"] = int(sum(ds.size for ds in found.values()
                                         if _attr(ds.attrs, "kind") == "parameter"))
        og = f.get("optimizer")
        info["optimizer"] = _attr(og.attrs, "name") if isinstance(og, h5py.Group) else None
        info["epochs"] = len(_read_history(path, f))
        return info

    return _guarded(path, read)


def _constructor_args(hyperparams: dict) -> dict:
    """Optimizer.hyperparams() -> keyword arguments of the optimiser's constructor."""
    kw = dict(hyperparams)
    if "beta1" in kw or "beta2" in kw:
        kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    return kw


def restore_optimizer(loaded: LoadedModel, optimizer=None):
    """Load the saved optimiser state into ``optimizer`` and return it.

    ``optimizer`` must be of the saved kind and made for
    ``loaded.model.named_parameters()``; its own hyperparameters are kept (so a
    resumed run may change the learning rate). With ``optimizer=None`` one is
    created with the saved hyperparameters.
    """
    where = loaded.path or "model file"
    saved = loaded.optimizer_state
    if saved is None:
        raise _error(where, "has no optimiser state", "a file saved with its optimiser during training",
                     "weights only", "Train from these weights without resuming, or resume from a checkpoint")
    if optimizer is None:
        try:
            optimizer = make_optimizer(saved["name"], loaded.model.named_parameters(), loaded.model.bk,
                                       **_constructor_args(saved["hyperparams"]))
        except (TypeError, SpecError) as e:
            raise _error(where, f"the saved {saved['name']} hyperparameters cannot be used ({e})",
                         "the hyperparameters of xraynet's optimisers", repr(saved["hyperparams"]),
                         "Create the optimiser yourself and pass it in") from None
    elif optimizer.name != saved["name"]:
        raise _error(where, "the saved optimiser state is of another kind", f"a {saved['name']!r} optimiser",
                     repr(optimizer.name), f"Resume with the {saved['name']} optimiser, or start a new run")
    try:
        optimizer.load_state_dict(saved["state"])
    except ModelFileError as e:
        raise ModelFileError(f"{where}: {e}") from None
    return optimizer


#: The model shipped inside the package (trained on ../shared/data/cxr; see the README).
BUNDLED_MODEL = "models/default.h5"


def bundled_model_path() -> Path:
    """Path of the bundled default model; ModelFileError if this install lacks it."""
    from importlib.resources import files

    path = Path(str(files("xraynet") / BUNDLED_MODEL))
    if not path.is_file():
        raise ModelFileError(f"{path}: the bundled default model is missing from this installation. Expected "
                             "the file shipped with xraynet, got nothing there. Reinstall xraynet or pass a "
                             "model file explicitly.")
    return path
