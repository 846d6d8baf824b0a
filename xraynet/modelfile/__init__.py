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

Modules: :mod:`~xraynet.modelfile.layout` (names, limits, :class:`LoadedModel`),
:mod:`~xraynet.modelfile.save` (writing and :func:`weights_digest`),
:mod:`~xraynet.modelfile.checks` (the checks above that run before HDF5 reads
anything), :mod:`~xraynet.modelfile.readers` (each part of the file, checked),
:mod:`~xraynet.modelfile.load` (:func:`load_model`, :func:`read_info`,
:func:`restore_optimizer`, :func:`bundled_model_path`).
"""
from .layout import FORMAT, FORMAT_VERSION, HDF5_SIGNATURE, MAX_COMPRESSION, ROOT_ATTRS, LoadedModel
from .load import BUNDLED_MODEL, bundled_model_path, load_model, read_info, restore_optimizer
from .save import save_model, weights_digest

__all__ = ["BUNDLED_MODEL", "FORMAT", "FORMAT_VERSION", "HDF5_SIGNATURE", "MAX_COMPRESSION", "ROOT_ATTRS",
           "LoadedModel", "bundled_model_path", "load_model", "read_info", "restore_optimizer", "save_model",
           "weights_digest"]
