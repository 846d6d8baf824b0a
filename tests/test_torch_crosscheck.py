"""The whole network against PyTorch with identical weights: logits, loss, the
input gradient, every parameter gradient, BatchNorm running statistics, and
the parameters after Adam / SGD steps, in float32 and float64.

Errors are norm-wise relative, ``||ours - torch|| / ||torch||``: float32 must
agree to 1e-4, float64 to 1e-9.

The same holds at the ReLU kink: a pre-activation within rounding of 0 can
be positive on one side and not on the other (batch norm puts plenty of values
near 0), which passes or stops that element's gradient. Those flips are
counted, checked to be near-ties, and PyTorch's ReLUs are then forced to
xraynet's masks in the same way.

The max-pool trap (bench/ARCHS.md): two float32 implementations whose forward
passes differ by rounding can pick different maxima in a window whose two
largest values are nearly equal, which reroutes that window's gradient. The
tests do not loosen tolerances for it. They take xraynet's argmax of every
pool (replaying its layers) and PyTorch's (``return_indices``), count the
windows that flipped, check that each flip is a genuine near-tie in PyTorch's
own activations, and then compare gradients against PyTorch run with its
pools forced to xraynet's choices (a gather, so autograd routes the gradient
there). With no flip, that is plain PyTorch. Float64 runs must have no flip.

torch is a dev dependency (pinned in pyproject); these tests never skip.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import BACKENDS, make_backend
from naive import rel_err
from xraynet.archs import builtin_spec
from xraynet.kernels import reference as ref
from xraynet.layers import MaxPool2D
from xraynet.model import Model
from xraynet.optim import SGD, Adam

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# A flipped window must be a near-tie in PyTorch's own float32 activations:
# the two values within this fraction of the largest activation of that layer.
NEAR_TIE = 1e-5


@pytest.fixture(scope="module", params=BACKENDS)
def device(request):
    """The backend the xraynet side runs on (PyTorch runs on the CPU)."""
    return make_backend(request.param)


# ------------------------------------------------------------ the torch twin
class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class TorchNet(nn.Module):
    """Stock PyTorch modules, one per spec entry, so that parameter names are
    ``layers.<i>.weight`` as in xraynet. Max pools run through
    ``F.max_pool2d(return_indices=True)``; ``force`` replaces their choice by
    given flat indices (per pool, NCHW like PyTorch's)."""

    def __init__(self, model: Model):
        super().__init__()
        mods = []
        for layer in model.layers:
            t = layer.type
            if t == "conv2d":
                mods.append(nn.Conv2d(layer.in_shape[0], layer.out_channels, layer.kernel_size, layer.stride,
                                      layer.pad))
            elif t == "relu":
                mods.append(nn.ReLU())
            elif t == "maxpool2d":
                mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
            elif t == "flatten":
                mods.append(nn.Flatten())
            elif t == "global_avg_pool2d":
                mods.append(GlobalAvgPool())
            elif t == "dense":
                mods.append(nn.Linear(layer.in_shape[0], layer.out_features))
            elif t == "batchnorm2d":
                mods.append(nn.BatchNorm2d(layer.in_shape[0], eps=layer.eps, momentum=layer.momentum))
            elif t == "dropout":
                mods.append(nn.Dropout(layer.p))
            else:
                raise AssertionError(f"no torch twin for layer type {t!r}")
        self.layers = nn.Sequential(*mods)
        self.pool_idx, self.pool_in, self.relu_in = [], [], []

    def forward(self, x, force=None, relu_force=None):
        self.pool_idx, self.pool_in, self.relu_in = [], [], []
        for m in self.layers:
            if isinstance(m, nn.ReLU):
                self.relu_in.append(x.detach())
                x = m(x) if relu_force is None else x * relu_force[len(self.relu_in) - 1].to(x.dtype)
            elif isinstance(m, nn.MaxPool2d):
                y, idx = F.max_pool2d(x, m.kernel_size, m.stride, return_indices=True)
                self.pool_idx.append(idx)
                self.pool_in.append(x.detach())
                if force is not None:
                    y = x.flatten(2).gather(2, force[len(self.pool_idx) - 1].flatten(2)).view_as(y)
                x = y
            else:
                x = m(x)
        return x


def torch_twin(model: Model) -> TorchNet:
    net = TorchNet(model).to(TORCH_DTYPE[model.dtype])
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    result = net.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, f"torch twin: unexpected {result.unexpected_keys}"
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), \
        f"torch twin: missing {result.missing_keys}"
    return net


