"""SOAP and CAME beyond the registry's tables: square matrices (where SOAP's first
eigenbasis is not degenerate), convolutions with merged dimensions, the step counter and
refresh period through a resume, list-valued state in checkpoints, refusals."""

from __future__ import annotations

import io

import pytest
import torch

import optimkit
from harness import assert_same, assert_same_state_dict
from optimkit.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread")

SOAP = REGISTRY["soap"]


def square_mlp(dtype: torch.dtype, width: int = 12) -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(),
        torch.nn.Linear(width, width, bias=False),
    ).to(dtype)  # fmt: skip


def square_data(dtype: torch.dtype, width: int = 12, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(32, width, generator=g, dtype=torch.float64)
    return x.to(dtype), torch.sin(2 * x).to(dtype)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, dtype: torch.dtype, steps: range) -> None:
    for step in steps:
        x, y = square_data(dtype, step=step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


CONFIGS = [{}, {"precondition_frequency": 3}, {"precondition_frequency": 2, "shampoo_beta": 0.9, "weight_decay": 0.0},
           {"precondition_1d": True, "precondition_frequency": 4, "normalize_gradient": True}]  # fmt: skip


@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_soap_square_layers_bit_for_bit(config, dtype):
    """Square weights (12x12): full-rank statistics after a few steps, distinct eigenvalues --
    the bases are then determined, and 25 steps (several QR refreshes) stay bit-identical
    to pytorch-optimizer, the state dict too."""
    kwargs = CONFIGS[config]
    ours_m, ref_m = square_mlp(dtype), square_mlp(dtype)
    ours = optimkit.SOAP(ours_m.parameters(), **kwargs)
    ref = SOAP.make_oracle(ref_m.parameters(), **kwargs)
    for step in range(25):
        train(ours_m, ours, dtype, range(step, step + 1))
        train(ref_m, ref, dtype, range(step, step + 1))
        for i, (a, b) in enumerate(zip(ours_m.parameters(), ref_m.parameters())):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), SOAP, "state_dict")
    assert ours.param_groups[0]["step"] == 25
    moved = sum((a - b).abs().sum() for a, b in zip(ours_m.parameters(), square_mlp(dtype).parameters()))
    assert moved > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"merge_dims": True, "max_precondition_dim": 16, "precondition_frequency": 2},
     {"merge_dims": True, "max_precondition_dim": 16, "precondition_frequency": 2, "data_format": "channels_last"},
     {"max_precondition_dim": 5, "precondition_frequency": 3}],
    ids=["merge", "merge-channels-last", "big-dims-unpreconditioned"],
)  # fmt: skip
def test_soap_conv_weights_bit_for_bit(kwargs):
    """4-D weights (merged dimensions, channels-first and -last) and dimensions over
    max_precondition_dim (no basis: only rotated), against pytorch-optimizer."""
    shapes = [(4, 3, 3, 3), (6, 4, 2, 2), (2, 8, 1, 3)]

    def params() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(5)
        return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]

    ours_p, ref_p = params(), params()
    ours = optimkit.SOAP(ours_p, **kwargs)
    ref = SOAP.make_oracle(ref_p, **{k: v for k, v in kwargs.items() if k != "data_format"},
                           data_format=kwargs.get("data_format", "channels_first"))  # fmt: skip
    for step in range(7):
        for i, (a, b) in enumerate(zip(ours_p, ref_p)):
            g = torch.Generator().manual_seed(10 * step + i)
            a.grad = torch.randn(a.shape, generator=g, dtype=torch.float64)
            b.grad = a.grad.clone()
        ours.step()
        ref.step()
        for i, (a, b) in enumerate(zip(ours_p, ref_p)):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), SOAP, "state_dict")


