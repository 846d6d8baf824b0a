"""The GPU backend: CuPy arrays, xraynet's CUDA C kernels and cuBLAS.

Same ops and contexts as :class:`xraynet.backend.CPUBackend`, so layers,
model, training and screening run unchanged. Arrays stay on the device from
the input batch to the loss; the host sees the batch going in, the loss value
and whatever the caller asks for with ``to_numpy``.

How each op runs:

* convolution: ``im2col`` kernel (patches ordered like the weights, so the
  weights enter every GEMM as they are) -> cuBLAS GEMM (``cupy.matmul``) -> one
  epilogue kernel (bias, bias + ReLU, or bias + ReLU + max pool with argmax).
  Training keeps the patch matrix for the weight gradient (GPU memory is
  plentiful; rebuilding it costs a launch and a pass over it). Backward:
  the pool/ReLU gradient kernel, two GEMMs, and ``col2im`` as a gather.
* per-channel sums (bias, batch norm): a two-pass reduction in double with a
  fixed split, deterministic;
* losses: one single-block kernel each, loss and gradient together;
* Adam and SGD: one launch over every parameter (address tables).

No kernel uses float atomics, so training is bit-reproducible run to run.

The class takes its array module and kernel compiler as arguments: on a GPU
they are CuPy and ``cupy.RawModule``; the tests pass NumPy and a CPU emulator
of the same CUDA source (tests/cudaemu), which runs this code, kernels
included, on machines without a GPU.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .backend import conv_output_shape
from .cudakernels import KernelSet, Profiler
from .errors import ShapeError

_THREADS = 256


def _cupy_compile(source, options):
    """A cupy.RawModule of ``source``; CuPy caches the binary on disk."""
    import cupy

    return _CupyModule(cupy.RawModule(code=source, options=options))


class _CupyModule:
    def __init__(self, mod):
        self.mod = mod

    def get_function(self, name):
        fn = self.mod.get_function(name)

        def launch(grid, block, args):
            fn(grid, block, args)
        return launch


class _CudaEvent:
    """A CUDA event recorded on the current stream; ``elapsed_ms(stop)``."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.ev = cupy.cuda.Event()
        self.ev.record()

    def elapsed_ms(self, stop):
        return self.cupy.cuda.get_elapsed_time(self.ev, stop.ev)


class _DeviceRNG:
    """Uniform draws on the device for dropout masks (CuPy's legacy cuRAND
    generator: unlike the XORWOW Generator it has no cap on draws per call)."""

    def __init__(self, xp, seed):
        state = np.random.SeedSequence(seed).generate_state(2, np.uint32)
        self.rs = xp.random.RandomState(int(state[0]) << 31 ^ int(state[1]))

    def random(self, shape):
        return self.rs.random_sample(shape, dtype=np.float32)


