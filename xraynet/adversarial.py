"""Source-adversarial training: a head that predicts the source collection of
a film from the network's pooled features, behind a gradient reversal layer.

Why: in the chest X-ray data xraynet is trained on, the collection a film
comes from (its hospital, scanner, conversion, burned-in text) predicts the
label for most sources. A network rewarded only for the label learns to
recognise the collection. The adversary is rewarded for recognising it, and
the reversed gradient pushes the shared layers towards features from which it
cannot (Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by
Backpropagation"; the class-conditioned variant follows Long et al. 2018,
"Conditional Adversarial Domain Adaptation", in its simplest form).

Class-conditioned: the head also sees the film's class (a one-hot vector
through its own dense layer). Sources differ in their class mix (one holds
only covid and normal, another only normal and pneumonia), so features that
carry the disease also tell something about the source; an unconditioned
adversary would push the disease out of the features along with the source.
Given the class, what is left for the head to exploit is how films of one
class differ between sources, which is the shortcut.

Shapes: pooled features (N, F) as the backbone's internal array (the output
of :meth:`xraynet.model.Model.feature_layer`), class labels (N,) int64,
source labels (N,) int64 in ``[0, len(sources))``.

The head is used in training only; it is not part of the model file that
screening loads. Its weights and Adam state go into the training checkpoint
(``aux`` arrays) so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import SpecError
from .layers import Dense, GradientReversal, ReLU
from .optim import Adam

PREFIX = "adversary."


def dann_scale(progress: float, peak: float) -> float:
    """The gradient-reversal scale at training progress ``progress`` in [0, 1]:
    ``peak * (2 / (1 + exp(-10 p)) - 1)``, from 0 up to ``peak`` (Ganin &
    Lempitsky 2015, section 5.1): the features are not pushed against an
    adversary that has not yet learnt anything."""
    p = min(max(float(progress), 0.0), 1.0)
    return peak * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


@dataclass(frozen=True)
class HeadOptions:
    """Settings of the source head. ``hidden``: width of its hidden layer;
    ``scale``: the reversal scale lambda at the start (changed between steps with
    :meth:`SourceAdversary.set_scale`); ``lr``, ``weight_decay``: its own Adam."""

    hidden: int = 64
    scale: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0


class SourceAdversary:
    """Gradient reversal -> dense(hidden) (+ dense of the class one-hot) -> ReLU -> dense(sources).

    ``n_features``: F of the pooled features; ``n_classes``: C of the task;
    ``sources``: the source names (index = source label); ``bk``: the
    backbone's backend; ``head``: its width, reversal scale and Adam settings
    (:class:`HeadOptions`); ``source_weights`` (S,) weights of the source
    cross-entropy (e.g. inverse frequency), None for plain mean.
    """

    def __init__(self, n_features: int, n_classes: int, sources: list[str], bk, head: HeadOptions = HeadOptions(),
                 *, seed: int = 0, dtype=np.float32, source_weights=None):
        if len(sources) < 2:
            raise SpecError(f"source adversary: needs at least two sources. Expected >= 2 distinct source_repo "
                            f"values among the training images, got {sources}. Train without "
                            "--adversarial-source, or add films of another source.")
        self.bk, self.sources, self.n_classes = bk, list(sources), int(n_classes)
        rng = np.random.default_rng([seed, 7919])
        hidden = head.hidden
        self.reverse = GradientReversal(head.scale)
        self.feature = Dense(hidden)
        self.klass = Dense(hidden)
        self.relu = ReLU()
        self.out = Dense(len(self.sources))
        self.reverse.build((n_features,), bk, rng, dtype)
        self.feature.build((n_features,), bk, rng, dtype)
        self.klass.build((self.n_classes,), bk, rng, dtype)
        self.relu.build((hidden,), bk, rng, dtype)
        self.out.build((hidden,), bk, rng, dtype)
        self._eye = np.eye(self.n_classes, dtype=dtype)
        self.source_weights = None if source_weights is None else np.asarray(source_weights, np.float64)
        self.optimizer = Adam(self.named_parameters(), bk, lr=head.lr, weight_decay=head.weight_decay)

    def _parts(self):
        return (("feature", self.feature), ("klass", self.klass), ("out", self.out))

    def named_parameters(self) -> list:
        return [(f"{PREFIX}{n}.{k}", v) for n, layer in self._parts() for k, v in layer.params.items()]

    def named_grads(self) -> dict:
        return {f"{PREFIX}{n}.{k}": v for n, layer in self._parts() for k, v in layer.grads.items()}

    def set_scale(self, scale: float) -> None:
        self.reverse.scale = float(scale)

    def forward(self, features, class_labels):
        """(N, F) features and (N,) class labels -> (N, S) source logits (training mode)."""
        onehot = self.bk.asarray(self._eye[np.asarray(class_labels, np.int64)], features.dtype)
        f = self.reverse.forward(features, training=True)
        h = self.feature.forward(f, training=True) + self.klass.forward(onehot, training=True)
        return self.out.forward(self.relu.forward(h, training=True), training=True)

    def backward(self, dlogits):
        """Gradient of the source loss -> the reversed gradient for the features (N, F)."""
        d = self.relu.backward(self.out.backward(dlogits))
        self.klass.backward(d, need_dx=False)
        return self.reverse.backward(self.feature.backward(d))

    def step(self, features, class_labels, source_labels) -> tuple[float, object]:
        """One adversary step: forward, source cross-entropy, backward, Adam.
        Returns (source loss as a float, reversed gradient for the features)."""
        logits = self.forward(features, class_labels)
        loss, dlogits = self.bk.softmax_cross_entropy(logits, np.asarray(source_labels, np.int64),
                                                      self.source_weights)
        dfeatures = self.backward(dlogits)
        self.optimizer.step(self.named_grads())
        return loss, dfeatures

    def state_arrays(self) -> dict:
        """Weights and Adam state as NumPy arrays by name (the checkpoint's ``aux`` arrays)."""
        out = {n: self.bk.to_numpy(a).copy() for n, a in self.named_parameters()}
        for key, value in self.optimizer.state_dict().items():
            out[f"{PREFIX}adam/{key}"] = np.asarray(value)
        return out

    def load_state_arrays(self, arrays: dict) -> None:
        """Restore what :meth:`state_arrays` gave."""
        for name, arr in self.named_parameters():
            arr[...] = self.bk.asarray(np.asarray(arrays[name]), arr.dtype)
        prefix = f"{PREFIX}adam/"
        state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        state["step"] = int(np.asarray(state["step"]))
        self.optimizer.load_state_dict(state)


def source_index(sources: list) -> tuple[list[str], np.ndarray]:
    """The source names, sorted (None, an unknown source, is ``""``), and the (N,) int64
    source label of each image of ``sources`` (one ``source_repo`` value or None each)."""
    names = sorted({"" if s is None else str(s) for s in sources})
    index = {n: k for k, n in enumerate(names)}
    return names, np.array([index["" if s is None else str(s)] for s in sources], np.int64)


def make_adversary(model, names: list[str], source_labels: np.ndarray, n_classes: int, *, seed: int, lr: float,
                   shares=None, cells=None) -> SourceAdversary:
    """The source adversary on ``model``'s pooled features, for training images of
    ``source_labels`` (N,) into ``names`` (:func:`source_index`).

    ``seed`` and ``lr``: the run's (the head's weights and its Adam). The source loss
    weights each source by the inverse of its expected share of a batch, so the head
    cannot do well by always naming the largest collection: with ``shares`` (K,) and
    ``cells`` (N,) (batches drawn by cell, :mod:`xraynet.sampling`) a cell's share goes
    to its source, else a source's share is its share of the images. SpecError with
    fewer than two sources."""
    if shares is None:
        share = np.bincount(source_labels, minlength=len(names)) / len(source_labels)
    else:
        cell_source = np.zeros(len(shares), np.int64)
        cell_source[cells] = source_labels
        share = np.bincount(cell_source, weights=shares, minlength=len(names))
    weights = 1.0 / (len(names) * np.maximum(share, 1e-12))
    feature = model.layers[model.feature_layer()].out_shape[0]
    return SourceAdversary(feature, n_classes, names, model.bk, HeadOptions(scale=0.0, lr=lr), seed=seed,
                           dtype=model.dtype, source_weights=weights)


def adversarial_step(model, adversary: SourceAdversary, x, labels, sources, optimizer,
                     class_weights=None) -> tuple[float, float]:
    """One training step of ``model`` with ``adversary`` on its pooled features.

    ``x`` (N, C, H, W) inputs, ``labels`` (N,) classes, ``sources`` (N,) source labels,
    ``optimizer`` the model's, ``class_weights`` (C,) or None. The label loss's gradient
    and the adversary's reversed gradient meet at the pooled features and flow back
    together through the shared layers. Returns (label loss, source loss)."""
    tap = model.feature_layer()
    logits, features = model.forward(x, training=True, tap=tap)
    loss, dlogits = model.loss(logits, labels, class_weights)
    source_loss, dfeatures = adversary.step(features, labels, sources)
    model.backward(dlogits, tap_grad=(tap, dfeatures))
    optimizer.step(model.named_grads())
    return loss, float(source_loss)
