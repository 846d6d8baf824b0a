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
        for name in ("lr", "adversarial_source", "balance_power"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0:
                raise TrainingError(f"{name.replace('_', '-')}: not usable. Expected a finite number >= 0, got "
                                    f"{value!r}. Pass e.g. --adversarial-source 0.3, --lr 1e-3.")

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
