"""The backend seam: the short list of ops that layers, model and training call.

A backend owns the array module and every op that touches array memory:

* array plumbing: ``asarray``, ``to_numpy``, ``zeros``, ``empty``, ``rng``
* convolution: ``conv2d_forward`` / ``conv2d_backward``, and the fused
  ``conv2d_relu_pool_forward`` / ``..._backward`` (conv + bias + ReLU + max pool)
* max pooling with argmax: ``maxpool2d_forward`` / ``maxpool2d_backward``
* ``relu_forward`` / ``relu_backward``, ``dense_forward`` / ``dense_backward``
* ``batchnorm_forward`` / ``batchnorm_backward``, ``global_avg_pool_*``,
  ``dropout_mask``
* losses: ``sigmoid_bce``, ``softmax_cross_entropy``
* optimiser updates: ``adam_update``, ``sgd_update``

Activations are NHWC internally (see :mod:`xraynet.kernels`). Contexts
returned by forward ops are opaque tuples handed back to the matching
backward op. ``get_backend("cpu")`` returns the NumPy + Numba backend,
``get_backend("gpu")`` the CuPy + CUDA one (``xraynet.gpu_backend``); callers
never need to know which.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .errors import BackendError


def resolve_padding(padding, kernel_size: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Turn a ``padding`` spec ('valid', 'same', int or pair) into a ``(ph, pw)`` pair."""
    from .errors import SpecError

    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1) or kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
            raise SpecError(
                f"padding 'same': only defined here for stride 1 and odd kernels. "
                f"Expected stride (1, 1) and an odd kernel_size, got stride {stride}, kernel_size {kernel_size}. "
                "Give the padding as an integer instead."
            )
        return (kernel_size[0] // 2, kernel_size[1] // 2)
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return (padding, padding)
    if (isinstance(padding, (list, tuple)) and len(padding) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding)):
        return (padding[0], padding[1])
    raise SpecError(
        f"padding: not understood. Expected 'valid', 'same', a non-negative integer or a pair of them, "
        f"got {padding!r}. Fix the layer spec."
    )


def conv_output_shape(x_shape, w_shape, stride, pad) -> tuple[int, int]:
    """(OH, OW) of a convolution of NHWC ``x_shape`` with (O, C, KH, KW) weights;
    a channel mismatch is a ShapeError."""
    from .errors import ShapeError

    _, h, wd, c = x_shape
    _, c2, kh, kw = w_shape
    if c2 != c:
        raise ShapeError(f"conv2d: input has {c} channels. Expected {c2}, got {c}. Check the layer spec.")
    return (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large temporaries (im2col
    matrices, gradient maps: hundreds of MB for `wide`). By default glibc serves
    each from a fresh mmap and unmaps it on free, so every step pays page
    faults and kernel zeroing on first touch: about a third of a `seed`
    training step (347 vs 503 images/s). With mmap off and trimming raised,
    the heap keeps those pages and the next step reuses them. No effect
    outside glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)


