"""The CPU backend: NumPy arrays, the Numba kernels of :mod:`xraynet.kernels.cpu`
and the BLAS behind ``numpy.matmul``.

Convolutions are patch matrix (columns ordered like an NHWC pixel run) times
the weights as a (KH*KW*C, O) matrix, cut into row blocks that one core runs
start to end in its cache (:mod:`.cpu_conv`): pad, patches, GEMM, epilogue
(bias, bias + ReLU, or bias + max pool + ReLU). 3x3 stride-1 convolutions run
forward and their input gradient by Winograd F(2x2, 3x3) (:mod:`.cpu_winograd`);
a one-channel input at stride 1 (the first layer) by a direct kernel
(``kernels.cpu.conv1_plane``). See :mod:`xraynet.backends.contract` for what
every op takes and returns.
"""
from __future__ import annotations

import math

import numpy as np

from ._shared import check_update_group, dropout_mask, gradcam_maps, nchw_to_nhwc, nhwc_to_nchw, wall_clock_steps
from .contract import AdamHyper, Backend, BatchNormStats, SGDHyper
from .cpu_conv import ConvEngine
from .cpu_winograd import winograd4_weights, winograd_eligible, winograd_weights
from .derived import DerivedWeights
from .geometry import output_hw
from .host import cpu_model_name, keep_freed_memory


