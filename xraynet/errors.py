"""The one exception hierarchy of xraynet.

Every message follows one pattern so that a user reading it in a cron mail
knows what to do:

    <file or thing>: <what happened>. Expected <X>, got <Y>. <What to do>.
"""
from __future__ import annotations


class XraynetError(Exception):
    """Base class of every error xraynet raises on purpose."""


class SpecError(XraynetError, ValueError):
    """An architecture spec (built-in or JSON file) is malformed."""


class ShapeError(XraynetError, ValueError):
    """An array handed to a layer or kernel has the wrong shape or dtype."""


class ModelFileError(XraynetError):
    """A model file cannot be read, or is not a valid xraynet model."""


class BackendError(XraynetError, RuntimeError):
    """A compute backend is unknown or cannot be used on this machine."""


class MissingDependencyError(XraynetError, ImportError):
    """An optional dependency is needed for what was asked but not installed."""


def missing_dependency(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """The error for an optional dependency, naming the install command."""
    return MissingDependencyError(
        f"{package}: not installed, but it is needed {purpose}. "
        f'Install it with: pip install "xraynet[{extra}]"'
    )
