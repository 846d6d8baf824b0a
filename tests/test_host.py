"""The processor as xraynet reports it: ``xraynet info``, ``xraynet bench --json`` rows and the
machine kind that names a benchmark results file."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xraynet.backends.host import cpu_description, cpu_simd_flags, machine_kind
from xraynet.cli.main import app

KEYS = {"cpu_model", "cpu_target", "cpu_simd", "cpu_cores", "blas", "machine_kind"}


def test_cpu_description_has_every_key_with_its_type():
    d = cpu_description()
    assert set(d) == KEYS
    assert isinstance(d["cpu_model"], str) and d["cpu_model"]
    assert isinstance(d["cpu_simd"], list) and all(isinstance(f, str) for f in d["cpu_simd"])
    assert d["cpu_simd"] == sorted(d["cpu_simd"])
    assert isinstance(d["cpu_cores"], int) and d["cpu_cores"] >= 1
    assert d["machine_kind"] == machine_kind(d["cpu_model"], d["cpu_simd"])


def test_simd_flags_are_vector_sets_only():
    assert all(f.startswith(("sse4", "avx", "fma", "amx", "neon", "sve")) for f in cpu_simd_flags())


@pytest.mark.parametrize("model, simd, kind", [
    ("Intel(R) Xeon(R) Processor", ["avx2", "avx512f", "fma"], "intel-xeon-avx512"),
    ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", ["avx2", "avx512f"], "intel-xeon-avx512"),
    ("AMD EPYC 7B13 64-Core Processor", ["avx", "avx2", "fma"], "amd-epyc-avx2"),
    ("AMD EPYC", ["avx2", "avx512f"], "amd-epyc-avx512"),
    ("Neoverse-V2", ["neon", "sve", "sve2"], "neoverse-v-sve"),
    ("", [], "cpu-scalar"),
])
def test_machine_kind_is_vendor_family_and_widest_vector_set(model, simd, kind):
    assert machine_kind(model, simd) == kind


def test_info_prints_the_processor():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    d = cpu_description()
    assert f"cpu             {d['cpu_model']}" in result.output
    assert "machine kind    " + d["machine_kind"] in result.output


def test_info_json_and_bench_rows_carry_the_processor():
    doc = json.loads(CliRunner().invoke(app, ["info", "--json"]).output)
    assert KEYS <= set(doc)
    from xraynet.bench import Timing, run_bench

    row = run_bench("seed", "infer", 1, device="cpu", timing=Timing(iters=1, warmup=1))
    assert KEYS <= set(row) and row["machine_kind"] == doc["machine_kind"]


def test_numba_target_and_features_set_by_environment_are_reported(monkeypatch):
    # NUMBA_CPU_NAME / NUMBA_CPU_FEATURES make Numba compile for another target (the race's
    # --isa avx2 runs the kernels as an AVX2-only machine would): rows must say so.
    from numba.core import config

    host = cpu_simd_flags()
    if "avx512f" not in host:
        pytest.skip("this processor has no AVX-512 to take away")
    monkeypatch.setattr(config, "CPU_NAME", "znver3", raising=False)
    monkeypatch.setattr(config, "CPU_FEATURES", ",".join("-" + f for f in host if f.startswith("avx512")),
                        raising=False)
    d = cpu_description()
    assert d["cpu_target"] == "znver3"
    assert "avx2" in d["cpu_simd"] and not any(f.startswith("avx512") for f in d["cpu_simd"])
    assert d["machine_kind"].endswith("-avx2")
