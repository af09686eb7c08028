"""LAMB, LARS and MARS: what the registry tables do not cover.

Their oracle (pytorch-optimizer 4.1.0) has two code paths that round differently: a batched
one (``torch._foreach_*``, its default) and a per-tensor one (``foreach=False``, which the
tables pin). optimkit follows whichever the oracle would take; here the default path is held
to the same bits. Also: LAMB's global gradient norm over several groups (in float32, as the
oracle's), gradients left untouched, and the clear refusals.
"""

from __future__ import annotations

import pytest
import torch

from harness import assert_same, clone_kwargs
from optimkit import LAMB, LARS, MARS
from optimkit.registry import REGISTRY


def mlp(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    return x.to(dtype), torch.sin(x[:, :4] * 2).to(dtype)


def side_by_side(name, kwargs, dtype, steps=12, groups=None):
    """optimkit and the oracle with the same (unpinned) arguments; same bits after every step
    and the same state at the end."""
    spec = REGISTRY[name]
    x, y = data(dtype)
    models = [mlp(dtype), mlp(dtype)]

    def params(model):
        if groups is None:
            return model.parameters()
        weights = [p for p in model.parameters() if p.ndim > 1]
        biases = [p for p in model.parameters() if p.ndim <= 1]
        return [{"params": weights}, {"params": biases, **groups}]

    ours = spec.cls(params(models[0]), **clone_kwargs(kwargs))
    ref = spec.make_oracle(params(models[1]), **clone_kwargs(kwargs))
    for step in range(steps):
        for model, opt in zip(models, (ours, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        for i, (a, b) in enumerate(zip(models[0].parameters(), models[1].parameters())):
            assert_same(a.detach(), b.detach(), f"{name} step {step} param {i}")
    assert_same(ours.state_dict()["state"], ref.state_dict()["state"], "state")
    return ours, ref


DEFAULT_PATH = [
    ("lamb", {}), ("lamb", {"weight_decay": 0.1, "lr": 1e-2}), ("lamb", {"pre_norm": True, "max_grad_norm": 0.3}),
    ("lamb", {"weight_decay": 0.1, "weight_decouple": False, "maximize": True}),
    ("lamb", {"lr": torch.tensor(1e-2), "adam": True}),
    ("lars", {}), ("lars", {"weight_decay": 1e-2, "lr": 0.5, "nesterov": True}), ("lars", {"lr": torch.tensor(0.5)}),
    ("mars", {}), ("mars", {"gamma": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.1}),
    ("mars", {"mars_type": "lion", "lr": 1e-3}), ("mars", {"optimize_1d": True, "cautious": True, "ams_bound": True}),
    ("mars", {"lr": torch.tensor(3e-3), "maximize": True, "weight_decouple": False, "weight_decay": 0.1}),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "name,kwargs", DEFAULT_PATH, ids=[f"{n}-{i}" for i, (n, _) in enumerate(DEFAULT_PATH)]
)
def test_the_oracles_default_batched_path_bit_for_bit(name, kwargs, dtype):
    side_by_side(name, kwargs, dtype)


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_lamb_global_norm_over_groups(foreach, dtype):
    """pre_norm scales by the norm of all gradients of all groups (a second group with other
    settings), computed as the oracle does."""
    side_by_side(
        "lamb", {"pre_norm": True, "max_grad_norm": 0.2, "foreach": foreach}, dtype,
        groups={"lr": 1e-2, "weight_decay": 0.1},
    )  # fmt: skip


def test_lamb_grad_scale_is_float32_like_the_oracle():
    """The oracle sums the squared norms in float32 for float64 parameters too; optimkit does
    the same (declared in its Oracle note), so float64 runs stay bit for bit."""
    from optimkit.optimizers.lamb import global_grad_scale

    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    p.grad = torch.randn(5, 3, dtype=torch.float64) * 10
    scale = global_grad_scale([{"params": [p]}], 1.0, 1e-6)
    assert scale.dtype == torch.float32 and scale.dim() == 0
    expected = torch.clamp(1.0 / (p.grad.norm().float().square().sqrt() + 1e-6), max=1.0)
    assert torch.equal(scale, expected)
    assert global_grad_scale([{"params": [p]}], 0.0, 1e-6) == 1.0


@pytest.mark.parametrize(
    "cls,kwargs",
    [(LAMB, {"maximize": True, "pre_norm": True, "max_grad_norm": 0.1}), (LARS, {"maximize": True, "weight_decay": 0.1}),
     (MARS, {"maximize": True, "weight_decouple": False, "weight_decay": 0.1})],
)  # fmt: skip
def test_gradients_are_left_alone(cls, kwargs):
    """The oracle negates, scales or decays ``p.grad`` in place; optimkit does not."""
    p = torch.nn.Parameter(torch.randn(4, 3))
    g = torch.randn(4, 3)
    p.grad = g.clone()
    cls([p], **kwargs).step()
    assert torch.equal(p.grad, g)


def test_group_step_counts_every_step_and_resumes():
    p = torch.nn.Parameter(torch.randn(3, 3))
    q = torch.nn.Parameter(torch.randn(3))
    opt = MARS([{"params": [p]}, {"params": [q]}])
    for _ in range(3):
        p.grad = torch.randn(3, 3)  # q never has a gradient: its group counts anyway, as the oracle's
        opt.step()
    assert [g["step"] for g in opt.param_groups] == [3, 3]
    other = MARS([{"params": [p]}, {"params": [q]}])
    other.load_state_dict(opt.state_dict())
    assert [g["step"] for g in other.param_groups] == [3, 3]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda ps: LAMB(ps, adanorm=True), "adanorm"),
        (lambda ps: LARS(ps, foo=1), "foo"),
        (lambda ps: MARS(ps, mars_type="sgd"), "mars_type"),
        (lambda ps: MARS(ps, betas_1d=(0.9, 1.0)), "betas_1d"),
        (lambda ps: LARS(ps, momentum=1.0), "momentum"),
        (lambda ps: LAMB(ps, max_grad_norm=-1.0), "max_grad_norm"),
    ],
)
def test_refusals_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.nn.Parameter(torch.randn(2, 2))])


def test_shampoo_refuses_before_changing_anything():
    """A momentum the Shampoo update cannot view as a matrix (a channels_last 4-D weight):
    the oracle raises midway (earlier parameters already stepped); optimkit raises the same
    error before anything changes."""
    a = torch.nn.Parameter(torch.randn(3, 3))
    w = torch.nn.Parameter(torch.randn(2, 3, 2, 2).to(memory_format=torch.channels_last))
    opt = MARS([a, w], mars_type="shampoo")
    a.grad, w.grad = torch.randn(3, 3), torch.randn(2, 3, 2, 2)
    before = a.detach().clone()
    with pytest.raises(RuntimeError, match="view"):
        opt.step()
    assert torch.equal(a, before) and not opt.state and "step" not in opt.param_groups[0]