def _single_threaded_blas() -> None:
    """Hold NumPy's BLAS at one thread in this process: the backend's worker
    threads call it concurrently, each on its own block, and BLAS threads of
    its own would spin on the cores the workers need."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _rows_of(g, plan):
    """``grad_rows`` for ConvEngine.backward over a whole output gradient g (N, OH, OW, O)."""
    g2d = g.reshape(-1, plan.o)

    def grad_rows(scratch, b0, nb, oy0, r):
        start = (b0 * plan.oh + oy0) * plan.ow
        return g2d[start:start + nb * r * plan.ow]

    return grad_rows


class CPUBackend(Backend):
    """NumPy arrays, Numba kernels and the BLAS behind ``numpy.matmul``."""

    name = "cpu"

    def __init__(self, direct_first_conv: bool | None = None):
        """``direct_first_conv``: see the contract (default: on unless the
        environment sets XRAYNET_CPU_DIRECT_CONV=0)."""
        import os

        import numba

        from xraynet.kernels import cpu  # imported here: loading Numba costs ~0.3 s

        self._k = cpu
        self._conv = ConvEngine(cpu, numba.get_num_threads())
        _single_threaded_blas()
        if direct_first_conv is None:
            direct_first_conv = os.environ.get("XRAYNET_CPU_DIRECT_CONV", "1") != "0"
        self.direct_first_conv = bool(direct_first_conv)
        #: 3x3 stride-1 convolutions forward by Winograd F(2x2, 3x3) (cpu_conv.forward_winograd);
        #: XRAYNET_CPU_WINOGRAD=0 runs them as patch matrix x GEMM
        self.winograd = os.environ.get("XRAYNET_CPU_WINOGRAD", "1") != "0"
        #: ... and in evaluation (save=False) by Winograd F(4x4, 3x3) (cpu_conv.forward_winograd4);
        #: XRAYNET_CPU_WINOGRAD4=0 keeps F(2x2, 3x3) there too
        self.winograd4 = self.winograd and os.environ.get("XRAYNET_CPU_WINOGRAD4", "1") != "0"
        #: evaluation's Winograd filters, kept while the weights are unchanged (see _filters)
        self._derived = DerivedWeights()
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
    def set_threads(self, threads: int) -> int:
        """Use ``threads`` threads: Numba's, and the backend's own workers, each
        of which calls BLAS single-threaded (see :mod:`.cpu_conv`). Returns the
        number before."""
        import numba

        before = self._conv.threads
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._conv.set_threads(threads)
        _single_threaded_blas()
        return before

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
    @staticmethod
    def _wmat(w):
        """(O, C, KH, KW) -> (KH*KW*C, O), the GEMM operand matching the (ky, kx, c) patch order."""
        o, c, kh, kw = w.shape
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw * c, o)

    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True):
        """With ``relu`` the ReLU is fused into the bias pass (the output is then
        the ReLU output, which backward masks with)."""
        x = np.ascontiguousarray(x)
        plan = self._conv.plan(x, w, stride, pad)
        if self._direct(x, stride):
            y = np.empty((plan.n, plan.oh, plan.ow, plan.o), x.dtype)
            self._k.conv1_plane(y, x, w, b, pad[0], pad[1], relu)
        elif self._winograd(w, stride) and not save and self.winograd4:
            wplan = self._conv.plan(x, w, stride, pad, winograd=4)
            y = self._conv.forward_winograd4(x, self._filters(w, 4, save), b, wplan, relu, pool=False)
        elif self._winograd(w, stride):
            wplan = self._conv.plan(x, w, stride, pad, winograd=2)
            y = self._conv.forward_winograd(x, self._filters(w, 2, save), b, wplan, relu, pool=False)
        else:
            y = self._conv.forward(x, self._wmat(w), b, plan, relu)
        return y, ((x, plan, y if relu else None) if save else None)

    def _filters(self, w, tile: int, save: bool):
        """Winograd U of the 3x3 filters w for F(``tile`` x ``tile``, 3x3). In a forward that
        keeps nothing for a backward pass (not ``save``: evaluation) kept across batches
        while w's content is unchanged (:class:`.derived.DerivedWeights`); in one that
        saves (training, where w changes every step, and Grad-CAM), derived every call."""
        transform = winograd4_weights if tile == 4 else winograd_weights
        return transform(w) if save else self._derived.get(w, f"winograd{tile}", transform)

    def _winograd(self, w, stride) -> bool:
        return self.winograd and winograd_eligible(w.shape, stride)

    def _direct(self, x, stride) -> bool:
        """A one-channel input at stride 1 runs the direct kernels (kernels.cpu.conv1_plane):
        its patch matrix would be KH*KW times the image for a GEMM with K = KH*KW."""
        return self.direct_first_conv and x.shape[3] == 1 and tuple(stride) == (1, 1)

    def conv2d_backward(self, dy, ctx, w, need_dx=True):
        x, plan, y_relu = ctx
        g = np.ascontiguousarray(dy) if y_relu is None else self.relu_backward(dy, y_relu)
        db = self._channel_sum(g.reshape(-1, plan.o)).astype(x.dtype)
        return self._conv_grads(_rows_of(g, plan), x, w, plan, need_dx, db)

    def _conv_grads(self, grad_rows, x, w, plan, need_dx, db):
        """(dx, dw, db) from ``grad_rows`` (see ConvEngine.backward) and the bias gradient."""
        o, c, kh, kw = w.shape
        if need_dx and self._winograd(w, (plan.sh, plan.sw)):
            dx, dwmat = self._conv.backward_winograd(grad_rows, x, self._wmat(w), winograd_weights(w), plan, need_dx)
        else:
            dx, dwmat = self._conv.backward(grad_rows, x, self._wmat(w), plan, need_dx)
        return dx, np.ascontiguousarray(dwmat.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)), db

    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride, save=True):
        """A pool whose windows tile the map (stride == kernel, the usual 2x2/2)
        is the epilogue of each block, so the pre-activation never exists whole
        and the rows it drops are never computed. Overlapping windows pool the
        whole conv output (see kernels.cpu.bias_maxpool_relu for why the fused
        result is exact)."""
        x = np.ascontiguousarray(x)
        (pkh, pkw), (psh, psw) = pool_kernel, pool_stride
        wmat = self._wmat(w)
        if self._direct(x, stride):
            plan = self._conv.plan(x, w, stride, pad, pool_rows=pkh if (pkh, pkw) == (psh, psw) else 0)
            ph, pw = output_hw(plan.oh, plan.ow, pool_kernel, pool_stride)
            pooled = np.empty((x.shape[0], ph, pw, plan.o), x.dtype)
            idx = np.empty(pooled.shape, np.uint8)
            self._k.conv1_plane_pool(pooled, idx, x, w, b, pad[0], pad[1], pkh, pkw, psh, psw)
        elif (pkh, pkw, psh, psw) == (2, 2, 2, 2) and self._winograd(w, stride) and not save and self.winograd4:
            plan = self._conv.plan(x, w, stride, pad, pool_rows=2, winograd=4)
            pooled, idx = self._conv.forward_winograd4(x, self._filters(w, 4, save), b, plan, True, pool=True)
        elif (pkh, pkw, psh, psw) == (2, 2, 2, 2) and self._winograd(w, stride):
            plan = self._conv.plan(x, w, stride, pad, pool_rows=2, winograd=2)
            pooled, idx = self._conv.forward_winograd(x, self._filters(w, 2, save), b, plan, True, pool=True)
        elif (pkh, pkw) == (psh, psw):
            plan = self._conv.plan(x, w, stride, pad, pool_rows=pkh)
            pooled, idx = self._conv.forward_pool(x, wmat, b, plan, pkh, pkw)
        else:
            plan = self._conv.plan(x, w, stride, pad)
            pre = self._conv.forward(x, wmat, np.zeros_like(b), plan, relu=False)
            ph, pw = output_hw(plan.oh, plan.ow, pool_kernel, pool_stride)
            pooled = np.empty((x.shape[0], ph, pw, plan.o), x.dtype)
            idx = np.empty(pooled.shape, np.uint8)
            self._k.bias_maxpool_relu(pooled, idx, pre, b, pkh, pkw, psh, psw)
        return pooled, ((x, plan, pooled, idx, pool_kernel, pool_stride) if save else None)

    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True):
        x, plan, pooled, idx, (pkh, pkw), (psh, psw) = ctx
        dy = np.ascontiguousarray(dy)
        o = plan.o
        # The bias gradient from the pooled map: a quarter of the elements.
        db = np.empty(o, np.float64)
        self._k.channel_sum(db, dy.reshape(-1, o), pooled.reshape(-1, o))
        if (pkh, pkw) != (psh, psw):
            g = np.empty((x.shape[0], plan.oh, plan.ow, o), x.dtype)
            self._k.maxpool_relu_backward(g, dy, pooled, idx, pkh, pkw, psh, psw)
            return self._conv_grads(_rows_of(g, plan), x, w, plan, need_dx, db.astype(x.dtype))

        def grad_rows(scratch, b0, nb, oy0, r):
            g = scratch.view("g", (nb, r, plan.ow, o))
            imgs = slice(b0, b0 + nb)
            self._k.maxpool_relu_backward_tiled(g, dy[imgs], pooled[imgs], idx[imgs], pkh, pkw, oy0)
            return g.reshape(-1, o)

        return self._conv_grads(grad_rows, x, w, plan, need_dx, db.astype(x.dtype))

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

    #: output columns (or rows) per worker below which a dense GEMM is not split
    DENSE_MIN_PART = 64

    def dense_forward(self, x, w, b):
        """The output columns are split over the worker threads (each reads its
        part of w, the larger operand)."""
        y = np.empty((x.shape[0], w.shape[0]), np.result_type(x, w))

        def part(a, e):
            np.matmul(x, w[a:e].T, out=y[:, a:e])
            y[:, a:e] += b[a:e]

        self._conv.split(part, w.shape[0], self.DENSE_MIN_PART)
        return y

    def dense_backward(self, dy, x, w, need_dx=True):
        """dw by rows and dx by columns, each split over the worker threads."""
        dy = np.ascontiguousarray(dy)
        dw = np.empty(w.shape, np.result_type(dy, x))
        self._conv.split(lambda a, e: np.matmul(dy[:, a:e].T, x, out=dw[a:e]), w.shape[0], self.DENSE_MIN_PART)
        db = np.empty(w.shape[0], dy.dtype)
        self._k.channel_sum(db, dy)
        if not need_dx:
            return None, dw, db
        dx = np.empty((dy.shape[0], w.shape[1]), dw.dtype)
        self._conv.split(lambda a, e: np.matmul(dy, w[:, a:e], out=dx[:, a:e]), w.shape[1], self.DENSE_MIN_PART)
        return dx, dw, db

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
