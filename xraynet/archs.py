"""Architectures as data: the built-in specs and the spec-file loader.

A spec is a JSON-able dict::

    {"name": "seed", "input_shape": [1, 64, 64], "output": "sigmoid",
     "layers": [{"type": "conv2d", "out_channels": 32, "kernel_size": 3,
                 "padding": "valid"}, {"type": "relu"}, ...]}

``output`` is ``"sigmoid"`` (binary: one logit, binary cross-entropy) or
``"softmax"`` (C logits, softmax cross-entropy); the last layer must produce
1 or C outputs accordingly. Layer entries are those of
:func:`xraynet.layers.layer_from_config`.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import SpecError


def _conv(out, padding, kernel=3, stride=1):
    return {"type": "conv2d", "out_channels": out, "kernel_size": kernel, "stride": stride, "padding": padding}


RELU = {"type": "relu"}
POOL = {"type": "maxpool2d", "kernel_size": 2, "stride": 2}
BN = {"type": "batchnorm2d"}


def _head(num_classes: int):
    """Output layer and mode: one logit for two classes, else one per class."""
    if num_classes < 2:
        raise SpecError(f"classes: a classifier needs at least two. Expected >= 2, got {num_classes}. "
                        "Give the data one subfolder per class.")
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def seed_spec(num_classes: int = 2, image_size: int = 64) -> dict:
    """The study's network (ARCHS.md `seed`): two valid 3x3 conv + pool blocks of
    32 filters, dense 256, one logit (binary)."""
    out, mode = _head(num_classes)
    return {"name": "seed", "input_shape": [1, image_size, image_size], "output": mode,
            "layers": [_conv(32, "valid"), RELU, POOL, _conv(32, "valid"), RELU, POOL,
                       {"type": "flatten"}, {"type": "dense", "out_features": 256}, RELU,
                       {"type": "dense", "out_features": out}]}


def wide_spec(num_classes: int = 2, image_size: int = 224) -> dict:
    """ARCHS.md `wide`: five same-padded 3x3 conv + pool blocks (16..256 filters),
    global average pooling, softmax over the classes (two logits when binary)."""
    layers = []
    for f in (16, 32, 64, 128, 256):
        layers += [_conv(f, "same"), RELU, POOL]
    layers += [{"type": "global_avg_pool2d"}, {"type": "dense", "out_features": num_classes}]
    if num_classes < 2:
        _head(num_classes)
    return {"name": "wide", "input_shape": [1, image_size, image_size], "output": "softmax", "layers": layers}


def xraynet_spec(num_classes: int = 3, image_size: int = 224) -> dict:
    """The default screening network (sizing argued in the README): a strided
    stem, six BatchNorm'd 3x3 convs in four stages (32-64-128-256 filters),
    global average pooling, dropout and a linear head; about 0.57 M parameters."""
    out, mode = _head(num_classes)

    def block(f):
        return [_conv(f, "same"), BN, RELU]

    layers = [_conv(32, 2, kernel=5, stride=2), BN, RELU, POOL]      # 224 -> 112 -> 56
    layers += block(64) + block(64) + [POOL]                          # 56 -> 28
    layers += block(128) + block(128) + [POOL]                        # 28 -> 14
    layers += block(256) + [POOL]                                     # 14 -> 7
    layers += [{"type": "global_avg_pool2d"}, {"type": "dropout", "p": 0.3},
               {"type": "dense", "out_features": out}]
    return {"name": "xraynet", "input_shape": [1, image_size, image_size], "output": mode, "layers": layers}


BUILTIN = {"seed": seed_spec, "wide": wide_spec, "xraynet": xraynet_spec}


def builtin_spec(name: str, num_classes: int = 2, image_size: int | None = None) -> dict:
    if name not in BUILTIN:
        raise SpecError(f"architecture {name!r}: unknown. Expected one of {sorted(BUILTIN)} or a .json spec file, "
                        f"got {name!r}.")
    kwargs = {"num_classes": num_classes}
    if image_size is not None:
        kwargs["image_size"] = image_size
    return BUILTIN[name](**kwargs)


def load_spec_file(path) -> dict:
    """Read and validate a JSON spec file."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot be read ({e.strerror}). Expected a JSON architecture spec file. "
                        "Check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid JSON ({e}). Expected a JSON architecture spec. Fix the file.") from None
    validate_spec(spec, str(path))
    return spec


def resolve_arch(arch: str, num_classes: int = 2, image_size: int | None = None) -> dict:
    """`--arch` value: a built-in name or the path of a spec file."""
    if arch in BUILTIN:
        return builtin_spec(arch, num_classes, image_size)
    if arch.endswith(".json") or Path(arch).exists():
        return load_spec_file(arch)
    return builtin_spec(arch)  # raises the unknown-architecture error


def validate_spec(spec, where: str = "spec") -> None:
    """Check a spec's structure; layer arguments are checked when layers are built."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: expected a JSON object, got {type(spec).__name__}. Fix the spec.")
    for key in ("input_shape", "output", "layers"):
        if key not in spec:
            raise SpecError(f"{where}: missing key {key!r}. Expected keys input_shape, output, layers, "
                            f"got {sorted(spec)}. Add it.")
    shape = spec["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise SpecError(f"{where}: input_shape must be [channels, height, width] of positive integers, "
                        f"got {shape!r}. Fix the spec.")
    if spec["output"] not in ("sigmoid", "softmax"):
        raise SpecError(f"{where}: output must be 'sigmoid' or 'softmax', got {spec['output']!r}. Fix the spec.")
    if not isinstance(spec["layers"], list) or not spec["layers"]:
        raise SpecError(f"{where}: layers must be a non-empty list, got {spec['layers']!r}. Fix the spec.")
