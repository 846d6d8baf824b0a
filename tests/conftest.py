"""Shared fixtures: ``backend`` runs one test body per compute backend (the GPU
case skips with the reason when that backend cannot be used here)."""
from __future__ import annotations

import pytest

from xraynet.backend import get_backend
from xraynet.errors import BackendError


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    try:
        return get_backend(request.param)
    except BackendError as e:
        pytest.skip(f"backend {request.param!r} unavailable here: {e}")
