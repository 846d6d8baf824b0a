"""Kernel benchmarking: time a training step or inference of a built-in
architecture on synthetic data, the same way ../shared/bench/torch_reference.py
times PyTorch, so the two numbers compare directly.

Inputs are standard-normal batches made once (fixed seed) with random labels.
Warm-up steps run first (they also trigger any JIT compilation); their time
sizes the measured run (enough steps for ``min_time`` seconds, at least
``min_iters``); the result is the median step time.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

from . import __version__
from .archs import builtin_spec
from .backends.host import cpu_description
from .errors import BenchError
from .model import Model
from .optim import Adam

# Forward and training-step FLOPs per image of the benchmark architectures
# (multiply-add = 2; ARCHS.md), for the GFLOP/s column.
FLOPS = {"seed": {"infer": 20_927_232, "train": 60_567_552},
         "wide": {"infer": 476_873_728, "train": 1_416_170_496}}


def _tf32() -> bool:
    """CuPy's matmul uses TF32 only when CUPY_TF32=1; xraynet's own kernels never do."""
    import os

    return os.environ.get("CUPY_TF32", "0") == "1"


def _setup(arch: str, batch: int, device: str, seed: int):
    """Model of a benchmark architecture, a synthetic batch and its labels. BenchError for a
    negative seed or a batch that does not fit in memory."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BenchError(f"seed: unusable. Expected a whole number >= 0, got {seed!r}. Pass e.g. --seed 0.")
    model = Model(builtin_spec(arch, num_classes=2), device=device, seed=seed)
    rng = np.random.default_rng(seed + 1)
    try:
        x = model.bk.asarray(rng.standard_normal((batch, *model.input_shape), dtype=np.float32))
    except MemoryError:
        raise BenchError(f"batch {batch}: does not fit in memory. Expected a batch whose inputs "
                         f"({batch} x {'x'.join(map(str, model.input_shape))} float32) fit, got too little "
                         "memory. Pass a smaller --batch.") from None
    return model, x, model.bk.asarray(rng.integers(0, 2, batch))


def make_step(arch: str, mode: str, batch: int, device: str = "cpu", seed: int = 0):
    """(model, step function) for one configuration; the step runs one
    training step (forward + loss + backward + Adam) or one inference."""
    model, x, labels = _setup(arch, batch, device, seed)
    if mode == "train":
        opt = Adam(model.named_parameters(), model.bk, lr=1e-3)

        def step():  # the loss stays on the device: torch's step does not read it back either
            model.train_step(x, labels, opt, to_host=False)
    elif mode == "infer":
        def step():
            model.forward(x, training=False)
    else:
        raise BenchError(f"mode {mode!r}: expected 'train' or 'infer'")
    return model, step


