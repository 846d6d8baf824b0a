#!/usr/bin/env python3
"""How fast `xraynet screen` runs against the decode-bound limit.

Screens a folder of films and times, in one process, interleaved over
``--rounds`` rounds (medians reported, so a machine shared with other work
biases every mode alike):

1. decode only: every file decoded and preprocessed for the bundled model
   (:func:`xraynet.imaging.load`, the path screening uses) by ``--workers``
   threads, and by ``--workers`` processes: the ceiling, screening cannot be
   faster than reading its input. The better of the two is the decode limit;
2. network only: the bundled model on the preprocessed films, in batches of
   ``--batch-size``, on this process's threads (as screening runs it);
3. `xraynet.screening.screen()` on the folder (hashing, decoding, the network,
   the CSV report), from an empty report, once per ``--pool`` kind.

Prints one JSON line: images/s of each, and the CPU milliseconds each image
took (this process and its worker processes: unlike wall time, not inflated
by other work on a shared machine); screening's ratio to the decode limit
(``_vs_decode_limit``) and to the work limit (``_vs_work_limit``: the rate if
decoding and the network each had every core in turn, 1 / (1 / decode + 1 /
network) -- on a machine where both run on the same cores, screening cannot
beat it, and the ratio to the decode limit cannot exceed decode / (decode +
network) time); and screening's own split of its time (hash, decode, network:
the Summary).

Input: ``--folder PATH`` takes real films (e.g. ../shared/data/cxr): the
files under it whose short side is at least ``--min-side`` pixels (read from
the header; default 700), a seeded random sample of ``--files`` of them,
linked (symlinks, nothing copied) into a temporary folder. Without
``--folder``, ``--files`` synthetic ``--size`` px 8-bit PNG films are written.

    python benchmarks/screen_bench.py --files 200 --workers 2
    python benchmarks/screen_bench.py --folder ../shared/data/cxr --files 400 --workers 2 --rounds 3

With ``--cluster local:2`` (or a scheduler address) a further timing screens
the same folder on the Dask cluster (startup included) and prints
``cluster_screen_images_per_s``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_films(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.75 - 0.45 * ((((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
                          | (((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1))
    paths = []
    for i in range(n):
        img = np.clip(base + 0.08 * rng.standard_normal((size, size)), 0, 1)
        p = folder / f"film_{i:05d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def large_films(source: Path, n: int, min_side: int, seed: int = 0) -> list[tuple[int, Path]]:
    """A seeded sample of ``n`` films under ``source`` whose header says the short side is
    >= ``min_side``: [(index among those films, path)], in their sorted order."""
    from xraynet.discovery import find_images

    big = []
    for _, path in find_images(source).files:
        try:
            with Image.open(path) as im:
                if min(im.size) >= min_side:
                    big.append(path)
        except Exception:  # noqa: BLE001 -- DICOM or unreadable: not sampled
            continue
    big.sort()
    rng = np.random.default_rng(seed)
    return [(int(i), big[i]) for i in sorted(rng.choice(len(big), size=min(n, len(big)), replace=False))]


def link_films(source: Path, folder: Path, n: int, min_side: int, seed: int = 0) -> list[Path]:
    """Symlinks in ``folder`` to :func:`large_films` (nothing copied)."""
    paths = []
    for i, path in large_films(source, n, min_side, seed):
        link = folder / f"{i:05d}_{os.path.basename(path)}"
        link.symlink_to(os.path.abspath(path))
        paths.append(link)
    return paths


def _decode_threads(paths, prep, workers):
    from concurrent.futures import ThreadPoolExecutor

    from xraynet.imaging import load

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda p: load(p, prep), paths):
            pass


def _decode_processes(paths, prep, workers):
    from xraynet.screening.decodepool import DecodePool
    from xraynet.screening.batch import ImageFile

    with DecodePool(workers, "processes") as pool:
        pending = [pool.submit(ImageFile(str(p), str(p)), prep) for p in paths]
        for one in pending:
            pool.result(one)


def _network(model, xs, batch_size):
    for i in range(0, len(xs), batch_size):
        model.predict_proba(xs[i:i + batch_size], batch_size=batch_size)


def _have_process_pool() -> bool:
    try:
        import xraynet.screening.decodepool  # noqa: F401
    except ImportError:
        return False
    return True


def _screen_accepts_pool() -> bool:
    from xraynet.screening import ScreenJob

    return "pool" in ScreenJob.__dataclass_fields__


_CPU: dict[int, float] = {}  # id of a timed call -> CPU seconds it took (this process and its children)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system  # children: once they are reaped


def _time(fn) -> float:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    _CPU[id(fn)] = _cpu() - c0
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="real films to sample (default: synthetic PNGs)")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--min-side", type=int, default=700, help="with --folder: only films this large")
    ap.add_argument("--size", type=int, default=1024, help="side of the synthetic films")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pool", default="auto", help="comma-separated screening pool kinds to time "
                    "(auto, threads, processes)")
    ap.add_argument("--cluster", default=None, help="also screen on this Dask cluster (local:N or an address)")
    args = ap.parse_args(argv)

    from xraynet.imaging import Preprocessing, load
    from xraynet.modelfile import bundled_model_path, load_model
    from xraynet.screening import screen

    loaded = load_model(bundled_model_path())
    prep = Preprocessing.from_dict(loaded.preprocessing)
    pools = args.pool.split(",") if _screen_accepts_pool() else ["threads (built in)"]
    times: dict[str, list] = {"decode_threads": []}
    if _have_process_pool():
        times["decode_processes"] = []
    splits: dict[str, list] = {}
    cpu: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "films"
        folder.mkdir()
        if args.folder is not None:
            paths = link_films(args.folder, folder, args.files, args.min_side)
        else:
            paths = make_films(folder, args.files, args.size)
        n = len(paths)
        xs = np.stack([load(p, prep)[0] for p in paths])[:, None]  # also the warm-up of decoding
        _network(loaded.model, xs[:args.batch_size], args.batch_size)  # the JIT, outside the timing
        times["network_only"] = []
        def timed(key, fn):
            times.setdefault(key, []).append(_time(fn))
            cpu.setdefault(key, []).append(_CPU.pop(id(fn)))

        for r in range(args.rounds):
            timed("network_only", lambda: _network(loaded.model, xs, args.batch_size))
            timed("decode_threads", lambda: _decode_threads(paths, prep, args.workers))
            if "decode_processes" in times:
                timed("decode_processes", lambda: _decode_processes(paths, prep, args.workers))
            for kind in pools:
                opts = {} if kind.startswith("threads (") else {"pool": kind}
                out = Path(tmp) / f"report_{kind}_{r}.csv"
                timed(f"screen_{kind}", lambda: splits.setdefault(kind, []).append(
                    screen(folder, out, workers=args.workers, batch_size=args.batch_size, **opts)))
        cluster_s = None
        if args.cluster:
            cluster_s = _time(lambda: screen(folder, Path(tmp) / "report_cluster.csv", workers=args.workers,
                                             batch_size=args.batch_size, cluster=args.cluster))
    med = {k: statistics.median(v) for k, v in times.items()}
    decode_limit = min(v for k, v in med.items() if k.startswith("decode_"))
    work_limit = decode_limit + med["network_only"]
    result = {"files": n, "source": str(args.folder or f"synthetic {args.size}px PNG"), "workers": args.workers,
              "rounds": args.rounds, "cpus": os.cpu_count()}
    for k, v in med.items():
        result[f"{k}_images_per_s"] = round(n / v, 2)
    for k, v in cpu.items():
        # CPU time is what a machine shared with other work does not distort: the rate on a quiet
        # machine is at most cores / (CPU seconds per image).
        result[f"{k}_cpu_ms_per_image"] = round(1000 * statistics.median(v) / n, 2)
    for kind, sums in splits.items():
        key = f"screen_{kind}"
        result[f"{key}_vs_decode_limit"] = round(decode_limit / med[key], 3)
        result[f"{key}_vs_work_limit"] = round(work_limit / med[key], 3)
        mid = sorted(sums, key=lambda s: s.seconds)[len(sums) // 2]
        result[f"{key}_split_s"] = {"hash": round(mid.hash_seconds, 2), "decode_all_workers": round(
            mid.decode_seconds, 2), "network": round(mid.network_seconds, 2), "total": round(mid.seconds, 2)}
    if cluster_s is not None:
        result.update(cluster=args.cluster, cluster_screen_images_per_s=round(n / cluster_s, 2),
                      cluster_seconds=round(cluster_s, 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
