"""Whole training steps and inference, xraynet and PyTorch in the same run.

Compare the two with ``pytest benchmarks/test_steps_bench.py --benchmark-enable
--benchmark-group-by=param:config``; the figures of record come from
benchmarks/race.py (separate processes, interleaved rounds, medians).
"""
import numpy as np
import pytest
import torch

from xraynet.bench import make_step

CONFIGS = [("seed", "train", 32), ("seed", "infer", 32), ("seed", "infer", 256),
           ("wide", "train", 32), ("wide", "infer", 32), ("wide", "infer", 64)]
IDS = [f"{a}-{m}-b{b}" for a, m, b in CONFIGS]


def _torch_step(arch, mode, batch):
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if arch == "seed":
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6272, 256), nn.ReLU(), nn.Linear(256, 1))
        x, y, crit = torch.randn(batch, 1, 64, 64), torch.randint(0, 2, (batch, 1)).float(), nn.BCEWithLogitsLoss()
    else:
        mods, c = [], 1
        for f in (16, 32, 64, 128, 256):
            mods += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = f
        net = nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 2))
        x, y, crit = torch.randn(batch, 1, 224, 224), torch.randint(0, 2, (batch,)), nn.CrossEntropyLoss()
    if mode == "infer":
        net.eval()

        def step():
            with torch.inference_mode():
                net(x)
        return step
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        crit(net(x), y).backward()
        opt.step()
    return step


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_xraynet(benchmark, config):
    model, step = make_step(*config)
    step()  # JIT warm-up
    benchmark.pedantic(step, rounds=5 if config[0] == "wide" else 20, warmup_rounds=1)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_torch(benchmark, config):
    step = _torch_step(*config)
    step()
    benchmark.pedantic(step, rounds=5 if config[0] == "wide" else 20, warmup_rounds=1)