@dataclass(frozen=True)
class Timing:
    """How long to time one configuration, as torch_reference.py does.

    ``warmup`` untimed steps first (JIT and NVRTC compilation happen there); then
    ``iters`` timed steps, or when ``iters`` is None enough steps to fill
    ``min_time`` seconds (finite, > 0), kept between ``min_iters`` and ``max_iters``.
    BenchError for a value that cannot time anything."""

    iters: int | None = None
    warmup: int = 3
    min_time: float = 3.0
    min_iters: int = 5
    max_iters: int = 5000

    def __post_init__(self):
        if not (isinstance(self.min_time, (int, float)) and math.isfinite(self.min_time) and self.min_time > 0):
            raise BenchError(f"min_time: not a usable number of seconds. Expected a finite number > 0, got "
                             f"{self.min_time!r}. Pass e.g. --min-time 3.")
        for name in ("warmup", "min_iters", "max_iters") + (("iters",) if self.iters is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchError(f"{name}: not a usable number of steps. Expected a whole number >= 1, got "
                                 f"{value!r}. Pass e.g. 5.")


def append_row(path, row: dict) -> None:
    """Append ``row`` as one JSON line to the file ``path`` (``--json-out``), written with one
    ``write`` call, so rows of runs that share the file never interleave. BenchError when it
    cannot be written."""
    import json
    import os

    line = (json.dumps(row) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise BenchError(f"{path}: the result row cannot be appended ({e.strerror or e}). Expected a writable "
                         f"file, got {type(e).__name__}. Give another --json-out (the row is also printed "
                         "with --json).") from None


def run_bench(arch: str = "seed", mode: str = "train", batch: int = 32, device: str = "cpu",
              threads: int | None = None, timing: Timing = Timing(), seed: int = 0) -> dict:
    """Time one configuration; returns the result row (keys as torch_reference.py)."""
    model, step = make_step(arch, mode, batch, device, seed)
    bk = model.bk
    if threads is not None:
        bk.set_threads(threads)
    warmup = max(timing.warmup, 1)
    try:
        warm = bk.time_steps(step, warmup)
    except MemoryError:
        raise BenchError(f"batch {batch}: a {mode} step of {arch} does not fit in memory. Expected enough "
                         f"memory for its activations, got too little on {bk.name}. Pass a smaller --batch."
                         ) from None
    iters = timing.iters
    if iters is None:
        est = min(warm[-max(1, len(warm) // 2):])
        iters = int(min(timing.max_iters, max(timing.min_iters, math.ceil(timing.min_time / max(est, 1e-7)))))
    times = bk.time_steps(step, iters)
    med = statistics.median(times)
    srt = sorted(times)
    per_img = FLOPS.get(arch, {}).get(mode)
    if threads is None:
        import numba
        threads = numba.get_num_threads()
    return {
        "impl": "xraynet",
        "arch": arch, "mode": mode, "batch": batch, "device": bk.name, "threads": threads,
        "tf32": _tf32() if bk.name == "gpu" else None,
        "direct_first_conv": bk.direct_first_conv,
        "images_per_s": batch / med,
        "ms_per_batch": med * 1e3,
        "ms_min": srt[0] * 1e3,
        "ms_p10": srt[int(0.1 * (len(srt) - 1))] * 1e3,
        "ms_p90": srt[int(math.ceil(0.9 * (len(srt) - 1)))] * 1e3,
        "ms_max": srt[-1] * 1e3,
        "gflop_per_s": per_img * batch / med / 1e9 if per_img else None,
        "iters": iters, "warmup": warmup, "seed": seed,
        "xraynet_version": __version__,
        "device_name": bk.device_name(),
        # The processor, in every row (also GPU rows: it feeds the device): figures from
        # different machine kinds must never be compared by mistake.
        **cpu_description(),
    }


def profile_layers(arch: str = "seed", mode: str = "train", batch: int = 32, device: str = "cpu",
                   threads: int | None = None, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Median milliseconds per execution stage (forward and backward apart) and
    for the optimiser update: where a step's time goes."""
    model, x, labels = _setup(arch, batch, device, seed)
    bk = model.bk
    if threads is not None:
        bk.set_threads(threads)
    opt = Adam(model.named_parameters(), bk, lr=1e-3)
    training = mode == "train"
    names = [" + ".join(l.type for l in _stage_layers(model, i)) + f" [{first}]"
             for i, (first, _) in enumerate(model._stages)]
    adam = "optimizer (adam)"
    times = {(n, d): [] for n in names + [adam] for d in ("forward", "backward")}

    def timed(key, rep, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        bk.synchronize()
        if rep:  # the first pass warms up
            times[key].append(time.perf_counter() - t0)
        return out

    for rep in range(repeats + 1):
        h = bk.nchw_to_internal(x)
        for name, (_, stage) in zip(names, model._stages):
            h = timed((name, "forward"), rep, stage.forward, h, training)
        if not training:
            continue
        _, d = model.loss(h, labels)
        for name, (first, stage) in zip(reversed(names), reversed(model._stages)):
            need = first > model._first_param
            d = timed((name, "backward"), rep, stage.backward, d, need)
            if not need:
                break
        timed((adam, "backward"), rep, opt.step, model.named_grads())
    out = []
    for name in names + [adam]:
        fwd, bwd = (statistics.median(times[name, d]) * 1e3 if times[name, d] else 0.0
                    for d in ("forward", "backward"))
        if fwd or bwd:
            out.append({"stage": name, "forward_ms": fwd, "backward_ms": bwd})
    return out


def _stage_layers(model, i):
    first = model._stages[i][0]
    nxt = model._stages[i + 1][0] if i + 1 < len(model._stages) else len(model.layers)
    return model.layers[first:nxt]


def profile_kernels(arch: str = "seed", mode: str = "train", batch: int = 32, device: str = "gpu",
                    steps: int = 10, seed: int = 0) -> list[dict]:
    """Device milliseconds per step of every CUDA kernel and of the cuBLAS GEMMs
    (CUDA events around each launch), largest first. Needs the GPU backend."""
    from .errors import BackendError

    model, step = make_step(arch, mode, batch, device, seed)
    bk = model.bk
    prof = bk.profile_kernels(True)  # None where the backend launches no kernels of its own
    if prof is None:
        raise BackendError(f"kernel profile: the {bk.name} backend runs no CUDA kernels. Expected --device gpu, "
                           f"got {bk.name}. Use --profile for per-layer times on the CPU.")
    try:
        for _ in range(3):  # compile and warm up first; their launches are not counted
            step()
        bk.synchronize()
        prof.clear()
        for _ in range(steps):
            step()
        totals = prof.totals()
    finally:
        bk.profile_kernels(False)
    all_ms = sum(ms for ms, _ in totals.values()) or 1.0
    rows = [{"kernel": name, "ms_per_step": ms / steps, "launches_per_step": n / steps, "share": ms / all_ms}
            for name, (ms, n) in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_step"])
