"""Optimisers: Adam and SGD with momentum, with PyTorch's update formulas.

An optimiser holds named parameter arrays (the model's own, updated in place)
and per-parameter state; ``state_dict`` / ``load_state_dict`` round-trip that
state through the model file so training can resume exactly. Every step is
one backend call over all parameters (``adam_update_many`` /
``sgd_update_many``: one launch on the GPU).
"""
from __future__ import annotations

from .backends.contract import AdamHyper, SGDHyper
from .errors import ModelFileError, SpecError


class Optimizer:
    name = ""

    def __init__(self, params: list, bk, lr: float, weight_decay: float):
        if not lr > 0:
            raise SpecError(f"learning rate: expected a positive number, got {lr!r}. Pass e.g. --lr 1e-3.")
        self.params = list(params)  # [(name, array)]
        self.bk, self.lr, self.weight_decay = bk, float(lr), float(weight_decay)
        self.step_count = 0

    def step(self, grads: dict) -> None:
        """Apply one update; ``grads`` maps each parameter name to its gradient."""
        self.step_count += 1
        self._update([grads[n] for n, _ in self.params])

    def _update(self, grads: list) -> None:
        """Update every parameter from its gradient, in ``self.params`` order."""
        raise NotImplementedError

    def _state(self, slot: dict) -> list:
        """A state slot's arrays in ``self.params`` order."""
        return [slot[n] for n, _ in self.params]

    def hyperparams(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """{'step': int, '<slot>/<param name>': array, ...}"""
        out = {"step": self.step_count}
        for slot, arrays in self._slots().items():
            for name, arr in arrays.items():
                out[f"{slot}/{name}"] = self.bk.to_numpy(arr).copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for slot, arrays in self._slots().items():
            for name, arr in arrays.items():
                key = f"{slot}/{name}"
                if key not in state:
                    raise ModelFileError(f"optimiser state: {key} is missing. Expected state for every parameter, "
                                         "got a partial set. Train again without --resume.")
                if tuple(state[key].shape) != tuple(arr.shape):
                    raise ModelFileError(f"optimiser state {key}: wrong shape. Expected {tuple(arr.shape)}, got "
                                         f"{tuple(state[key].shape)}. Train again without --resume.")
                arr[...] = self.bk.asarray(state[key], arr.dtype)


class Adam(Optimizer):
    """Adam (no AMSGrad): ``m = lerp(m, g, 1-b1)``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``; weight decay adds
    ``wd * p`` to the gradient (PyTorch's ``Adam``, not ``AdamW``)."""

    name = "adam"

    def __init__(self, params, bk, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, bk, lr, weight_decay)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.m = {n: bk.zeros(p.shape, p.dtype) for n, p in self.params}
        self.v = {n: bk.zeros(p.shape, p.dtype) for n, p in self.params}

    def _update(self, grads):
        # The hyperparameters are read at every step: training changes lr between epochs.
        hyper = AdamHyper(self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)
        self.bk.adam_update_many([p for _, p in self.params], self._state(self.m), self._state(self.v), grads,
                                 self.step_count, hyper)

    def _slots(self):
        return {"m": self.m, "v": self.v}

    def hyperparams(self):
        return {**super().hyperparams(), "betas": [self.beta1, self.beta2], "eps": self.eps}


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum, dampening 0, as PyTorch's ``SGD``."""

    name = "sgd"

    def __init__(self, params, bk, lr=1e-2, momentum=0.9, weight_decay=0.0, nesterov=False):
        super().__init__(params, bk, lr, weight_decay)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.buf = {n: bk.zeros(p.shape, p.dtype) for n, p in self.params}

    def _update(self, grads):
        hyper = SGDHyper(self.lr, self.momentum, self.weight_decay, self.nesterov)
        self.bk.sgd_update_many([p for _, p in self.params], self._state(self.buf), grads, self.step_count, hyper)

    def _slots(self):
        return {"momentum_buffer": self.buf}

    def hyperparams(self):
        return {**super().hyperparams(), "momentum": self.momentum, "nesterov": self.nesterov}


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def make_optimizer(name: str, params, bk, **hyper) -> Optimizer:
    if name not in OPTIMIZERS:
        raise SpecError(f"optimiser {name!r}: unknown. Expected one of {sorted(OPTIMIZERS)}, got {name!r}.")
    return OPTIMIZERS[name](params, bk, **hyper)
