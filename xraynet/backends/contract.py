"""The backend contract: every op a compute backend implements, with its
shapes, dtypes and semantics.

Layers, model, optimisers and the benchmark call a backend only through the
names declared here (tests/test_backend_contract.py checks both sides: each
backend implements every op with exactly this signature, and the callers use
no other name). Every op is mandatory; where a backend has nothing to do (the
CPU has no device to wait for, no kernels to profile), its method says so.

Conventions of every op:

* Arrays are the backend's own (NumPy on the CPU, CuPy on the GPU); only
  ``asarray`` takes and ``to_numpy`` gives host arrays.
* Activations are NHWC ``(N, H, W, C)`` inside (see :mod:`xraynet.kernels`),
  vectors ``(N, F)``. Weights keep PyTorch's layouts: conv ``(O, C, KH, KW)``,
  dense ``(F_out, F_in)``.
* Every float array of one call has one dtype, float32 (use) or float64
  (gradient checks); outputs come back in that dtype. Max-pool positions are
  uint8 (``ky*KW + kx`` within the window, so windows hold at most 255).
* ``stride``, ``pad``, ``kernel`` are ``(h, w)`` pairs of ints; output sizes are
  :func:`xraynet.backends.geometry.output_size` (floor mode).
* A forward op that returns a context (``ctx``) hands it, unopened, to the
  matching backward op; it is opaque and backend-specific.
* Inputs may be non-contiguous views; outputs are C-contiguous new arrays,
  except the in-place updates (running statistics, optimiser steps).

The kernels behind the ops have NumPy references with the same names in
:mod:`xraynet.kernels.reference`; those are the numerical spec.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

#: A backend array: numpy.ndarray on the CPU, cupy.ndarray on the GPU.
Array = Any


@dataclass(frozen=True)
class AdamHyper:
    """Adam's hyperparameters, PyTorch's names and meaning (``Adam``, not ``AdamW``:
    ``weight_decay`` adds ``weight_decay * p`` to the gradient)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass(frozen=True)
