"""Reading the parts of a model file, each checked against what it must hold: the
root attributes, /weights (against the model built from the architecture),
/optimizer (against the optimiser's own slots), /history and /aux. Each
dataset passes :func:`~xraynet.modelfile.checks.check_backed` before it is read."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..archs import validate_spec
from ..errors import ModelFileError, SpecError
from ..optim import OPTIMIZERS, make_optimizer
from .checks import check_backed, vlen_claim
from .layout import FORMAT, FORMAT_VERSION, RESAVE, ROOT_ATTRS, file_error


def text_attr(attrs, key):
    """An attribute's value, bytes decoded as UTF-8; None when absent."""
    v = attrs.get(key)
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode("utf-8", "replace")
    return v


def _json_attr(path, f, key: str, kind: type):
    raw = text_attr(f.attrs, key)
    if not isinstance(raw, str):
        raise file_error(path, f"root attribute {key!r} is malformed", "a JSON string", type(raw).__name__, RESAVE)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise file_error(path, f"root attribute {key!r} is not valid JSON ({e})", f"a JSON {kind.__name__}",
                         repr(raw[:60]), RESAVE) from None
    if not isinstance(value, kind):
        raise file_error(path, f"root attribute {key!r} has the wrong type", f"a JSON {kind.__name__}",
                         type(value).__name__, RESAVE)
    return value


