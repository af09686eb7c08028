"""The packed/chunked execution strategy (optimkit.execution.packed) against torch.optim's for-loop.

The exactness table already runs every config through the default path; here the sizes are
chosen to cross chunk and pack boundaries (with ``SMALL``/``CHUNK`` shrunk so that the test
stays small), and the situations that must not fool the strategy are played out.
"""

from __future__ import annotations

import copy

import pytest
import torch

from harness import assert_same, assert_same_state_dict, clone_kwargs, oracle_kwargs
from optimkit.execution import packed as flat
from optimkit.registry import REGISTRY

ELEMENTWISE = [spec for spec in REGISTRY.values() if spec.elementwise]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(flat, "SMALL", 40)
    monkeypatch.setattr(flat, "CHUNK", 64)
    monkeypatch.setattr(flat, "CHUNKED", 64)


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (130,), (7,), (9, 11), (1,), (40,), (2, 3, 2), (64,), (65,), (5, 5)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]


def _race(spec, kwargs, params_fn, steps=7, between=None):
    """Run optimkit and torch side by side; ``between(step, params, opt)`` perturbs both."""
    ours_p, ref_p = params_fn(), params_fn()
    ours = spec.cls(ours_p, **clone_kwargs(kwargs))
    ref = spec.make_oracle(ref_p, **clone_kwargs(oracle_kwargs(spec, kwargs)))
    for step in range(steps):
        for ps, opt in ((ours_p, ours), (ref_p, ref)):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = g if p.requires_grad else None
            if between is not None:
                between(step, ps, opt)
            opt.step()
        assert_same([p.detach() for p in ours_p], [p.detach() for p in ref_p], f"step {step}")
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    for sd in (sd_ours, sd_ref):
        for g in sd["param_groups"]:
            g.pop("foreach", None)
    assert_same_state_dict(sd_ours, sd_ref, spec)
    return ours


CASES = [
    pytest.param(spec, i, dtype, id=f"{spec.name}-{i}-{str(dtype)[6:]}")
    for spec in ELEMENTWISE
    for i in range(len(spec.configs))
    for dtype in (torch.float32, torch.float64)
    if not spec.configs[i].get("fused") and spec.exact(dtype)
]


@pytest.mark.parametrize("spec,config,dtype", CASES)
def test_packs_and_chunks_are_exact(spec, config, dtype):
    def skip_some(step, ps, opt):
        if step in (2, 3):
            ps[step].grad = None  # a small one, then a chunked one, skip a step

    _race(spec, spec.configs[config], lambda: _params(dtype), between=skip_some)


def test_strategy_really_packs_and_chunks():
    params = _params()
    opt = REGISTRY["adam"].cls(params)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    opt.step()
    (layout,) = opt._store.layouts.values()
    packed = {id(p) for pack in layout.packs for p in pack.params}
    assert {id(p) for p in params if p.numel() < 40} == packed
    exp_avg = opt.state[params[0]]["exp_avg"]
    assert exp_avg._base is not None  # a view into the pack's buffer


SITUATIONS = {
    "frozen parameter": lambda step, ps, opt: ps[1].requires_grad_(False) if step == 0 else None,
    "grad replaced by the user": lambda step, ps, opt: setattr(ps[0], "grad", ps[0].grad * 2),
    "parameter storage re-created": lambda step, ps, opt: (
        setattr(ps[0], "data", ps[0].data.clone()) if step == 3 else None
    ),
    "state entry replaced by the user": lambda step, ps, opt: (
        opt.state[ps[2]].__setitem__("exp_avg", opt.state[ps[2]]["exp_avg"].clone() * 0.5)
        if step == 3
        else None
    ),
    "state zeroed in place": lambda step, ps, opt: opt.state[ps[0]]["exp_avg"].zero_() if step == 4 else None,
}


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_situations_stay_exact(situation):
    _race(REGISTRY["adam"], {"lr": 0.01}, _params, between=SITUATIONS[situation])


def test_mixed_dtypes_non_contiguous_and_duplicates():
    def params():
        ps = _params()
        ps[3] = torch.nn.Parameter(ps[3].detach().double())
        g = torch.Generator().manual_seed(7)
        ps[4] = torch.nn.Parameter(torch.randn(6, 4, generator=g).t())  # non-contiguous
        return ps

    _race(REGISTRY["rmsprop"], {"momentum": 0.9, "centered": True}, params)
    with pytest.warns(UserWarning, match="duplicate"):
        _race(REGISTRY["sgd"], {"momentum": 0.9}, lambda: [_params()[0]] * 2)


def test_tensor_subclass_takes_the_per_tensor_path():
    class Tagged(torch.Tensor):
        pass

    def params():
        ps = _params()
        ps[0] = torch.nn.Parameter(ps[0].detach().as_subclass(Tagged))
        return ps

    _race(REGISTRY["adamw"], {"weight_decay": 0.1}, params)


def test_state_dict_of_packed_state_saves_and_resumes(tmp_path):
    params = _params()
    opt = REGISTRY["nadam"].cls(params, lr=0.01)
    for step in range(3):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        opt.step()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    clone_params = [p.detach().clone().requires_grad_() for p in params]
    clone = REGISTRY["nadam"].cls(clone_params, lr=0.01)
    clone.load_state_dict(torch.load(path, weights_only=True))
    reference = copy.deepcopy(opt)
    for step in range(3, 6):
        for ps, o in ((clone_params, clone), (reference.param_groups[0]["params"], reference)):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = g
            o.step()
    assert_same([p.detach() for p in clone_params], [p.detach() for p in reference.param_groups[0]["params"]])
