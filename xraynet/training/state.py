"""The state of a training run between two epochs, and the checkpoint that stores it.

A checkpoint is an ordinary model file (:mod:`xraynet.modelfile`, format 1):
the weights and batch-norm statistics, the Adam state under ``/optimizer``,
the history, the source adversary's weights and Adam state under ``/aux``
when the run has one, and in ``metadata["training_state"]`` the epoch
counters and the run's options::

    {"epoch": last finished epoch, "best_auc": float, "best_loss": float,
     "best_epoch": int, "bad_epochs": int, "options": {TrainOptions field: value}}

No random generator state is stored: everything random in epoch ``e``
(shuffle, augmentation, dropout masks) is drawn from generators seeded with
``(seed, e)``, so a resumed run draws what an uninterrupted one would have.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import CheckpointError, TrainingError
from .options import TrainOptions

STATE_KEY = "training_state"


@dataclass
class TrainingState:
    """What a run carries from one epoch to the next; :func:`write_checkpoint` stores all of it.

    ``model`` (:class:`xraynet.model.Model`), its ``optimizer`` (Adam) and the optional
    ``adversary`` (:class:`xraynet.adversarial.SourceAdversary`) change every step;
    ``history`` holds one :class:`~xraynet.training.epoch.EpochRecord` dict per finished
    epoch; ``epoch`` is the last finished epoch (0 before the first). ``best_auc`` and
    ``best_loss`` are the selection score and validation loss of ``best_epoch``;
    ``bad_epochs`` counts epochs since it, for early stopping. ``classes``,
    ``preprocessing`` (a Preprocessing dict) and ``metadata`` (the run's description,
    JSON-able) go into every model file the run writes."""

    options: TrainOptions
    model: object
    optimizer: object
    classes: list
    preprocessing: dict
    metadata: dict
    adversary: object | None = None
    history: list = field(default_factory=list)
    epoch: int = 0
    best_auc: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def counters(self) -> dict:
        """``metadata["training_state"]`` of a checkpoint (see the module docstring)."""
        return {"epoch": self.epoch, "best_auc": self.best_auc, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "options": asdict(self.options)}

    def record(self, epoch: int, score: float | None, val_loss: float) -> bool:
        """Count finished epoch ``epoch`` with selection ``score`` (None: undefined) and
        ``val_loss``; True when it is the best so far. A higher score wins; at an equal
        score (an AUC saturates at 1 on easy data) the lower validation loss, the better
        calibrated model."""
        auc = -math.inf if score is None else score
        is_best = auc > self.best_auc or (auc == self.best_auc and val_loss < self.best_loss)
        if is_best:
            self.best_auc, self.best_loss, self.best_epoch, self.bad_epochs = auc, val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        return is_best


def checkpoint_path_for(out) -> Path:
    """The checkpoint written beside model file ``out``: ``NAME.checkpoint.h5``."""
    out = Path(out)
    return out.with_name(out.stem + ".checkpoint.h5")


def write_checkpoint(path, state: TrainingState) -> None:
    """Store ``state`` in the model file ``path`` (atomically; ModelFileError when it cannot)."""
    from ..modelfile import save_model

    save_model(path, state.model, classes=state.classes, preprocessing=state.preprocessing,
               optimizer=state.optimizer, history=state.history,
               metadata={**state.metadata, STATE_KEY: state.counters()},
               aux=None if state.adversary is None else state.adversary.state_arrays())


def write_model(path, state: TrainingState, extra: dict, model=None) -> None:
    """Write the run's model file ``path``: ``model`` (default: ``state.model``) with the
    run's classes, preprocessing, history and metadata plus ``extra``; no optimiser, no
    adversary (they are for resuming, not for using the model)."""
    from ..modelfile import save_model

    save_model(path, state.model if model is None else model, classes=state.classes,
               preprocessing=state.preprocessing, history=state.history, metadata={**state.metadata, **extra})


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in ``path``: the ``state`` to resume from, and
    ``adversary_arrays``, the source adversary's weights and Adam state ({} without one),
    loaded once the run has made its adversary."""

    path: str | Path    # as the caller gave it, for messages
    state: TrainingState
    adversary_arrays: dict


def read_checkpoint(path, device: str = "cpu") -> Checkpoint:
    """The checkpoint ``path``, to resume from, its network built on ``device``.

    The state's options are the stored ones (``device`` put in); what a resumed run may
    change is :func:`xraynet.training.resume.merge_options`'s business. The optimiser is
    Adam with those options, holding the stored state. ``classes``, ``preprocessing`` and
    ``metadata`` are the file's. Raises :class:`~xraynet.errors.ModelFileError` for an
    unreadable file or optimiser state, and :class:`~xraynet.errors.CheckpointError` for a
    model without (usable) training state."""
    from dataclasses import replace

    from ..modelfile import load_model, restore_optimizer
    from ..optim import Adam

    loaded = load_model(path, device=device)
    options = replace(options_of(path, loaded.metadata), device=device)
    stored = loaded.metadata[STATE_KEY]
    model = loaded.model
    optimizer = restore_optimizer(loaded, Adam(model.named_parameters(), model.bk, lr=options.lr,
                                                weight_decay=options.weight_decay))
    state = TrainingState(options=options, model=model, optimizer=optimizer, classes=list(loaded.classes),
                          preprocessing=loaded.preprocessing, metadata=loaded.metadata,
                          history=list(loaded.history), epoch=stored["epoch"], best_auc=stored["best_auc"],
                          best_loss=stored["best_loss"], best_epoch=stored["best_epoch"],
                          bad_epochs=stored["bad_epochs"])
    return Checkpoint(path=path, state=state, adversary_arrays=loaded.aux)


def options_of(path, metadata: dict) -> TrainOptions:
    """The TrainOptions in a checkpoint's ``metadata`` (``path`` for messages)."""
    stored = metadata.get(STATE_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("options"), dict):
        raise CheckpointError(f"{path}: not a training checkpoint. Expected a file written during "
                              "`xraynet train` (NAME.checkpoint.h5), got a model without training state. "
                              "Pass the checkpoint file, or train without --resume.")
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(stored["options"]) - known)
    if unknown:
        raise CheckpointError(f"{path}: its options {unknown} are not training options of this xraynet version. "
                              f"Expected fields among {sorted(known)}, got {sorted(stored['options'])}. Resume "
                              "with the xraynet version that wrote it, or train without --resume.")
    try:
        return TrainOptions(**stored["options"])
    except TrainingError as e:
        raise CheckpointError(f"{path}: its stored options are unusable ({e}). Train without --resume.") from None
