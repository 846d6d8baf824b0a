"""Layers: small classes holding parameters, the caches backward needs, and
``forward`` / ``backward``. Every array op goes through the backend.

Shapes: a layer's *sample shape* is PyTorch's per-image shape, ``(C, H, W)``
for maps and ``(F,)`` for vectors. The arrays a layer sees are internal
activations: NHWC ``(N, H, W, C)`` for maps, ``(N, F)`` for vectors (see
:mod:`xraynet.kernels`). Parameters keep PyTorch's names and layouts (conv
``weight`` (O, C, KH, KW), dense ``weight`` (out, in)).

Each layer's ``config()`` is its entry of the JSON architecture spec;
:func:`layer_from_config` turns such an entry back into a layer.
"""
from __future__ import annotations

import math

import numpy as np

from .backends.contract import BatchNormStats
from .backends.geometry import output_hw, resolve_padding
from .errors import ShapeError, SpecError


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return (value[0], value[1])
    raise SpecError(f"{name}: not understood. Expected a positive integer or a pair of them, got {value!r}. "
                    "Fix the layer spec.")


class Layer:
    """Base class. Subclasses set ``type`` (the spec name) and implement
    ``build``, ``forward``, ``backward`` and ``config``."""

    type = ""
    #: trainable arrays by name, and their gradients after ``backward``
    params: dict
    grads: dict
    #: non-trained state saved with the model (batch-norm running statistics)
    buffers: dict

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}
        self.bk = None
        self.in_shape = self.out_shape = None

    def build(self, in_shape: tuple, bk, rng, dtype) -> tuple:
        """Create parameters for a sample shape ``in_shape``; return the output sample shape."""
        self.bk, self.in_shape = bk, tuple(in_shape)
        self.out_shape = self._build(self.in_shape, rng, dtype)
        return self.out_shape

    def _build(self, in_shape, rng, dtype):
        return in_shape

    def _need_maps(self, in_shape):
        if len(in_shape) != 3:
            raise SpecError(f"{self.type}: needs image maps (C, H, W) as input. "
                            f"Expected a 3-d sample shape, got {in_shape}. Put it before flatten/global_avg_pool.")

    def forward(self, x, training: bool = False, keep: bool = False):
        """``training`` picks the semantics (batch statistics, dropout); ``keep``
        keeps what ``backward`` needs in evaluation mode too (Grad-CAM)."""
        raise NotImplementedError

    def backward(self, dy, need_dx: bool = True):
        raise NotImplementedError

    def config(self) -> dict:
        return {"type": self.type}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Conv2D(Layer):
    """2-d convolution (cross-correlation, as in PyTorch) with bias.

    Input (N, H, W, C_in) -> output (N, OH, OW, out_channels) with
    ``OH = (H + 2*ph - KH) // stride + 1`` (:mod:`xraynet.backends.geometry`).
    ``padding``: 'valid', 'same' (stride 1, odd kernel), an int or a pair.
    He-normal weights, zero bias.
    """

    type = "conv2d"

    def __init__(self, out_channels: int, kernel_size=3, stride=1, padding="valid"):
        super().__init__()
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
            raise SpecError(f"conv2d out_channels: expected a positive integer, got {out_channels!r}. "
                            "Fix the layer spec.")
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "conv2d kernel_size")
        self.stride = _pair(stride, "conv2d stride")
        self.padding = padding
        self.pad = resolve_padding(padding, self.kernel_size, self.stride)
        self.ctx = None

    def _build(self, in_shape, rng, dtype):
        self._need_maps(in_shape)
        c, h, w = in_shape
        kh, kw = self.kernel_size
        oh, ow = output_hw(h, w, self.kernel_size, self.stride, self.pad)
        if oh < 1 or ow < 1:
            raise SpecError(f"conv2d: input {h}x{w} is smaller than the kernel {kh}x{kw} with padding {self.pad}. "
                            f"Expected an output of at least 1x1, got {oh}x{ow}. Use a larger image size or fewer "
                            "downsampling layers.")
        fan_in = c * kh * kw
        self.params = {
            "weight": self.bk.random_normal(rng, (self.out_channels, c, kh, kw), math.sqrt(2.0 / fan_in), dtype),
            "bias": self.bk.zeros((self.out_channels,), dtype),
        }
        return (self.out_channels, oh, ow)

    def forward(self, x, training=False, keep=False):
        y, self.ctx = self.bk.conv2d_forward(x, self.params["weight"], self.params["bias"], self.stride,
                                             self.pad, save=training or keep)
        return y

    def backward(self, dy, need_dx=True):
        dx, dw, db = self.bk.conv2d_backward(dy, self.ctx, self.params["weight"], need_dx)
        self.ctx = None
        self.grads = {"weight": dw, "bias": db}
        return dx

    def config(self):
        return {"type": self.type, "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, (str, int)) else list(self.padding)}


class MaxPool2D(Layer):
    """Max pooling, no padding, floor mode (a trailing odd row/column is dropped).

    The gradient goes to the first maximum of each window in row-major order,
    as in PyTorch. ``stride`` defaults to ``kernel_size``.
    """

    type = "maxpool2d"

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "maxpool2d kernel_size")
        self.stride = _pair(stride, "maxpool2d stride") if stride is not None else self.kernel_size
        if self.kernel_size[0] * self.kernel_size[1] > 255:
            raise SpecError(f"maxpool2d kernel_size: windows are limited to 255 elements. "
                            f"Expected at most 15x15, got {self.kernel_size}. Use a smaller window.")
        self.cache = None

    def _build(self, in_shape, rng, dtype):
        self._need_maps(in_shape)
        c, h, w = in_shape
        oh, ow = output_hw(h, w, self.kernel_size, self.stride)
        if oh < 1 or ow < 1:
            raise SpecError(f"maxpool2d: input {h}x{w} is smaller than the window {self.kernel_size}. "
                            f"Expected at least 1x1 output, got {oh}x{ow}. Use a larger image size.")
        return (c, oh, ow)

    def forward(self, x, training=False, keep=False):
        y, idx = self.bk.maxpool2d_forward(x, self.kernel_size, self.stride)
        self.cache = (idx, x.shape) if training or keep else None
        return y

    def backward(self, dy, need_dx=True):
        idx, x_shape = self.cache
        self.cache = None
        return self.bk.maxpool2d_backward(dy, idx, x_shape, self.kernel_size, self.stride)

    def config(self):
        return {"type": self.type, "kernel_size": list(self.kernel_size), "stride": list(self.stride)}