def read_header(path: Path, f) -> dict:
    """Check format, version and root attributes; return them decoded."""
    fmt = text_attr(f.attrs, "format")
    if fmt != FORMAT:
        got = "no 'format' attribute" if fmt is None else f"format={fmt!r}"
        if "keras_version" in f.attrs or "model_weights" in f:
            got += " (it looks like a Keras model)"
        raise file_error(path, "an HDF5 file, but not an xraynet model", f"root attribute format={FORMAT!r}", got,
                         "Pass a model file saved by xraynet")
    version = f.attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
        raise file_error(path, "root attribute 'format_version' is missing or malformed", "an integer",
                         repr(version), RESAVE)
    version = int(version)
    if version > FORMAT_VERSION:
        writer = text_attr(f.attrs, "xraynet_version") or "unknown"
        raise file_error(path, f"written by a newer xraynet (version {writer}) in model format {version}",
                         f"format_version {FORMAT_VERSION} or lower (what xraynet {__version__} supports)",
                         f"format_version {version}", 'Upgrade xraynet: pip install -U xraynet')
    if version < 1:
        raise file_error(path, "unknown model format version", f"format_version 1 to {FORMAT_VERSION}",
                         f"format_version {version}", RESAVE)
    missing = [k for k in ROOT_ATTRS if k not in f.attrs]
    if missing:
        raise file_error(path, f"root attributes missing: {', '.join(missing)}", f"all of {', '.join(ROOT_ATTRS)}",
                         f"{', '.join(sorted(f.attrs)) or 'none'}", RESAVE)
    for key in ("xraynet_version", "created_utc", "weights_sha256"):
        if not isinstance(text_attr(f.attrs, key), str):
            raise file_error(path, f"root attribute {key!r} is malformed", "a string",
                             type(f.attrs[key]).__name__, RESAVE)
    spec = _json_attr(path, f, "architecture", dict)
    try:
        validate_spec(spec, "architecture")
    except SpecError as e:
        raise ModelFileError(f"{path}: the stored {e}") from None
    classes = _json_attr(path, f, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise file_error(path, "root attribute 'classes' is malformed", "a non-empty list of class names",
                         repr(classes), RESAVE)
    return {
        "format": fmt,
        "format_version": version,
        "xraynet_version": text_attr(f.attrs, "xraynet_version"),
        "created_utc": text_attr(f.attrs, "created_utc"),
        "architecture": spec,
        "classes": classes,
        "preprocessing": _json_attr(path, f, "preprocessing", dict),
        "metadata": _json_attr(path, f, "metadata", dict),
        "weights_sha256": text_attr(f.attrs, "weights_sha256"),
    }


def weight_datasets(path, f) -> tuple[dict, list]:
    """{'layers.<i>.<name>': dataset} under /weights, and the stray objects found there."""
    g = f.get("weights")
    if not isinstance(g, h5py.Group):
        raise file_error(path, "the 'weights' group is missing", "a group 'weights' with one subgroup per layer",
                         "none" if g is None else type(g).__name__, RESAVE)
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


def weights_stored(path, f) -> int:
    """How many values /weights declares (0 when it is missing or malformed;
    the weight check reports that)."""
    g = f.get("weights")
    found, _ = weight_datasets(path, f) if isinstance(g, h5py.Group) else ({}, [])
    for name, ds in found.items():
        check_backed(path, ds, f"weights/{name}")
    return sum(int(ds.size) for ds in found.values() if ds.shape is not None)


def read_weights(path, f, model) -> dict:
    """The stored arrays, checked name by name against the model's own."""
    expected = {n: ("parameter", tuple(a.shape)) for n, a in model.named_parameters()}
    expected.update({n: ("buffer", tuple(a.shape)) for n, a in model.named_buffers()})
    found, stray = weight_datasets(path, f)
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
        got_kind = text_attr(ds.attrs, "kind")
        if got_kind != kind:
            problems.append(f"{name}: kind {got_kind!r} instead of {kind!r}")
    if problems:
        listing = ", ".join(f"{n} {s}" for n, (_, s) in expected.items())
        raise file_error(path, f"the weights do not match the architecture {model.spec.get('name', '')!r}",
                         f"{len(expected)} arrays ({listing})",
                         f"{len(found)} arrays with these problems: {'; '.join(problems)}",
                         "Use a file saved for this architecture, or save the model again")
    for n, ds in found.items():
        check_backed(path, ds, f"weights/{n}")
    return {n: ds[...] for n, ds in found.items()}


def read_optimizer(path, f, model) -> dict | None:
    """The /optimizer record checked against ``model``'s parameters; None without one."""
    og = f.get("optimizer")
    if og is None:
        return None
    if not isinstance(og, h5py.Group):
        raise file_error(path, "'optimizer' is malformed", "a group", type(og).__name__, RESAVE)
    name = text_attr(og.attrs, "name")
    if name not in OPTIMIZERS:
        raise file_error(path, "the optimiser state names an unknown optimiser", f"one of {sorted(OPTIMIZERS)}",
                         repr(name), RESAVE)
    raw = text_attr(og.attrs, "hyperparams")
    try:
        hyper = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        hyper = None
    if not isinstance(hyper, dict):
        raise file_error(path, "optimizer attribute 'hyperparams' is malformed", "a JSON object", repr(raw), RESAVE)
    step = og.attrs.get("step")
    if not isinstance(step, (int, np.integer)) or isinstance(step, (bool, np.bool_)) or step < 0:
        raise file_error(path, "optimizer attribute 'step' is malformed", "a non-negative integer", repr(step),
                         RESAVE)
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
        raise file_error(path, f"the {name} optimiser state does not match the model's parameters",
                         f"{len(expected)} arrays, one per slot and parameter", "; ".join(problems),
                         "Train again without resuming, or save the model again")
    for k, ds in found.items():
        check_backed(path, ds, f"optimizer/{k}")
    state = {"step": int(step), **{k: ds[...] for k, ds in found.items()}}
    return {"name": name, "hyperparams": hyper, "state": state}


def read_history(path, f) -> list:
    """The /history list of per-epoch dicts, its claimed length checked first."""
    ds = f.get("history")
    raw = None
    if isinstance(ds, h5py.Dataset) and ds.shape == () and h5py.check_string_dtype(ds.dtype) is not None:
        check_backed(path, ds, "history")
        claim = vlen_claim(path, ds) if h5py.check_string_dtype(ds.dtype).length is None else None
        size = path.stat().st_size
        if claim is not None and claim > size:
            raise file_error(path, "the 'history' dataset is damaged", f"a string of at most the file's {size:,} bytes",
                             f"a string claiming {claim:,} bytes", RESAVE)
        raw = ds[()]
    if isinstance(raw, (bytes, np.bytes_)):
        raw = raw.decode("utf-8", "replace")
    try:
        history = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        history = None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise file_error(path, "the 'history' dataset is missing or malformed",
                         "a scalar string dataset holding a JSON list of objects", repr(raw)[:60], RESAVE)
    return history


def read_aux(path, f) -> dict:
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
            raise file_error(path, f"dataset 'aux/{name}' is not a plain array", "a fixed-size dtype (numbers)",
                             f"dtype {h5py.check_dtype(vlen=ds.dtype) or ds.dtype}", RESAVE)
        check_backed(path, ds, f"aux/{name}")
    return {name: ds[()] for name, ds in found.items()}
