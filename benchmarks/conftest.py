"""Shared fixtures for the pytest-benchmark suite.

Run with ``pytest benchmarks --benchmark-enable`` (the project's pytest
options disable benchmarks by default so the test suite stays fast). Each
benchmark asserts correctness once before timing, and JIT compilation is
kept out of the timed rounds by a warm-up call.
"""
import numba
import pytest
from threadpoolctl import threadpool_limits

THREADS = 2


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """Two threads for Numba and BLAS, as in the benchmark matrix."""
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(limits=THREADS, user_api="blas"):
        yield