def torch_loss(model: Model, logits, labels):
    if model.output == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def _replay(model: Model, x, training: bool, visit) -> None:
    """Run the layers one by one on input ``x`` (NCHW), calling
    ``visit(layer, h_in, h_out)`` after each; buffers a training-mode replay
    touches are restored. (The fused model gives the same activations, which
    ``test_fused_equals_unfused`` checks.)"""
    saved = [(a, a.copy()) for _, a in model.named_buffers()]
    bk = model.bk
    h = bk.nchw_to_internal(bk.asarray(x, model.dtype))
    for layer in model.layers:
        out = layer.forward(h, training=training)
        visit(layer, h, out)
        h = out
    for arr, value in saved:
        arr[...] = value


def xraynet_pool_argmax(model: Model, x, training: bool) -> list:
    """xraynet's argmax of every max pool on input ``x`` (NCHW), as PyTorch
    flat indices (N, C, OH, OW)."""
    out = []

    def visit(layer, h, _):
        if isinstance(layer, MaxPool2D):
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            _, idx = ref.maxpool2d_forward(model.bk.to_numpy(h), kh, kw, sh, sw)
            k = idx.astype(np.int64)
            oy = np.arange(k.shape[1])[None, :, None, None]
            ox = np.arange(k.shape[2])[None, None, :, None]
            flat = (oy * sh + k // kw) * h.shape[2] + ox * sw + k % kw
            out.append(torch.from_numpy(np.ascontiguousarray(flat.transpose(0, 3, 1, 2))))

    _replay(model, x, training, visit)
    return out


def xraynet_relu_masks(model: Model, x, training: bool) -> list:
    """Where each ReLU of xraynet passes the gradient (output > 0), as bool
    tensors in PyTorch's layout."""
    out = []

    def visit(layer, _, y):
        if layer.type == "relu":
            y = model.bk.to_numpy(y) > 0
            out.append(torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y)))

    _replay(model, x, training, visit)
    return out


def count_relu_flips(ours: list, tnet: TorchNet, dtype) -> list:
    """Elements per ReLU that pass the gradient on one side only; asserts each
    is a near-tie at 0 in PyTorch's own pre-activations."""
    flips = []
    for k, (mine, x_in) in enumerate(zip(ours, tnet.relu_in)):
        diff = mine != (x_in > 0)
        flips.append(int(diff.sum()))
        if diff.any():
            assert np.dtype(dtype) == np.float32, f"relu {k}: {int(diff.sum())} sign flips in float64"
            worst = float(x_in[diff].abs().max())
            scale = float(x_in.abs().max())
            assert worst <= NEAR_TIE * scale, (
                f"relu {k}: {int(diff.sum())} elements pass the gradient on one side only and the worst is no "
                f"near-tie: |pre-activation| {worst:.3e} (largest {scale:.3e}); a real ReLU bug")
    return flips


def count_flips(ours: list, tnet: TorchNet, dtype) -> list:
    """Windows per pool where PyTorch and xraynet chose different elements;
    asserts each is a near-tie in PyTorch's own activations."""
    flips = []
    for k, (mine, theirs, x_in) in enumerate(zip(ours, tnet.pool_idx, tnet.pool_in)):
        diff = mine != theirs
        flips.append(int(diff.sum()))
        if diff.any():
            assert np.dtype(dtype) == np.float32, f"pool {k}: {int(diff.sum())} argmax flips in float64"
            flat = x_in.flatten(2)
            gap = (flat.gather(2, mine.flatten(2)) - flat.gather(2, theirs.flatten(2))).abs()
            worst = float(gap.max())
            scale = float(x_in.abs().max())
            assert worst <= NEAR_TIE * scale, (
                f"pool {k}: {int(diff.sum())} windows chose a different maximum and the worst is no near-tie: "
                f"values differ by {worst:.3e} (largest activation {scale:.3e}); a real max-pool bug")
    return flips


