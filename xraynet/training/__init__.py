"""`xraynet train`: fit a network on a folder of X-rays, one subfolder per class.

The run, in order:

1. scan DATA_DIR and its metadata.csv; split train/validation by patient,
   stratified by class, seeded (:mod:`xraynet.data`); report confounds
   (:mod:`xraynet.confounds`);
2. decode and preprocess every image once (:mod:`xraynet.imaging`) into
   the on-disk decode cache (:func:`xraynet.inference.fill_cache`);
   unreadable files are listed and skipped;
3. each epoch: shuffle, read the batches from the cache a batch ahead
   (:mod:`~xraynet.training.films`: memory does not grow with the dataset),
   augment (:mod:`xraynet.augment`), train with Adam
   and class-weighted loss; evaluate on validation; keep the best model by
   validation macro ROC AUC (ties: lower validation loss); stop early after ``patience`` epochs without
   improvement; write a checkpoint atomically;
4. choose the screening threshold on validation data only and store it in
   the model file with the history and the model card
   (:mod:`xraynet.modelcard`, from the chosen epoch's validation predictions).

Determinism and resume: everything random in epoch ``e`` (shuffle,
augmentation, dropout masks) is drawn from generators seeded with
``(seed, e)``, and a checkpoint holds weights, batch-norm statistics, Adam
state, history and early-stopping state, so ``--resume`` after an
interruption finishes with the same weights as an uninterrupted run: it takes
the checkpoint's options and refuses other data or another recipe
(:mod:`~xraynet.training.resume`).

Modules: :mod:`~xraynet.training.options` (:class:`TrainOptions`, the
learning-rate schedule), :mod:`~xraynet.training.state` (the state carried
between epochs, which is what a checkpoint stores),
:mod:`~xraynet.training.resume` (what a resumed run keeps and may change),
:mod:`~xraynet.training.places` (where a run writes, and the leftovers of a killed one),
:mod:`~xraynet.training.setup` (data and starting state),
:mod:`~xraynet.training.films` (the films, read from the cache a batch at a time),
:mod:`~xraynet.training.epoch` (the epochs), :mod:`~xraynet.training.run`
(:func:`train`: all of it, then the threshold and the outputs).
"""
from importlib import import_module

from .options import DEFAULT_IMAGE_SIZE, TrainOptions, epoch_lr

# The rest imports NumPy and, through the model, the backend. The command line reads
# TrainOptions for its defaults when it starts, so `xraynet --help` must not pay for them:
# they are imported on first use (PEP 562).
_LAZY = {"Callbacks": ".epoch", "EpochRecord": ".epoch", "train": ".run", "TrainingState": ".state",
         "checkpoint_path_for": ".state", "resume_options": ".resume", "check_outputs": ".places"}

__all__ = ["Callbacks", "DEFAULT_IMAGE_SIZE", "EpochRecord", "TrainOptions", "TrainingState", "check_outputs",
           "checkpoint_path_for", "epoch_lr", "resume_options", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
