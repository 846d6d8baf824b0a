"""The model card: what a model is for, what it was trained on and how well it
did, stored inside the model file and printed by ``xraynet info MODEL.h5``.

The card lives in the model file's ``metadata`` JSON object under the key
``"model_card"`` (:data:`CARD_KEY`); no new HDF5 layout is involved, so a
file with a card is an ordinary format-1 model file and a file without one
(written before cards existed) still loads everywhere. ``xraynet train``
writes it at the end of training (:func:`training_card`);
``benchmarks/bundled_model_card.py`` wrote the bundled model's.

Card layout, ``card_version`` 1
-------------------------------
A JSON object. Undefined numbers are ``null``, never NaN. ``CI`` is a 95%
interval ``[lo, hi]``; ``RATE`` is ``{"value", "ci" (Wilson), "k", "n"}``;
``AUC`` is ``{"value", "ci" (stratified bootstrap), "n_pos", "n_neg",
"reason"}`` (value null, with the reason, where it is not defined)::

    card_version     1 (CARD_VERSION); a reader refuses a larger one
    written_utc      ISO 8601 UTC time the card was made
    xraynet_version  version of the xraynet that wrote the card
    weights_sha256   the weights the card describes (the model file's own
                     checksum; `info` warns when the file's differs)
    classes          [str], label order; screening_class: the class the
                     threshold screens for
    training_data    {"root", "images", "skipped", "patients", "has_metadata",
                      "excluded_sources": [source_repo values held out],
                      "per_class": {"images"|"patients": {"train"|"val"|"all":
                                    {cls: n}}},
                      "sources": {source: {"images"|"patients": {"train"|"val"|"all":
                                  {cls: n}}}}   ("(unknown)" without a source),
                      "source_descriptions": {source: str} (optional),
                      "multi_class_patients", "warnings": [str]}
    split            {"level": "patient" | "image", "rule": str, "seed",
                      "val_fraction", "stratified_by": "class",
                      "images": {"train", "val"}, "patients": {"train", "val"},
                      "patient_overlap"}
    preprocessing    the model's preprocessing dict plus "steps": [str]
    validation       {"films", "subset": str, "bootstrap": {"n_boot", "seed", "level"},
                      "screening_class",
                      "within_source": {"available", "reason", "note",
                          "sources": {source: {"films", "class_counts",
                                      "auc": {cls: AUC}}},
                          "combined": {cls: {"value", "ci", "n_pairs",
                                      "sources", "reason"}}},
                      "pooled": {"note", "accuracy": RATE, "balanced_accuracy",
                                 "macro_auc", "auc": {cls: {"value", "ci"}}},
                      "leave_one_source_out": null | {"note", "by", "recipe", "bootstrap",
                          "folds": [{"held_out", "status", "reason", "films",
                                     "class_counts", "train_images",
                                     "val_images", "best_epoch",
                                     "auc": {cls: {"value", "ci", "reason"}},
                                     "screening": null | {"class", "threshold",
                                         "sensitivity": RATE,
                                         "specificity": RATE, "reason"}}]}}
    threshold        {"class", "value", "target_sensitivity", "rule": str,
                      "chosen_on", "sources": null | [str],
                      "at_choice": {"sensitivity", "specificity", "ppv",
                                    "npv": RATE, "tp", "fp", "tn", "fn"}
                                   (on the films that chose it),
                      "by_source": {source: {"sensitivity", "specificity": RATE}},
                      "pooled": {"sensitivity", "specificity": RATE, "note"}}
    training         {"epochs_run", "best_epoch", "selected_by", "device",
                      "machine": {"cpu", "cpu_count", "system", "gpu", "description" (optional)},
                      "epoch_seconds": {"total", "median", "min", "max"},
                      "wall_seconds": null | float (the last run, decode included),
                      "resumed": bool, "finished_utc", "recipe": {option: value},
                      "history": [{"epoch", "val_auc",
                                   "val_within_source_auc", "val_loss"}],
                      "note": str (optional)}
    intended_use     {"summary": str, "not_for": [str], "before_use": str}
    limits           [{"topic": str, "text": str}]
    provenance       {section: str}: where each part's numbers came from

:func:`info_document` turns a model file into what ``xraynet info MODEL``
prints (``--json``): the card's keys plus ``model_file``, ``path``,
``weights_sha256`` (the file's), ``card_present``, ``architecture`` and
``notes``; for a file without a card, ``card_present`` is false and the keys
the file can fill (classes, preprocessing, threshold, training basics) are
filled, the others null. :func:`format_card` is the readable text.

Modules
-------
:mod:`.layout` the version, keys and shared wording; :mod:`.sections` one
function per part, from what training or evaluation produced; :mod:`.limits`
the limits worked out from a card's figures; :mod:`.build` the whole card
(:class:`CardParts`, :func:`build_card`, :func:`training_card`);
:mod:`.reading` checking and reading a card from a model file; :mod:`.text`
the readable text. Everything is importable from ``xraynet.modelcard``.
"""

from __future__ import annotations

from .build import CardParts, FinishedTraining, build_card, training_card
from .layout import BOOT_SEED, CARD_KEY, CARD_KEYS, CARD_VERSION, N_BOOT
from .limits import limits_section
from .reading import check_card, info_document, read_card
from .sections import (crossval_section, data_section, evaluation_document, intended_use_section, machine,
                       preprocessing_section, split_section, threshold_section, training_section, validation_section)
from .text import format_card

__all__ = ["BOOT_SEED", "CARD_KEY", "CARD_KEYS", "CARD_VERSION", "N_BOOT", "CardParts", "FinishedTraining",
           "build_card", "check_card", "crossval_section", "data_section", "evaluation_document", "format_card",
           "info_document", "intended_use_section", "limits_section", "machine", "preprocessing_section",
           "read_card", "split_section", "threshold_section", "training_card", "training_section",
           "validation_section"]
