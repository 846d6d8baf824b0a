"""Where a run writes: checked before it starts, and tidied of what a killed run left.

A run writes its model, checkpoint, decode cache and history beside ``--out``.
Inside the data folder they would be among the films: the next scan of that
folder takes the history chart for an X-ray of its class. :func:`check_outputs`
refuses that. A run killed while writing (``kill -9``) leaves the hidden
temporary files of :mod:`xraynet.atomic` beside its outputs, some megabytes
each; :func:`remove_leftover_temps` removes those of this run's own outputs,
and only those, when the next run on the same ``--out`` starts.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrainingError


def output_paths(out) -> list[Path]:
    """Every file a run with model ``out`` writes by name: the model, ``NAME.checkpoint.h5``,
    ``NAME.history.csv`` and ``NAME.history.png``."""
    out = Path(out)
    return [out, out.with_name(out.stem + ".checkpoint.h5"), out.with_name(f"{out.stem}.history.csv"),
            out.with_name(f"{out.stem}.history.png")]


def inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def check_outputs(data_dir, out, cache=None, what: str = "--out") -> None:
    """TrainingError when ``out`` (the model file, or for ``what`` another output: a folder)
    or the decode cache ``cache`` lies inside ``data_dir``: the outputs would be scanned
    as films by the next run."""
    for path, flag in ((out, what), (cache, "cache")):
        if path is not None and Path(data_dir).is_dir() and inside(path, data_dir):
            raise TrainingError(f"{path}: inside the data folder {data_dir}. Expected a {flag} outside the data "
                                "folder, got one in it: the model, checkpoint, decode cache and history chart "
                                "would lie among the films, and the next scan would take the chart for an X-ray. "
                                f"Pick a {flag} outside {data_dir}.")


def remove_leftover_temps(out) -> list[Path]:
    """Remove the temporary files a killed run left beside the outputs of model ``out``
    (:func:`xraynet.atomic.leftover_temps` of each :func:`output_paths`); returns them.
    One that cannot be removed is left (it is hidden, and harmless to the run)."""
    from ..atomic import leftover_temps

    removed = []
    for path in output_paths(out):
        for tmp in leftover_temps(path):
            try:
                tmp.unlink()
            except OSError:
                continue
            removed.append(tmp)
    return removed