def test_flip_machinery():
    """The flip detector itself: a tie chosen differently counts as an accepted
    flip, forcing routes PyTorch's gradient to the forced element, and a
    'flip' to a clearly smaller element is reported as a max-pool bug."""
    spec = {"name": "pool", "input_shape": [1, 2, 4], "output": "sigmoid", "layers": [
        {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}, {"type": "dense", "out_features": 1}]}
    model = Model(spec, dtype=np.float32)
    x = np.array([[[[1, 1, 0, 2], [0, 0, 2, 5]]]], np.float32)  # window 0: a tie; window 1: max 5
    ours = xraynet_pool_argmax(model, x, False)
    assert ours[0].flatten().tolist() == [0, 7]
    net = torch_twin(model)
    net(torch.from_numpy(x))
    assert count_flips(ours, net, np.float32) == [0]
    forced = [ours[0].clone()]
    forced[0][0, 0, 0, 0] = 1  # the other element of the tie
    assert count_flips(forced, net, np.float32) == [1]
    xt = torch.tensor(x, requires_grad=True)
    net(xt, force=forced).sum().backward()
    assert xt.grad[0, 0, 0, 1] != 0 and xt.grad[0, 0, 0, 0] == 0, f"forced routing: grad {xt.grad}"
    bad = [ours[0].clone()]
    bad[0][0, 0, 0, 1] = 3  # window 1 "choosing" 2 over 5
    with pytest.raises(AssertionError, match="no near-tie"):
        count_flips(bad, net, np.float32)


def test_relu_flip_machinery():
    """A sign flip within rounding of 0 is an accepted ReLU flip, forcing
    routes PyTorch's gradient by xraynet's mask, and a flip on a clearly
    positive value is reported as a ReLU bug."""
    spec = {"name": "relu", "input_shape": [1, 1, 4], "output": "sigmoid", "layers": [
        {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "out_features": 1}]}
    model = Model(spec, dtype=np.float32)
    x = np.array([1e-9, 2.0, -1.0, 3.0], np.float32).reshape(1, 1, 1, 4)
    net = torch_twin(model)
    net(torch.from_numpy(x))
    ours = xraynet_relu_masks(model, x, False)
    assert ours[0].flatten().tolist() == [True, True, False, True]
    assert count_relu_flips(ours, net, np.float32) == [0]
    near = [ours[0].clone()]
    near[0][0, 0, 0, 0] = False  # 1e-9 counted as not positive: a near-tie
    assert count_relu_flips(near, net, np.float32) == [1]
    xt = torch.tensor(x, requires_grad=True)
    net(xt, relu_force=near).sum().backward()
    assert xt.grad[0, 0, 0, 0] == 0 and xt.grad[0, 0, 0, 1] != 0, f"forced ReLU routing: grad {xt.grad}"
    bad = [ours[0].clone()]
    bad[0][0, 0, 0, 1] = False  # 2.0 "not positive"
    with pytest.raises(AssertionError, match="no near-tie"):
        count_relu_flips(bad, net, np.float32)


# ----------------------------------------------------------------- one step
def make_batch(model: Model, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + model.input_shape).astype(model.dtype)
    labels = rng.integers(0, model.num_classes, n)
    return x, labels


def step_errors(spec, dtype, n, *, device="cpu", seed=0, training=True, fuse=True, prepare=None):
    """One forward + loss + backward on both sides; returns ({quantity: rel err}, flips)."""
    model = Model(spec, device=device, dtype=dtype, seed=seed, fuse=fuse)
    if prepare:
        prepare(model)
    x, labels = make_batch(model, n, seed + 1)
    ours_idx = xraynet_pool_argmax(model, x, training)
    ours_relu = xraynet_relu_masks(model, x, training)

    def run_torch(force, relu_force):
        net = torch_twin(model)
        net.train(training)
        xt = torch.tensor(x, requires_grad=True)
        logits = net(xt, force=force, relu_force=relu_force)
        loss = torch_loss(model, logits, torch.from_numpy(labels))
        loss.backward()
        return net, xt, logits, loss

    net, xt, logits_t, loss_t = run_torch(None, None)
    flips = count_flips(ours_idx, net, dtype)
    relu_flips = count_relu_flips(ours_relu, net, dtype)
    if sum(flips) or sum(relu_flips):
        net, xt, logits_t, loss_t = run_torch(ours_idx, ours_relu)
    flips = flips + relu_flips  # pools first, then ReLUs

    logits = model.forward(x, training=training)
    loss, dlogits = model.loss(logits, labels)
    errs = {"logits": rel_err(model.bk.to_numpy(logits), logits_t.detach().numpy()),
            "loss": rel_err(loss, loss_t.item())}
    if training:
        dx = model.backward(dlogits, input_grad=True)
        errs["input grad"] = rel_err(model.bk.to_numpy(dx), xt.grad.numpy())
        grads = model.named_grads()
        tparams = dict(net.named_parameters())
        assert sorted(grads) == sorted(tparams), f"gradient names {sorted(grads)} vs torch {sorted(tparams)}"
        # A conv bias feeding batch norm has a gradient that is exactly 0 in exact
        # arithmetic (BN subtracts the batch mean); both sides return rounding
        # noise there, so its error is measured against the weight gradient's norm.
        kinds = [cfg["type"] for cfg in spec["layers"]] + [None]
        zero = {f"layers.{i}.bias" for i, t in enumerate(kinds[:-1])
                if t == "conv2d" and kinds[i + 1] == "batchnorm2d"}
        for name, p in tparams.items():
            ours = model.bk.to_numpy(grads[name])
            if name in zero:
                scale = np.linalg.norm(tparams[name[:-len("bias")] + "weight"].grad.numpy())
                errs[f"grad {name} (exactly 0; error / ||grad weight||)"] = float(
                    np.linalg.norm(ours.astype(np.float64) - p.grad.numpy()) / scale)
            else:
                errs[f"grad {name}"] = rel_err(ours, p.grad.numpy())
        tbuf = dict(net.named_buffers())
        for name, b in model.named_buffers():
            errs[f"buffer {name}"] = rel_err(model.bk.to_numpy(b), tbuf[name].numpy())
    return errs, flips


