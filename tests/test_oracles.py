"""Every optimizer with an authors' package as its oracle, on a real model, 20 steps.

A small MLP learns a fixed regression in float64 and float32; after every step every
parameter must be within 1e-9 (float64) / 1e-5 (float32) of the oracle's, relative to the
parameter's max-norm (an oracle that computes in less precision declares its own bound,
``Oracle.tolerance``) -- for each optimizer's first two configurations (its defaults, and its
main option). Where the oracle's op order allows, ``tests/test_exactness.py`` demands the
same bits as well (``Oracle.exact``); this table holds the rest to a tolerance and runs the
whole training loop (backward, closures) rather than synthetic gradients.
"""

from __future__ import annotations

import pytest
import torch

from harness import clone_kwargs, oracle_kwargs
from optimkit.registry import REGISTRY

STEPS = 20
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}
EXTERNAL = {name: spec for name, spec in REGISTRY.items() if spec.oracle is not None}


def mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :4] * 2) + x[:, 4:] ** 2 / 4
    return x.to(dtype), y.to(dtype)


def train_side_by_side(spec, kwargs, dtype, steps=STEPS, tolerance=None, on_step=None):
    """Step optimkit and the oracle on two copies of one MLP; compare after every step."""
    if tolerance is None:  # an oracle that computes in less precision declares its own
        tolerance = spec.oracle.tolerance.get(dtype, TOLERANCE[dtype])
    x, y = data(dtype)
    models = [mlp(dtype), mlp(dtype)]
    kwargs = oracle_kwargs(spec, kwargs)
    ours = spec.cls(models[0].parameters(), **clone_kwargs(kwargs))
    ref = spec.make_oracle(models[1].parameters(), **clone_kwargs(kwargs))
    for step in range(steps):
        for model, opt in zip(models, (ours, ref)):

            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            if spec.closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        for i, (a, b) in enumerate(zip(models[0].parameters(), models[1].parameters())):
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
            assert err <= tolerance, f"{spec.name} step {step} param {i}: relative error {err:.3g} > {tolerance:g}"
        if on_step is not None:
            on_step(step, ours, ref)
    return ours, ref, models


CASES = [
    pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name, spec in EXTERNAL.items()
    for i in range(min(2, len(spec.configs)))
    for dtype in TOLERANCE
]


@pytest.mark.parametrize("spec,config,dtype", CASES)
def test_close_to_the_oracle_on_an_mlp(spec, config, dtype):
    train_side_by_side(spec, spec.configs[config], dtype)


def test_every_external_optimizer_has_two_configurations():
    """The defaults, and one with weight decay or the optimizer's main option."""
    assert [name for name, spec in EXTERNAL.items() if len(spec.configs) < 2] == []