def _slabs(m: int, min_rows: int) -> tuple[int, int]:
    """(slabs, rows per slab) splitting m rows for a two-pass reduction: slabs of
    at least ``min_rows`` rows, at most 1024 of them. Depends on m only, so
    the summation order (and the result) never changes run to run."""
    parts = max(1, min(1024, -(-m // min_rows)))
    rows = max(1, -(-m // parts))
    return max(1, -(-m // rows)), rows


class CUDABackend:
    """CuPy arrays and the CUDA C kernels in kernels/cuda (see the module docs)."""

    name = "gpu"

    def __init__(self, xp=None, compile_fn=None, checked: bool = False, max_blocks: int = 1 << 16,
                 direct_first_conv: bool | None = None):
        if direct_first_conv is None:  # XRAYNET_GPU_DIRECT_CONV=0 turns it off, to race the two ways
            direct_first_conv = os.environ.get("XRAYNET_GPU_DIRECT_CONV", "1") != "0"
        #: one-channel convolutions run as direct kernels (conv1_direct*) instead of im2col + GEMM
        self.direct_first_conv = bool(direct_first_conv)
        if xp is None:
            import cupy

            xp = cupy
            compile_fn = compile_fn or _cupy_compile
        self.xp = xp
        self.on_gpu = xp is not np
        self._compile = compile_fn
        self._checked, self._max_blocks = checked, max_blocks
        self._kernels: dict = {}
        self._tables: dict = {}
        self._no_weights = None
        self.profiler: Profiler | None = None

    # ------------------------------------------------------------------ plumbing
    def k(self, dtype) -> KernelSet:
        """The kernels of one precision, compiled on first use."""
        dt = np.dtype(dtype)
        ks = self._kernels.get(dt)
        if ks is None:
            ks = self._kernels[dt] = KernelSet(dt, self._compile, self._checked, self._max_blocks, self.profiler)
        return ks

    def profile_kernels(self, enabled: bool = True) -> Profiler | None:
        """Record the device time of every kernel launch and GEMM from now on;
        returns the profiler (``totals()`` gives ms and launches per kernel)."""
        if enabled:
            self.profiler = Profiler(_CudaEvent if self.on_gpu else None, self.synchronize)
        else:
            self.profiler = None
        self._kernels.clear()  # kernels capture the profiler when built
        return self.profiler

    def _gemm(self, a, b, out=None):
        if self.profiler is None:
            return self.xp.matmul(a, b, out=out)
        with self.profiler.timing("gemm (cuBLAS)"):
            return self.xp.matmul(a, b, out=out)

    def asarray(self, x, dtype=None):
        if isinstance(x, np.ndarray) or not hasattr(x, "__cuda_array_interface__"):
            x = np.ascontiguousarray(x, dtype=dtype)
            return self.xp.asarray(x)
        return self.xp.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return x.get() if self.on_gpu and hasattr(x, "get") else np.asarray(x)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype)

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype)

    def rng(self, seed):
        return _DeviceRNG(self.xp, seed) if self.on_gpu else np.random.default_rng(seed)

    def random_normal(self, rng, shape, std, dtype):
        """Initial weights: drawn on the host by the model's NumPy generator, so a
        seed gives the same network on the CPU and the GPU."""
        return self.asarray((rng.standard_normal(shape) * std).astype(dtype))

    def set_threads(self, threads: int) -> None:
        """Host threads only matter to the CPU backend; the GPU ignores this."""

    def synchronize(self) -> None:
        if self.on_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def time_steps(self, step, n: int) -> list[float]:
        """Seconds per step of ``n`` runs of ``step``, timed the way PyTorch's
        CUDA benchmark times itself (../shared/bench/torch_reference.py): a CUDA
        event between steps and one synchronise at the end, so time the GPU
        spends waiting for the host counts, and the host never waits per step.
        Under the emulator: wall clock per step."""
        if not self.on_gpu:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                step()
                out.append(time.perf_counter() - t0)
            return out
        import cupy

        events = [cupy.cuda.Event() for _ in range(n + 1)]
        self.synchronize()
        events[0].record()
        for i in range(n):
            step()
            events[i + 1].record()
        events[-1].synchronize()
        return [cupy.cuda.get_elapsed_time(events[i], events[i + 1]) / 1e3 for i in range(n)]

    def nchw_to_internal(self, x):
        return self.xp.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def internal_to_nchw(self, x):
        return self.xp.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _c(self, x):
        return self.xp.ascontiguousarray(x)

    def ptr(self, a) -> int:
        """Device address of an array (host address under the emulator)."""
        return a.data.ptr if self.on_gpu else a.ctypes.data

    # -------------------------------------------------------------- reductions
    def _channel_reduce(self, x2d, mode=0, y=None, mean=None, real_out=False):
        """Per-channel sums of (M, C) in double (see kernels/cuda/reduce.cu)."""
        m, c = x2d.shape
        k = self.k(x2d.dtype)
        parts, rows = _slabs(m, 512)  # up to 512 rows: one slab, one launch
        partial = self.xp.empty((parts, c), np.float64)
        direct = parts == 1 and real_out
        out = self.xp.empty(c, x2d.dtype) if direct else x2d
        k.channel_reduce_partial((-(-c // 32), parts), (32, 8), x2d, x2d if y is None else y,
                                 partial if mean is None else mean, mode, m, c, rows, partial, int(direct), out)
        if direct:
            return out
        if parts == 1:
            return partial.reshape(c)
        if real_out:
            out = self.xp.empty(c, x2d.dtype)
            k.channel_reduce_final_real.launch(c, partial, parts, c, out)
        else:
            out = self.xp.empty(c, np.float64)
            k.channel_reduce_final.launch(c, partial, parts, c, out)
        return out

    # -------------------------------------------------------------- convolution
    _geometry = staticmethod(conv_output_shape)

    @staticmethod
    def _wmat(w):
        """(O, C, KH, KW) as the (O, C*KH*KW) matrix the patch order matches: a view."""
        return w.reshape(w.shape[0], -1)

    def _patches(self, x, kh, kw, stride, pad, oh, ow):
        n, h, wd, c = x.shape
        if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
            return x.reshape(n * h * wd, c)
        cols = self.xp.empty((n * oh * ow, kh * kw * c), x.dtype)
        self.k(x.dtype).im2col.launch(cols.size, x, cols, h, wd, c, kh, kw, stride[0], stride[1], pad[0], pad[1],
                                      oh, ow, cols.size)
        return cols

    def _direct(self, x) -> bool:
        return self.direct_first_conv and x.shape[3] == 1

    def conv2d_forward(self, x, w, b, stride, pad, relu=False, save=True):
        """x (N, H, W, C), w (O, C, KH, KW), b (O,) -> y (N, OH, OW, O) and a context.

        A one-channel input runs the direct kernel (no patch matrix; the
        context then holds none and backward uses conv1_dw_partial)."""
        x = self._c(x)
        n, h, wd, _ = x.shape
        o, _, kh, kw = w.shape
        oh, ow = self._geometry(x.shape, w.shape, stride, pad)
        y = self.xp.empty((n, oh, ow, o), x.dtype)
        if self._direct(x):
            cols = None
            self.k(x.dtype).conv1_direct.launch(y.size, x, w, b, y, h, wd, o, kh, kw, stride[0], stride[1], pad[0],
                                                pad[1], oh, ow, int(relu), y.size)
        else:
            cols = self._patches(x, kh, kw, stride, pad, oh, ow)
            y2d = y.reshape(-1, o)
            self._gemm(cols, self._wmat(w).T, out=y2d)
            self.k(x.dtype).bias_act.launch(y2d.size, y2d, b, o, int(relu), y2d.size)
        return y, ((x, cols, stride, pad, y if relu else None) if save else None)

    def conv2d_backward(self, dy, ctx, w, need_dx=True):
        """Returns (dx or None, dw (O, C, KH, KW), db (O,))."""
        x, cols, stride, pad, y_relu = ctx
        dy = self._c(dy)
        o = w.shape[0]
        if y_relu is None:
            g = dy.reshape(-1, o)
        else:
            g = self.xp.empty(dy.shape, dy.dtype).reshape(-1, o)
            self.k(dy.dtype).relu_bwd.launch(g.size, dy, y_relu, g, g.size)
        db = self._channel_reduce(g, real_out=True)
        return self._conv_grads(g, x, cols, w, stride, pad, need_dx, db)

    def _conv_grads(self, g, x, cols, w, stride, pad, need_dx, db):
        """dw and dx from the output gradient g (M, O) and the saved patch matrix
        (None after a direct one-channel forward: dw then comes from the image)."""
        o, c, kh, kw = w.shape
        dw = self._conv1_dw(g, x, w, stride, pad) if cols is None else self._gemm(g.T, cols).reshape(w.shape)
        dx = None
        if need_dx:
            dcols = self._gemm(g, self._wmat(w))
            n, h, wd, _ = x.shape
            if kh == kw == 1 and stride == (1, 1) and pad == (0, 0):
                dx = dcols.reshape(x.shape)
            else:
                oh, ow = self._geometry(x.shape, w.shape, stride, pad)
                dx = self.xp.empty(x.shape, x.dtype)
                self.k(x.dtype).col2im.launch(dx.size, dcols, dx, h, wd, c, kh, kw, stride[0], stride[1],
                                              pad[0], pad[1], oh, ow, dx.size)
        return dx, dw, db

    def _conv1_dw(self, g, x, w, stride, pad):
        """dw of a one-channel conv from the output gradient g (M, O) and the image."""
        o, _, kh, kw = w.shape
        n, h, wd, _ = x.shape
        oh, ow = self._geometry(x.shape, w.shape, stride, pad)
        m, pairs = g.shape[0], o * kh * kw
        parts, rows = _slabs(m, 2048)
        k = self.k(x.dtype)
        partial = self.xp.empty((parts, pairs), np.float64)
        k.conv1_dw_partial((parts,), (_THREADS,), g, x, h, wd, o, kh, kw, stride[0], stride[1], pad[0], pad[1],
                           oh, ow, m, rows, partial)
        dw = self.xp.empty(w.shape, x.dtype)
        k.channel_reduce_final_real.launch(pairs, partial, parts, pairs, dw)
        return dw

    def conv2d_relu_pool_forward(self, x, w, b, stride, pad, pool_kernel, pool_stride, save=True):
        """Fused conv + bias + ReLU + max pool: x (N, H, W, C) -> (N, PH, PW, O).

        A one-channel input never materialises the pre-activation: one direct
        kernel convolves, adds the bias, pools and applies the ReLU."""
        x = self._c(x)
        n, h, wd, _ = x.shape
        o, _, kh, kw = w.shape
        oh, ow = self._geometry(x.shape, w.shape, stride, pad)
        (pkh, pkw), (psh, psw) = pool_kernel, pool_stride
        ph, pw = (oh - pkh) // psh + 1, (ow - pkw) // psw + 1
        pooled = self.xp.empty((n, ph, pw, o), x.dtype)
        idx = self.xp.empty((n, ph, pw, o), np.uint8)
        if self._direct(x):
            cols = None
            self.k(x.dtype).conv1_direct_pool.launch(pooled.size, x, w, b, pooled, idx, h, wd, o, kh, kw, stride[0],
                                                     stride[1], pad[0], pad[1], pkh, pkw, psh, psw, ph, pw,
                                                     pooled.size)
        else:
            cols = self._patches(x, kh, kw, stride, pad, oh, ow)
            pre = self._gemm(cols, self._wmat(w).T)
            self.k(x.dtype).bias_maxpool_relu.launch(pooled.size, pre, b, pooled, idx, oh, ow, o, pkh, pkw, psh,
                                                     psw, ph, pw, pooled.size)
        ctx = (x, cols, stride, pad, pooled, idx, (oh, ow), pool_kernel, pool_stride) if save else None
        return pooled, ctx

    def conv2d_relu_pool_backward(self, dy, ctx, w, need_dx=True):
        x, cols, stride, pad, pooled, idx, (oh, ow), (pkh, pkw), (psh, psw) = ctx
        dy = self._c(dy)
        n, ph, pw, o = dy.shape
        g = self.xp.empty((n * oh * ow, o), dy.dtype)
        self.k(dy.dtype).maxpool_relu_bwd.launch(g.size, dy, pooled, idx, g, oh, ow, o, pkh, pkw, psh, psw,
                                                 ph, pw, g.size)
        # The bias gradient from the pooled map: a quarter of the elements.
        db = self._channel_reduce(dy.reshape(-1, o), mode=1, y=pooled.reshape(-1, o), real_out=True)
        return self._conv_grads(g, x, cols, w, stride, pad, need_dx, db)

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, kernel, stride):
        """x (N, H, W, C) -> (y (N, OH, OW, C), idx uint8 window positions); floor mode."""
        x = self._c(x)
        n, h, w, c = x.shape
        oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
        y = self.xp.empty((n, oh, ow, c), x.dtype)
        idx = self.xp.empty((n, oh, ow, c), np.uint8)
        self.k(x.dtype).maxpool_fwd.launch(y.size, x, y, idx, h, w, c, kernel[0], kernel[1], stride[0], stride[1],
                                           oh, ow, y.size)
        return y, idx

    def maxpool2d_backward(self, dy, idx, x_shape, kernel, stride):
        dy = self._c(dy)
        n, oh, ow, c = dy.shape
        dx = self.xp.empty(x_shape, dy.dtype)
        self.k(dy.dtype).maxpool_bwd.launch(dx.size, dy, idx, dx, x_shape[1], x_shape[2], c, kernel[0], kernel[1],
                                            stride[0], stride[1], oh, ow, dx.size)
        return dx

    # ------------------------------------------------------- elementwise, dense
    def relu_forward(self, x):
        x = self._c(x)
        y = self.xp.empty(x.shape, x.dtype)
        self.k(x.dtype).relu_fwd.launch(x.size, x, y, x.size)
        return y

    def relu_backward(self, dy, y):
        dy, y = self._c(dy), self._c(y)
        dx = self.xp.empty(y.shape, y.dtype)
        self.k(y.dtype).relu_bwd.launch(y.size, dy, y, dx, y.size)
        return dx

    def dense_forward(self, x, w, b):
        """x (N, F_in), w (F_out, F_in), b (F_out,) -> x @ w.T + b."""
        y = self._gemm(self._c(x), w.T)
        self.k(y.dtype).bias_act.launch(y.size, y, b, y.shape[1], 0, y.size)
        return y

    def dense_backward(self, dy, x, w, need_dx=True):
        """Returns (dx or None, dw, db)."""
        dy = self._c(dy)
        dw = self._gemm(dy.T, self._c(x))
        db = self._channel_reduce(dy, real_out=True)
        return (self._gemm(dy, w) if need_dx else None), dw, db

    def global_avg_pool_forward(self, x):
        """x (N, H, W, C) -> (N, C) mean over H and W (summed in double)."""
        x = self._c(x)
        n, h, w, c = x.shape
        y = self.xp.empty((n, c), x.dtype)
        self.k(x.dtype).gap_fwd.launch(y.size, x, y, h * w, c, y.size)
        return y

    def global_avg_pool_backward(self, dy, x_shape):
        dy = self._c(dy)
        n, h, w, c = x_shape
        dx = self.xp.empty(x_shape, dy.dtype)
        self.k(dy.dtype).gap_bwd.launch(dx.size, dy, dx, h * w, c, dx.size)
        return dx

    def dropout_mask(self, rng, shape, p, dtype):
        """Inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
        keep = rng.random(shape) >= p
        return (keep / (1.0 - p)).astype(dtype)

    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, training, keep=False):
        """As CPUBackend.batchnorm_forward: batch statistics in training (running
        ones updated in place), the running ones in evaluation."""
        c = x.shape[-1]
        x2d = self._c(x).reshape(-1, c)
        m = x2d.shape[0]
        k = self.k(x.dtype)
        if training:
            s = self._channel_reduce(x2d)
            mean = s / m
            sq = self._channel_reduce(x2d, mode=2, mean=mean)
            inv_std = self.xp.empty(c, x.dtype)
            k.bn_stats.launch(c, s, sq, m, c, momentum, eps, running_mean, running_var, mean, inv_std)
            xhat = self.xp.empty(x2d.shape, x.dtype)
            y = self.xp.empty(x2d.shape, x.dtype)
            k.bn_fwd_train.launch(y.size, x2d, mean, inv_std, gamma, beta, xhat, y, c, y.size)
            return y.reshape(x.shape), ("train", xhat, inv_std, x.shape)
        y = self.xp.empty(x2d.shape, x.dtype)
        xhat = self.xp.empty(x2d.shape, x.dtype) if keep else y
        scale = self.xp.empty(c, x.dtype) if keep else gamma
        k.bn_fwd_eval.launch(y.size, x2d, gamma, beta, running_mean, running_var, eps, int(keep), y, xhat, scale,
                             c, y.size)
        return y.reshape(x.shape), (("eval", xhat, scale, x.shape) if keep else None)

    def batchnorm_backward(self, dy, ctx, gamma):
        """Returns (dx, dgamma, dbeta), for a training-mode or a kept evaluation-mode forward."""
        mode, xhat, inv_std, shape = ctx
        c = shape[-1]
        dy2d = self._c(dy).reshape(-1, c)
        m = dy2d.shape[0]
        dbeta = self._channel_reduce(dy2d)
        dgamma = self._channel_reduce(dy2d, mode=3, y=xhat)
        dx = self.xp.empty(dy2d.shape, dy2d.dtype)
        self.k(dy2d.dtype).bn_bwd.launch(dx.size, dy2d, xhat, gamma, inv_std, dbeta, dgamma, int(mode == "train"),
                                         m, c, dx, dx.size)
        return dx.reshape(shape), dgamma.astype(dy2d.dtype), dbeta.astype(dy2d.dtype)

    # -------------------------------------------------------------------- losses
    def _loss_inputs(self, logits, labels, class_weights):
        """Labels (host or device) as device int64, and the class weights."""
        if isinstance(labels, (np.ndarray, list, tuple)):
            lab = self.xp.asarray(np.asarray(labels).reshape(-1).astype(np.int64))
        else:
            lab = self.xp.ascontiguousarray(labels.reshape(-1).astype(np.int64, copy=False))
        if class_weights is None:
            if self._no_weights is None:
                self._no_weights = self.xp.zeros(1, np.float64)
            return lab, self._no_weights, 0
        return lab, self.xp.asarray(np.asarray(class_weights, np.float64).reshape(-1)), 1

    def sigmoid_bce(self, logits, labels, class_weights=None, to_host=True):
        """Binary cross-entropy on one logit per image (see CPUBackend.sigmoid_bce).

        The loss comes back as a float, which waits for the GPU; with
        ``to_host=False`` it stays a one-element device array and nothing waits."""
        z = self._c(logits)
        lab, wts, use_w = self._loss_inputs(z, labels, class_weights)
        dz = self.xp.empty(z.shape, z.dtype)
        loss = self.xp.empty(1, np.float64)
        self.k(z.dtype).sigmoid_bce((1,), (_THREADS,), z, lab, wts, use_w, z.size, dz, loss)
        return (float(self.to_numpy(loss)[0]) if to_host else loss), dz

    def softmax_cross_entropy(self, logits, labels, class_weights=None, to_host=True):
        """Softmax cross-entropy on C logits (see CPUBackend.softmax_cross_entropy)."""
        z = self._c(logits)
        lab, wts, use_w = self._loss_inputs(z, labels, class_weights)
        dz = self.xp.empty(z.shape, z.dtype)
        loss = self.xp.empty(1, np.float64)
        self.k(z.dtype).softmax_xent((1,), (_THREADS,), z, lab, wts, use_w, z.shape[0], z.shape[1], dz, loss)
        return (float(self.to_numpy(loss)[0]) if to_host else loss), dz

    # ---------------------------------------------------------------- optimisers
    def _table(self, *groups):
        """Device tables of the arrays' addresses and their running offsets,
        cached by address (CuPy's pool hands gradients the same memory each
        step, so the same tables serve step after step)."""
        key = tuple(self.ptr(a) for group in groups for a in group)
        hit = self._tables.get(key)
        if hit is None:
            sizes = [int(a.size) for a in groups[0]]
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            ptrs = [self.xp.asarray(np.array([self.ptr(a) for a in group], np.uint64)) for group in groups]
            hit = (*ptrs, self.xp.asarray(offsets), int(offsets[-1]))
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = hit
        return hit

    def _check_group(self, *groups):
        first = groups[0]
        for group in groups:
            for a, p in zip(group, first):
                if a.shape != p.shape or a.dtype != p.dtype or not a.flags.c_contiguous:
                    raise ShapeError(f"optimiser update: a state or gradient array of shape {a.shape} ({a.dtype}) "
                                     f"does not match its parameter {p.shape} ({p.dtype}), or is not contiguous.")

    def _by_precision(self, ps, *others):
        """Per parameter dtype: (dtype, count, device address tables..., offsets, total)
        of the parameters and their matching gradient / state arrays."""
        for dt in {p.dtype for p in ps}:
            sel = [i for i, p in enumerate(ps) if p.dtype == dt]
            group = [[arrs[i] for i in sel] for arrs in (ps, *others)]
            self._check_group(*group)
            yield (dt, len(sel), *self._table(*group))

    def adam_update_many(self, ps, gs, ms, vs, step, lr, beta1, beta2, eps, weight_decay):
        """One Adam step on every parameter at once (one launch per precision)."""
        for dt, n, pt, gt, mt, vt, offsets, total in self._by_precision(ps, [self._c(g) for g in gs], ms, vs):
            self.k(dt).adam_multi.launch(total, pt, gt, mt, vt, offsets, n, total, lr, beta1, beta2, eps,
                                         weight_decay, 1 - beta1 ** step, math.sqrt(1 - beta2 ** step))

    def sgd_update_many(self, ps, gs, bufs, step, lr, momentum, weight_decay, nesterov):
        """One SGD step on every parameter at once."""
        for dt, n, pt, gt, bt, offsets, total in self._by_precision(ps, [self._c(g) for g in gs], bufs):
            self.k(dt).sgd_multi.launch(total, pt, gt, bt, offsets, n, total, lr, momentum, weight_decay,
                                        int(nesterov), int(step == 1))

    def adam_update(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
        """In place: one Adam step (PyTorch's formula) on one parameter."""
        self.adam_update_many([p], [g], [m], [v], step, lr, beta1, beta2, eps, weight_decay)

    def sgd_update(self, p, g, buf, step, lr, momentum, weight_decay, nesterov):
        """In place: one SGD step (PyTorch's momentum formula, dampening 0)."""
        self.sgd_update_many([p], [g], [buf], step, lr, momentum, weight_decay, nesterov)