def assert_errs(errs: dict, tol: float, what: str, flips=None):
    bad = {k: v for k, v in errs.items() if not v < tol}
    worst = max(errs, key=errs.get)
    assert not bad, (f"{what}: norm-wise relative error >= {tol:g} for {bad} "
                     f"(flips per max pool, then per ReLU: {flips}); worst overall {worst} {errs[worst]:.3e}")


ARCH_CASES = [  # name, image size, batch (float32)
    ("seed", 64, 8),
    ("wide", 64, 8),
    ("wide", 224, 2),
]


@pytest.mark.parametrize("arch,size,n", ARCH_CASES, ids=lambda v: str(v))
def test_step_float32(device, arch, size, n):
    spec = builtin_spec(arch, image_size=size)
    errs, flips = step_errors(spec, np.float32, n, device=device)
    assert_errs(errs, TOL[np.dtype(np.float32)], f"{arch} {size}px batch {n} float32", flips)


@pytest.mark.parametrize("arch", ["seed", "wide"])
def test_step_float64(device, arch):
    spec = builtin_spec(arch, image_size=64)
    errs, flips = step_errors(spec, np.float64, 4, device=device)
    assert sum(flips) == 0, f"{arch} float64: max-pool / ReLU flips {flips}"
    assert_errs(errs, TOL[np.dtype(np.float64)], f"{arch} 64px float64")


