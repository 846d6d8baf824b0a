#!/usr/bin/env python3
"""How much reduced-size decoding changes what the bundled model says about real films.

For the films under DATA (default ../shared/data/cxr, read through its
metadata.csv), each film is decoded twice -- at full size, and at reduced size
as :func:`xraynet.imaging.load` does (JPEG DCT scaling, then a box mean, down
to :func:`~xraynet.imaging.reduced_side`, for each ``--margin``) -- and
preprocessed for the bundled model. Prints, per margin:

* how many films were reduced at all, and the max / median / 99th percentile of
  |p_covid(reduced) - p_covid(full)| over the reduced ones, and how many flags
  (p_covid >= the model's threshold) change;
* the same against the pipeline of version 2 (full size, equalisation through
  np.histogram + np.interp), which trained the bundled model;
* the same for a one-pixel shift of the full-size film (the first row and column
  cut): how much the model moves for a change nobody would call a change;
* the max and mean |difference| of the network input (per-image-normalised units);
* the warnings that differ;
* covid-vs-normal AUC within the SIIM films (the honest disease signal) and
  covid-vs-rest over the other sources, both ways;
* the single-thread decode + preprocess time of the reduced films, full vs
  reduced (interleaved, medians).

    python benchmarks/reduced_decode_check.py [DATA] [--siim 400] [--margin 2 --margin 1.5]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np

from xraynet import imaging
from xraynet.errors import ImageError
from xraynet.metrics import roc_auc
from xraynet.modelfile import bundled_model_path, load_model

SIIM = "vikasb512/Capstone-Project"


def _films(data: Path, n_siim: int, seed: int = 0) -> list[dict]:
    rows = list(csv.DictReader(open(data / "metadata.csv", newline="")))
    siim = [r for r in rows if r["source_repo"] == SIIM]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(siim), size=min(n_siim, len(siim)), replace=False)
    return [r for r in rows if r["source_repo"] != SIIM] + [siim[i] for i in sorted(pick)]


def _equalize_v2(pixels, bins=imaging.EQUALIZE_BINS):
    """Histogram equalisation as pipeline version 2 computed it (np.histogram, np.interp)."""
    p = np.asarray(pixels, dtype=np.float32)
    lo, hi = float(p.min()), float(p.max())
    if hi <= lo:
        return np.zeros_like(p)
    hist, edges = np.histogram(p, bins=bins, range=(lo, hi))
    cdf = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    cdf /= cdf[-1]
    return np.interp(p, edges, cdf).astype(np.float32)


def _preprocess_v2(decoded, prep):
    new, imaging.equalize_histogram = imaging.equalize_histogram, _equalize_v2
    try:
        return imaging.preprocess(decoded, prep)
    finally:
        imaging.equalize_histogram = new


def _decode_both(path, prep, side):
    t0 = time.perf_counter()
    full = imaging.decode(path)
    x_full = imaging.preprocess(full, prep)
    t1 = time.perf_counter()
    red = imaging.decode(path, min_side=side)
    x_red = imaging.preprocess(red, prep)
    t2 = time.perf_counter()
    extra = (_preprocess_v2(full, prep), imaging.preprocess(full.pixels[1:, 1:], prep))
    return full, x_full, red, x_red, t1 - t0, t2 - t1, extra


def _auc(p, rows, mask, positive):
    labels = np.array([r["label"] for r in rows])
    pos = labels[mask] == "covid"
    keep = np.ones(mask.sum(), bool) if positive == "rest" else np.isin(labels[mask], ["covid", "normal"])
    return roc_auc(p[mask][keep], pos[keep])


def _moves(a, b, mask, threshold):
    d = np.abs(a - b)[mask]
    flips = int(((a >= threshold) != (b >= threshold))[mask].sum())
    if not d.size:
        return {"max": 0.0, "median": 0.0, "p99": 0.0, "flag_flips": flips}
    return {"max": round(float(d.max()), 4), "median": round(float(np.median(d)), 4),
            "p99": round(float(np.quantile(d, 0.99)), 4), "flag_flips": flips}


def check(data: Path, n_siim: int, margin: float, model, classes, prep, threshold: float) -> dict:
    imaging_margin, imaging.REDUCE_MARGIN = imaging.REDUCE_MARGIN, margin
    try:
        side = imaging.reduced_side(prep)
    finally:
        imaging.REDUCE_MARGIN = imaging_margin
    rows = _films(data, n_siim)
    xf, xr, xv2, xs, used, reduced, warn_diff, t_full, t_red, in_diff = [], [], [], [], [], [], [], [], [], []
    for r in rows:
        try:
            full, x_full, red, x_red, tf, tr, (x_v2, x_shift) = _decode_both(data / r["file"], prep, side)
        except ImageError:
            continue
        used.append(r)
        xf.append(x_full)
        xr.append(x_red)
        xv2.append(x_v2)
        xs.append(x_shift)
        was_reduced = red.pixels.shape != full.pixels.shape
        reduced.append(was_reduced)
        if was_reduced:
            t_full.append(tf)
            t_red.append(tr)
            in_diff.append(np.abs(x_full - x_red))
        if full.warnings != red.warnings:
            warn_diff.append((r["file"], full.warnings, red.warnings))
    ci = list(classes).index("covid")
    def p_covid(xs_):
        return model.predict_proba(np.stack(xs_)[:, None], batch_size=64)[:, ci]

    pf, pr, pv2, ps = p_covid(xf), p_covid(xr), p_covid(xv2), p_covid(xs)
    red_mask = np.array(reduced)
    everyone = np.ones(len(used), bool)
    siim = np.array([r["source_repo"] == SIIM for r in used])
    return {
        "margin": margin, "reduced_side": side, "films": len(used), "reduced_films": int(red_mask.sum()),
        "dp_covid_reduced_vs_full": _moves(pr, pf, red_mask, threshold),
        "dp_covid_reduced_vs_v2_pipeline": _moves(pr, pv2, everyone, threshold),
        "dp_covid_full_vs_v2_pipeline": _moves(pf, pv2, everyone, threshold),
        "dp_covid_one_pixel_shift": _moves(ps, pf, everyone, threshold),
        "max_abs_input_diff": max((float(d.max()) for d in in_diff), default=0.0),
        "mean_abs_input_diff": float(np.mean([d.mean() for d in in_diff])) if in_diff else 0.0,
        "warnings_differ": len(warn_diff), "warning_examples": warn_diff[:5],
        "siim_auc_full": _auc(pf, used, siim, "normal"), "siim_auc_reduced": _auc(pr, used, siim, "normal"),
        "siim_reduced_films": int((red_mask & siim).sum()),
        "other_auc_full": _auc(pf, used, ~siim, "rest"), "other_auc_reduced": _auc(pr, used, ~siim, "rest"),
        "ms_per_reduced_film_full": 1000 * statistics.median(t_full) if t_full else None,
        "ms_per_reduced_film_reduced": 1000 * statistics.median(t_red) if t_red else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/cxr")
    ap.add_argument("--siim", type=int, default=400, help="SIIM films sampled (seeded)")
    ap.add_argument("--margin", type=float, action="append", help="REDUCE_MARGIN values to try (default: the "
                    "library's)")
    args = ap.parse_args(argv)
    loaded = load_model(bundled_model_path())
    model = loaded.model
    prep = imaging.Preprocessing.from_dict(loaded.preprocessing)
    for margin in args.margin or [imaging.REDUCE_MARGIN]:
        res = check(args.data, args.siim, margin, model, loaded.classes, prep,
                    float(loaded.metadata["threshold"]["value"]))
        for k, v in res.items():
            print(f"{k:30s} {v:.4g}" if isinstance(v, float) else f"{k:30s} {v}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
