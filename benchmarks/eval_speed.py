#!/usr/bin/env python3
"""How fast the bundled model evaluates films on the CPU, and what each
evaluation path buys: the per-stage time, and A/B ratios in one process,
interleaved over ``--rounds`` rounds (medians), on random 128-px inputs.

* ``fold``: conv + batch norm + ReLU (+ pool) folded into one fused stage
  (:class:`xraynet.model.Model`'s plan) against the same weights run layer by
  layer (``fuse=False``);
* ``winograd4``: 3x3 convolutions by Winograd F(4x4, 3x3) against F(2x2, 3x3)
  (the backend's ``winograd4`` switch, ``XRAYNET_CPU_WINOGRAD4``);
* ``blocks``: ``ConvEngine.WINOGRAD4_BLOCK_BYTES`` swept over ``--block-mb``.

Prints ms per image (wall time x threads: the CPU a core-bound run takes)
and the ratios. Name the CPU (``xraynet info``) with every figure.

    python benchmarks/eval_speed.py --threads 1 --batch 32
    python benchmarks/eval_speed.py --threads 2 --batch 64 --block-mb 2 4 8 16
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _ms_per_image(model, x, batch, threads) -> float:
    t0 = time.perf_counter()
    model.predict_proba(x, batch)
    return (time.perf_counter() - t0) / len(x) * 1e3 * threads


def _race(contestants: dict, x, batch, threads, rounds) -> dict:
    """{name: median ms per image} of ``contestants`` {name: (model, setup())}, interleaved."""
    times = {name: [] for name in contestants}
    for model, setup in contestants.values():  # warm-up: JIT and scratch buffers
        setup()
        model.predict_proba(x[:batch], batch)
    for _ in range(rounds):
        for name, (model, setup) in contestants.items():
            setup()
            times[name].append(_ms_per_image(model, x, batch, threads))
    return {name: statistics.median(v) for name, v in times.items()}


def _stages(model, x, batch) -> list[tuple[str, float]]:
    """(stage, ms per image) of one pass over ``x`` in batches, stage by stage."""
    bk = model.layers[0].bk
    names, totals = [], []
    bounds = [first for first, _ in model._stages] + [len(model.layers)]
    for i in range(len(model._stages)):
        names.append(" + ".join(layer.type for layer in model.layers[bounds[i]:bounds[i + 1]]) + f" [{bounds[i]}]")
        totals.append(0.0)
    for i in range(0, len(x), batch):
        h = bk.nchw_to_internal(bk.asarray(x[i:i + batch], np.float32))
        for k, (_, stage) in enumerate(model._stages):
            t0 = time.perf_counter()
            h = stage.forward(h, False)
            totals[k] += time.perf_counter() - t0
    return [(n, t / len(x) * 1e3) for n, t in zip(names, totals)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-mb", type=int, nargs="*", default=[2, 4, 8, 16])
    args = ap.parse_args(argv)

    from xraynet.backends.cpu_conv import ConvEngine
    from xraynet.backends.host import cpu_description
    from xraynet.model import Model
    from xraynet.modelfile import bundled_model_path, load_model

    model = load_model(bundled_model_path()).model
    bk = model.bk
    bk.set_threads(args.threads)
    chain = Model(model.spec, fuse=False)
    chain.load_state_dict(model.state_dict())
    side = model.input_shape[1]
    x = np.random.default_rng(0).standard_normal((args.images, 1, side, side)).astype(np.float32)
    d = cpu_description()
    print(f"{d['cpu_model']} ({d['machine_kind']}, Numba target {d['cpu_target']}), {args.threads} thread(s), "
          f"batch {args.batch}, {side} px, median of {args.rounds} interleaved rounds")

    default_blocks = ConvEngine.WINOGRAD4_BLOCK_BYTES

    def use(winograd4=True, block_bytes=default_blocks):
        def setup():
            bk.winograd4 = winograd4
            ConvEngine.WINOGRAD4_BLOCK_BYTES = block_bytes
        return setup

    ms = _race({"folded": (model, use()), "layer by layer": (chain, use())}, x, args.batch, args.threads,
               args.rounds)
    print(f"fold: {ms['folded']:.2f} vs {ms['layer by layer']:.2f} ms/image, "
          f"{ms['layer by layer'] / ms['folded']:.2f}x")
    ms = _race({"F(4x4,3x3)": (model, use(True)), "F(2x2,3x3)": (model, use(False))}, x, args.batch,
               args.threads, args.rounds)
    print(f"winograd4: {ms['F(4x4,3x3)']:.2f} vs {ms['F(2x2,3x3)']:.2f} ms/image, "
          f"{ms['F(2x2,3x3)'] / ms['F(4x4,3x3)']:.2f}x")
    if args.block_mb:
        ms = _race({mb: (model, use(True, mb << 20)) for mb in args.block_mb}, x, args.batch, args.threads,
                   args.rounds)
        print("blocks: " + ", ".join(f"{mb} MB {v:.2f}" for mb, v in ms.items()) + " ms/image")
    use()()
    for name, t in _stages(model, x, args.batch):
        print(f"  {name:<45} {t:.3f} ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