class ReLU(Layer):
    """max(x, 0), any shape; the gradient at exactly 0 is 0 (as in PyTorch)."""

    type = "relu"

    def forward(self, x, training=False, keep=False):
        y = self.bk.relu_forward(x)
        self.y = y if training or keep else None
        return y

    def backward(self, dy, need_dx=True):
        dx = self.bk.relu_backward(dy, self.y)
        self.y = None
        return dx


class Flatten(Layer):
    """(N, H, W, C) -> (N, C*H*W) in PyTorch's NCHW order, so dense weights
    read exactly as PyTorch's ``nn.Flatten`` + ``nn.Linear`` would."""

    type = "flatten"

    def _build(self, in_shape, rng, dtype):
        return (int(np.prod(in_shape)),)

    def forward(self, x, training=False, keep=False):
        self.x_shape = x.shape
        if x.ndim == 4:
            return self.bk.internal_to_nchw(x).reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        if len(self.x_shape) == 4:
            n, h, w, c = self.x_shape
            return self.bk.nchw_to_internal(dy.reshape(n, c, h, w))
        return dy.reshape(self.x_shape)


class GlobalAvgPool2D(Layer):
    """(N, H, W, C) -> (N, C), the mean over every position."""

    type = "global_avg_pool2d"

    def _build(self, in_shape, rng, dtype):
        self._need_maps(in_shape)
        return (in_shape[0],)

    def forward(self, x, training=False, keep=False):
        self.x_shape = x.shape
        return self.bk.global_avg_pool_forward(x)

    def backward(self, dy, need_dx=True):
        return self.bk.global_avg_pool_backward(dy, self.x_shape)


class Dense(Layer):
    """Fully connected: (N, in_features) -> (N, out_features), ``y = x W^T + b``.
    He-normal weights (fan_in), zero bias."""

    type = "dense"

    def __init__(self, out_features: int):
        super().__init__()
        if not isinstance(out_features, int) or isinstance(out_features, bool) or out_features < 1:
            raise SpecError(f"dense out_features: expected a positive integer, got {out_features!r}. "
                            "Fix the layer spec.")
        self.out_features = out_features

    def _build(self, in_shape, rng, dtype):
        if len(in_shape) != 1:
            raise SpecError(f"dense: needs a vector input. Expected a 1-d sample shape, got {in_shape}. "
                            "Put flatten or global_avg_pool2d before it.")
        fin = in_shape[0]
        self.params = {
            "weight": self.bk.random_normal(rng, (self.out_features, fin), math.sqrt(2.0 / fin), dtype),
            "bias": self.bk.zeros((self.out_features,), dtype),
        }
        return (self.out_features,)

    def forward(self, x, training=False, keep=False):
        self.x = x if training or keep else None
        return self.bk.dense_forward(x, self.params["weight"], self.params["bias"])

    def backward(self, dy, need_dx=True):
        dx, dw, db = self.bk.dense_backward(dy, self.x, self.params["weight"], need_dx)
        self.x = None
        self.grads = {"weight": dw, "bias": db}
        return dx

    def config(self):
        return {"type": self.type, "out_features": self.out_features}


