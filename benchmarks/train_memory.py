#!/usr/bin/env python3
"""Training memory against the number of films: streamed from the decode cache or held in memory.

Writes ``max(--sizes)`` generated 8-bit PNG films (two dark lungs on a noisy
field, half of them with a bright blob; ``--film-size`` px) and, for each N in
``--sizes``, a folder holding the first N of them (hard links). Then, per N:

1. one streamed run that fills the folder's decode cache (its peak includes
   decoding; reported as ``cold``);
2. ``--rounds`` rounds of one in-memory run and one streamed run, interleaved
   (so a machine shared with other work biases both alike), each reading the
   filled cache.

Every run is a fresh ``python`` process training ``--arch`` (default ``seed``)
at ``--image-size`` px for one epoch (batch 32, augmentation on, ``--workers``
decoding threads, ``--threads`` Numba/BLAS threads), through
``xraynet.training.train`` (``in_memory=True`` for the reference path). Peak
memory is the child's own ``ru_maxrss`` (os.wait4), epoch time the history's
``seconds`` (the training pass and validation), both medians over the rounds.

Epoch time is noisy on a shared machine, so a further process per N trains
both paths on one model, interleaved by chunks of ``--chunk`` batches (A B,
B A, ...), then times both validation passes (``interleaved_*``: summed
seconds, the median of the per-chunk ratios, and the seconds the streamed
path's training thread waited for a batch): the figures to judge the 1.1x
target by.

Prints one JSON line: per N and mode the peak RSS (MB) and epoch seconds;
the growth of peak RSS from the smallest to the largest N per mode (target:
streamed < 60 MB for 300 -> 3000 films); and per N the epoch-time ratio
streamed / in-memory (target <= 1.1).

    python benchmarks/train_memory.py                        # 300 and 3000 films, 2 rounds
    python benchmarks/train_memory.py --sizes 300 3000 --rounds 3 --work /tmp/tm   # keep the films
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024


def write_films(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` films in ``folder/normal`` and ``folder/opacity`` (alternating), 8-bit PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) | \
            (((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    for label in ("normal", "opacity"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = 0.75 - 0.45 * lungs + 0.06 * rng.standard_normal((size, size))
        label = ("normal", "opacity")[i % 2]
        if label == "opacity":
            cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
            img += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06 ** 2))
        path = folder / label / f"film_{i:05d}.png"
        if not path.exists():
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def subset(films: Path, folder: Path, n: int) -> Path:
    """``folder`` holding the first ``n`` films of ``films`` as hard links."""
    for label in ("normal", "opacity"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = ("normal", "opacity")[i % 2]
        target = folder / label / f"film_{i:05d}.png"
        if not target.exists():
            os.link(films / label / f"film_{i:05d}.png", target)
    return folder


def child(args) -> None:
    """One training run; prints {"epoch_seconds", "wall_seconds", "train_images"} as JSON."""
    from xraynet.training import TrainOptions, train

    opts = TrainOptions(arch=args.arch, image_size=args.image_size, epochs=1, batch_size=32, workers=args.workers,
                        device="cpu", cache=args.cache, seed=0)
    t0 = time.perf_counter()
    summary = train(args.root, args.out, opts, in_memory=args.mode == "memory")
    from xraynet.modelfile import load_model

    history = load_model(args.out).history
    print(json.dumps({"epoch_seconds": history[-1]["seconds"], "wall_seconds": time.perf_counter() - t0,
                      "train_images": summary["train_images"]}))


def time_child(args) -> None:
    """Training time of both paths in one process, interleaved finely enough for a shared
    machine: the epoch's batches in chunks of ``--chunk``, each chunk trained once per path
    (A B, then B A for the next chunk) on one model (a step's cost does not depend on the
    weights), then the validation pass, A B B A. The in-memory path indexes the stack on the
    training thread as training did before it streamed; the streamed path reads through
    :class:`~xraynet.training.films.Prefetch`, whose time spent waiting for a batch is kept.
    Prints {"train": {mode: [s per chunk]}, "val": {mode: [s]}, "stream_waited_s": s} as JSON."""
    from xraynet.training import Callbacks, TrainOptions
    from xraynet.training.films import predict_films
    from xraynet.training.setup import prepare_data, start_state

    opts = TrainOptions(arch=args.arch, image_size=args.image_size, epochs=100, batch_size=32, workers=args.workers,
                        device="cpu", cache=args.cache, seed=0)
    out = Path(args.out)
    data = {"memory": prepare_data(args.root, out, opts, Callbacks(), in_memory=True)}
    data["stream"] = prepare_data(args.root, out, opts, Callbacks())  # opens the cache after the other closed it
    state = start_state(args.root, data["stream"], opts)
    model, n = state.model, len(data["stream"].y_train)
    order = np.random.default_rng(0).permutation(n)
    batches = [order[b:b + opts.batch_size] for b in range(0, n, opts.batch_size)]
    # Warm-up, untimed: the Numba kernels load from their disk cache on first use.
    model.train_step(data["memory"].films_train.x[batches[0]][:, None], data["memory"].y_train[batches[0]],
                     state.optimizer)
    times: dict = {"train": {"memory": [], "stream": []}, "val": {"memory": [], "stream": []}, "stream_waited_s": 0.0}
    for c, first in enumerate(range(0, len(batches), args.chunk)):
        part = batches[first:first + args.chunk]
        for mode in (("memory", "stream") if c % 2 == 0 else ("stream", "memory")):
            times["train"][mode].append(_train_chunk(model, state.optimizer, data[mode], part, mode, times))
    for r in range(4):
        for mode in (("memory", "stream") if r % 2 == 0 else ("stream", "memory")):
            t0 = time.perf_counter()
            predict_films(model, data[mode].films_val, opts.batch_size)
            times["val"][mode].append(time.perf_counter() - t0)
    data["stream"].close()
    print(json.dumps(times))


def _train_chunk(model, optimizer, d, part: list, mode: str, times: dict) -> float:
    """Seconds to train on the batches ``part`` of TrainingData ``d`` (augmented, as training does)."""
    from xraynet.augment import Augmentation, augment_batch
    from xraynet.training.films import Prefetch

    rng, aug = np.random.default_rng(1), Augmentation()
    t0 = time.perf_counter()
    if mode == "memory":
        for idx in part:
            xb = augment_batch(d.films_train.x[idx], rng, aug)
            model.train_step(xb[:, None], d.y_train[idx], optimizer, class_weights=d.class_weights)
    else:
        with Prefetch(d.films_train, part) as films:
            for idx, xb in zip(part, films):
                xb = augment_batch(xb, rng, aug)
                model.train_step(xb[:, None], d.y_train[idx], optimizer, class_weights=d.class_weights)
        times["stream_waited_s"] += films.waited
    return time.perf_counter() - t0


def run_child(root: Path, out: Path, cache: Path, mode: str, args) -> dict:
    """Train once in a fresh process; its figures plus ``peak_rss_mb`` (its ru_maxrss)."""
    env = {**os.environ, "NUMBA_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(out.stem + "*"):
        if old != cache:
            old.unlink()
    cmd = [sys.executable, __file__, "--child", "--root", str(root), "--out", str(out), "--cache", str(cache),
           "--mode", mode, "--arch", args.arch, "--image-size", str(args.image_size),
           "--workers", str(args.workers), "--timing-rounds", str(args.timing_rounds), "--chunk", str(args.chunk)]
    with tempfile.TemporaryFile("w+") as err:
        # wait4, not communicate(): it gives this child's own rusage (RUSAGE_CHILDREN would be
        # the largest of all children so far).
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"training run failed ({mode}, {root}):\n{err.read()[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    if mode == "timing":
        print(f"  {root.name} timing {json.dumps(figures)}", file=sys.stderr, flush=True)
        return figures
    figures["peak_rss_mb"] = usage.ru_maxrss * 1024 / MB  # Linux reports kilobytes
    print(f"  {root.name} {mode:6s} peak {figures['peak_rss_mb']:7.1f} MB  epoch {figures['epoch_seconds']:6.2f} s",
          file=sys.stderr, flush=True)
    return figures


def measure(args, work: Path) -> dict:
    films = work / "films"
    print(f"writing {max(args.sizes)} films of {args.film_size} px to {films}", file=sys.stderr, flush=True)
    write_films(films, max(args.sizes), args.film_size)
    runs: dict = {}
    for n in args.sizes:
        root = subset(films, work / f"data{n}", n)
        cache = work / f"cache{n}.h5"
        runs[n] = {"cold": run_child(root, work / "out" / f"cold{n}.h5", cache, "stream", args),
                   "memory": [], "stream": []}
        for _ in range(args.rounds):
            for mode in ("memory", "stream"):
                runs[n][mode].append(run_child(root, work / "out" / f"{mode}{n}.h5", cache, mode, args))
        if args.timing_rounds:
            runs[n]["timing"] = run_child(root, work / "out" / f"timing{n}.h5", cache, "timing", args)
    return runs


def summarise(runs: dict, args) -> dict:
    def med(rows, key):
        return round(statistics.median(r[key] for r in rows), 2) if rows else None

    per_n = {str(n): {"train_images": r["cold"]["train_images"],
                      "cold_stream_peak_rss_mb": round(r["cold"]["peak_rss_mb"], 1),
                      **{f"{mode}_peak_rss_mb": med(r[mode], "peak_rss_mb") for mode in ("memory", "stream")},
                      **{f"{mode}_epoch_s": med(r[mode], "epoch_seconds") for mode in ("memory", "stream")},
                      "epoch_ratio_stream_over_memory": round(
                          statistics.median(s["epoch_seconds"] / m["epoch_seconds"]
                                            for s, m in zip(r["stream"], r["memory"])), 3) if r["stream"] else None}
             for n, r in runs.items()}
    for n, r in runs.items():
        if "timing" in r:
            t, row = r["timing"], per_n[str(n)]
            for part in ("train", "val"):
                pairs = list(zip(t[part]["stream"], t[part]["memory"]))
                row[f"interleaved_{part}_s"] = {m: round(sum(t[part][m]), 2) for m in ("memory", "stream")}
                row[f"interleaved_{part}_ratio_median"] = round(statistics.median(s / m for s, m in pairs), 3)
            row["interleaved_stream_waited_s"] = round(t["stream_waited_s"], 3)
    lo, hi = str(min(args.sizes)), str(max(args.sizes))
    growth = {f"{mode}_growth_mb": round(per_n[hi][f"{mode}_peak_rss_mb"] - per_n[lo][f"{mode}_peak_rss_mb"], 1)
              for mode in ("memory", "stream") if per_n[lo][f"{mode}_peak_rss_mb"] is not None}
    growth["cold_stream_growth_mb"] = round(per_n[hi]["cold_stream_peak_rss_mb"] - per_n[lo]["cold_stream_peak_rss_mb"], 1)
    return {"bench": "train_memory", "arch": args.arch, "image_size": args.image_size, "film_size": args.film_size,
            "threads": args.threads, "rounds": args.rounds, "sizes": args.sizes, "per_n": per_n, **growth,
            "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 3000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arch", default="seed")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--film-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, help="folder for the films, caches and models (default: a temporary one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--timing-rounds", type=int, default=1,
                    help="1: also time both paths in one process, interleaved by chunks of batches; 0: do not")
    ap.add_argument("--chunk", type=int, default=4, help="batches per interleaved timing chunk")
    ap.add_argument("--mode", choices=("memory", "stream", "timing"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        (time_child if args.mode == "timing" else child)(args)
        return
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        runs = measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="xraynet-train-memory-") as tmp:
            runs = measure(args, Path(tmp))
    print(json.dumps(summarise(runs, args)))


if __name__ == "__main__":
    main()
