"""Array code both backends run as it is, each on its own array module
(``xp``: NumPy on the CPU, CuPy on the GPU): the ops that need no kernel of
their own, and the checks both make before an in-place update."""
from __future__ import annotations

import time

from ..errors import ShapeError


def nchw_to_nhwc(xp, x):
    """(N, C, H, W) -> contiguous (N, H, W, C)."""
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nhwc_to_nchw(xp, x):
    """(N, H, W, C) -> contiguous (N, C, H, W)."""
    return xp.ascontiguousarray(x.transpose(0, 3, 1, 2))


def dropout_mask(rng, shape, p, dtype):
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p); ``rng.random``
    gives uniform draws on the array module the mask should live on."""
    keep = rng.random(shape) >= p
    return (keep / (1.0 - p)).astype(dtype)


def gradcam_maps(xp, acts, dacts):
    """Backend.gradcam_maps on array module ``xp``: acts, dacts (N, H, W, C) -> (N, H, W)."""
    weights = dacts.mean(axis=(1, 2))                                    # (N, C)
    cam = xp.maximum((acts * weights[:, None, None, :]).sum(axis=3), 0)  # (N, H, W)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return xp.where(peak > 0, cam / xp.where(peak > 0, peak, 1), 0)


def wall_clock_steps(step, n: int) -> list[float]:
    """Seconds per call of ``n`` calls of ``step``, by the host's clock: right
    where nothing is left queued when ``step`` returns (CPU, emulated GPU)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def check_update_group(*groups) -> None:
    """Before an in-place optimiser update: every array of each group (gradients,
    moments, buffers) matches the parameter at its position in ``groups[0]`` in
    shape and dtype, and is C-contiguous (the kernels index flat memory; a
    strided view would be updated in a copy and the step lost)."""
    first = groups[0]
    for group in groups:
        for a, p in zip(group, first):
            if a.shape != p.shape or a.dtype != p.dtype or not a.flags.c_contiguous:
                raise ShapeError(f"optimiser update: a state or gradient array of shape {a.shape} ({a.dtype}) "
                                 f"does not match its parameter {p.shape} ({p.dtype}), or is not contiguous.")