def _through_bytes(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("stop", [1, 5, 6])
def test_soap_resumes_exactly_across_refreshes(dtype, stop):
    """Stop after ``stop`` steps (1: only statistics so far; 6: right on a refresh, period 3),
    save through bytes, load into a fresh optimizer, continue: bit-identical to never
    stopping -- the group's step count, the per-parameter period and the lists of matrices
    (GG, Q) come back exactly."""
    kwargs = {"precondition_frequency": 3}
    ref_m = square_mlp(dtype)
    ref = optimkit.SOAP(ref_m.parameters(), **kwargs)
    train(ref_m, ref, dtype, range(13))

    a_m = square_mlp(dtype)
    a = optimkit.SOAP(a_m.parameters(), **kwargs)
    train(a_m, a, dtype, range(stop))
    sd = _through_bytes(a.state_dict())
    assert sd["param_groups"][0]["step"] == stop
    b_m = square_mlp(dtype)
    b_m.load_state_dict(a_m.state_dict())
    b = optimkit.SOAP(b_m.parameters(), precondition_frequency=7)  # the saved period wins
    b.load_state_dict(sd)
    st = b.state[next(iter(b_m.parameters()))]
    assert isinstance(st["GG"], list) and isinstance(st["Q"], list) and st["precondition_frequency"] == 3
    train(b_m, b, dtype, range(stop, 13))
    assert_same([p.detach() for p in b_m.parameters()], [p.detach() for p in ref_m.parameters()], "params")
    assert_same(b.state_dict(), ref.state_dict(), "state_dict")


def test_soap_pytorch_optimizer_state_dict_loads_into_optimkit():
    """pytorch-optimizer saves after 4 steps; optimkit loads it and continues exactly as
    pytorch-optimizer never stopping."""
    dtype = torch.float64
    ref_m = square_mlp(dtype)
    ref = SOAP.make_oracle(ref_m.parameters(), precondition_frequency=3)
    train(ref_m, ref, dtype, range(9))
    t_m = square_mlp(dtype)
    t = SOAP.make_oracle(t_m.parameters(), precondition_frequency=3)
    train(t_m, t, dtype, range(4))
    o_m = square_mlp(dtype)
    o_m.load_state_dict(t_m.state_dict())
    o = optimkit.SOAP(o_m.parameters(), precondition_frequency=3)
    o.load_state_dict(_through_bytes(t.state_dict()))
    train(o_m, o, dtype, range(4, 9))
    assert_same([p.detach() for p in o_m.parameters()], [p.detach() for p in ref_m.parameters()], "params")
    assert_same_state_dict(o.state_dict(), ref.state_dict(), SOAP, "state_dict")


@pytest.mark.parametrize("name", ["soap", "came"])
def test_checkpointer_round_trip(name, tmp_path):
    """optimkit's one-file checkpoint holds list-valued (SOAP's GG, Q) and int state (CAME's
    step) and resumes exactly."""
    spec = REGISTRY[name]
    kwargs = dict(spec.configs[0])
    dtype = torch.float64
    ref_m = square_mlp(dtype)
    ref = spec.cls(ref_m.parameters(), **kwargs)
    train(ref_m, ref, dtype, range(8))

    m = square_mlp(dtype)
    opt = spec.cls(m.parameters(), **kwargs)
    train(m, opt, dtype, range(4))
    optimkit.Checkpointer(tmp_path).save(4, model=m, optimizer=opt)
    m2 = square_mlp(dtype)
    opt2 = spec.cls(m2.parameters(), **kwargs)
    step = optimkit.Checkpointer(tmp_path).restore(model=m2, optimizer=opt2)
    assert step == 4
    train(m2, opt2, dtype, range(4, 8))
    assert_same([p.detach() for p in m2.parameters()], [p.detach() for p in ref_m.parameters()], "params")
    assert_same(opt2.state_dict(), ref.state_dict(), "state_dict")


def test_soap_first_step_and_steps_without_gradients():
    """The group's first step only gathers statistics (no parameter moves); a step where no
    parameter has a gradient is still counted, as pytorch-optimizer counts it."""
    p = torch.nn.Parameter(torch.randn(3, 3))
    before = p.detach().clone()
    opt = optimkit.SOAP([p])
    p.grad = torch.randn(3, 3)
    opt.step()
    assert torch.equal(p.detach(), before) and opt.param_groups[0]["step"] == 1
    p.grad = None
    opt.step()
    assert opt.param_groups[0]["step"] == 2


def test_soap_refusals():
    p = [torch.nn.Parameter(torch.randn(2, 2))]
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['foo'\\]"):
        optimkit.SOAP(p, foo=1)
    with pytest.raises(ValueError, match="data_format"):
        optimkit.SOAP(p, data_format="nhwc")
    with pytest.raises(ValueError, match="precondition_frequency"):
        optimkit.SOAP(p, precondition_frequency=0)
    with pytest.raises(ValueError, match="beta2"):
        optimkit.SOAP(p, betas=(0.9, 1.0))


def test_came_needs_a_learning_rate():
    """came-pytorch's lr=None default cannot train (its ``assert lr > 0.`` fails with a
    TypeError): optimkit says so with a ValueError naming lr."""
    p = [torch.nn.Parameter(torch.randn(2, 2))]
    with pytest.raises(ValueError, match="lr"):
        optimkit.CAME(p)
    with pytest.raises(ValueError, match="learning rate"):
        optimkit.CAME(p, lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        optimkit.CAME(p, lr=1e-3, betas=(0.9, 0.999, 1.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_came_half_precision_keeps_float32_state_through_a_resume(dtype):
    """came-pytorch computes half-precision parameters' steps in float32 with float32
    state; optimkit's load keeps that state float32 (torch's loader would cast it), so a
    resumed run is bit-identical to the oracle never stopping."""
    kwargs = {"lr": 1e-2}
    ref_m = square_mlp(dtype)
    ref = REGISTRY["came"].make_oracle(ref_m.parameters(), **kwargs)
    train(ref_m, ref, dtype, range(6))
    a_m = square_mlp(dtype)
    a = optimkit.CAME(a_m.parameters(), **kwargs)
    train(a_m, a, dtype, range(3))
    b_m = square_mlp(dtype)
    b_m.load_state_dict(a_m.state_dict())
    b = optimkit.CAME(b_m.parameters(), **kwargs)
    b.load_state_dict(_through_bytes(a.state_dict()))
    assert b.state[next(iter(b_m.parameters()))]["exp_avg"].dtype == torch.float32
    train(b_m, b, dtype, range(3, 6))
    assert_same([p.detach() for p in b_m.parameters()], [p.detach() for p in ref_m.parameters()], "params")
    assert_same_state_dict(b.state_dict(), ref.state_dict(), REGISTRY["came"], "state_dict")
