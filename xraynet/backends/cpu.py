"""The CPU backend: NumPy arrays, the Numba kernels of :mod:`xraynet.kernels.cpu`
and the BLAS behind ``numpy.matmul``.

Convolutions are patch matrix (``im2col_yxc``, columns ordered like an NHWC
pixel run) times the weights as a (KH*KW*C, O) matrix, run over the batch in
chunks that stay in cache; the epilogue (bias, bias + ReLU, or bias + max
pool + ReLU) is one Numba pass. See :mod:`xraynet.backends.contract` for what
every op takes and returns.
"""
from __future__ import annotations

import math

import numpy as np

from ._shared import check_update_group, dropout_mask, gradcam_maps, nchw_to_nhwc, nhwc_to_nchw, wall_clock_steps
from .contract import AdamHyper, Backend, BatchNormStats, SGDHyper
from .geometry import conv_output_shape, output_hw
from .host import cpu_model_name, keep_freed_memory


class CPUBackend(Backend):
    """NumPy arrays, Numba kernels and the BLAS behind ``numpy.matmul``."""

    name = "cpu"
    #: the CPU has one convolution path for every channel count
    direct_first_conv = None

    #: Convolutions run over the batch in chunks of about this many bytes of
    #: patch matrix / pre-activation, so those stay in cache between im2col,
    #: GEMM and epilogue instead of streaming hundreds of MB through memory
    #: (the `wide` conv2 patch matrix is 231 MB at batch 32). Backward rebuilds
    #: each chunk's patch matrix rather than keeping the whole one.
    CHUNK_BYTES = 4 << 20
    BACKWARD_CHUNK_BYTES = 4 << 20

    def __init__(self):
        from xraynet.kernels import cpu  # imported here: loading Numba costs ~0.3 s

        self._k = cpu
        keep_freed_memory()

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

    def nchw_to_internal(self, x):
        return nchw_to_nhwc(np, x)

    def internal_to_nchw(self, x):
        return nhwc_to_nchw(np, x)

    # ----------------------------------------------------------------- execution
    def set_threads(self, threads: int) -> None:
        """Use ``threads`` threads in Numba kernels and in BLAS."""
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(limits=threads, user_api="blas")

    def synchronize(self) -> None:
        """Nothing to wait for: every op has finished when it returns."""

    def time_steps(self, step, n: int) -> list[float]:
        """Wall clock per call (nothing is left queued when a step returns)."""
        return wall_clock_steps(step, n)

    def profile_kernels(self, enabled: bool = True):
        """None: the CPU launches no device kernels, so there is nothing to profile
        (bench --profile times its stages instead)."""
        return None

    def device_name(self) -> str:
        return cpu_model_name()

    # -------------------------------------------------------------- convolution
    def _chunks(self, x_shape, w_shape, stride, pad, chunk_bytes=None):
        """(OH, OW, [(first, end) image ranges]) of a convolution run in chunks."""
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
            self._k.im2col_t1(cols_t, x.reshape(n, h, wd), kh, kw, stride[0], stride[1], pad[0], pad[1])
            return cols_t.T
        cols = np.empty((n * oh * ow, kh * kw * c), x.dtype)
        self._k.im2col_yxc(cols, x, kh, kw, stride[0], stride[1], pad[0], pad[1])
        return cols

    @staticmethod
    def _wmat(w):
        """(O, C, KH, KW) -> (KH*KW*C, O), the GEMM operand matching the (ky, kx, c) patch order."""
        o, c, kh, kw = w.shape
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw * c, o)

    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True):
        """With ``relu`` the ReLU is fused into the bias pass (the output is then
        the ReLU output, which backward masks with)."""
        o, _, kh, kw = w.shape
        oh, ow, chunks = self._chunks(x.shape, w.shape, stride, pad)
        wmat = self._wmat(w)
        y = np.empty((x.shape[0], oh, ow, o), x.dtype)
        for s, e in chunks:
            y2d = y[s:e].reshape(-1, o)
            np.matmul(self._patches(x[s:e], kh, kw, stride, pad, oh, ow), wmat, out=y2d)
            (self._k.bias_relu if relu else self._k.add_bias)(y2d, b)
        return y, ((x, stride, pad, y if relu else None) if save else None)

    def conv2d_backward(self, dy, ctx, w, need_dx=True):
        x, stride, pad, y_relu = ctx
        dy = np.ascontiguousarray(dy)

        def chunk_grad(s, e, buf):
            if y_relu is None:
                return dy[s:e].reshape(-1, dy.shape[3])
            self._k.relu_backward(buf.reshape(-1), dy[s:e].reshape(-1), y_relu[s:e].reshape(-1))
            return buf.reshape(-1, dy.shape[3])

        return self._conv_grads(chunk_grad, x, w, stride, pad, need_dx)

    def _conv_grads(self, chunk_grad, x, w, stride, pad, need_dx, db=None):
        """Accumulate conv gradients chunk by chunk. ``chunk_grad(s, e, buf)`` gives
        the output gradient (M, O) of images s:e, using ``buf`` as scratch. The
        bias gradient is summed here unless the caller passes it as ``db``."""
        o, c, kh, kw = w.shape
        oh, ow, chunks = self._chunks(x.shape, w.shape, stride, pad, self.BACKWARD_CHUNK_BYTES)
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
                self._k.channel_sum(part, g)
                db64 += part
            if need_dx:
                dcols = g @ wmat.T
                if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
                    dx[s:e] = dcols.reshape(dx[s:e].shape)
                else:
                    self._k.col2im_yxc(dx[s:e], dcols, kh, kw, stride[0], stride[1], pad[0], pad[1])
        dw = np.ascontiguousarray(dwmat.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
        return dx, dw, (db64.astype(x.dtype) if db is None else db)

    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride, save=True):
        """The pre-activation exists only one cache-sized chunk at a time (see
        kernels.cpu.bias_maxpool_relu for why the fused result is exact)."""
        n = x.shape[0]
        o, _, kh, kw = w.shape
        oh, ow, chunks = self._chunks(x.shape, w.shape, stride, pad)
        (pkh, pkw), (psh, psw) = pool_kernel, pool_stride
        ph, pw = output_hw(oh, ow, pool_kernel, pool_stride)
        wmat = self._wmat(w)
        pooled = np.empty((n, ph, pw, o), x.dtype)
        idx = np.empty((n, ph, pw, o), np.uint8)
        step = chunks[0][1] - chunks[0][0]
        buf = np.empty((step * oh * ow, o), x.dtype)
        for s, e in chunks:
            y2d = buf[: (e - s) * oh * ow]
            np.matmul(self._patches(x[s:e], kh, kw, stride, pad, oh, ow), wmat, out=y2d)
            self._k.bias_maxpool_relu(pooled[s:e], idx[s:e], y2d.reshape(e - s, oh, ow, o), b, pkh, pkw, psh, psw)
        ctx = (x, stride, pad, pooled, idx, (oh, ow), pool_kernel, pool_stride) if save else None
        return pooled, ctx

    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True):
        x, stride, pad, pooled, idx, (oh, ow), (pkh, pkw), (psh, psw) = ctx
        dy = np.ascontiguousarray(dy)
        o = w.shape[0]

        def chunk_grad(s, e, buf):
            self._k.maxpool_relu_backward(buf, dy[s:e], pooled[s:e], idx[s:e], pkh, pkw, psh, psw)
            return buf.reshape(-1, o)

        # The bias gradient from the pooled map: a quarter of the elements.
        db = np.empty(o, np.float64)
        self._k.channel_sum(db, dy.reshape(-1, o), pooled.reshape(-1, o))
        return self._conv_grads(chunk_grad, x, w, stride, pad, need_dx, db.astype(x.dtype))

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, kernel, stride):
        n, h, w, c = x.shape
        oh, ow = output_hw(h, w, kernel, stride)
        y = np.empty((n, oh, ow, c), x.dtype)
        idx = np.empty((n, oh, ow, c), np.uint8)
        self._k.maxpool2d_forward(y, idx, np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1])
        return y, idx

    def maxpool2d_backward(self, dy, idx, x_shape, kernel, stride):
        dx = np.empty(x_shape, dy.dtype)
        self._k.maxpool2d_backward(dx, np.ascontiguousarray(dy), idx, kernel[0], kernel[1], stride[0], stride[1])
        return dx

    # ------------------------------------------------------- elementwise, dense
    def relu_forward(self, x):
        y = np.empty(x.shape, x.dtype)
        self._k.relu_forward(y.reshape(-1), np.ascontiguousarray(x).reshape(-1))
        return y

    def relu_backward(self, dy, y):
        dx = np.empty(y.shape, y.dtype)
        self._k.relu_backward(dx.reshape(-1), np.ascontiguousarray(dy).reshape(-1),
                              np.ascontiguousarray(y).reshape(-1))
        return dx

    def dense_forward(self, x, w, b):
        y = x @ w.T
        y += b
        return y

    def dense_backward(self, dy, x, w, need_dx=True):
        dw = dy.T @ x
        db = np.empty(w.shape[0], dy.dtype)
        self._k.channel_sum(db, np.ascontiguousarray(dy))
        return (dy @ w if need_dx else None), dw, db

    def global_avg_pool_forward(self, x):
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c).mean(axis=1, dtype=np.float64).astype(x.dtype)

    def global_avg_pool_backward(self, dy, x_shape):
        n, h, w, c = x_shape
        dx = np.empty(x_shape, dy.dtype)
        dx[...] = (dy / (h * w))[:, None, None, :]
        return dx

    def dropout_mask(self, rng, shape, p, dtype):
        return dropout_mask(rng, shape, p, dtype)

    def gradcam_maps(self, acts, dacts):
        return gradcam_maps(np, acts, dacts)

    # --------------------------------------------------------------- batch norm
    def _channel_sum(self, x2d):
        out = np.empty(x2d.shape[1], np.float64)
        self._k.channel_sum(out, x2d)
        return out

    def batchnorm_forward(self, x, gamma, beta, stats: BatchNormStats, training, keep=False):
        c = x.shape[-1]
        x2d = np.ascontiguousarray(x).reshape(-1, c)
        m = x2d.shape[0]
        if training:
            mean = self._channel_sum(x2d) / m
            xc = x2d - mean.astype(x.dtype)
            var = self._channel_sum(xc * xc) / m
            running_mean, running_var, momentum = stats.running_mean, stats.running_var, stats.momentum
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * var * m / max(m - 1, 1)).astype(running_var.dtype)
            inv_std = (1.0 / np.sqrt(var + stats.eps)).astype(x.dtype)
            xhat = xc * inv_std
            y = xhat * gamma + beta
            return y.reshape(x.shape), ("train", xhat, inv_std, x.shape)
        inv_std = (1.0 / np.sqrt(stats.running_var.astype(np.float64) + stats.eps)).astype(x.dtype)
        scale = gamma * inv_std
        y = x2d * scale + (beta - stats.running_mean * scale)
        ctx = ("eval", (x2d - stats.running_mean) * inv_std, scale, x.shape) if keep else None
        return y.reshape(x.shape), ctx

    def batchnorm_backward(self, dy, ctx, gamma):
        mode, xhat, inv_std, shape = ctx  # in evaluation mode inv_std holds gamma * inv_std
        dy2d = np.ascontiguousarray(dy).reshape(-1, shape[-1])
        dt = dy2d.dtype
        dbeta = self._channel_sum(dy2d)
        dgamma = self._channel_sum(dy2d * xhat)
        if mode == "eval":  # an affine map: y = xhat * gamma + beta with fixed statistics
            return (dy2d * inv_std).reshape(shape), dgamma.astype(dt), dbeta.astype(dt)
        m = dy2d.shape[0]
        dx = (gamma * inv_std) * (dy2d - (dbeta / m).astype(dt) - xhat * (dgamma / m).astype(dt))
        return dx.reshape(shape), dgamma.astype(dt), dbeta.astype(dt)

    # -------------------------------------------------------------------- losses
    def sigmoid_bce(self, logits, labels, class_weights=None, to_host=True):
        """``to_host`` matters only to GPU backends: here the loss is always a float."""
        z = logits.reshape(-1).astype(np.float64)
        y = np.asarray(labels).reshape(-1).astype(np.float64)
        per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        wts = np.ones_like(z) if class_weights is None else np.asarray(class_weights, np.float64)[y.astype(np.int64)]
        total = wts.sum()
        sig = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
        dz = wts * (sig - y) / total
        return float((wts * per).sum() / total), dz.reshape(logits.shape).astype(logits.dtype)

    def softmax_cross_entropy(self, logits, labels, class_weights=None, to_host=True):
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
    def adam_update(self, p, m, v, g, step, hyper: AdamHyper):
        h = hyper
        self._k.adam_update(p.reshape(-1), m.reshape(-1), v.reshape(-1), g.reshape(-1), h.lr, h.beta1, h.beta2,
                            h.eps, h.weight_decay, 1 - h.beta1 ** step, math.sqrt(1 - h.beta2 ** step))

    def adam_update_many(self, ps, ms, vs, gs, step, hyper: AdamHyper):
        """One ``adam_update`` per parameter (each is one parallel pass already)."""
        gs = [np.ascontiguousarray(g) for g in gs]
        check_update_group(ps, ms, vs, gs)
        for p, m, v, g in zip(ps, ms, vs, gs):
            self.adam_update(p, m, v, g, step, hyper)

    def sgd_update(self, p, buf, g, step, hyper: SGDHyper):
        h = hyper
        self._k.sgd_update(p.reshape(-1), buf.reshape(-1), g.reshape(-1), h.lr, h.momentum, h.weight_decay,
                           h.nesterov, step == 1)

    def sgd_update_many(self, ps, bufs, gs, step, hyper: SGDHyper):
        """One ``sgd_update`` per parameter."""
        gs = [np.ascontiguousarray(g) for g in gs]
        check_update_group(ps, bufs, gs)
        for p, buf, g in zip(ps, bufs, gs):
            self.sgd_update(p, buf, g, step, hyper)
