"""Source-balanced sampling: training batches drawn by (source, class) cell.

In the data xraynet trains on, one collection can hold most of the films and
another can hold most of one class. Drawn plainly, batches then mirror that
mix, and "which collection is this?" becomes a cheap way to lower the loss.
Drawn by cell, every (source, class) pair gets a fixed share of each batch,
so no collection dominates, and inside a source the classes appear in the
proportions of the shares, which is what the label has to be learnt from.

Shares: cell ``k`` with ``n_k`` training images gets a share proportional
to ``n_k ** power``. ``power = 0`` gives every cell the same share; ``1``
gives the plain mix; ``0.5`` (square-root balancing, as used for long-tailed
class mixes, e.g. Mahajan et al. 2018, "Exploring the Limits of Weakly
Supervised Pretraining") lifts small cells without repeating an 11-film cell
sixty times an epoch.

Quotas hold at every batch boundary: after each batch, the number of
images drawn from cell ``k`` so far differs from ``share_k * (images drawn
so far)`` by less than one (largest remainders decide which cells round
up), so each batch holds its cell's share of the batch to within two
images, and an epoch its share of the epoch to within one. Inside a cell, images are drawn without
replacement in a random order, and the order starts again, newly shuffled,
when the cell runs out. Every draw comes from the generator passed in, so
an epoch seeded with ``(seed, epoch)`` repeats exactly on resume.
"""
from __future__ import annotations

import numpy as np

from .errors import SpecError


def cell_ids(sources: list, labels: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """Map each image to its (source, class) cell.

    ``sources``: one source name per image (None counts as one unknown
    source); ``labels`` (N,) int class labels. Returns ``(ids (N,) int64,
    cells)`` where ``cells[k]`` is the ``(source, label)`` of cell ``k``,
    sorted."""
    keys = [("" if s is None else str(s), int(y)) for s, y in zip(sources, np.asarray(labels).tolist())]
    cells = sorted(set(keys))
    index = {c: k for k, c in enumerate(cells)}
    return np.array([index[k] for k in keys], np.int64), cells


def cell_shares(ids: np.ndarray, power: float) -> np.ndarray:
    """(K,) float64 shares summing to 1, proportional to ``count_k ** power``."""
    if not isinstance(power, (int, float)) or isinstance(power, bool) or not 0.0 <= power <= 1.0:
        raise SpecError(f"balance power: out of range. Expected a number from 0 (equal shares per cell) to 1 "
                        f"(the plain mix), got {power!r}. Pass e.g. 0.5.")
    counts = np.bincount(np.asarray(ids, np.int64)).astype(np.float64)
    if counts.size == 0 or (counts == 0).any():
        raise SpecError("balanced sampling: every cell id must have images. Expected ids 0..K-1 each used, "
                        f"got counts {counts.astype(int).tolist()}. Build the ids with cell_ids().")
    weights = counts ** float(power)
    return weights / weights.sum()


def balanced_batches(ids: np.ndarray, shares: np.ndarray, n_samples: int, batch_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: a list of int64 index arrays into ``ids`` (the
    last batch may be shorter), ``n_samples`` indices in all, drawn by cell
    with the quotas of the module docstring."""
    ids = np.asarray(ids, np.int64)
    shares = np.asarray(shares, np.float64)
    if n_samples < 1 or batch_size < 1:
        raise SpecError(f"balanced sampling: expected n_samples >= 1 and batch_size >= 1, got {n_samples} and "
                        f"{batch_size}.")
    members = [np.flatnonzero(ids == k) for k in range(shares.size)]
    order = [rng.permutation(m) for m in members]
    pos = np.zeros(shares.size, np.int64)
    drawn = np.zeros(shares.size, np.int64)
    batches, total = [], 0
    while total < n_samples:
        size = min(batch_size, n_samples - total)
        total += size
        target = shares * total
        want = np.floor(target).astype(np.int64)
        short = total - int(want.sum())
        if short > 0:
            # Largest remainders round up; ties go to the lower cell index (stable sort).
            up = np.argsort(-(target - want), kind="stable")[:short]
            want[up] += 1
        take = np.maximum(want - drawn, 0)
        # Rounding can ask for one more or one fewer than the batch holds when a
        # cell was ahead of its quota; trim or top up by the remainders again.
        while take.sum() > size:
            k = int(np.argmax(np.where(take > 0, drawn + take - target, -np.inf)))
            take[k] -= 1
        while take.sum() < size:
            k = int(np.argmax(target - drawn - take))
            take[k] += 1
        picked = []
        for k in np.flatnonzero(take):
            for _ in range(int(take[k])):
                if pos[k] == len(order[k]):
                    order[k], pos[k] = rng.permutation(members[k]), 0
                picked.append(order[k][pos[k]])
                pos[k] += 1
        drawn += take
        batches.append(rng.permutation(np.array(picked, np.int64)))
    return batches


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) float64 loss weights for plainly drawn batches: the inverse of each class's
    frequency among ``labels`` (N,), mean 1 over those images; 0 for an absent class."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)


def class_weights_for_shares(cell_labels: np.ndarray, shares: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) float64 loss weights for batches drawn by cell: the inverse of each class's
    expected share of a batch (the sum of its cells' shares), mean 1 over the drawn
    images. ``cell_labels`` (K,) the class of each cell, ``shares`` (K,) summing to 1.
    The loss then weights classes by how often batches hold them, not how often the
    folder does."""
    class_share = np.bincount(cell_labels, weights=shares, minlength=n_classes)
    return np.where(class_share > 0, 1.0 / (n_classes * np.maximum(class_share, 1e-12)), 0.0)
