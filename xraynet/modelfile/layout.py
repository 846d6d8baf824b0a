"""The model file's fixed names and limits, what loading returns, and the error builder
every part of :mod:`xraynet.modelfile` raises through (the layout itself is documented
in the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError, message


FORMAT = "xraynet-model"
FORMAT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ROOT_ATTRS = ("format", "format_version", "xraynet_version", "created_utc", "architecture", "classes",
              "preprocessing", "metadata", "weights_sha256")

RESAVE = "The file is damaged or was not written by xraynet; copy it again or save the model again"

#: How many times its stored bytes a dataset may declare. zlib, the usual HDF5
#: filter, compresses by 1032:1 at best, so a genuine compressed dataset stays
#: under it.
MAX_COMPRESSION = 1032
SLACK_BYTES = 2 ** 20


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


def file_error(where, what: str, expected: str, got: str, todo: str) -> ModelFileError:
    """The :class:`ModelFileError` for ``where`` in the house pattern (:func:`xraynet.errors.message`)."""
    return ModelFileError(message(where, what, expected, got, todo))
