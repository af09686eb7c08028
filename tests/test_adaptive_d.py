"""Prodigy and D-Adaptation: what the registry tables do not cover.

Their step size ``d`` is one number for the whole optimizer (the oracles sum over every
parameter group), kept as a Python float in every group; the tables run one group. Here:
several groups (different weight decay, ``layer_scale``, a frozen group with ``lr=0``) bit for
bit against the oracles, the oracles' refusal of other learning rates, the rule on its own,
and the ``lr=0`` step torch.distributed.checkpoint takes to create a fresh optimizer's state.
"""

from __future__ import annotations

import pytest
import torch

from harness import assert_same, assert_same_state_dict, make_params, skip_pattern
from optimkit.registry import REGISTRY

NAMES = ["prodigy", "dadaptadam", "dadaptsgd"]
STEPS = 6


def _groups(params: list[torch.Tensor], name: str) -> list[dict]:
    a, b, c = params[:2], params[2:4], params[4:]
    extra = {"layer_scale": 0.5} if name == "dadaptadam" else {}
    return [{"params": a}, {"params": b, "weight_decay": 0.1, **extra}, {"params": c, "lr": 0.0}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_d_is_global_over_groups_like_the_oracle(name, dtype):
    spec = REGISTRY[name]
    ours_p = make_params(spec, dtype)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = spec.cls(_groups(ours_p, name), lr=0.5)
    ref = spec.make_oracle(_groups(ref_p, name), lr=0.5)
    for step in range(STEPS):
        for params, opt in ((ours_p, ours), (ref_p, ref)):
            for i, p in enumerate(params):  # a quadratic (d grows), and some grads None
                p.grad = None if skip_pattern(step, i, len(params) - 1) else (p.detach() - 1) * (i + 1)
            opt.step()
        assert_same([p.detach() for p in ours_p], [p.detach() for p in ref_p], f"step {step}")
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec)
    ds = {group["d"] for group in ours.param_groups}
    assert len(ds) == 1 and type(ds.pop()) is float  # one d, a Python float, in every group
    assert ours.param_groups[0]["d"] > spec.cls(ours_p).defaults["d"]  # it grew


@pytest.mark.parametrize("name", NAMES)
def test_other_learning_rates_per_group_are_refused_like_the_oracle(name):
    spec = REGISTRY[name]
    outcomes = []
    for make in (spec.cls, spec.make_oracle):
        params = make_params(spec, torch.float64)
        opt = make([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
        for p in params:
            p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match="different lr values") as info:
            opt.step()
        outcomes.append(str(info.value))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("name", NAMES)
def test_the_rule_alone_is_one_group_step(name):
    """``rule(params, grads, states, group)`` -- what the WholeGroup executor calls -- is the
    optimizer's step on a one-group optimizer."""
    spec = REGISTRY[name]
    params = make_params(spec, torch.float64)
    alone = [p.detach().clone() for p in params]
    opt = spec.cls(params, **spec.configs[1])
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    states = [spec.cls.rule.init_state(p, group) for p in alone]
    for step in range(STEPS):
        grads = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(step)) for p in alone]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        spec.cls.rule(alone, grads, states, group)
        assert_same(alone, [p.detach() for p in params], f"step {step}")
    assert_same(states, [opt.state[p] for p in params], "state")
    assert_same({k: group[k] for k in ("d", "k")}, {k: opt.param_groups[0][k] for k in ("d", "k")})


@pytest.mark.parametrize("name", NAMES)
def test_a_zero_lr_step_creates_the_state_and_moves_nothing(name):
    """torch.distributed.checkpoint builds a fresh optimizer's state by a step with zero
    gradients and lr=0 (``_init_optim_state``); the oracles return early or (DAdaptSGD)
    divide by zero there. The state is created, nothing else changes."""
    spec = REGISTRY[name]
    params = make_params(spec, torch.float64)
    before = [p.detach().clone() for p in params]
    opt = spec.cls(params)
    groups_before = [dict(g) for g in opt.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    opt.param_groups[0]["lr"] = 1.0
    assert_same([p.detach() for p in params], before)
    assert len(opt.state) == len(params)
    assert opt.param_groups == groups_before
