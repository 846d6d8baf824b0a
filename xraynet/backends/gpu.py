"""The GPU backend: CuPy arrays, xraynet's CUDA C kernels and cuBLAS.

The ops and their contexts are those of :mod:`xraynet.backends.contract`, so
layers, model, training and screening run unchanged. Arrays stay on the
device from the input batch to the loss; the host sees the batch going in,
the loss value and whatever the caller asks for with ``to_numpy``.

How each op runs:

* convolution: ``im2col_cyx`` kernel (patch columns ordered like the weights,
  so the weights enter every GEMM as they are) -> cuBLAS GEMM (``matmul``) ->
  one epilogue kernel (bias, bias + ReLU, or bias + ReLU + max pool with
  argmax). Training keeps the patch matrix for the weight gradient (GPU
  memory is plentiful; rebuilding it costs a launch and a pass over it).
  Backward: the pool/ReLU gradient kernel, two GEMMs, and ``col2im_cyx`` as a
  gather. A one-channel input (the first layer) runs direct kernels instead.
* per-channel sums (bias, batch norm): a two-pass reduction in double with a
  fixed split, deterministic;
* losses: one single-block kernel each, loss and gradient together;
* Adam and SGD: one launch over every parameter (address tables).

No kernel uses float atomics, so training is bit-reproducible run to run.

The class takes its array module and kernel compiler as arguments: on a GPU
they are CuPy and ``cupy.RawModule``; the tests pass NumPy and a CPU emulator
of the same CUDA source (tests/cudaemu), which runs this code, kernels
included, on machines without a GPU.

The module is over 400 lines because it is one class implementing the
whole contract (about thirty ops): each op is a few launches, and splitting the
class by op family would scatter the launch helpers every op shares.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._shared import check_update_group, dropout_mask, gradcam_maps, nchw_to_nhwc, nhwc_to_nchw, wall_clock_steps
from .contract import AdamHyper, Backend, BatchNormStats, SGDHyper
from .cuda_runtime import CudaEvent, DeviceRNG, cupy_compile, cupy_module, time_with_events
from .cudakernels import KernelSet, Profiler
from .geometry import conv_output_shape, output_hw

_THREADS = 256


def _slabs(m: int, min_rows: int) -> tuple[int, int]:
    """(slabs, rows per slab) splitting m rows for a two-pass reduction: slabs of
    at least ``min_rows`` rows, at most 1024 of them. Depends on m only, so
    the summation order (and the result) never changes run to run."""
    parts = max(1, min(1024, -(-m // min_rows)))
    rows = max(1, -(-m // parts))
    return max(1, -(-m // rows)), rows


class CUDABackend(Backend):
    """CuPy arrays and the CUDA C kernels in kernels/cuda (see the module docs).

    ``xp``, ``compile_fn``: the array module and the kernel compiler (default
    CuPy and ``cupy.RawModule``); ``checked``: check every launch's array
    arguments (the tests); ``max_blocks``: cap of a launch's grid;
    ``direct_first_conv``: see the contract (default: on unless the
    environment sets XRAYNET_GPU_DIRECT_CONV=0, to race the two ways)."""

    name = "gpu"

    def __init__(self, xp=None, compile_fn=None, checked: bool = False, max_blocks: int = 1 << 16,
                 direct_first_conv: bool | None = None):
        if direct_first_conv is None:
            direct_first_conv = os.environ.get("XRAYNET_GPU_DIRECT_CONV", "1") != "0"
        self.direct_first_conv = bool(direct_first_conv)
        self._host_threads = 1  # recorded for set_threads; the GPU's ops run no host threads
        if xp is None:
            xp = cupy_module()
            compile_fn = compile_fn or cupy_compile
        self._xp = xp
        self._on_gpu = xp is not np
        self._compile = compile_fn
        self._checked, self._max_blocks = checked, max_blocks
        self._kernels: dict = {}
        self._tables: dict = {}
        self._no_weights = None
        self._profiler: Profiler | None = None

    # ------------------------------------------------------------------ plumbing
    def _k(self, dtype) -> KernelSet:
        """The kernels of one precision, compiled on first use."""
        dt = np.dtype(dtype)
        ks = self._kernels.get(dt)
        if ks is None:
            ks = self._kernels[dt] = KernelSet(dt, self._compile, self._checked, self._max_blocks, self._profiler)
        return ks

    def _gemm(self, a, b, out=None):
        if self._profiler is None:
            return self._xp.matmul(a, b, out=out)
        with self._profiler.timing("gemm (cuBLAS)"):
            return self._xp.matmul(a, b, out=out)

    def _c(self, x):
        return self._xp.ascontiguousarray(x)

    def _ptr(self, a) -> int:
        """Device address of an array (host address under the emulator)."""
        return a.data.ptr if self._on_gpu else a.ctypes.data

    def asarray(self, x, dtype=None):
        if isinstance(x, np.ndarray) or not hasattr(x, "__cuda_array_interface__"):
            x = np.ascontiguousarray(x, dtype=dtype)
            return self._xp.asarray(x)
        return self._xp.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return x.get() if self._on_gpu and hasattr(x, "get") else np.asarray(x)

    def zeros(self, shape, dtype=np.float32):
        return self._xp.zeros(shape, dtype)

    def empty(self, shape, dtype=np.float32):
        return self._xp.empty(shape, dtype)

    def rng(self, seed):
        return DeviceRNG(self._xp, seed) if self._on_gpu else np.random.default_rng(seed)

    def random_normal(self, rng, shape, std, dtype):
        return self.asarray((rng.standard_normal(shape) * std).astype(dtype))

    def nchw_to_internal(self, x):
        return nchw_to_nhwc(self._xp, x)

    def internal_to_nchw(self, x):
        return nhwc_to_nchw(self._xp, x)

    # ----------------------------------------------------------------- execution
    def set_threads(self, threads: int) -> int:
        """Nothing to set: host threads only matter to the CPU backend. The number
        is kept, and the one before returned, as the contract asks."""
        before, self._host_threads = self._host_threads, int(threads)
        return before

    def synchronize(self) -> None:
        """Waits for the current CUDA stream; under the emulator every launch has
        finished when it returns."""
        if self._on_gpu:
            self._xp.cuda.get_current_stream().synchronize()

    def time_steps(self, step, n: int) -> list[float]:
        """CUDA events between steps (see cuda_runtime.time_with_events); under
        the emulator, wall clock per step."""
        if not self._on_gpu:
            return wall_clock_steps(step, n)
        return time_with_events(step, n, self.synchronize)

    def profile_kernels(self, enabled: bool = True) -> Profiler | None:
        if enabled:
            self._profiler = Profiler(CudaEvent if self._on_gpu else None, self.synchronize)
        else:
            self._profiler = None
        self._kernels.clear()  # kernels capture the profiler when built
        return self._profiler

    def device_name(self) -> str:
        if not self._on_gpu:
            return "CUDA kernels emulated on the CPU"
        from ..devices import device_info

        return device_info().get("device_name", "gpu")

    # -------------------------------------------------------------- reductions
    def _channel_reduce(self, x2d, mode=0, y=None, mean=None, real_out=False):
        """Per-channel sums of (M, C) in double (see kernels/cuda/reduce.cu)."""
        m, c = x2d.shape
        k = self._k(x2d.dtype)
        parts, rows = _slabs(m, 512)  # up to 512 rows: one slab, one launch
        partial = self._xp.empty((parts, c), np.float64)
        direct = parts == 1 and real_out
        out = self._xp.empty(c, x2d.dtype) if direct else x2d
        k.channel_reduce_partial((-(-c // 32), parts), (32, 8), partial, out, x2d, x2d if y is None else y,
                                 partial if mean is None else mean, mode, m, c, rows, int(direct))
        if direct:
            return out
        if parts == 1:
            return partial.reshape(c)
        if real_out:
            out = self._xp.empty(c, x2d.dtype)
            k.channel_reduce_final_real.launch(c, out, partial, parts, c)
        else:
            out = self._xp.empty(c, np.float64)
            k.channel_reduce_final.launch(c, out, partial, parts, c)
        return out

    # -------------------------------------------------------------- convolution
    @staticmethod
    def _wmat(w):
        """(O, C, KH, KW) as the (O, C*KH*KW) matrix the (c, ky, kx) patch order matches: a view."""
        return w.reshape(w.shape[0], -1)

    def _patches(self, x, kh, kw, stride, pad, oh, ow):
        n, h, wd, c = x.shape
        if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
            return x.reshape(n * h * wd, c)
        cols = self._xp.empty((n * oh * ow, kh * kw * c), x.dtype)
        self._k(x.dtype).im2col_cyx.launch(cols.size, cols, x, h, wd, c, kh, kw, stride[0], stride[1], pad[0],
                                           pad[1], oh, ow, cols.size)
        return cols

    def _direct(self, x) -> bool:
        return self.direct_first_conv and x.shape[3] == 1

    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True):
        """A one-channel input runs the direct kernel (no patch matrix; the
        context then holds none and backward uses conv1_dw_partial)."""
        x = self._c(x)
        n, h, wd, _ = x.shape
        o, _, kh, kw = w.shape
        oh, ow = conv_output_shape(x.shape, w.shape, stride, pad)
        y = self._xp.empty((n, oh, ow, o), x.dtype)
        if self._direct(x):
            cols = None
            self._k(x.dtype).conv1_direct.launch(y.size, y, x, w, b, h, wd, o, kh, kw, stride[0], stride[1],
                                                 pad[0], pad[1], oh, ow, int(relu), y.size)
        else:
            cols = self._patches(x, kh, kw, stride, pad, oh, ow)
            y2d = y.reshape(-1, o)
            self._gemm(cols, self._wmat(w).T, out=y2d)
            self._k(x.dtype).bias_act.launch(y2d.size, y2d, b, o, int(relu), y2d.size)
        return y, ((x, cols, stride, pad, y if relu else None) if save else None)

    def conv2d_backward(self, dy, ctx, w, need_dx=True):
        x, cols, stride, pad, y_relu = ctx
        dy = self._c(dy)
        o = w.shape[0]
        if y_relu is None:
            g = dy.reshape(-1, o)
        else:
            g = self._xp.empty(dy.shape, dy.dtype).reshape(-1, o)
            self._k(dy.dtype).relu_backward.launch(g.size, g, dy, y_relu, g.size)
        db = self._channel_reduce(g, real_out=True)
        return self._conv_grads(g, x, cols, w, (stride, pad), need_dx, db)

    def _conv_grads(self, g, x, cols, w, conv, need_dx, db):
        """dw and dx from the output gradient g (M, O) and the saved patch matrix
        (None after a direct one-channel forward: dw then comes from the image);
        ``conv`` is the (stride, pad) of the forward."""
        stride, pad = conv
        o, c, kh, kw = w.shape
        dw = self._conv1_dw(g, x, w, stride, pad) if cols is None else self._gemm(g.T, cols).reshape(w.shape)
        dx = None
        if need_dx:
            dcols = self._gemm(g, self._wmat(w))
            n, h, wd, _ = x.shape
            if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
                dx = dcols.reshape(x.shape)
            else:
                oh, ow = conv_output_shape(x.shape, w.shape, stride, pad)
                dx = self._xp.empty(x.shape, x.dtype)
                self._k(x.dtype).col2im_cyx.launch(dx.size, dx, dcols, h, wd, c, kh, kw, stride[0], stride[1],
                                                   pad[0], pad[1], oh, ow, dx.size)
        return dx, dw, db

    def _conv1_dw(self, g, x, w, stride, pad):
        """dw of a one-channel conv from the output gradient g (M, O) and the image."""
        o, _, kh, kw = w.shape
        n, h, wd, _ = x.shape
        oh, ow = conv_output_shape(x.shape, w.shape, stride, pad)
        m, pairs = g.shape[0], o * kh * kw
        parts, rows = _slabs(m, 2048)
        k = self._k(x.dtype)
        partial = self._xp.empty((parts, pairs), np.float64)
        k.conv1_dw_partial((parts,), (_THREADS,), partial, g, x, h, wd, o, kh, kw, stride[0], stride[1], pad[0],
                           pad[1], oh, ow, m, rows)
        dw = self._xp.empty(w.shape, x.dtype)
        k.channel_reduce_final_real.launch(pairs, dw, partial, parts, pairs)
        return dw

    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride, save=True):
        """A one-channel input never materialises the pre-activation: one direct
        kernel convolves, adds the bias, pools and applies the ReLU."""
        x = self._c(x)
        n, h, wd, _ = x.shape
        o, _, kh, kw = w.shape
        oh, ow = conv_output_shape(x.shape, w.shape, stride, pad)
        (pkh, pkw), (psh, psw) = pool_kernel, pool_stride
        ph, pw = output_hw(oh, ow, pool_kernel, pool_stride)
        pooled = self._xp.empty((n, ph, pw, o), x.dtype)
        idx = self._xp.empty((n, ph, pw, o), np.uint8)
        if self._direct(x):
            cols = None
            self._k(x.dtype).conv1_direct_pool.launch(pooled.size, pooled, idx, x, w, b, h, wd, o, kh, kw,
                                                      stride[0], stride[1], pad[0], pad[1], pkh, pkw, psh, psw,
                                                      ph, pw, pooled.size)
        else:
            cols = self._patches(x, kh, kw, stride, pad, oh, ow)
            pre = self._gemm(cols, self._wmat(w).T)
            self._k(x.dtype).bias_maxpool_relu.launch(pooled.size, pooled, idx, pre, b, oh, ow, o, pkh, pkw, psh,
                                                      psw, ph, pw, pooled.size)
        ctx = (x, cols, stride, pad, pooled, idx, (oh, ow), pool_kernel, pool_stride) if save else None
        return pooled, ctx

    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True):
        x, cols, stride, pad, pooled, idx, (oh, ow), (pkh, pkw), (psh, psw) = ctx
        dy = self._c(dy)
        n, ph, pw, o = dy.shape
        g = self._xp.empty((n * oh * ow, o), dy.dtype)
        self._k(dy.dtype).maxpool_relu_backward.launch(g.size, g, dy, pooled, idx, oh, ow, o, pkh, pkw, psh, psw,
                                                       ph, pw, g.size)
        # The bias gradient from the pooled map: a quarter of the elements.
        db = self._channel_reduce(dy.reshape(-1, o), mode=1, y=pooled.reshape(-1, o), real_out=True)
        return self._conv_grads(g, x, cols, w, (stride, pad), need_dx, db)

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, kernel, stride):
        x = self._c(x)
        n, h, w, c = x.shape
        oh, ow = output_hw(h, w, kernel, stride)
        y = self._xp.empty((n, oh, ow, c), x.dtype)
        idx = self._xp.empty((n, oh, ow, c), np.uint8)
        self._k(x.dtype).maxpool2d_forward.launch(y.size, y, idx, x, h, w, c, kernel[0], kernel[1], stride[0],
                                                  stride[1], oh, ow, y.size)
        return y, idx

    def maxpool2d_backward(self, dy, idx, x_shape, kernel, stride):
        dy = self._c(dy)
        n, oh, ow, c = dy.shape
        dx = self._xp.empty(x_shape, dy.dtype)
        self._k(dy.dtype).maxpool2d_backward.launch(dx.size, dx, dy, idx, x_shape[1], x_shape[2], c, kernel[0],
                                                    kernel[1], stride[0], stride[1], oh, ow, dx.size)
        return dx

    # ------------------------------------------------------- elementwise, dense
    def relu_forward(self, x):
        x = self._c(x)
        y = self._xp.empty(x.shape, x.dtype)
        self._k(x.dtype).relu_forward.launch(x.size, y, x, x.size)
        return y

    def relu_backward(self, dy, y):
        dy, y = self._c(dy), self._c(y)
        dx = self._xp.empty(y.shape, y.dtype)
        self._k(y.dtype).relu_backward.launch(y.size, dx, dy, y, y.size)
        return dx

    def dense_forward(self, x, w, b):
        y = self._gemm(self._c(x), w.T)
        self._k(y.dtype).bias_act.launch(y.size, y, b, y.shape[1], 0, y.size)
        return y

    def dense_backward(self, dy, x, w, need_dx=True):
        dy = self._c(dy)
        dw = self._gemm(dy.T, self._c(x))
        db = self._channel_reduce(dy, real_out=True)
        return (self._gemm(dy, w) if need_dx else None), dw, db

    def global_avg_pool_forward(self, x):
        x = self._c(x)
        n, h, w, c = x.shape
        y = self._xp.empty((n, c), x.dtype)
        self._k(x.dtype).global_avg_pool_forward.launch(y.size, y, x, h * w, c, y.size)
        return y

    def global_avg_pool_backward(self, dy, x_shape):
        dy = self._c(dy)
        n, h, w, c = x_shape
        dx = self._xp.empty(x_shape, dy.dtype)
        self._k(dy.dtype).global_avg_pool_backward.launch(dx.size, dx, dy, h * w, c, dx.size)
        return dx

    def dropout_mask(self, rng, shape, p, dtype):
        return dropout_mask(rng, shape, p, dtype)

    def gradcam_maps(self, acts, dacts):
        return gradcam_maps(self._xp, acts, dacts)

    # --------------------------------------------------------------- batch norm
    def batchnorm_forward(self, x, gamma, beta, stats: BatchNormStats, training, keep=False):
        c = x.shape[-1]
        x2d = self._c(x).reshape(-1, c)
        m = x2d.shape[0]
        k = self._k(x.dtype)
        if training:
            s = self._channel_reduce(x2d)
            mean = s / m
            sq = self._channel_reduce(x2d, mode=2, mean=mean)
            inv_std = self._xp.empty(c, x.dtype)
            k.batchnorm_stats.launch(c, mean, inv_std, stats.running_mean, stats.running_var, s, sq, m, c,
                                     stats.momentum, stats.eps)
            xhat = self._xp.empty(x2d.shape, x.dtype)
            y = self._xp.empty(x2d.shape, x.dtype)
            k.batchnorm_forward_train.launch(y.size, y, xhat, x2d, mean, inv_std, gamma, beta, c, y.size)
            return y.reshape(x.shape), ("train", xhat, inv_std, x.shape)
        y = self._xp.empty(x2d.shape, x.dtype)
        xhat = self._xp.empty(x2d.shape, x.dtype) if keep else y
        scale = self._xp.empty(c, x.dtype) if keep else gamma
        k.batchnorm_forward_eval.launch(y.size, y, xhat, scale, x2d, gamma, beta, stats.running_mean,
                                        stats.running_var, stats.eps, int(keep), c, y.size)
        return y.reshape(x.shape), (("eval", xhat, scale, x.shape) if keep else None)

    def batchnorm_backward(self, dy, ctx, gamma):
        mode, xhat, inv_std, shape = ctx
        c = shape[-1]
        dy2d = self._c(dy).reshape(-1, c)
        m = dy2d.shape[0]
        dbeta = self._channel_reduce(dy2d)
        dgamma = self._channel_reduce(dy2d, mode=3, y=xhat)
        dx = self._xp.empty(dy2d.shape, dy2d.dtype)
        self._k(dy2d.dtype).batchnorm_backward.launch(dx.size, dx, dy2d, xhat, gamma, inv_std, dbeta, dgamma,
                                                      int(mode == "train"), m, c, dx.size)
        return dx.reshape(shape), dgamma.astype(dy2d.dtype), dbeta.astype(dy2d.dtype)

    # -------------------------------------------------------------------- losses
    def _loss_inputs(self, labels, class_weights):
        """Labels (host or device) as device int64, the class weights, and whether to use them."""
        if isinstance(labels, (np.ndarray, list, tuple)):
            lab = self._xp.asarray(np.asarray(labels).reshape(-1).astype(np.int64))
        else:
            lab = self._xp.ascontiguousarray(labels.reshape(-1).astype(np.int64, copy=False))
        if class_weights is None:
            if self._no_weights is None:
                self._no_weights = self._xp.zeros(1, np.float64)
            return lab, self._no_weights, 0
        return lab, self._xp.asarray(np.asarray(class_weights, np.float64).reshape(-1)), 1

    def sigmoid_bce(self, logits, labels, class_weights=None, to_host=True):
        """The loss comes back as a float, which waits for the GPU; with
        ``to_host=False`` it stays a one-element device array and nothing waits."""
        z = self._c(logits)
        lab, wts, use_w = self._loss_inputs(labels, class_weights)
        dz = self._xp.empty(z.shape, z.dtype)
        loss = self._xp.empty(1, np.float64)
        self._k(z.dtype).sigmoid_bce((1,), (_THREADS,), dz, loss, z, lab, wts, use_w, z.size)
        return (float(self.to_numpy(loss)[0]) if to_host else loss), dz

    def softmax_cross_entropy(self, logits, labels, class_weights=None, to_host=True):
        z = self._c(logits)
        lab, wts, use_w = self._loss_inputs(labels, class_weights)
        dz = self._xp.empty(z.shape, z.dtype)
        loss = self._xp.empty(1, np.float64)
        self._k(z.dtype).softmax_cross_entropy((1,), (_THREADS,), dz, loss, z, lab, wts, use_w, z.shape[0],
                                               z.shape[1])
        return (float(self.to_numpy(loss)[0]) if to_host else loss), dz

    # ---------------------------------------------------------------- optimisers
    def _table(self, *groups):
        """Device tables of the arrays' addresses and their running offsets,
        cached by address (CuPy's pool hands gradients the same memory each
        step, so the same tables serve step after step)."""
        key = tuple(self._ptr(a) for group in groups for a in group)
        hit = self._tables.get(key)
        if hit is None:
            sizes = [int(a.size) for a in groups[0]]
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            ptrs = [self._xp.asarray(np.array([self._ptr(a) for a in group], np.uint64)) for group in groups]
            hit = (*ptrs, self._xp.asarray(offsets), int(offsets[-1]))
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = hit
        return hit

    def _by_precision(self, ps, *others):
        """Per parameter dtype: (dtype, count, device address tables..., offsets, total)
        of the parameters and their matching state / gradient arrays."""
        for dt in {p.dtype for p in ps}:
            sel = [i for i, p in enumerate(ps) if p.dtype == dt]
            group = [[arrs[i] for i in sel] for arrs in (ps, *others)]
            check_update_group(*group)
            yield (dt, len(sel), *self._table(*group))

    def adam_update(self, p, m, v, g, step, hyper: AdamHyper):
        self.adam_update_many([p], [m], [v], [g], step, hyper)

    def adam_update_many(self, ps, ms, vs, gs, step, hyper: AdamHyper):
        """One launch per precision over every parameter."""
        h = hyper
        for dt, n, pt, mt, vt, gt, offsets, total in self._by_precision(ps, ms, vs, [self._c(g) for g in gs]):
            self._k(dt).adam_update_many.launch(total, pt, mt, vt, gt, offsets, n, total, h.lr, h.beta1, h.beta2,
                                                h.eps, h.weight_decay, 1 - h.beta1 ** step,
                                                math.sqrt(1 - h.beta2 ** step))

    def sgd_update(self, p, buf, g, step, hyper: SGDHyper):
        self.sgd_update_many([p], [buf], [g], step, hyper)

    def sgd_update_many(self, ps, bufs, gs, step, hyper: SGDHyper):
        """One launch per precision over every parameter."""
        h = hyper
        for dt, n, pt, bt, gt, offsets, total in self._by_precision(ps, bufs, [self._c(g) for g in gs]):
            self._k(dt).sgd_update_many.launch(total, pt, bt, gt, offsets, n, total, h.lr, h.momentum,
                                               h.weight_decay, int(h.nesterov), int(step == 1))
