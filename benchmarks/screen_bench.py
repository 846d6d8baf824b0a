#!/usr/bin/env python3
"""How fast `xraynet screen` runs against the decode-bound limit.

Writes N synthetic 1024x1024 8-bit PNG films to a temporary folder, then
times, in one process:

1. decode only: every file decoded and preprocessed for the bundled model by
   the same number of worker threads screening uses (the ceiling: screening
   cannot be faster than reading its input);
2. `xraynet.screening.screen()` on the folder (hashing, decoding, the network,
   the CSV report), from an empty report.

Prints images/s for both, their ratio, and screening's own split of time
between decoding and the network.

    python benchmarks/screen_bench.py --files 200 --workers 2

With ``--cluster local:2`` (or a scheduler address) a third timing screens the
same folder into a second report on the Dask cluster (startup included) and
prints ``cluster_screen_images_per_s`` next to the local figure.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cluster", default=None, help="also screen on this Dask cluster (local:N or an address)")
    args = ap.parse_args(argv)

    from xraynet.imaging import Preprocessing, load
    from xraynet.modelfile import bundled_model_path, load_model
    from xraynet.screening import screen

    prep = Preprocessing.from_dict(load_model(bundled_model_path()).preprocessing)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "films"
        folder.mkdir()
        paths = make_films(folder, args.files, args.size)
        load(paths[0], prep)  # warm-up outside the timing
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for _ in pool.map(lambda p: load(p, prep), paths):
                pass
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = screen(folder, Path(tmp) / "report.csv", workers=args.workers, batch_size=args.batch_size)
        screen_s = time.perf_counter() - t0
        cluster_s = None
        if args.cluster:
            t0 = time.perf_counter()
            screen(folder, Path(tmp) / "report_cluster.csv", workers=args.workers, batch_size=args.batch_size,
                   cluster=args.cluster)
            cluster_s = time.perf_counter() - t0
    result = {
        "files": args.files, "size": args.size, "workers": args.workers,
        "decode_only_images_per_s": args.files / decode_s,
        "screen_images_per_s": args.files / screen_s,
        "screen_vs_decode_bound": decode_s / screen_s,
        "screen_decode_seconds": summary.decode_seconds, "screen_network_seconds": summary.network_seconds,
        "screen_seconds": summary.seconds,
    }
    if cluster_s is not None:
        result.update(cluster=args.cluster, cluster_screen_images_per_s=args.files / cluster_s,
                      cluster_seconds=cluster_s)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
