"""Reading a model card back: :func:`check_card` (is it a card this xraynet
reads), :func:`read_card` (the card of a model file) and
:func:`info_document` (what ``xraynet info MODEL --json`` prints, for files
with and without a card)."""
from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..errors import ModelFileError
from ..metrics import finite_or_none
from .layout import CARD_KEY, CARD_KEYS, CARD_VERSION
from .limits import confounding_limit
from .sections import preprocessing_section


def check_card(card, path) -> dict:
    """``card`` if it is a card this xraynet can read; ModelFileError otherwise."""
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: the model card is malformed. Expected a JSON object under metadata"
                             f"[{CARD_KEY!r}], got {type(card).__name__}. Write the card again "
                             "(train again, or rerun the script that wrote it).")
    version = card.get("card_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: the model card has no usable card_version. Expected an integer >= 1, got "
                             f"{version!r}. Write the card again (train again, or rerun the script that wrote it).")
    if version > CARD_VERSION:
        raise ModelFileError(f"{path}: the model card is of a newer layout. Expected card_version {CARD_VERSION} or "
                             f"lower (what xraynet {__version__} reads), got {version}. Upgrade xraynet: "
                             "pip install -U xraynet.")
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ModelFileError(f"{path}: the model card is incomplete. Expected the keys {', '.join(CARD_KEYS)}, got "
                             f"none for {', '.join(missing)}. Write the card again (train again, or rerun the "
                             "script that wrote it).")
    return card


def read_card(path) -> dict | None:
    """The card stored in a model file, checked; None when the file has none.
    Raises ModelFileError for a file that is not a model (as
    :func:`xraynet.modelfile.read_info` does) or a malformed card."""
    from ..modelfile import read_info

    card = read_info(path)["metadata"].get(CARD_KEY)
    return None if card is None else check_card(card, path)


def info_document(path) -> dict:
    """What ``xraynet info MODEL --json`` prints (see :mod:`xraynet.modelcard`). No model is built;
    the weights are read once to check them against their stored SHA-256: ModelFileError when
    they fail (the card would describe weights the file no longer holds), or when the file is
    not a model or its card is malformed."""
    from ..modelfile import read_info

    info = read_info(path, verify_weights=True)
    meta = info["metadata"]
    spec = info["architecture"]
    base = {"model_file": Path(path).name, "path": str(path), "weights_sha256": info["weights_sha256"],
            "created_utc": info["created_utc"],
            "architecture": {"name": spec.get("name"), "input_shape": spec.get("input_shape"),
                             "output": spec.get("output"), "num_parameters": info["num_parameters"]},
            "notes": []}
    card = meta.get(CARD_KEY)
    if card is not None:
        card = check_card(card, path)
        doc = {**base, "card_present": True, **card}
        # The file's own checksum wins; a card copied onto other weights describes another model.
        doc["weights_sha256"] = info["weights_sha256"]
        doc["limits"] = _limits_now(card)
        if card.get("weights_sha256") not in (None, info["weights_sha256"]):
            doc["notes"].append(f"the card describes weights {card['weights_sha256'][:12]}..., but this file holds "
                                f"{info['weights_sha256'][:12]}...: the card belongs to another model")
        return doc
    thr = meta.get("threshold")
    doc = {**base, "card_present": False, "card_version": None, "classes": info["classes"],
           "training_data": None, "split": meta.get("split"), "preprocessing": preprocessing_section(
               info["preprocessing"]), "validation": None,
           "threshold": None if not thr else {"class": thr.get("class"), "value": finite_or_none(thr.get("value")),
                                              "target_sensitivity": thr.get("target_sensitivity"),
                                              "chosen_on": thr.get("chosen_on"), "sources": thr.get("sources")},
           "training": None if "best_epoch" not in meta and "device" not in meta else {
               "epochs_run": info["epochs"], "best_epoch": meta.get("best_epoch"), "device": meta.get("device"),
               "recipe": meta.get("options")},
           "xraynet_version": info["xraynet_version"], "intended_use": None, "limits": None}
    doc["notes"].append(f"model card missing: this file was written without one (xraynet {info['xraynet_version']}, "
                        f"{info['created_utc']}); shown is what the file holds. `xraynet train` writes a card "
                        "with every model")
    return doc


def _limits_now(card: dict):
    """The card's limits with its "source confounding" entry worked out again from the card's own
    class counts by this xraynet's rule (:func:`~xraynet.modelcard.limits.confounding_limit`):
    cards written before the rule said the sources' class mixes differ even where they did not.
    The stored limits as they are when the card lacks the parts the rule reads."""
    limits = card.get("limits")
    if not isinstance(limits, list):
        return limits
    try:
        fresh = confounding_limit(card)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return limits
    return [fresh if isinstance(x, dict) and x.get("topic") == fresh["topic"] else x for x in limits]
