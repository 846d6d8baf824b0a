"""The whole model card: :func:`build_card` from its parts
(:class:`CardParts`), and :func:`training_card`, the card ``xraynet train``
writes from what training has at its end (:class:`FinishedTraining`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .. import __version__
from .layout import BOOT_SEED, CARD_VERSION, N_BOOT, now_utc
from .limits import limits_section
from .sections import (data_section, evaluation_document, intended_use_section, machine, preprocessing_section,
                       split_section, threshold_section, training_section, validation_section)


@dataclass
class CardParts:
    """The parts of a card, each in its card layout (:mod:`xraynet.modelcard`;
    the ``*_section`` functions make them). ``intended_use`` None: the generic
    one of :func:`~xraynet.modelcard.intended_use_section`. ``extra_limits``:
    ``{"topic", "text"}`` entries appended to the limits worked out from the
    figures. ``provenance``: ``{part: where its numbers came from}``."""

    classes: list
    screening_class: str
    training_data: dict
    split: dict
    preprocessing: dict
    validation: dict
    threshold: dict
    training: dict
    weights_sha256: str | None
    provenance: dict
    intended_use: dict | None = None
    extra_limits: list = field(default_factory=list)


def build_card(parts: CardParts) -> dict:
    """A complete card (layout in :mod:`xraynet.modelcard`); ``limits`` are
    worked out from the figures, then ``parts.extra_limits`` appended."""
    card = {
        "card_version": CARD_VERSION, "written_utc": now_utc(), "xraynet_version": __version__,
        "weights_sha256": parts.weights_sha256, "classes": list(parts.classes),
        "screening_class": parts.screening_class, "training_data": parts.training_data, "split": parts.split,
        "preprocessing": parts.preprocessing, "validation": parts.validation, "threshold": parts.threshold,
        "training": parts.training,
        "intended_use": parts.intended_use or intended_use_section(parts.classes, parts.screening_class),
    }
    card["limits"] = limits_section(card) + [dict(x) for x in parts.extra_limits]
    card["provenance"] = dict(parts.provenance)
    return card


@dataclass
class FinishedTraining:
    """What ``xraynet train`` has at its end, for :func:`training_card`.

    ``ds``, ``split``, ``report``: the scanned dataset
    (:func:`xraynet.data.scan_dataset`), its split and its confound report;
    ``skipped``: images left out as unreadable. ``opts``: the
    :class:`xraynet.training.TrainOptions`; ``prep``: the preprocessing dict.
    ``y_val`` (N,) int labels, ``proba_val`` (N, C) float probabilities of the
    chosen epoch, ``sources_val`` one source per film or None, for the readable
    validation films. ``threshold``: the model's ``metadata["threshold"]``.
    ``history``: epoch records as dicts; ``best_epoch``; ``device`` ("cpu" or
    "gpu"); ``model``: the chosen model (its weights are checksummed);
    ``wall_seconds``: this run's time, decoding included, or None;
    ``resumed``: whether the run continued a checkpoint."""

    ds: object
    split: object
    report: dict
    opts: object
    prep: dict
    classes: list
    y_val: np.ndarray
    proba_val: np.ndarray
    sources_val: list | None
    threshold: dict
    history: list
    best_epoch: int
    device: str
    model: object
    skipped: int
    wall_seconds: float | None
    resumed: bool


def training_card(run: FinishedTraining) -> dict:
    """The card `xraynet train` writes, from what training has at its end: the
    chosen epoch's validation probabilities, no network pass. Costs the
    bootstrap intervals (about a second for a thousand films)."""
    from ..modelfile import weights_digest

    threshold = run.threshold
    doc = evaluation_document(run.y_val, run.proba_val, run.classes, run.sources_val, threshold)
    recipe = {k: v for k, v in asdict(run.opts).items() if k not in ("cache", "device")}
    split, report = run.split, run.report
    return build_card(CardParts(
        classes=run.classes, screening_class=threshold["class"],
        training_data=data_section(run.ds, split, report, skipped=run.skipped,
                                   excluded_sources=run.opts.holdout_sources),
        split=split_section(split, report), preprocessing=preprocessing_section(run.prep),
        validation=validation_section(doc, subset=f"the {len(run.y_val)} readable validation films of the split "
                                                  "(patients never trained on)"),
        threshold=threshold_section(threshold, doc),
        training=training_section(run.history, best_epoch=run.best_epoch, device=run.device, recipe=recipe,
                                  machine_info=_machine_of(run.device), wall_seconds=run.wall_seconds,
                                  resumed=run.resumed, finished_utc=now_utc()),
        weights_sha256=weights_digest(run.model.state_dict()),
        provenance={
            "training_data": "xraynet train: the scan of the data folder and its metadata.csv at training time",
            "validation": (f"xraynet train: the best epoch's validation probabilities; AUC intervals from "
                           f"{N_BOOT} stratified bootstrap resamples (seed {BOOT_SEED}), as xraynet evaluate "
                           "--subset val computes them"),
            "threshold": "xraynet train: chosen on the validation films at the end of training",
            "training": "xraynet train: the epoch history and this run's clock",
            "limits": "worked out from the figures of this card (xraynet.modelcard.limits_section)",
        }))


def _machine_of(device: str) -> dict:
    """:func:`~xraynet.modelcard.machine`, with the GPU's name when training ran on one."""
    info = machine()
    if device == "gpu":
        try:
            from ..devices import device_info

            info["gpu"] = device_info().get("device_name")
        except Exception:   # a missing GPU name must not lose a finished training run
            info["gpu"] = "unknown"
    return info