# -------------------------------------------------------------- optimisers
def train_both(spec, dtype, make_opts, steps=2, n=4, seed=0, device="cpu"):
    """``steps`` training steps on both sides (fresh batch each); returns
    {name: rel err} over parameters and buffers."""
    model = Model(spec, device=device, dtype=dtype, seed=seed)
    net = torch_twin(model)
    net.train(True)
    opt, topt = make_opts(model, net)
    for s in range(steps):
        x, labels = make_batch(model, n, 100 + s)
        model.train_step(x, labels, opt)
        topt.zero_grad()
        torch_loss(model, net(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        topt.step()
    tstate = net.state_dict()
    return {name: rel_err(arr, tstate[name].numpy()) for name, arr in model.state_dict().items()}


def adam_pair(model, net):
    return Adam(model.named_parameters(), model.bk, lr=1e-3), torch.optim.Adam(net.parameters(), lr=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ["seed", "wide"])
def test_adam_two_steps(device, arch, dtype):
    errs = train_both(builtin_spec(arch, image_size=64), dtype, adam_pair, steps=2, device=device)
    assert_errs(errs, TOL[np.dtype(dtype)], f"{arch} parameters after two Adam steps ({np.dtype(dtype).name})")


def _small_spec(output="softmax"):
    return {"name": "small", "input_shape": [1, 12, 12], "output": output, "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "out_features": 8},
        {"type": "relu"},
        {"type": "dense", "out_features": 3 if output == "softmax" else 1},
    ]}


SGD_CASES = [  # momentum, nesterov, weight_decay
    (0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0), (0.9, False, 1e-2), (0.9, True, 0.0),
    (0.7, True, 5e-3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("hyper", SGD_CASES, ids=str)
def test_sgd_three_steps(device, hyper, dtype):
    momentum, nesterov, wd = hyper

    def sgd_pair(model, net):
        return (SGD(model.named_parameters(), model.bk, lr=0.05, momentum=momentum, weight_decay=wd,
                    nesterov=nesterov),
                torch.optim.SGD(net.parameters(), lr=0.05, momentum=momentum, weight_decay=wd, nesterov=nesterov))

    errs = train_both(_small_spec(), dtype, sgd_pair, steps=3, n=6, device=device)
    assert_errs(errs, TOL[np.dtype(dtype)], f"parameters after three SGD steps {hyper} ({np.dtype(dtype).name})")


# ------------------------------------------------- fused vs unfused (float32)
def _random_biases(model):
    rng = np.random.default_rng(7)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p[...] = model.bk.asarray((rng.standard_normal(p.shape) * 0.1).astype(p.dtype))


@pytest.mark.parametrize("arch", ["seed", "wide"])
def test_fused_equals_unfused(device, arch):
    """The fused conv+ReLU+pool stages give bit-identical logits, loss and
    gradients to the layer-by-layer run (nonzero biases, float32)."""
    spec = builtin_spec(arch, image_size=64)
    out = {}
    for fuse in (True, False):
        model = Model(spec, device=device, dtype=np.float32, seed=0, fuse=fuse)
        _random_biases(model)
        x, labels = make_batch(model, 6, 1)
        logits = model.forward(x, training=True)
        loss, dl = model.loss(logits, labels)
        dx = model.backward(dl, input_grad=True)
        host = device.to_numpy
        out[fuse] = {"logits": host(logits).copy(), "loss": np.array(loss), "input grad": host(dx).copy(),
                     **{k: host(v).copy() for k, v in model.named_grads().items()},
                     "eval logits": host(model.forward(x, training=False)).copy()}
    for key, a in out[True].items():
        b = out[False][key]
        n_diff = int((a != b).sum())
        assert n_diff == 0, (f"{arch} fused vs unfused {key}: {n_diff} of {a.size} elements differ, "
                             f"worst |diff| {float(np.abs(a - b).max()):.3e}, rel err {rel_err(a, b):.3e}")


def test_fused_rounding_tie_matches_unfused_and_torch(device):
    """conv 1x1 (w = 1, b = 1) on x = [0, 1e-8] gives [1, 1] in float32: a tie made
    by rounding the bias add. PyTorch and the unfused chain send the gradient to
    the first element; the fused stage must too (it has to compare x + b, not x)."""
    spec = {"name": "tie", "input_shape": [1, 1, 2], "output": "sigmoid", "layers": [
        {"type": "conv2d", "out_channels": 1, "kernel_size": 1}, {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": [1, 2]}, {"type": "flatten"}, {"type": "dense", "out_features": 1}]}
    x = np.array([0.0, 1e-8], np.float32).reshape(1, 1, 1, 2)
    grads = {}
    for fuse in (True, False):
        model = Model(spec, device=device, dtype=np.float32, fuse=fuse)
        model.load_state_dict({"layers.0.weight": np.ones((1, 1, 1, 1)), "layers.0.bias": np.ones(1),
                               "layers.4.weight": np.ones((1, 1)), "layers.4.bias": np.zeros(1)})
        model.forward(x, training=True)
        dx = model.backward(device.asarray(np.ones((1, 1), np.float32)), input_grad=True)
        grads["fused" if fuse else "unfused"] = device.to_numpy(dx)
    net = torch_twin(model)
    xt = torch.tensor(x, requires_grad=True)
    net(xt).sum().backward()
    grads["torch"] = xt.grad.numpy()
    flat = {k: v.reshape(-1).tolist() for k, v in grads.items()}
    assert flat["unfused"] == flat["torch"] == [1.0, 0.0], f"reference routing changed: {flat}"
    assert flat["fused"] == flat["torch"], f"fused conv+relu+pool routes a rounding tie differently: {flat}"


# ---------------------------------------------- xraynet arch, batch norm
def _xraynet_spec_no_dropout():
    spec = builtin_spec("xraynet", num_classes=3, image_size=64)
    for layer in spec["layers"]:
        if layer["type"] == "dropout":
            layer["p"] = 0.0  # identity on both sides; indices stay those of the real arch
    return spec


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_xraynet_arch_batchnorm(device, training, dtype):
    """The default arch (strided 5x5 stem, BatchNorm, dropout set to 0) at 64 px:
    training mode checks batch statistics, running-statistic updates and all
    gradients; eval mode uses (perturbed) running statistics."""

    def perturb_stats(model):
        rng = np.random.default_rng(3)
        bk = model.bk
        for name, b in model.named_buffers():
            b[...] = bk.asarray(rng.random(b.shape) + 0.5 if name.endswith("var") else
                                rng.standard_normal(b.shape) * 0.1, b.dtype)
        for name, p in model.named_parameters():
            if name.endswith("bias") or (name.endswith("weight") and p.ndim == 1):
                p += bk.asarray((rng.standard_normal(p.shape) * 0.1).astype(p.dtype))

    errs, flips = step_errors(_xraynet_spec_no_dropout(), dtype, 4, device=device, training=training,
                              prepare=perturb_stats)
    if np.dtype(dtype) == np.float64:
        assert sum(flips) == 0, f"xraynet float64: max-pool / ReLU flips {flips}"
    assert_errs(errs, TOL[np.dtype(dtype)], f"xraynet arch ({'train' if training else 'eval'}, "
                                            f"{np.dtype(dtype).name})", flips)


@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_layer_running_stats(device, momentum):
    """Two training-mode passes then eval, against nn.BatchNorm2d (non-default momentum too)."""
    from xraynet.layers import BatchNorm2D

    bk = device
    layer = BatchNorm2D(momentum=momentum, eps=1e-3)
    layer.build((3, 5, 4), bk, np.random.default_rng(0), np.float64)
    tbn = nn.BatchNorm2d(3, eps=1e-3, momentum=momentum).double()
    rng = np.random.default_rng(1)
    for s in range(2):
        x = rng.standard_normal((2, 3, 5, 4)) * 2 + s
        y = layer.forward(bk.nchw_to_internal(bk.asarray(x)), training=True)
        yt = tbn.train()(torch.from_numpy(x))
        assert rel_err(bk.to_numpy(bk.internal_to_nchw(y)), yt.detach().numpy()) < 1e-12
    for name in ("running_mean", "running_var"):
        err = rel_err(bk.to_numpy(layer.buffers[name]), getattr(tbn, name).numpy())
        assert err < 1e-12, f"batchnorm {name} after two steps (momentum {momentum}): rel err {err:.3e}"
    x = rng.standard_normal((2, 3, 5, 4))
    y = bk.to_numpy(bk.internal_to_nchw(layer.forward(bk.nchw_to_internal(bk.asarray(x)), training=False)))
    err = rel_err(y, tbn.eval()(torch.from_numpy(x)).detach().numpy())
    assert err < 1e-12, f"batchnorm eval output: rel err {err:.3e}"


# -------------------------------------------------------------------- losses
@pytest.mark.parametrize("weights", [None, (0.4, 2.5)], ids=["unweighted", "weighted"])
def test_sigmoid_bce_vs_torch(device, weights):
    bk = device
    rng = np.random.default_rng(2)
    z = rng.standard_normal((9, 1)) * 4
    y = rng.integers(0, 2, 9)
    loss, dz = bk.sigmoid_bce(bk.asarray(z), y, weights)
    dz = bk.to_numpy(dz)
    zt = torch.tensor(z, requires_grad=True)
    per = F.binary_cross_entropy_with_logits(zt[:, 0], torch.from_numpy(y).double(), reduction="none")
    w = torch.ones(9, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)[torch.from_numpy(y)]
    lt = (w * per).sum() / w.sum()
    lt.backward()
    assert rel_err(loss, lt.item()) < 1e-12 and rel_err(dz, zt.grad.numpy()) < 1e-12, \
        f"sigmoid_bce {weights}: loss {loss} vs {lt.item()}, dlogits rel err {rel_err(dz, zt.grad.numpy()):.3e}"


@pytest.mark.parametrize("weights", [None, (0.4, 2.5, 1.2)], ids=["unweighted", "weighted"])
def test_softmax_cross_entropy_vs_torch(device, weights):
    bk = device
    rng = np.random.default_rng(3)
    z = rng.standard_normal((8, 3)) * 4
    y = rng.integers(0, 3, 8)
    loss, dz = bk.softmax_cross_entropy(bk.asarray(z), y, weights)
    dz = bk.to_numpy(dz)
    zt = torch.tensor(z, requires_grad=True)
    wt = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    lt = F.cross_entropy(zt, torch.from_numpy(y), weight=wt)
    lt.backward()
    assert rel_err(loss, lt.item()) < 1e-12 and rel_err(dz, zt.grad.numpy()) < 1e-12, \
        f"softmax_cross_entropy {weights}: loss {loss} vs {lt.item()}, " \
        f"dlogits rel err {rel_err(dz, zt.grad.numpy()):.3e}"
