"""The network: a sequence of layers built from an architecture spec.

Public arrays are NCHW float32 (``forward`` takes ``(N, C, H, W)``, the input
gradient comes back the same way); inside, activations are NHWC. Parameters
are named ``layers.<i>.<name>`` with ``i`` the layer's index in the spec, in
the same order as PyTorch's ``nn.Sequential(...).parameters()``.

Execution plan: a ``conv2d`` followed by ``relu`` (and then ``maxpool2d``) runs
as one fused stage (the backend op ``conv2d_relu_pool_forward``), which reads
the large pre-activation map once instead of three times; results and
gradients are those of the unfused chain (``fuse=False`` runs layer by layer,
and the tests compare the two).

A ``conv2d`` -> ``batchnorm2d`` -> ``relu`` [-> ``maxpool2d``] chain is one
stage too. In training, and wherever a backward pass follows (``keep``), it
runs layer by layer. In plain evaluation the batch norm is an affine map of
the running statistics, so it is folded into the convolution (Ioffe &
Szegedy, "Batch Normalization", ICML 2015, section 3.2, applied to the
weights): with ``s = gamma / sqrt(running_var + eps)``, ``w' = s * w`` per
output channel and ``b' = s * (b - running_mean) + beta``; the stage then runs
as the fused conv + ReLU [+ pool] op, with no pass over the map for the batch
norm or the ReLU. Equal to the chain up to float rounding.
"""
from __future__ import annotations

import copy

import numpy as np

from .archs import validate_spec
from .backends import get_backend
from .backends.derived import Memo
from .errors import ShapeError, SpecError
from .layers import BatchNorm2D, Conv2D, Layer, MaxPool2D, ReLU, layer_from_config


class _ConvReLU:
    """Fused stage conv2d -> relu [-> maxpool2d]; parameters and gradients stay on the conv layer."""

    def __init__(self, conv: Conv2D, pool: MaxPool2D | None):
        self.conv, self.pool, self.ctx = conv, pool, None

    def forward(self, x, training, keep=False):
        c, bk = self.conv, self.conv.bk
        if self.pool is None:
            y, self.ctx = bk.conv2d_forward(x, c.params["weight"], c.params["bias"], c.stride, c.pad, relu=True,
                                            save=training or keep)
        else:
            y, self.ctx = bk.conv2d_relu_pool_forward(x, c.params["weight"], c.params["bias"], c.stride, c.pad,
                                                      self.pool.kernel_size, self.pool.stride,
                                                      save=training or keep)
        return y

    def backward(self, dy, need_dx):
        c, bk = self.conv, self.conv.bk
        op = bk.conv2d_backward if self.pool is None else bk.conv2d_relu_pool_backward
        dx, dw, db = op(dy, self.ctx, c.params["weight"], need_dx)
        self.ctx = None
        c.grads = {"weight": dw, "bias": db}
        return dx


class _ConvBatchNormReLU:
    """Stage conv2d -> batchnorm2d -> relu [-> maxpool2d]: layer by layer when a
    backward pass may follow, else one fused op with the batch norm folded into
    the convolution's weights and bias (see the module docstring)."""

    def __init__(self, conv: Conv2D, norm: BatchNorm2D, relu: ReLU, pool: MaxPool2D | None):
        self.layers = [conv, norm, relu] + ([pool] if pool is not None else [])
        self.conv, self.norm, self.pool = conv, norm, pool
        self._folded = Memo()

    def folded_weights(self):
        """``(w', b')``: the convolution's weights (O, C, KH, KW) and bias (O,) with
        the evaluation-mode batch norm folded in, in the weights' dtype. Kept from
        one call to the next while its sources (the six arrays and ``eps``) are unchanged
        (:class:`~xraynet.backends.derived.Memo`): the same arrays come back, so the
        backend's own derived filters are kept too. Do not write into them."""
        c, n = self.conv, self.norm
        sources = (c.params["weight"], c.params["bias"], n.params["weight"], n.params["bias"],
                   n.buffers["running_mean"], n.buffers["running_var"], np.array(n.eps, np.float64))
        return self._folded.get(sources, _fold)

    def forward(self, x, training, keep=False):
        if training or keep:
            for layer in self.layers:
                x = layer.forward(x, training, keep)
            return x
        c, bk = self.conv, self.conv.bk
        w, b = self.folded_weights()
        if self.pool is None:
            y, _ = bk.conv2d_forward(x, w, b, c.stride, c.pad, relu=True, save=False)
        else:
            y, _ = bk.conv2d_relu_pool_forward(x, w, b, c.stride, c.pad, self.pool.kernel_size, self.pool.stride,
                                               save=False)
        return y

    def backward(self, dy, need_dx):
        for k in range(len(self.layers) - 1, 0, -1):
            dy = self.layers[k].backward(dy)
        return self.conv.backward(dy, need_dx)


