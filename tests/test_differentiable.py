"""``differentiable=True``: autograd through one optimizer step (torch.autograd.gradcheck),
for every optimizer whose torch counterpart offers the flag, on every config.

The differentiable step also gives exactly the numbers of the ordinary step: optimkit's rules
only swap in-place ops that would clobber saved tensors for out-of-place ones.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.autograd import gradcheck

from harness import assert_same
from optimkit.registry import REGISTRY


def _cases():
    out = []
    for name, spec in REGISTRY.items():
        if "differentiable" not in inspect.signature(spec.cls.__init__).parameters:
            continue
        for i, config in enumerate(spec.configs):
            if config.get("fused") or spec.sparse == "only" or spec.closure:
                continue
            out.append(pytest.param(spec, i, id=f"{name}-{i}"))
    return out


def _warm_state(spec, kwargs):
    """A realistic state: two ordinary steps on a 10-element parameter."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.rand(10, dtype=torch.float64))
    opt = spec.cls([p], **kwargs)
    for _ in range(2):
        p.grad = torch.rand_like(p)
        opt.step()
    return p.detach(), {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in opt.state[p].items()}


def _step(spec, kwargs, p, grad, state, differentiable):
    p = p.clone()
    p.grad = grad
    opt = spec.cls([p], **kwargs, differentiable=differentiable)
    opt.state[p].update({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    opt.step()
    return p, opt.state[p]


@pytest.mark.parametrize("spec,config", _cases())
def test_gradcheck_through_step(spec, config):
    kwargs = {k: v for k, v in spec.configs[config].items() if not isinstance(v, torch.Tensor)}
    p0, state = _warm_state(spec, kwargs)
    keys = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0 and v.is_floating_point()]

    def fn(p, grad, *tensors):
        st = dict(state, **dict(zip(keys, tensors)))
        new_p, new_state = _step(spec, kwargs, p, grad, st, differentiable=True)
        return (new_p,) + tuple(new_state[k] for k in keys)

    p = p0.clone().requires_grad_()
    grad = torch.rand_like(p0).requires_grad_()
    tensors = [state[k].clone().requires_grad_() for k in keys]
    # eps=1e-8: state entries as small as 1e-6 (Adadelta's acc_delta) make the default
    # finite-difference step of 1e-6 too coarse for sqrt(acc_delta + eps).
    assert gradcheck(fn, (p, grad, *tensors), eps=1e-8)

    # The same numbers as the ordinary step.
    grad = grad.detach()
    a, sa = _step(spec, kwargs, p0, grad, state, differentiable=True)
    b, sb = _step(spec, kwargs, p0, grad, state, differentiable=False)
    assert_same(a.detach(), b.detach())
    assert_same({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in sa.items()}, dict(sb))