class CPUBackend:
    """NumPy arrays, Numba kernels and the BLAS behind ``numpy.matmul``."""

    name = "cpu"
    xp = np

    def __init__(self):
        from xraynet.kernels import cpu  # imported here: loading Numba costs ~0.3 s

        self.k = cpu
        _keep_freed_memory()

    # ------------------------------------------------------------------ plumbing
    def asarray(self, x, dtype=None):
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype)

    def empty(self, shape, dtype=np.float32):
        return np.empty(shape, dtype)

    def rng(self, seed):
        return np.random.default_rng(seed)

    def random_normal(self, rng, shape, std, dtype):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` threads in Numba kernels and in BLAS."""
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(limits=threads, user_api="blas")

    def synchronize(self) -> None:
        """Nothing to wait for on the CPU; GPU backends block until work is done."""

    def nchw_to_internal(self, x):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def internal_to_nchw(self, x):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    # -------------------------------------------------------------- convolution
    #: Convolutions run over the batch in chunks of about this many bytes of
    #: patch matrix / pre-activation, so those stay in cache between im2col,
    #: GEMM and epilogue instead of streaming hundreds of MB through memory
    #: (the `wide` conv2 patch matrix is 231 MB at batch 32). Backward rebuilds
    #: each chunk's patch matrix rather than keeping the whole one.
    CHUNK_BYTES = 4 << 20
    BACKWARD_CHUNK_BYTES = 4 << 20

    def _geometry(self, x_shape, w_shape, stride, pad, chunk_bytes=None):
        oh, ow = conv_output_shape(x_shape, w_shape, stride, pad)
        n, c, o, kh, kw = x_shape[0], x_shape[3], w_shape[0], w_shape[2], w_shape[3]
        per_image = oh * ow * max(kh * kw * c, o) * 4
        step = max(1, min(n, (chunk_bytes or self.CHUNK_BYTES) // per_image))
        return oh, ow, [(i, min(n, i + step)) for i in range(0, n, step)]

    def _patches(self, x, kh, kw, stride, pad, oh, ow):
        """Patch matrix A (M, KH*KW*C) of an NHWC chunk, so that conv = A @ W (K, O).

        A 1x1 convolution needs none; a grayscale input gets the transposed
        matrix (built with unit-stride copies) and A is its transposed view."""
        n, h, wd, c = x.shape
        if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
            return x.reshape(n * h * wd, c)
        if c == 1:
            cols_t = np.empty((kh * kw, n * oh * ow), x.dtype)
            self.k.im2col_t1(cols_t, x.reshape(n, h, wd), kh, kw, stride[0], stride[1], pad[0], pad[1])
            return cols_t.T
        cols = np.empty((n * oh * ow, kh * kw * c), x.dtype)
        self.k.im2col(cols, x, kh, kw, stride[0], stride[1], pad[0], pad[1])
        return cols

    @staticmethod
    def _wmat(w):
        """(O, C, KH, KW) -> (KH*KW*C, O), the GEMM operand matching the patch order."""
        o, c, kh, kw = w.shape
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw * c, o)

    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True):
        """x (N, H, W, C), w (O, C, KH, KW), b (O,) -> y (N, OH, OW, O) and a context.

        With ``relu`` the ReLU is fused into the bias pass (the output is then
        the ReLU output, which backward masks with)."""
        o, _, kh, kw = w.shape
        oh, ow, chunks = self._geometry(x.shape, w.shape, stride, pad)
        wmat = self._wmat(w)
        y = np.empty((x.shape[0], oh, ow, o), x.dtype)
        for s, e in chunks:
            y2d = y[s:e].reshape(-1, o)
            np.matmul(self._patches(x[s:e], kh, kw, stride, pad, oh, ow), wmat, out=y2d)
            (self.k.bias_relu if relu else self.k.add_bias)(y2d, b)
        return y, ((x, stride, pad, y if relu else None) if save else None)

    def conv2d_backward(self, dy, ctx, w, need_dx=True):
        """Gradients of conv2d_forward: returns (dx or None, dw (O, C, KH, KW), db (O,))."""
        x, stride, pad, y_relu = ctx
        dy = np.ascontiguousarray(dy)

        def chunk_grad(s, e, buf):
            if y_relu is None:
                return dy[s:e].reshape(-1, dy.shape[3])
            self.k.relu_backward(buf.reshape(-1), dy[s:e].reshape(-1), y_relu[s:e].reshape(-1))
            return buf.reshape(-1, dy.shape[3])

        return self._conv_grads(chunk_grad, x, w, stride, pad, need_dx)

    def _conv_grads(self, chunk_grad, x, w, stride, pad, need_dx, db=None):
        """Accumulate conv gradients chunk by chunk. ``chunk_grad(s, e, buf)`` gives
        the output gradient (M, O) of images s:e, using ``buf`` as scratch. The
        bias gradient is summed here unless the caller passes it as ``db``."""
        o, c, kh, kw = w.shape
        oh, ow, chunks = self._geometry(x.shape, w.shape, stride, pad, self.BACKWARD_CHUNK_BYTES)
        step = chunks[0][1] - chunks[0][0]
        buf = np.empty((step, oh, ow, o), x.dtype)
        wmat = self._wmat(w)
        dwmat = np.zeros(wmat.shape, x.dtype)
        db64 = np.zeros(o, np.float64)
        part = np.empty(o, np.float64)
        dx = np.empty(x.shape, x.dtype) if need_dx else None
        for s, e in chunks:
            g = chunk_grad(s, e, buf[: e - s])
            cols = self._patches(x[s:e], kh, kw, stride, pad, oh, ow)
            dwmat += cols.T @ g
            if db is None:
                self.k.channel_sum(part, g)
                db64 += part
            if need_dx:
                dcols = g @ wmat.T
                if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
                    dx[s:e] = dcols.reshape(dx[s:e].shape)
                else:
                    self.k.col2im(dx[s:e], dcols, kh, kw, stride[0], stride[1], pad[0], pad[1])
        dw = np.ascontiguousarray(dwmat.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
        return dx, dw, (db64.astype(x.dtype) if db is None else db)

    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride, save=True):
        """Fused conv + bias + ReLU + max pool: x (N, H, W, C) -> (N, PH, PW, O).

        Equal to the unfused chain, gradients included (see
        kernels.cpu.bias_maxpool_relu); the pre-activation exists only one
        cache-sized chunk at a time."""
        n = x.shape[0]
        o, _, kh, kw = w.shape
        oh, ow, chunks = self._geometry(x.shape, w.shape, stride, pad)
        (pkh, pkw), (psh, psw) = pool_kernel, pool_stride
        ph, pw = (oh - pkh) // psh + 1, (ow - pkw) // psw + 1
        wmat = self._wmat(w)
        pooled = np.empty((n, ph, pw, o), x.dtype)
        idx = np.empty((n, ph, pw, o), np.uint8)
        step = chunks[0][1] - chunks[0][0]
        buf = np.empty((step * oh * ow, o), x.dtype)
        for s, e in chunks:
            y2d = buf[: (e - s) * oh * ow]
            np.matmul(self._patches(x[s:e], kh, kw, stride, pad, oh, ow), wmat, out=y2d)
            self.k.bias_maxpool_relu(pooled[s:e], idx[s:e], y2d.reshape(e - s, oh, ow, o), b, pkh, pkw, psh, psw)
        ctx = (x, stride, pad, pooled, idx, (oh, ow), pool_kernel, pool_stride) if save else None
        return pooled, ctx

    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True):
        x, stride, pad, pooled, idx, (oh, ow), (pkh, pkw), (psh, psw) = ctx
        dy = np.ascontiguousarray(dy)
        o = w.shape[0]

        def chunk_grad(s, e, buf):
            self.k.maxpool_relu_backward(buf, dy[s:e], pooled[s:e], idx[s:e], pkh, pkw, psh, psw)
            return buf.reshape(-1, o)

        # The bias gradient from the pooled map: a quarter of the elements.
        db = np.empty(o, np.float64)
        self.k.channel_sum(db, dy.reshape(-1, o), pooled.reshape(-1, o))
        return self._conv_grads(chunk_grad, x, w, stride, pad, need_dx, db.astype(x.dtype))

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, kernel, stride):
        """x (N, H, W, C) -> (y (N, OH, OW, C), idx uint8 window positions); floor mode."""
        n, h, w, c = x.shape
        oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
        y = np.empty((n, oh, ow, c), x.dtype)
        idx = np.empty((n, oh, ow, c), np.uint8)
        self.k.maxpool2d_forward(y, idx, np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1])
        return y, idx

    def maxpool2d_backward(self, dy, idx, x_shape, kernel, stride):
        dx = np.empty(x_shape, dy.dtype)
        self.k.maxpool2d_backward(dx, np.ascontiguousarray(dy), idx, kernel[0], kernel[1], stride[0], stride[1])
        return dx

    # ------------------------------------------------------- elementwise, dense
    def relu_forward(self, x):
        y = np.empty(x.shape, x.dtype)
        self.k.relu(y.reshape(-1), np.ascontiguousarray(x).reshape(-1))
        return y

    def relu_backward(self, dy, y):
        dx = np.empty(y.shape, y.dtype)
        self.k.relu_backward(dx.reshape(-1), np.ascontiguousarray(dy).reshape(-1), np.ascontiguousarray(y).reshape(-1))
        return dx

    def dense_forward(self, x, w, b):
        """x (N, F_in), w (F_out, F_in), b (F_out,) -> x @ w.T + b."""
        y = x @ w.T
        y += b
        return y

    def dense_backward(self, dy, x, w, need_dx=True):
        """Returns (dx or None, dw, db)."""
        dw = dy.T @ x
        db = np.empty(w.shape[0], dy.dtype)
        self.k.channel_sum(db, np.ascontiguousarray(dy))
        return (dy @ w if need_dx else None), dw, db

    def global_avg_pool_forward(self, x):
        """x (N, H, W, C) -> (N, C) mean over H and W."""
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c).mean(axis=1, dtype=np.float64).astype(x.dtype)

    def global_avg_pool_backward(self, dy, x_shape):
        n, h, w, c = x_shape
        dx = np.empty(x_shape, dy.dtype)
        dx[...] = (dy / (h * w))[:, None, None, :]
        return dx

    def dropout_mask(self, rng, shape, p, dtype):
        """Inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
        keep = rng.random(shape) >= p
        return (keep / (1.0 - p)).astype(dtype)

    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, training, keep=False):
        """x (..., C) normalised per channel. In training, batch statistics are used
        and the running ones updated in place (unbiased variance, as in PyTorch).
        In evaluation the running statistics make it an affine map; with ``keep``
        its context is returned so backward works there too (Grad-CAM)."""
        c = x.shape[-1]
        x2d = np.ascontiguousarray(x).reshape(-1, c)
        m = x2d.shape[0]
        if training:
            s = np.empty(c, np.float64)
            self.k.channel_sum(s, x2d)
            mean = s / m
            xc = x2d - mean.astype(x.dtype)
            sq = np.empty(c, np.float64)
            self.k.channel_sum(sq, xc * xc)
            var = sq / m
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * var * m / max(m - 1, 1)).astype(running_var.dtype)
            inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
            xhat = xc * inv_std
            y = xhat * gamma + beta
            return y.reshape(x.shape), ("train", xhat, inv_std, x.shape)
        inv_std = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
        scale = gamma * inv_std
        y = x2d * scale + (beta - running_mean * scale)
        ctx = ("eval", (x2d - running_mean) * inv_std, scale, x.shape) if keep else None
        return y.reshape(x.shape), ctx

    def batchnorm_backward(self, dy, ctx, gamma):
        """Returns (dx, dgamma, dbeta), for a training-mode or a kept evaluation-mode forward."""
        if ctx[0] == "eval":  # affine map: y = xhat * gamma + beta with fixed statistics
            _, xhat, scale, shape = ctx
            dy2d = np.ascontiguousarray(dy).reshape(-1, shape[-1])
            dgamma, dbeta = np.empty(shape[-1], np.float64), np.empty(shape[-1], np.float64)
            self.k.channel_sum(dbeta, dy2d)
            self.k.channel_sum(dgamma, dy2d * xhat)
            return (dy2d * scale).reshape(shape), dgamma.astype(dy2d.dtype), dbeta.astype(dy2d.dtype)
        _, xhat, inv_std, shape = ctx
        c = shape[-1]
        dy2d = np.ascontiguousarray(dy).reshape(-1, c)
        m = dy2d.shape[0]
        dbeta = np.empty(c, np.float64)
        self.k.channel_sum(dbeta, dy2d)
        dgamma = np.empty(c, np.float64)
        self.k.channel_sum(dgamma, dy2d * xhat)
        dt = dy2d.dtype
        dx = (gamma * inv_std) * (dy2d - (dbeta / m).astype(dt) - xhat * (dgamma / m).astype(dt))
        return dx.reshape(shape), dgamma.astype(dt), dbeta.astype(dt)

    # -------------------------------------------------------------------- losses
    def sigmoid_bce(self, logits, labels, class_weights=None, to_host=True):
        """Binary cross-entropy on one logit per image, numerically stable.

        ``logits`` (N, 1), ``labels`` (N,) in {0, 1}. Returns (loss, dlogits);
        the loss is the mean over the batch, or with ``class_weights`` (2,) the
        weighted mean ``sum(w_i * l_i) / sum(w_i)``. ``to_host`` matters only to
        GPU backends (False leaves the loss on the device); here it is a float.
        """
        z = logits.reshape(-1).astype(np.float64)
        y = np.asarray(labels).reshape(-1).astype(np.float64)
        per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        wts = np.ones_like(z) if class_weights is None else np.asarray(class_weights, np.float64)[y.astype(np.int64)]
        total = wts.sum()
        sig = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
        dz = wts * (sig - y) / total
        return float((wts * per).sum() / total), dz.reshape(logits.shape).astype(logits.dtype)

    def softmax_cross_entropy(self, logits, labels, class_weights=None, to_host=True):
        """Softmax cross-entropy on C logits, numerically stable (log-sum-exp).

        ``logits`` (N, C), ``labels`` (N,) integer classes. Returns (loss,
        dlogits); mean over the batch, or the weighted mean as in sigmoid_bce.
        """
        z = logits.astype(np.float64)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        per = lse - z[np.arange(len(y)), y]
        wts = np.ones(len(y)) if class_weights is None else np.asarray(class_weights, np.float64)[y]
        total = wts.sum()
        p = np.exp(z - lse[:, None])
        p[np.arange(len(y)), y] -= 1
        dz = p * (wts / total)[:, None]
        return float((wts * per).sum() / total), dz.astype(logits.dtype)

    # ---------------------------------------------------------------- optimisers
    def adam_update(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
        """In place: one Adam step (PyTorch's formula) on parameter p with state m, v."""
        self.k.adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2,
                           eps, weight_decay, 1 - beta1 ** step, math.sqrt(1 - beta2 ** step))

    def sgd_update(self, p, g, buf, step, lr, momentum, weight_decay, nesterov):
        """In place: one SGD step (PyTorch's momentum formula, dampening 0)."""
        self.k.sgd_update(p.reshape(-1), g.reshape(-1), buf.reshape(-1), lr, momentum, weight_decay,
                          nesterov, step == 1)


def get_backend(name: str = "cpu"):
    """The backend for device ``name`` ('cpu', 'gpu' or 'auto'; 'cuda' means
    'gpu'), created once per process. 'auto' picks the GPU where CuPy and a
    CUDA device are present, else the CPU."""
    from .devices import resolve_device

    return _make_backend(resolve_device(name))


@functools.lru_cache(maxsize=None)
def _make_backend(device: str):
    from .devices import INSTALL_HINT, gpu_unavailable_reason

    if device == "cpu":
        return CPUBackend()
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise BackendError(f"device 'gpu': {reason}. To use a GPU, {INSTALL_HINT}; "
                           "or run on the CPU with --device cpu.")
    from .gpu_backend import CUDABackend

    return CUDABackend()
