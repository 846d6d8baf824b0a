"""Loading a model file (:func:`load_model`), reading its header alone
(:func:`read_info`), restoring the saved optimiser, and finding the bundled model."""
from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import ModelFileError, ShapeError, SpecError
from ..optim import make_optimizer
from .checks import check_architecture_size, guarded
from .layout import RESAVE, LoadedModel, file_error
from .readers import (read_aux, read_header, read_history, read_optimizer, read_weights, text_attr,
                      weight_datasets, weights_stored)
from .save import weights_digest


def load_model(path, device: str = "cpu") -> LoadedModel:
    """Read a model file written by :func:`save_model`, validating everything.

    Builds ``Model(spec, device=device)`` and loads parameters and buffers into
    it (in the model's float32). Raises :class:`ModelFileError` naming the file
    for any problem.
    """
    from ..model import Model  # imports the backend (Numba): only when a model is built

    path = Path(path)

    def read(f):
        header = read_header(path, f)
        check_architecture_size(path, header["architecture"], weights_stored(path, f))
        try:
            model = Model(header["architecture"], device=device)
        except SpecError as e:
            raise ModelFileError(f"{path}: the stored architecture cannot be built: {e}") from None
        if len(header["classes"]) != model.num_classes:
            raise file_error(path, "the class names do not fit the architecture",
                             f"{model.num_classes} names for output {model.output!r}", repr(header["classes"]),
                             RESAVE)
        state = read_weights(path, f, model)
        _check_digest(path, header["weights_sha256"], state)
        try:
            model.load_state_dict(state)
        except ShapeError as e:
            raise ModelFileError(f"{path}: {e}") from None
        return LoadedModel(model=model, classes=header["classes"], preprocessing=header["preprocessing"],
                           optimizer_state=read_optimizer(path, f, model), history=read_history(path, f),
                           metadata=header["metadata"], format_version=header["format_version"], path=path,
                           aux=read_aux(path, f))

    return guarded(path, read)


def _check_digest(path, stored: str, state: dict) -> None:
    """ModelFileError unless the SHA-256 of ``state`` (:func:`weights_digest`) is ``stored``."""
    digest = weights_digest(state)
    if digest != stored:
        raise file_error(path, "the weights are corrupted (checksum mismatch)", f"SHA-256 {stored}", digest,
                         "Copy the file again from its source, or save the model again")


def read_info(path, verify_weights: bool = False) -> dict:
    """The header of a model file, without building the model.

    Keys: ``path``, ``format``, ``format_version``, ``xraynet_version``,
    ``created_utc``, ``architecture`` (spec dict), ``classes``,
    ``preprocessing``, ``metadata``, ``weights_sha256``, ``num_parameters``
    (trainable values), ``optimizer`` (name or None), ``epochs`` (history
    length). Checks format, version and attributes as :func:`load_model` does;
    with ``verify_weights`` it also reads every stored weight array (after the
    same size checks) and raises ModelFileError when their SHA-256 is not the
    stored ``weights_sha256``, as loading would; without, no weight is read.
    """
    path = Path(path)

    def read(f):
        info = {"path": str(path), **read_header(path, f)}
        if verify_weights:
            check_architecture_size(path, info["architecture"], weights_stored(path, f))
            found, _ = weight_datasets(path, f)
            _check_digest(path, info["weights_sha256"], {n: ds[...] for n, ds in found.items()})
        found, _ = weight_datasets(path, f)
        info["num_parameters"] = int(sum(ds.size for ds in found.values()
                                         if text_attr(ds.attrs, "kind") == "parameter"))
        og = f.get("optimizer")
        info["optimizer"] = text_attr(og.attrs, "name") if isinstance(og, h5py.Group) else None
        info["epochs"] = len(read_history(path, f))
        return info

    return guarded(path, read)


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
        raise file_error(where, "has no optimiser state", "a file saved with its optimiser during training",
                         "weights only", "Train from these weights without resuming, or resume from a checkpoint")
    if optimizer is None:
        try:
            optimizer = make_optimizer(saved["name"], loaded.model.named_parameters(), loaded.model.bk,
                                       **_constructor_args(saved["hyperparams"]))
        except (TypeError, SpecError) as e:
            raise file_error(where, f"the saved {saved['name']} hyperparameters cannot be used ({e})",
                             "the hyperparameters of xraynet's optimisers", repr(saved["hyperparams"]),
                             "Create the optimiser yourself and pass it in") from None
    elif optimizer.name != saved["name"]:
        raise file_error(where, "the saved optimiser state is of another kind", f"a {saved['name']!r} optimiser",
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
