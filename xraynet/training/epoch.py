"""The epochs of a run: shuffle, augment, step; validate; keep the best; checkpoint.

Everything random in epoch ``e`` (the batch order or the balanced draw,
augmentation, dropout masks) comes from generators seeded with
``(seed, e)``, never from a generator carried across epochs, so a run
resumed after epoch ``e - 1`` draws exactly what an uninterrupted run does.
The model kept is the best by validation AUC (:meth:`TrainingState.record`):
the within-source AUC where some source holds two classes, since a pooled AUC
rewards recognising the source, else the macro AUC.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from .options import ADVERSARY_RAMP_EPOCHS, epoch_lr
from .setup import TrainingData
from .state import TrainingState, write_checkpoint, write_model


@dataclass
class EpochRecord:
    """One epoch of the history (stored as a dict in the model file's ``/history``)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_auc: float
    val_within_source_auc: float | None = None
    per_class: dict = field(default_factory=dict)
    seconds: float = 0.0
    lr: float = 0.0
    source_loss: float | None = None    # the source adversary's mean loss (None without one)
    source_scale: float | None = None   # its gradient-reversal scale at the end of the epoch


class Callbacks:
    """Hooks for the command line's progress display; all optional."""

    def on_report(self, report: dict, skipped: list) -> None: ...
    def on_decode(self, done: int, total: int) -> None: ...
    def on_batch(self, epoch: int, done: int, total: int, loss: float) -> None: ...
    def on_epoch(self, record: dict, is_best: bool) -> None: ...
    def on_notice(self, text: str) -> None: ...


def train_epochs(state: TrainingState, data: TrainingData, out: Path, checkpoint: Path, callbacks: Callbacks) -> None:
    """Run the epochs after ``state.epoch`` up to ``options.epochs``, stopping early after
    ``options.patience`` epochs without a better model. After each epoch: the best model so
    far to ``out``, the whole state to ``checkpoint``. TrainingError when training diverges."""
    from ..augment import Augmentation

    opts = state.options
    augmentation = Augmentation() if opts.augment else Augmentation.off()
    for epoch in range(state.epoch + 1, opts.epochs + 1):
        if state.bad_epochs >= opts.patience:
            break
        t0 = time.perf_counter()
        losses, source_losses = _fit_epoch(state, data, epoch, augmentation, callbacks)
        _check_finite(state, epoch, losses, out)
        m = epoch_metrics(state.model, data.films_val, data.y_val, opts.batch_size, data.classes, data.sources_val)
        rec = asdict(EpochRecord(epoch=epoch, train_loss=float(np.mean(losses)), val_loss=m["val_loss"],
                                 val_accuracy=m["val_accuracy"], val_balanced_accuracy=m["val_balanced_accuracy"],
                                 val_auc=m["val_auc"], val_within_source_auc=m["val_within_source_auc"],
                                 per_class=m["per_class"], seconds=time.perf_counter() - t0,
                                 lr=state.optimizer.lr,
                                 source_loss=float(np.mean(source_losses)) if source_losses else None,
                                 source_scale=None if state.adversary is None else state.adversary.reverse.scale))
        state.history.append(rec)
        score = m["val_within_source_auc"] if m["val_within_source_auc"] is not None else m["val_auc"]
        is_best = state.record(epoch, score, m["val_loss"])
        if is_best:
            write_model(out, state, {"best_epoch": epoch})
        write_checkpoint(checkpoint, state)
        callbacks.on_epoch(rec, is_best)


def _fit_epoch(state: TrainingState, data: TrainingData, epoch: int, augmentation, callbacks) -> tuple[list, list]:
    """One pass over the training films; returns the label losses and the source losses
    (empty without an adversary), one per batch. The films of the batches come from
    ``data.films_train`` through a reader thread (:class:`~xraynet.training.films.Prefetch`);
    everything random is drawn here, on this thread, in the same order as ever."""
    from ..adversarial import adversarial_step, dann_scale
    from ..augment import augment_batch
    from ..sampling import balanced_batches
    from .films import Prefetch

    opts, model, adversary = state.options, state.model, state.adversary
    state.optimizer.lr = epoch_lr(opts, epoch)
    if adversary is not None:
        adversary.optimizer.lr = state.optimizer.lr
    rng = np.random.default_rng([opts.seed, epoch])
    _reseed_dropout(model, opts.seed, epoch)
    n = len(data.y_train)
    if data.cells is None:
        order = rng.permutation(n)
        batches = [order[b:b + opts.batch_size] for b in range(0, n, opts.batch_size)]
    else:
        batches = balanced_batches(data.cells, data.shares, n, opts.batch_size, rng)
    losses, source_losses = [], []
    with Prefetch(data.films_train, batches) as films:
        for b, (idx, xb) in enumerate(zip(batches, films)):
            xb = augment_batch(xb, rng, augmentation) if opts.augment else xb
            yb = data.y_train[idx]
            if adversary is None:
                losses.append(model.train_step(xb[:, None], yb, state.optimizer, class_weights=data.class_weights))
            else:
                progress = (epoch - 1 + b / len(batches)) / ADVERSARY_RAMP_EPOCHS
                adversary.set_scale(dann_scale(progress, opts.adversarial_source))
                loss, source_loss = adversarial_step(model, adversary, xb[:, None], yb, data.source_labels[idx],
                                                     state.optimizer, data.class_weights)
                losses.append(loss)
                source_losses.append(source_loss)
            callbacks.on_batch(epoch, b + 1, len(batches), losses[-1])
    return losses, source_losses


def _reseed_dropout(model, seed: int, epoch: int) -> None:
    from ..layers import Dropout

    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            layer.rng = model.bk.rng([seed, epoch, i])


def _check_finite(state: TrainingState, epoch: int, losses: list, out: Path) -> None:
    """TrainingError when the epoch's mean loss or any weight is not finite."""
    model = state.model
    broken = [n for n, p in model.named_parameters() if not np.isfinite(model.bk.to_numpy(p)).all()]
    if np.isfinite(np.mean(losses)) and not broken:
        return
    what = f"the loss is {np.mean(losses)}" if not broken else f"{len(broken)} weight arrays hold inf or NaN"
    raise TrainingError(f"training diverged in epoch {epoch}: {what}. Expected finite losses and weights, "
                        f"got non-finite ones at learning rate {state.optimizer.lr:g}. Train again with a "
                        "lower --lr (or a lower --adversarial-source); the best model so far, if any, is "
                        f"in {out}.")


def within_source_auc(y: np.ndarray, proba: np.ndarray, sources: list) -> float | None:
    """The validation figure a source shortcut cannot inflate: inside each source,
    the mean one-vs-rest ROC AUC over the classes that source has both positives
    and negatives of; then the mean over those sources, weighted by their images.
    ``y`` (N,) labels, ``proba`` (N, C), ``sources`` one name (or None) per image.
    None when no source has two classes."""
    from ..metrics import roc_auc

    keys = np.array(["" if s is None else str(s) for s in sources], dtype=object)
    total, weight = 0.0, 0
    for name in sorted(set(keys.tolist())):
        mask = keys == name
        aucs = [roc_auc(proba[mask, c], y[mask] == c) for c in range(proba.shape[1])
                if (y[mask] == c).any() and (y[mask] != c).any()]
        if aucs:
            total += float(np.mean(aucs)) * int(mask.sum())
            weight += int(mask.sum())
    return total / weight if weight else None


def epoch_metrics(model, films, y, batch_size, classes, sources=None) -> dict:
    """Validation figures of one epoch for ``films`` (N films, :mod:`xraynet.training.films`)
    with labels ``y`` (N,):
    ``val_loss`` (mean cross-entropy), ``val_accuracy``, ``val_balanced_accuracy``,
    ``val_auc`` (macro), ``per_class`` sensitivity and specificity, ``proba`` (N, C), and
    ``val_within_source_auc`` (:func:`within_source_auc`; None without sources)."""
    from ..metrics import evaluate_predictions
    from .films import predict_films

    proba = predict_films(model, films, batch_size)
    eps = 1e-12
    val_loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))
    doc = evaluate_predictions(y, proba, classes, n_boot=0)
    per_class = {c: {"sensitivity": doc["per_class"][c]["sensitivity"]["value"],
                     "specificity": doc["per_class"][c]["specificity"]["value"]} for c in classes}
    return {"val_loss": val_loss, "val_accuracy": doc["accuracy"]["value"],
            "val_balanced_accuracy": doc["balanced_accuracy"], "val_auc": doc["macro_auc"],
            "per_class": per_class, "proba": proba,
            "val_within_source_auc": None if sources is None else within_source_auc(y, proba, sources)}
