"""Shared fixtures, built from the plain helpers in helpers.py (import those from there, never
from this file).

``backend`` runs one test body per compute backend:

* ``cpu``: NumPy + Numba;
* ``gpu-emu``: the GPU backend's code and CUDA C kernels on NumPy arrays, the
  kernels compiled by g++ and run by the CPU emulator in tests/cudaemu (every
  kernel argument checked against its declared C type);
* ``gpu``: the GPU backend on a real CUDA device (skips with the reason where
  there is none), arguments checked too.

``model_file``: the tiny screening model, once per module. ``dataset``: the
generated film dataset that training runs on, once per module.
"""
from __future__ import annotations

import pytest

from helpers import BACKENDS, make_backend, make_model, write_film_dataset


@pytest.fixture(params=BACKENDS)
def backend(request):
    return make_backend(request.param)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """The untrained SCREEN_SPEC model with a bare operating point (covid at 0.5)."""
    return make_model(tmp_path_factory.mktemp("model") / "tiny.h5",
                      metadata={"threshold": {"class": "covid", "value": 0.5}})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """``(root, spec)``: the generated film dataset (helpers.write_film_dataset) and TRAIN_SPEC as JSON."""
    root = tmp_path_factory.mktemp("films")
    return root, write_film_dataset(root)
