"""The backend contract (xraynet/backends/contract.py) holds on both sides:

* every backend implements every op of the contract, signature for signature
  (parameter names, kinds and defaults), and offers nothing public beyond it;
* every backend object (CPU, the emulated GPU, a real GPU where there is one)
  carries the contract's attributes;
* the code that uses backends (layers, model, optimisers, training,
  screening, the benchmark, the CLI) calls nothing outside the contract and
  never probes a backend with hasattr/getattr.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from helpers import BACKENDS, make_backend
from xraynet.backends import (BACKEND_NAMES, CONTRACT_ATTRIBUTES, CONTRACT_OPS, Backend, backend_class,
                              get_backend)
from xraynet.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {name: backend_class(name) for name in BACKEND_NAMES}


def _params(fn) -> list[tuple]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_contract_lists_every_op_with_its_spec():
    assert len(CONTRACT_OPS) >= 30, f"contract ops: {CONTRACT_OPS}"
    undocumented = [op for op in CONTRACT_OPS if not (getattr(Backend, op).__doc__ or "").strip()]
    assert not undocumented, f"contract ops without a docstring (their spec): {undocumented}"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_backend_implements_every_op_signature_for_signature(name):
    cls = CLASSES[name]
    assert not getattr(cls, "__abstractmethods__", None), \
        f"{cls.__name__} leaves contract ops unimplemented: {sorted(cls.__abstractmethods__)}"
    for op in CONTRACT_OPS:
        impl = getattr(cls, op)
        assert impl is not getattr(Backend, op), f"{cls.__name__}.{op}: not implemented (the contract's stub)"
        assert _params(impl) == _params(getattr(Backend, op)), (
            f"{cls.__name__}.{op}{inspect.signature(impl)} differs from the contract's "
            f"{op}{inspect.signature(getattr(Backend, op))}")


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_no_backend_offers_public_names_outside_the_contract(name):
    """What a backend adds beyond the contract is private (``_name``) or a tuning constant
    (``UPPER_CASE``): no caller can come to depend on one backend's extras."""
    cls = CLASSES[name]
    public = {n for k in cls.__mro__ if k.__module__.startswith("xraynet.backends.") and k is not Backend
              for n in vars(k) if not n.startswith("_") and not n.isupper()}
    extra = sorted(public - set(CONTRACT_OPS) - set(CONTRACT_ATTRIBUTES))
    assert not extra, f"{cls.__name__} has public names outside the contract: {extra}"


@pytest.mark.parametrize("which", BACKENDS)
def test_each_backend_object_carries_the_contract(which):
    bk = make_backend(which)
    assert isinstance(bk, Backend)
    assert bk.name in BACKEND_NAMES, f"backend {which}: name {bk.name!r}"
    assert bk.direct_first_conv in (None, True, False)
    assert isinstance(bk.device_name(), str) and bk.device_name()
    for op in CONTRACT_OPS:
        assert callable(getattr(bk, op)), f"backend {which}: {op} is not callable"


def test_the_registry_hands_out_the_registered_backends():
    assert isinstance(get_backend("cpu"), CLASSES["cpu"])
    assert get_backend("cpu") is get_backend("cpu"), "one backend per device and process"
    with pytest.raises(BackendError, match="backend 'tpu': unknown"):
        backend_class("tpu")


# ------------------------------------------------------------------- the callers
def _caller_files() -> list[Path]:
    files = [p for p in (ROOT / "xraynet").rglob("*.py") if "backends" not in p.relative_to(ROOT).parts]
    return files + list((ROOT / "cli").rglob("*.py"))


def _is_backend(node) -> bool:
    """``bk``, ``self.bk``, ``model.bk``, ...: an expression naming a backend."""
    return (isinstance(node, ast.Name) and node.id == "bk") or (isinstance(node, ast.Attribute) and node.attr == "bk")


def _backend_uses(tree) -> tuple[list, list]:
    """(attributes read from a backend, hasattr/getattr calls probing one) as (line, text) pairs."""
    uses, probes = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_backend(node.value):
            uses.append((node.lineno, node.attr))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and node.args and _is_backend(node.args[0])):
            probes.append((node.lineno, node.func.id))
    return uses, probes


def test_callers_use_only_contract_names_and_never_probe():
    allowed = set(CONTRACT_OPS) | set(CONTRACT_ATTRIBUTES)
    outside, probing, seen = [], [], set()
    for path in _caller_files():
        rel = str(path.relative_to(ROOT))
        uses, probes = _backend_uses(ast.parse(path.read_text()))
        seen.update(rel for _ in uses[:1])
        outside += [f"{rel}:{line}: bk.{attr}" for line, attr in uses if attr not in allowed]
        probing += [f"{rel}:{line}: {fn}(bk, ...)" for line, fn in probes]
    assert {"xraynet/layers.py", "xraynet/model.py", "xraynet/optim.py", "xraynet/bench.py"} <= seen, \
        f"the scan found backend calls only in {sorted(seen)}"
    assert not outside, "backend names outside the contract:\n" + "\n".join(outside)
    assert not probing, "backends probed instead of called:\n" + "\n".join(probing)