class SGDHyper:
    """SGD's hyperparameters, as PyTorch's ``SGD`` (dampening 0)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class BatchNormStats:
    """A batch-norm layer's running statistics and how they are kept.

    ``running_mean``, ``running_var``: (C,) backend arrays of the layer's dtype,
    updated in place by a training forward (``new = (1 - momentum) * old +
    momentum * batch``, the variance unbiased, as PyTorch). ``eps`` is added to
    the variance before the square root."""

    running_mean: Array
    running_var: Array
    momentum: float
    eps: float


@runtime_checkable
class Backend(Protocol):
    """What layers, model, optimisers and the benchmark may call on a backend.

    The backends subclass it, so an op left out fails when the backend is made
    (its abstract method); ``isinstance(obj, Backend)`` checks any other object
    by its members."""

    #: 'cpu' or 'gpu' (the emulated GPU of the tests is 'gpu' too)
    name: str
    #: One-channel convolutions run as direct kernels instead of im2col + GEMM
    #: (GPU: any stride, XRAYNET_GPU_DIRECT_CONV=0 turns it off; CPU: stride 1,
    #: XRAYNET_CPU_DIRECT_CONV=0). None where a backend has no such choice.
    direct_first_conv: bool | None

    # ------------------------------------------------------------- plumbing
    @abstractmethod
    def asarray(self, x, dtype=None) -> Array:
        """A contiguous backend array of ``x`` (host or backend array), cast to
        ``dtype`` if given. May share memory with ``x`` where no copy is needed."""

    @abstractmethod
    def to_numpy(self, x) -> np.ndarray:
        """``x`` as a host NumPy array (a device-to-host copy on the GPU, which waits for it)."""

    @abstractmethod
    def zeros(self, shape, dtype=np.float32) -> Array:
        """A new array of zeros."""

    @abstractmethod
    def empty(self, shape, dtype=np.float32) -> Array:
        """A new uninitialised array."""

    @abstractmethod
    def rng(self, seed) -> Any:
        """A random generator for ``dropout_mask``, seeded by ``seed`` (an int or a
        sequence of ints, as numpy.random.SeedSequence takes)."""

    @abstractmethod
    def random_normal(self, rng: np.random.Generator, shape, std: float, dtype) -> Array:
        """Initial weights: ``std`` times standard-normal draws of ``shape``, drawn
        on the host from NumPy's ``rng`` so that one seed gives the same network
        on every backend."""

    @abstractmethod
    def nchw_to_internal(self, x) -> Array:
        """(N, C, H, W) -> internal NHWC (N, H, W, C), contiguous."""

    @abstractmethod
    def internal_to_nchw(self, x) -> Array:
        """Internal NHWC (N, H, W, C) -> (N, C, H, W), contiguous."""

    # ------------------------------------------------------------- execution
    @abstractmethod
    def set_threads(self, threads: int) -> int:
        """Use ``threads`` host threads for the ops (Numba and BLAS on the CPU).
        Returns the number set before, so that a caller can put it back (a GPU
        backend, whose ops run no host threads, keeps and returns the number)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block until all work queued on the backend has finished."""

    @abstractmethod
    def time_steps(self, step: Callable[[], None], n: int) -> list[float]:
        """Seconds per call of ``n`` calls of ``step``, each including the work it
        queued (on a GPU: CUDA events between calls, one synchronise at the end)."""

    @abstractmethod
    def profile_kernels(self, enabled: bool = True):
        """From now on record the device time of every kernel launch and GEMM
        (``enabled``), or stop (returns None). Returns the profiler, whose
        ``totals()`` gives ``{kernel name: (ms, launches)}``; None where the
        backend launches no kernels of its own to profile (CPU)."""

    @abstractmethod
    def device_name(self) -> str:
        """What the ops run on, for reports: the CPU model, the GPU's name."""

    # ----------------------------------------------------------- convolution
    @abstractmethod
    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True) -> tuple[Array, Any]:
        """Convolution (cross-correlation, as PyTorch) plus bias.

        ``x`` (N, H, W, C), ``w`` (O, C, KH, KW), ``b`` (O,) -> ``y`` (N, OH, OW, O)
        and a context for ``conv2d_backward`` (None unless ``save``). With
        ``relu`` the output is ``max(y, 0)`` and backward masks with it. A channel
        mismatch is a ShapeError. Reference: ``reference.conv2d_forward``."""

    @abstractmethod
    def conv2d_backward(self, dy, ctx, w, need_dx=True) -> tuple[Array | None, Array, Array]:
        """Gradients of ``conv2d_forward`` from ``dy`` (N, OH, OW, O): ``(dx (N, H, W, C)
        or None without need_dx, dw (O, C, KH, KW), db (O,))``. Reference:
        ``reference.conv2d_backward``."""

    @abstractmethod
    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride,
                                 save=True) -> tuple[Array, Any]:
        """Fused conv + bias + ReLU + max pool: x (N, H, W, C) -> (N, PH, PW, O).

        Equal to ``conv2d_forward(relu=True)`` then ``maxpool2d_forward``, values
        and (through the backward op) gradients; the full-size pre-activation is
        never kept. Reference: ``reference.bias_maxpool_relu`` of the conv output."""

    @abstractmethod
    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True) -> tuple[Array | None, Array, Array]:
        """Gradients of ``conv2d_relu_pool_forward`` from ``dy`` (N, PH, PW, O):
        ``(dx or None, dw, db)`` as ``conv2d_backward``."""

    # -------------------------------------------------------------- pooling
    @abstractmethod
    def maxpool2d_forward(self, x, kernel, stride) -> tuple[Array, Array]:
        """Max pooling, no padding, floor mode: x (N, H, W, C) -> ``(y (N, OH, OW, C),
        idx)``, idx (uint8, same shape) the window position of the first maximum
        (ties to the earliest in row-major order, as PyTorch). Reference:
        ``reference.maxpool2d_forward``."""

    @abstractmethod
    def maxpool2d_backward(self, dy, idx, x_shape, kernel, stride) -> Array:
        """dx of ``x_shape``: each ``dy`` entry added to its window's recorded
        maximum. Reference: ``reference.maxpool2d_backward``."""

    # ----------------------------------------------------- elementwise, dense
    @abstractmethod
    def relu_forward(self, x) -> Array:
        """``max(x, 0)``, any shape. Reference: ``reference.relu_forward``."""

    @abstractmethod
    def relu_backward(self, dy, y) -> Array:
        """``dy`` where the ReLU output ``y`` > 0, else 0 (0 at exactly 0, as
        PyTorch). Reference: ``reference.relu_backward``."""

    @abstractmethod
    def dense_forward(self, x, w, b) -> Array:
        """x (N, F_in), w (F_out, F_in), b (F_out,) -> ``x @ w.T + b`` (N, F_out)."""

    @abstractmethod
    def dense_backward(self, dy, x, w, need_dx=True) -> tuple[Array | None, Array, Array]:
        """Gradients of ``dense_forward`` from dy (N, F_out): ``(dx (N, F_in) or None,
        dw (F_out, F_in), db (F_out,))``."""

    @abstractmethod
    def global_avg_pool_forward(self, x) -> Array:
        """x (N, H, W, C) -> (N, C), the mean over H and W (summed in float64).
        Reference: ``reference.global_avg_pool_forward``."""

    @abstractmethod
    def global_avg_pool_backward(self, dy, x_shape) -> Array:
        """dy (N, C) -> dx of ``x_shape`` (N, H, W, C), ``dy / (H*W)`` everywhere.
        Reference: ``reference.global_avg_pool_backward``."""

    @abstractmethod
    def dropout_mask(self, rng, shape, p: float, dtype) -> Array:
        """Inverted-dropout mask from ``rng`` (made by ``self.rng``): 0 with
        probability ``p``, else ``1 / (1 - p)``."""

    @abstractmethod
    def batchnorm_forward(self, x, gamma, beta, stats: BatchNormStats, training: bool,
                          keep=False) -> tuple[Array, Any]:
        """Per-channel batch norm of x (..., C) with gamma, beta (C,): ``(y, ctx)``.

        Training: batch statistics (biased variance) normalise, and ``stats``'s
        running ones are updated in place. Evaluation: the running statistics
        make it an affine map; ``ctx`` is None unless ``keep`` (then backward works
        there too, as Grad-CAM needs). References:
        ``reference.batchnorm_forward_train``, ``reference.batchnorm_forward_eval``."""

    @abstractmethod
    def batchnorm_backward(self, dy, ctx, gamma) -> tuple[Array, Array, Array]:
        """``(dx, dgamma, dbeta)`` of a training-mode or a kept evaluation-mode
        forward. Reference: ``reference.batchnorm_backward_train``."""

    @abstractmethod
    def gradcam_maps(self, acts, dacts) -> Array:
        """Grad-CAM from feature maps ``acts`` (N, H, W, C) and the class score's
        gradient ``dacts`` (same shape): ``ReLU(sum_k mean_hw(dacts_k) * acts_k)``,
        (N, H, W), each image scaled so its maximum is 1 (all 0 where nothing is
        positive)."""

    # --------------------------------------------------------------- losses
    @abstractmethod
    def sigmoid_bce(self, logits, labels, class_weights=None, to_host=True) -> tuple[Any, Array]:
        """Binary cross-entropy on one logit per image, numerically stable.

        ``logits`` (N, 1), ``labels`` (N,) integers in {0, 1} (host or backend).
        Returns ``(loss, dlogits)``: the mean loss over the batch, or with
        ``class_weights`` (2,) the weighted mean ``sum(w_i l_i) / sum(w_i)``, and
        its gradient (N, 1). The loss is a float; with ``to_host=False`` a GPU
        leaves it as a one-element device array (nothing waits). Reference:
        ``reference.sigmoid_bce``."""

    @abstractmethod
    def softmax_cross_entropy(self, logits, labels, class_weights=None, to_host=True) -> tuple[Any, Array]:
        """Softmax cross-entropy (log-sum-exp) on logits (N, K) with integer labels
        (N,): ``(loss, dlogits)`` as ``sigmoid_bce``, class_weights (K,).
        Reference: ``reference.softmax_cross_entropy``."""

    # ------------------------------------------------------------ optimisers
    @abstractmethod
    def adam_update(self, p, m, v, g, step: int, hyper: AdamHyper) -> None:
        """In place: step number ``step`` (from 1) of Adam on parameter ``p`` with
        moments ``m``, ``v`` and gradient ``g`` (all one shape and dtype).
        Reference: ``reference.adam_update``."""

    @abstractmethod
    def adam_update_many(self, ps, ms, vs, gs, step: int, hyper: AdamHyper) -> None:
        """``adam_update`` of every ``(ps[i], ms[i], vs[i], gs[i])``, lists of equal
        length: on the GPU one launch per precision over all of them. A state or
        gradient that does not match its parameter is a ShapeError."""

    @abstractmethod
    def sgd_update(self, p, buf, g, step: int, hyper: SGDHyper) -> None:
        """In place: step ``step`` (from 1) of SGD with momentum buffer ``buf``
        (started from ``g`` at step 1; untouched without momentum). Reference:
        ``reference.sgd_update``."""

    @abstractmethod
    def sgd_update_many(self, ps, bufs, gs, step: int, hyper: SGDHyper) -> None:
        """``sgd_update`` of every ``(ps[i], bufs[i], gs[i])``, as ``adam_update_many``."""


#: Every name of the contract: the attributes and the ops, in declaration order.
CONTRACT_ATTRIBUTES = ("name", "direct_first_conv")
CONTRACT_OPS = tuple(n for n, v in vars(Backend).items() if getattr(v, "__isabstractmethod__", False))
