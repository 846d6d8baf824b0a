"""The options of one training run (:class:`TrainOptions`) and what follows from them alone.

``xraynet train``'s command-line defaults are these fields' defaults
(``xraynet.cli``), so the library and the command train the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import TrainingError

DEFAULT_IMAGE_SIZE = {"seed": 64, "wide": 224, "xraynet": 224}
LR_SCHEDULES = ("constant", "cosine")
BALANCE_MODES = ("none", "source-class")
#: Epochs over which the source adversary's reversal scale ramps up to its peak
#: (xraynet.adversarial.dann_scale). A fixed count rather than a share of
#: --epochs, so that extending a run with --resume keeps the same schedule.
ADVERSARY_RAMP_EPOCHS = 4


#: The numeric options' ranges: (lowest, highest or None, which ends are excluded ("", "low", "high",
#: "both"), int or float, an example). The command line's ranges are these (xraynet.cli.train_cmd).
NUMBER_RANGES = {
    "epochs": (1, None, "", int, "30"),
    "batch_size": (1, None, "", int, "32"),
    "image_size": (16, 4096, "", int, "224"),
    "working_size": (16, 8192, "", int, "512"),
    "lr": (0.0, None, "low", float, "1e-3"),
    "weight_decay": (0.0, None, "", float, "1e-4"),
    "val_fraction": (0.0, 1.0, "both", float, "0.2"),
    "seed": (0, 2**32 - 1, "", int, "0"),
    "patience": (1, None, "", int, "8"),
    "workers": (1, None, "", int, "2"),
    "border_crop": (0.0, 0.4, "", float, "0.05"),
    "balance_power": (0.0, 1.0, "", float, "0.5"),
    "adversarial_source": (0.0, None, "", float, "0.3"),
    "target_sensitivity": (0.0, 1.0, "low", float, "0.95"),
}


def range_text(name: str) -> str:
    """``NUMBER_RANGES[name]`` in words: "an integer from 16 to 4096", "a finite number > 0"."""
    low, high, open_, kind, _ = NUMBER_RANGES[name]
    what = "an integer" if kind is int else "a finite number"
    low, high = (f"{v:g}" if isinstance(v, float) else v for v in (low, high))
    lower = f"{'>' if open_ in ('low', 'both') else '>='} {low}"
    if high is None:
        return f"{what} {lower}"
    if not open_:
        return f"{what} from {low} to {high}"
    return f"{what} {lower} and {'<' if open_ in ('high', 'both') else '<='} {high}"


def in_range(name: str, value) -> bool:
    """Whether ``value`` is a usable ``name`` (:data:`NUMBER_RANGES`; no bool, no NaN)."""
    low, high, open_, kind, _ = NUMBER_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        return False
    if not math.isfinite(value):
        return False
    above = value > low if open_ in ("low", "both") else value >= low
    below = high is None or (value < high if open_ in ("high", "both") else value <= high)
    return above and below


@dataclass
class TrainOptions:
    """Everything that says how a run trains (the recipe), plus where and how fast it computes
    (``device``, ``workers``, ``cache``). Invalid choices that are cheap to check raise
    :class:`~xraynet.errors.TrainingError` on construction."""

    arch: str = "xraynet"
    epochs: int = 30
    batch_size: int = 32
    image_size: int | None = None      # default: the architecture's own
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 8
    device: str = "auto"               # 'auto', 'cpu' or 'gpu' (xraynet.devices): the GPU where one is usable
    workers: int = 2
    augment: bool = True
    fit: str = "pad"
    border_crop: float = 0.0
    equalize: bool = False
    working_size: int | None = None
    screening_class: str | None = None  # default: 'covid' if present, else the last class
    target_sensitivity: float = 0.95
    cache: str | None = None            # decode cache file; default beside the output model
    holdout_sources: list[str] = field(default_factory=list)  # source_repo values left out of train and val
    balance: str = "none"               # "none" or "source-class": batches drawn by (source, class) cell
    balance_power: float = 0.5          # cell share ~ images ** power (see xraynet.sampling)
    adversarial_source: float = 0.0     # peak gradient-reversal scale of the source head; 0 = no head
    lr_schedule: str = "constant"       # "constant" or "cosine" (see epoch_lr)

    def __post_init__(self):
        """The choices that are cheap to check, checked before any image is decoded."""
        if self.balance not in BALANCE_MODES:
            raise TrainingError(f"balance {self.balance!r}: unknown. Expected one of {', '.join(BALANCE_MODES)}, "
                                f"got {self.balance!r}. Pick one of those.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"lr schedule {self.lr_schedule!r}: unknown. Expected one of "
                                f"{', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}. Pick one of those.")
        for name, limits in NUMBER_RANGES.items():
            value = getattr(self, name)
            if (value is None and name in ("image_size", "working_size")) or in_range(name, value):
                continue
            flag = "--" + name.replace("_", "-")
            raise TrainingError(f"{flag}: not usable. Expected {range_text(name)}, got {value!r}. Pass e.g. "
                                f"{flag} {limits[-1]}.")

    def input_size(self) -> int:
        """The image size asked for: ``image_size``, else the built-in architecture's own
        (224 for a spec file, whose own input shape then decides)."""
        return self.image_size or DEFAULT_IMAGE_SIZE.get(self.arch, 224)

    def preprocessing(self, image_size: int):
        """The :class:`xraynet.imaging.Preprocessing` of this run for ``image_size`` pixels."""
        from ..imaging import Preprocessing

        return Preprocessing(image_size=image_size, fit=self.fit, border_crop=self.border_crop,
                             equalize=self.equalize, working_size=self.working_size)


def epoch_lr(opts: TrainOptions, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based). ``cosine``: half a cosine from
    ``lr`` at epoch 1 down to ``lr / 100`` at epoch ``epochs`` (Loshchilov & Hutter
    2017, "SGDR", without restarts), so it depends on --epochs: extending a run
    with --resume bends the rest of the curve."""
    if opts.lr_schedule == "constant" or opts.epochs <= 1:
        return opts.lr
    floor = opts.lr / 100
    return floor + 0.5 * (opts.lr - floor) * (1 + math.cos(math.pi * (epoch - 1) / (opts.epochs - 1)))