def _fold(w, b, gamma, beta, mean, var, eps):
    """(w', b') of a convolution (w (O, C, KH, KW), b (O,)) followed by an evaluation-mode
    batch norm: ``s = gamma / sqrt(var + eps)``, ``w' = s w``, ``b' = s (b - mean) + beta``
    (``eps`` a 0-d float64 array, applied as the Python float it holds)."""
    scale = gamma / (var + float(eps)) ** 0.5
    return w * scale.reshape(-1, 1, 1, 1), (b - mean) * scale + beta


class _Single:
    """A stage of one layer."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def forward(self, x, training, keep=False):
        return self.layer.forward(x, training, keep)

    def backward(self, dy, need_dx):
        return self.layer.backward(dy, need_dx)


class Model:
    """A sequential CNN classifier.

    ``spec``: architecture dict (see :mod:`xraynet.archs`). ``device``: 'cpu',
    'gpu' or 'auto', or a backend object (the tests pass emulated ones). ``dtype``: float32 for use, float64 for gradient checks. ``seed``:
    weight initialisation.
    """

    def __init__(self, spec: dict, device: str = "cpu", dtype=np.float32, seed: int = 0, fuse: bool = True):
        validate_spec(spec)
        self.spec = copy.deepcopy(spec)
        self.bk = get_backend(device) if isinstance(device, str) else device
        self.device = self.bk.name
        self.dtype = np.dtype(dtype)
        self.output = spec["output"]
        rng = np.random.default_rng(seed)
        self.layers: list[Layer] = [layer_from_config(cfg) for cfg in spec["layers"]]
        shape = tuple(spec["input_shape"])
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape, self.bk, rng, self.dtype)
            except SpecError as e:
                raise SpecError(f"layer {i} ({layer.type}): {e}") from None
        want = None if shape != (1,) and self.output == "sigmoid" else shape
        if len(shape) != 1 or want is None:
            raise SpecError(f"architecture {spec.get('name', '')!r}: the last layer must give a vector of logits "
                            f"(1 for sigmoid output, one per class for softmax). Got sample shape {shape}. "
                            "End the spec with a dense layer.")
        self.num_outputs = shape[0]
        self.num_classes = 2 if self.output == "sigmoid" else self.num_outputs
        if self.output == "softmax" and self.num_outputs < 2:
            raise SpecError("softmax output: needs at least 2 logits. Expected >= 2, got 1. "
                            "Use output 'sigmoid' for one logit.")
        # Layers before the first parameterised one never need an input gradient.
        self._first_param = next((i for i, l in enumerate(self.layers) if l.params), len(self.layers))
        self.fuse = fuse
        self._stages = self._plan(fuse)

    # ---------------------------------------------------------------- structure
    def _plan(self, fuse: bool):
        """[(first layer index, stage)]: conv+relu(+pool) and conv+batchnorm+relu(+pool) fused where allowed."""
        stages, i, ls = [], 0, self.layers
        while i < len(ls):
            if fuse and [type(l) for l in ls[i:i + 3]] == [Conv2D, BatchNorm2D, ReLU]:
                pool = ls[i + 3] if i + 3 < len(ls) and isinstance(ls[i + 3], MaxPool2D) else None
                stages.append((i, _ConvBatchNormReLU(ls[i], ls[i + 1], ls[i + 2], pool)))
                i += 4 if pool is not None else 3
            elif fuse and isinstance(ls[i], Conv2D) and i + 1 < len(ls) and isinstance(ls[i + 1], ReLU):
                pool = ls[i + 2] if i + 2 < len(ls) and isinstance(ls[i + 2], MaxPool2D) else None
                stages.append((i, _ConvReLU(ls[i], pool)))
                i += 3 if pool is not None else 2
            else:
                stages.append((i, _Single(ls[i])))
                i += 1
        return stages

    @property
    def input_shape(self) -> tuple:
        return tuple(self.spec["input_shape"])

    def named_parameters(self) -> list:
        """[(name, array)] in spec order: the live arrays (optimisers update them in place)."""
        return [(f"layers.{i}.{k}", v) for i, l in enumerate(self.layers) for k, v in l.params.items()]

    def named_grads(self) -> dict:
        return {f"layers.{i}.{k}": v for i, l in enumerate(self.layers) for k, v in l.grads.items()}

    def named_buffers(self) -> list:
        return [(f"layers.{i}.{k}", v) for i, l in enumerate(self.layers) for k, v in l.buffers.items()]

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for _, p in self.named_parameters()))

    def state_dict(self) -> dict:
        """Parameters and buffers as NumPy arrays, by name."""
        return {n: self.bk.to_numpy(a).copy() for n, a in self.named_parameters() + self.named_buffers()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the model; every name must be present with its exact shape."""
        own = dict(self.named_parameters() + self.named_buffers())
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise ShapeError(f"weights: names do not match the architecture. Missing {missing or 'none'}, "
                             f"unexpected {extra or 'none'}. Use weights saved for this architecture.")
        for name, arr in own.items():
            src = np.asarray(state[name])
            if src.shape != arr.shape:
                raise ShapeError(f"weights {name}: wrong shape. Expected {arr.shape}, got {src.shape}. "
                                 "Use weights saved for this architecture.")
            arr[...] = self.bk.asarray(src, arr.dtype)

    # ---------------------------------------------------------------- compute
    def feature_layer(self) -> int:
        """Index of the layer whose output is the pooled feature vector: the last
        ``global_avg_pool2d`` (or ``flatten``). What an auxiliary head, such as
        the source adversary of :mod:`xraynet.adversarial`, reads. Raises
        SpecError when the network has neither."""
        found = [i for i, l in enumerate(self.layers) if l.type in ("global_avg_pool2d", "flatten")]
        if not found:
            raise SpecError(f"architecture {self.spec.get('name', '')!r}: no pooled feature vector. Expected a "
                            "global_avg_pool2d or flatten layer, got none. Add one before the dense head.")
        return found[-1]

    def _stage_ending_at(self, layer: int) -> int:
        """Index of the stage whose last layer is ``layer`` (a tap must sit between stages)."""
        ends = [first for first, _ in self._stages[1:]] + [len(self.layers)]
        for k, end in enumerate(ends):
            if end - 1 == layer:
                return k
        raise SpecError(f"tap at layer {layer}: inside a fused stage. Expected a layer that ends a stage, "
                        "got one fused with the next. Tap the output of a pooling or flatten layer, or build "
                        "the model with fuse=False to tap any layer.")

    def forward(self, x, training: bool = False, keep: bool = False, tap: int | None = None):
        """x (N, C, H, W) -> logits (N, outputs), a backend array. ``keep``: in
        evaluation mode, keep what ``backward`` needs (Grad-CAM, saliency).
        ``tap``: a layer index (e.g. :meth:`feature_layer`); then returns
        ``(logits, output of that layer)``, the latter internal (N, F) or NHWC."""
        x = self.bk.asarray(x, self.dtype)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"input batch: wrong shape. Expected (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}. Resize images to the model's input size.")
        at = None if tap is None else self._stage_ending_at(tap)
        h = self.bk.nchw_to_internal(x)
        tapped = None
        for k, (_, stage) in enumerate(self._stages):
            h = stage.forward(h, training, keep)
            if k == at:
                tapped = h
        return h if tap is None else (h, tapped)

    def backward(self, dlogits, input_grad: bool = False, tap_grad: tuple | None = None):
        """Backpropagate the loss gradient; fills every layer's ``grads``.
        ``tap_grad``: ``(layer index, gradient)``, a second loss's gradient with
        respect to that layer's output (the tap of :meth:`forward`), added to
        what flows back through it. Returns the input gradient (N, C, H, W)
        when ``input_grad``, else None."""
        at = None if tap_grad is None else self._stage_ending_at(tap_grad[0])
        d = dlogits
        for k in range(len(self._stages) - 1, -1, -1):
            first, stage = self._stages[k]
            if k == at:
                d = d + tap_grad[1]
            need = input_grad or first > self._first_param
            d = stage.backward(d, need)
            if not need:
                return None
        return self.bk.internal_to_nchw(d) if input_grad else None

    def gradcam(self, x, class_index: int) -> np.ndarray:
        """Grad-CAM maps (N, H', W') in [0, 1] for class ``class_index``, in evaluation mode.

        The feature maps A are the output of the last stage that still yields
        image maps; each channel k is weighted by the mean over positions of
        d(score)/dA_k, computed with the network's own backward pass, and the
        map is ReLU(sum_k w_k A_k), scaled so each image's maximum is 1 (all
        zero where nothing speaks for the class). The score is the class's
        logit; for a one-logit sigmoid model it is the logit for class 1 and its
        negative for class 0.
        """
        if not 0 <= class_index < self.num_classes:
            raise ShapeError(f"gradcam class: out of range. Expected 0..{self.num_classes - 1}, got {class_index}. "
                             "Pass the index of one of the model's classes.")
        bounds = [first for first, _ in self._stages] + [len(self.layers)]
        target = max((i for i in range(len(self._stages)) if len(self.layers[bounds[i + 1] - 1].out_shape) == 3),
                     default=None)
        if target is None:
            raise SpecError("gradcam: the network has no layer with image maps. Expected a conv layer, got none.")
        x = self.bk.asarray(x, self.dtype)
        h = self.bk.nchw_to_internal(x)
        for i, (_, stage) in enumerate(self._stages):
            h = stage.forward(h, False, keep=i > target)
            if i == target:
                acts = h
        d = self.bk.zeros(h.shape, h.dtype)
        if self.output == "sigmoid":
            d[:, 0] = 1.0 if class_index == 1 else -1.0
        else:
            d[:, class_index] = 1.0
        for i in range(len(self._stages) - 1, target, -1):
            d = self._stages[i][1].backward(d, True)
        return self.bk.to_numpy(self.bk.gradcam_maps(acts, d))

    def loss(self, logits, labels, class_weights=None, to_host=True):
        """(loss, dlogits) for integer class labels (N,). The loss is a float;
        on a GPU, ``to_host=False`` leaves it on the device (no wait)."""
        if self.output == "sigmoid":
            return self.bk.sigmoid_bce(logits, labels, class_weights, to_host=to_host)
        return self.bk.softmax_cross_entropy(logits, labels, class_weights, to_host=to_host)

    def train_step(self, x, labels, optimizer, class_weights=None, to_host=True):
        """One step: forward, loss, backward, optimiser update. Returns the loss
        (a float; with ``to_host=False`` a GPU leaves it on the device, so the
        host can queue the next step while this one runs)."""
        logits = self.forward(x, training=True)
        loss, dlogits = self.loss(logits, labels, class_weights, to_host=to_host)
        self.backward(dlogits)
        optimizer.step(self.named_grads())
        return loss

    def predict_proba(self, x, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, num_classes) as NumPy, in evaluation mode."""
        out = []
        for i in range(0, len(x), batch_size):
            z = self.bk.to_numpy(self.forward(x[i:i + batch_size], training=False)).astype(np.float64)
            if self.output == "sigmoid":
                p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
                out.append(np.stack([1 - p1, p1], axis=1))
            else:
                e = np.exp(z - z.max(axis=1, keepdims=True))
                out.append(e / e.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, self.num_classes))

    def summary(self) -> list[tuple[str, tuple, int]]:
        """[(layer description, output sample shape, parameter count)]."""
        return [(repr(l), l.out_shape, int(sum(np.prod(p.shape) for p in l.params.values())))
                for l in self.layers]
