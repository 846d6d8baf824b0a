"""The CPU backend's convolution: row blocks through one pipeline per core.

Why: on a 2-core EPYC the `wide` network's convolutions spent as much time
building patch matrices and passing whole images between cores as in the
GEMMs themselves. A GEMM with few output channels (K = 144, N = 32) ran at
53 GFLOP/s on a whole image's 7 MB patch matrix and at 90 on a block of 2,000
rows that stays in the core's L2; three multi-threaded passes per chunk
(im2col, GEMM, epilogue) each ended at a barrier, and every pass read what
the other core had written.

How: a convolution's output rows are cut into blocks of about
``block_bytes`` of patch matrix (several whole images where one image is
smaller). Each worker thread takes the next block from a shared counter and
runs it start to end in its own buffers: ``pad_window`` (the block's input
rows, zero-padded), ``im2col_window``, one single-threaded GEMM (NumPy's
BLAS, held at one thread meanwhile), then the epilogue (bias, bias + ReLU,
or bias + max pool + ReLU) into the output. The Numba kernels and the GEMM
release the GIL, so the workers run in parallel; a core that another
process slows simply takes fewer blocks. BLAS itself runs single-threaded
(the backend sets it so): OpenBLAS's own threads spin between calls and took
the cores from the workers (a `seed` training step ran 5x slower).

Backward runs the same blocks: the output gradient of a block (through the
pool and ReLU where fused), its patch matrix again, ``dW += cols.T @ g`` and,
when asked, ``dcols = g @ W.T`` added back with ``col2im_window_add`` into a
padded image. A worker owns whole images there (the input rows of two blocks
of one image overlap). Results do not depend on the number of threads or on
which thread took what: the images are dealt to a fixed number of lanes,
each lane sums its blocks in order, and the lanes are added in order.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .cpu_plan import ConvPlan, Scratch, claim, lanes_of, make_plan, resize_plan
from .cpu_winograd import WinogradConv


class ConvEngine(WinogradConv):
    """Runs convolutions block by block on ``threads`` worker threads (the
    calling thread is one of them). ``kernels`` is :mod:`xraynet.kernels.cpu`."""

    #: patch-matrix bytes per block, forward and backward (whose blocks also
    #: hold the output gradient and the patch gradient). Measured on the 2-core
    #: EPYC (1 MB L2 per core, 32 MB L3): larger blocks pay the per-block costs
    #: (Python, GEMM set-up) less often, up to where they spill the L3.
    BLOCK_BYTES = 4 << 20
    BACKWARD_BLOCK_BYTES = 1 << 20
    #: patch-matrix-equivalent bytes per block of forward_winograd4 (its transformed
    #: input, a quarter of that, then fits a core's 1 MB L2). The bundled model's
    #: evaluation on the EPYC, one thread, ms per image at 2/3/4/6/16 MB: 1.79 /
    #: 1.69 / 1.61 / 2.00 / 2.42 (batches of 32), 1.63 / 1.64 / 1.59 / 1.66 / 2.13 (64)
    WINOGRAD4_BLOCK_BYTES = 4 << 20

    def __init__(self, kernels, threads: int):
        self._k = kernels
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def set_threads(self, threads: int) -> None:
        threads = max(1, int(threads))
        if threads != self.threads and self._pool is not None:
            if self._pool_pid == os.getpid():
                self._pool.shutdown(wait=True)
            self._pool = None
        self.threads = threads

    def plan(self, x, w, stride, pad, pool_rows: int = 0, winograd: int = 0) -> ConvPlan:
        """Blocks of a convolution of x by w. ``winograd`` 2: for forward_winograd
        (blocks of whole 2-row tile rows; its transformed input is 16/9 of a patch
        matrix's 9 taps per 4 outputs, so the same bytes hold 9/4 the rows); 4:
        for forward_winograd4 (4-row tile rows; 36 values per 16 outputs, 4x the
        rows). With a 2x2/2 ``pool_rows``, only the rows the pool reads."""
        if winograd == 2:
            p = make_plan(x.shape, w.shape, stride, pad, self.BLOCK_BYTES * 9 // 4, x.itemsize, 2)
            rows = p.oh // 2 * 2 if pool_rows else p.oh
            return dataclasses.replace(p, rows=rows, r=max(p.r, 2))
        if winograd == 4:
            # Sized on the rows computed (a map shorter than a tile is whole images, not none)
            p = make_plan(x.shape, w.shape, stride, pad, self.WINOGRAD4_BLOCK_BYTES, x.itemsize)
            rows = p.oh // 2 * 2 if pool_rows else p.oh
            p = resize_plan(dataclasses.replace(p, rows=rows, step=4), self.WINOGRAD4_BLOCK_BYTES, x.itemsize)
            return dataclasses.replace(p, r=max(p.r, 4)) if p.r < p.rows else p
        return make_plan(x.shape, w.shape, stride, pad, self.BLOCK_BYTES, x.itemsize, pool_rows)

    def _run(self, worker, units: int) -> list:
        """``worker()`` on min(threads, units) threads, this one included; their results.

        The workers call NumPy's BLAS concurrently, each on its own block, so
        it must run single-threaded (the CPU backend sets it so): its own
        threads, spinning between calls, would take the cores from them."""
        t = min(self.threads, units)
        if t <= 1:
            return [worker()]
        if self._pool is None or self._pool_pid != os.getpid():
            # A forked child inherits the pool but not its threads: work sent to
            # it would wait forever, so a child makes its own.
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="xraynet-cpu")
            self._pool_pid = os.getpid()
        futures = [self._pool.submit(worker) for _ in range(t - 1)]
        try:
            mine = worker()
        finally:  # never leave a worker writing into arrays the caller drops
            results = [f.result() for f in futures]
        return [mine] + results

    def split(self, fn, total: int, min_part: int) -> None:
        """``fn(start, end)`` over contiguous parts of ``range(total)``, one per
        thread, none shorter than ``min_part`` (small jobs run here, whole)."""
        parts = max(1, min(self.threads, total // max(1, min_part)))
        bounds = [total * i // parts for i in range(parts + 1)]
        counter = itertools.count()

        def worker():
            for i in claim(counter, parts):
                fn(bounds[i], bounds[i + 1])

        self._run(worker, parts)

    def _each_block(self, p: ConvPlan, dtype, block) -> None:
        """``block(scratch, b0, nb, oy0, r)`` for every forward block of ``p``, the blocks
        dealt to the worker threads from a shared counter, each worker with its own
        :class:`~.cpu_plan.Scratch` of ``dtype``."""
        blocks = p.blocks()
        counter = itertools.count()

        def worker():
            scratch = Scratch(dtype)
            for i in claim(counter, len(blocks)):
                block(scratch, *blocks[i])

        self._run(worker, len(blocks))

    # -------------------------------------------------------------- forward
    def _patches(self, scratch, x, p: ConvPlan, block):
        """The patch matrix (nb*r*OW, K) of one block, in ``scratch``."""
        b0, nb, oy0, r = block
        xp = scratch.view("xp", (nb, p.window_rows(r), p.w + 2 * p.pw, p.c))
        self._k.pad_window(xp, x, b0, oy0 * p.sh - p.ph, p.pw)
        cols = scratch.view("cols", (nb * r * p.ow, p.k))
        self._k.im2col_window(cols, xp, p.kh, p.kw, p.sh, p.sw)
        return cols

    def forward(self, x, wmat, b, p: ConvPlan, relu: bool):
        """y (N, OH, OW, O) = conv(x) + b, ReLU'd if ``relu``; ``wmat`` (K, O)."""
        y = np.empty((p.n, p.oh, p.ow, p.o), x.dtype)
        y2d = y.reshape(-1, p.o)
        epilogue = self._k.bias_relu if relu else self._k.add_bias

        def block(scratch, b0, nb, oy0, r):
            start = (b0 * p.oh + oy0) * p.ow
            out = y2d[start:start + nb * r * p.ow]
            np.matmul(self._patches(scratch, x, p, (b0, nb, oy0, r)), wmat, out=out)
            epilogue(out, b)

        self._each_block(p, x.dtype, block)
        return y

    def forward_pool(self, x, wmat, b, p: ConvPlan, pool: int, pool_w: int):
        """(pooled, idx) of bias + ReLU + a tiling ``pool`` x ``pool_w`` max pool
        of conv(x): the pre-activation exists one block at a time."""
        ph, pw = p.rows // pool, p.ow // pool_w
        pooled = np.empty((p.n, ph, pw, p.o), x.dtype)
        idx = np.empty((p.n, ph, pw, p.o), np.uint8)

        def block(scratch, b0, nb, oy0, r):
            pre = scratch.view("pre", (nb * r * p.ow, p.o))
            np.matmul(self._patches(scratch, x, p, (b0, nb, oy0, r)), wmat, out=pre)
            rows = slice(oy0 // pool, (oy0 + r) // pool)
            self._k.bias_maxpool_relu_tiled(pooled[b0:b0 + nb, rows], idx[b0:b0 + nb, rows],
                                            pre.reshape(nb, r, p.ow, p.o), b, pool, pool_w)

        self._each_block(p, x.dtype, block)
        return pooled, idx

    # ------------------------------------------------------------- backward
    def backward(self, grad_rows, x, wmat, p: ConvPlan, need_dx: bool):
        """``(dx or None, dwmat (K, O))`` from ``grad_rows(scratch, b0, nb, oy0, r)``,
        which gives the output gradient (nb*r*OW, O) of those rows (any rows:
        backward blocks need not hold whole pool rows)."""
        # Every output row, blocks of whole rows: the fused and the unfused stage
        # then cut dW's sum identically (a pool's dropped rows add zeros).
        p = resize_plan(dataclasses.replace(p, rows=p.oh, step=1), self.BACKWARD_BLOCK_BYTES, x.itemsize)
        return self._by_lanes(self._backward_group, (grad_rows, x, np.ascontiguousarray(wmat.T), p), need_dx)

    def _by_lanes(self, group_fn, job, need_dx: bool):
        """``(dx or None, dW (K, O))`` of a backward pass whose work is
        ``group_fn(scratch, job, group, (lane dW, scratch of its shape), dx)`` per
        image group (``job`` = (grad_rows, x, weights, plan)): the groups dealt to
        :data:`~.cpu_plan.LANES` lanes, lanes run on the worker threads, each
        summing its groups in order, then the lanes added in order -- the same
        float32 sum whatever the thread count."""
        x, p = job[1], job[3]
        lanes = lanes_of(p.groups())
        nlanes = len(lanes)
        partial = np.zeros((nlanes, p.k, p.o), x.dtype)
        dx = np.empty(x.shape, x.dtype) if need_dx else None
        counter = itertools.count()

        def worker():
            scratch = Scratch(x.dtype)
            tmp = np.empty((p.k, p.o), x.dtype)
            for i in claim(counter, nlanes):
                for group in lanes[i]:
                    group_fn(scratch, job, group, (partial[i], tmp), dx)

        self._run(worker, nlanes)
        return dx, partial.sum(axis=0) if nlanes > 1 else partial[0]

    def _backward_group(self, scratch, job, group, acc, dx):
        """Add one image group's blocks to the lane's dW (``acc``: the lane's sum
        and a scratch of its shape) and write its dx (when ``dx`` is given)."""
        grad_rows, x, wmat_t, p = job
        dw, tmp = acc
        b0, nb = group
        hw, wp = p.window_rows(p.rows), p.w + 2 * p.pw
        xp = scratch.view("xp", (nb, hw, wp, p.c))
        self._k.pad_window(xp, x, b0, -p.ph, p.pw)
        if dx is not None:
            dxp = scratch.view("dxp", (nb, hw, wp, p.c))
            dxp[...] = 0
        for oy0 in range(0, p.rows, p.r):
            r = min(p.r, p.rows - oy0)
            g = grad_rows(scratch, b0, nb, oy0, r)
            win = slice(oy0 * p.sh, oy0 * p.sh + p.window_rows(r))
            cols = scratch.view("cols", (nb * r * p.ow, p.k))
            self._k.im2col_window(cols, xp[:, win], p.kh, p.kw, p.sh, p.sw)
            np.matmul(cols.T, g, out=tmp)
            dw += tmp
            if dx is not None:
                dcols = scratch.view("dcols", (nb * r * p.ow, p.k))
                np.matmul(g, wmat_t, out=dcols)
                self._k.col2im_window_add(dxp[:, win], dcols, p.kh, p.kw, p.sh, p.sw)
        if dx is not None:
            # Input rows below the last window (floor mode, or rows a tiling pool
            # drops) get no gradient.
            top = max(0, min(p.h, hw - p.ph))
            dx[b0:b0 + nb, :top] = dxp[:, p.ph:p.ph + top, p.pw:p.pw + p.w]
            dx[b0:b0 + nb, top:] = 0