class Dropout(Layer):
    """Inverted dropout: in training zero each element with probability ``p`` and
    scale the rest by 1/(1-p); identity in evaluation."""

    type = "dropout"

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise SpecError(f"dropout p: expected a probability in [0, 1), got {p!r}. Fix the layer spec.")
        self.p = float(p)
        self.mask = None
        self.rng = None

    def _build(self, in_shape, rng, dtype):
        # Its own stream, so that dropout draws do not shift weight initialisation.
        self.rng = self.bk.rng(int(rng.integers(2**63)))
        return in_shape

    def forward(self, x, training=False, keep=False):
        if not training or self.p == 0:
            self.mask = None
            return x
        self.mask = self.bk.dropout_mask(self.rng, x.shape, self.p, x.dtype)
        return x * self.mask

    def backward(self, dy, need_dx=True):
        return dy if self.mask is None else dy * self.mask

    def config(self):
        return {"type": self.type, "p": self.p}


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of maps (N, H, W, C): batch statistics in
    training (running statistics updated with ``momentum``, unbiased variance,
    as PyTorch), running statistics in evaluation."""

    type = "batchnorm2d"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise SpecError(f"batchnorm2d momentum: expected a number in (0, 1], got {momentum!r}. Fix the spec.")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise SpecError(f"batchnorm2d eps: expected a positive number, got {eps!r}. Fix the spec.")
        self.momentum, self.eps = float(momentum), float(eps)
        self.ctx = None

    def _build(self, in_shape, rng, dtype):
        self._need_maps(in_shape)
        c = in_shape[0]
        self.params = {"weight": self.bk.asarray(np.ones(c), dtype), "bias": self.bk.zeros((c,), dtype)}
        self.buffers = {"running_mean": self.bk.zeros((c,), dtype),
                        "running_var": self.bk.asarray(np.ones(c), dtype)}
        return in_shape

    def forward(self, x, training=False, keep=False):
        stats = BatchNormStats(self.buffers["running_mean"], self.buffers["running_var"], self.momentum, self.eps)
        y, self.ctx = self.bk.batchnorm_forward(x, self.params["weight"], self.params["bias"], stats, training,
                                                keep)
        return y

    def backward(self, dy, need_dx=True):
        if self.ctx is None:
            raise ShapeError("batchnorm2d: backward called without a kept forward. "
                             "Expected forward(x, training=True) or forward(x, keep=True) first. Call one of those.")
        dx, dg, db = self.bk.batchnorm_backward(dy, self.ctx, self.params["weight"])
        self.ctx = None
        self.grads = {"weight": dg, "bias": db}
        return dx

    def config(self):
        return {"type": self.type, "momentum": self.momentum, "eps": self.eps}


class GradientReversal(Layer):
    """Gradient reversal (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
    Backpropagation", ICML 2015): the identity going forward, ``-scale * dy``
    going backward.

    Put between shared features and an adversary (xraynet's source head,
    :mod:`xraynet.adversarial`): the adversary learns to predict the source of
    a film, and the layers below receive the opposite of its gradient, so they
    learn features from which the source cannot be told. Any shape; no
    parameters. ``scale`` (lambda, >= 0) may be changed between steps (a ramp).
    """

    type = "gradient_reversal"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
            raise SpecError(f"gradient_reversal scale: expected a finite number >= 0, got {scale!r}. "
                            "Fix the layer spec.")
        self.scale = float(scale)

    def forward(self, x, training=False, keep=False):
        return x

    def backward(self, dy, need_dx=True):
        return dy * (-self.scale)

    def config(self):
        return {"type": self.type, "scale": self.scale}


LAYER_TYPES = {cls.type: cls for cls in (Conv2D, MaxPool2D, ReLU, Flatten, GlobalAvgPool2D, Dense, Dropout,
                                         BatchNorm2D, GradientReversal)}


def layer_from_config(cfg: dict) -> Layer:
    """Build a layer (not yet built for a shape) from its spec entry."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise SpecError(f"layer spec: expected an object with a 'type' key, got {cfg!r}. Fix the spec.")
    kind = cfg["type"]
    if kind not in LAYER_TYPES:
        raise SpecError(f"layer type {kind!r}: unknown. Expected one of {sorted(LAYER_TYPES)}, got {kind!r}. "
                        "Fix the spec.")
    args = {k: v for k, v in cfg.items() if k != "type"}
    try:
        return LAYER_TYPES[kind](**args)
    except TypeError as e:
        raise SpecError(f"layer {kind!r}: bad arguments {sorted(args)}: {e}. Fix the spec.") from None
