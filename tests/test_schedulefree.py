"""Schedule-Free AdamW, SGD and RAdam: both modes against the authors' ``schedulefree``.

The registry tables (``test_exactness``, ``test_oracles``, ``test_state_dict``, ...) compare
the training iterate. Here the evaluation iterate too: on ``test_oracles``' MLP, 20 steps
with every configuration in float64 and float32, both optimizers are switched to eval mode
every few steps (the parameters become the average x), compared bit for bit, switched back
and trained on. Also: ``train()``/``eval()`` are idempotent, the mode is in the state dict,
``step()`` in eval mode raises, resuming in either mode is bit-identical (state dicts and the
:class:`~optimkit.Checkpointer`), and the switch works on FSDP2's DTensor parameters.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_utils import available, run_group
from test_distributed import full
from test_oracles import data, mlp

import optimkit
from harness import assert_same, assert_same_state_dict, clone_kwargs, oracle_kwargs
from optimkit.registry import REGISTRY

NAMES = ["schedulefreeadamw", "schedulefreesgd", "schedulefreeradam"]
SPECS = {name: REGISTRY[name] for name in NAMES}
DTYPES = [torch.float64, torch.float32]
STEPS = 20
EVAL_EVERY = 3  # switch to eval and back after steps 2, 5, 8, ... (and 0: before RAdam's Adam phase)


def _pair(spec: Any, kwargs: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, list[torch.nn.Module]]:
    """optimkit's and the oracle's optimizer on two copies of the MLP, both in train mode
    (the oracle through its declared setup, ours as a user of schedulefree would)."""
    models = [mlp(dtype), mlp(dtype)]
    kwargs = oracle_kwargs(spec, kwargs)
    ours = spec.cls(models[0].parameters(), **clone_kwargs(kwargs))
    ours.train()
    ref = spec.make_oracle(models[1].parameters(), **clone_kwargs(kwargs))
    return ours, ref, models


def _step(model: torch.nn.Module, opt: Any, step: int, dtype: torch.dtype) -> None:
    x, y = data(dtype)
    opt.zero_grad()
    F.mse_loss(model(x * (1 + step / STEPS)), y).backward()
    opt.step()


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _modes(opt: Any) -> list[bool]:
    return [g["train_mode"] for g in opt.param_groups]


CASES = [
    pytest.param(name, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name in NAMES
    for i in range(len(SPECS[name].configs))
    for dtype in DTYPES
]


@pytest.mark.parametrize("name,config,dtype", CASES)
def test_train_and_eval_modes_match_the_oracle_bit_for_bit(name, config, dtype):
    spec = SPECS[name]
    ours, ref, (m_ours, m_ref) = _pair(spec, spec.configs[config], dtype)
    for step in range(STEPS):
        _step(m_ours, ours, step, dtype)
        _step(m_ref, ref, step, dtype)
        assert_same(_params(m_ours), _params(m_ref), f"train mode, step {step}")
        if step % EVAL_EVERY == 0 or step == STEPS - 1:
            y = _params(m_ours)
            for opt in (ours, ref):
                opt.eval()
            assert _modes(ours) == _modes(ref) == [False]
            assert_same(_params(m_ours), _params(m_ref), f"eval mode, step {step}")
            assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec, f"eval mode, step {step}")
            x = _params(m_ours)
            if step >= 6:  # x is the average, y the point gradients were taken at
                assert any(not torch.equal(a, b) for a, b in zip(x, y))
            for opt in (ours, ref):  # idempotent: a second eval() changes nothing
                opt.eval()
            assert_same(_params(m_ours), x, f"second eval(), step {step}")
            assert_same(_params(m_ref), x, f"the oracle's second eval(), step {step}")
            for opt in (ours, ref):
                opt.train()
                opt.train()
            assert _modes(ours) == _modes(ref) == [True]
            assert_same(_params(m_ours), _params(m_ref), f"back in train mode, step {step}")
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec, "state_dict")


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_forms_restore_y_exactly(name):
    """AdamW's and SGD's reference keep y: eval() then train() gives the same bits back. RAdam
    keeps only z and interpolates both ways (as the authors' does): the round trip is exact to
    rounding only."""
    spec = SPECS[name]
    ours, _, (model, _) = _pair(spec, spec.configs[1], torch.float64)
    for step in range(8):
        _step(model, ours, step, torch.float64)
    y = _params(model)
    ours.eval()
    ours.train()
    if name == "schedulefreeradam":
        for a, b in zip(_params(model), y):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    else:
        assert_same(_params(model), y)


@pytest.mark.parametrize("name", NAMES)
def test_the_mode_is_in_the_state_dict_and_the_defaults_are_the_oracles(name):
    spec = SPECS[name]
    ours, ref, (model, _) = _pair(spec, {}, torch.float64)
    fresh = spec.cls(mlp(torch.float64).parameters())
    theirs = spec.oracle_cls(mlp(torch.float64).parameters())
    # AdamW's and RAdam's start in eval mode, SGD's in train mode -- as the authors'.
    assert fresh.state_dict()["param_groups"][0]["train_mode"] is theirs.param_groups[0]["train_mode"]
    assert fresh.defaults["train_mode"] is theirs.defaults["train_mode"]
    _step(model, ours, 0, torch.float64)
    assert ours.state_dict()["param_groups"][0]["train_mode"] is True
    ours.eval()
    saved = ours.state_dict()
    assert saved["param_groups"][0]["train_mode"] is False
    for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
        assert key in saved["param_groups"][0]


@pytest.mark.parametrize("name", NAMES)
def test_step_in_eval_mode_raises_like_the_oracle_and_changes_nothing(name):
    spec = SPECS[name]
    ours, ref, (m_ours, m_ref) = _pair(spec, {}, torch.float64)
    for step in range(3):
        _step(m_ours, ours, step, torch.float64)
        _step(m_ref, ref, step, torch.float64)
    ours.eval()
    ref.eval()
    before, params = copy.deepcopy(ours.state_dict()), _params(m_ours)
    called = []

    def closure():
        called.append(1)
        return torch.tensor(0.0)

    with pytest.raises(Exception, match="not in train mode when step is called") as theirs:
        ref.step(closure)
    with pytest.raises(RuntimeError, match="not in train mode when step is called") as mine:
        ours.step(closure)
    assert str(mine.value) == str(theirs.value)
    assert called == []  # both refuse before the closure runs
    assert_same(ours.state_dict(), before)
    assert_same(_params(m_ours), params)
    ours.train()
    ref.train()
    _step(m_ours, ours, 3, torch.float64)
    _step(m_ref, ref, 3, torch.float64)
    assert_same(_params(m_ours), _params(m_ref))


@pytest.mark.parametrize("name", ["schedulefreeadamw", "schedulefreeradam"])
def test_a_fresh_optimizer_switches_itself_to_train_mode_at_its_first_step(name):
    """The one difference from the authors': their fresh AdamW/RAdam (eval mode) refuse to step
    until train() is called; ours switch themselves -- there is no x to lose yet, train()
    changes nothing but the flag -- so torch-style loops (the registry's tables, the lab,
    the benchmarks, the checkpoint workers) run them unchanged."""
    spec = SPECS[name]
    m_ours, m_ref = mlp(torch.float64), mlp(torch.float64)
    ours = spec.cls(m_ours.parameters())
    ref = spec.oracle_cls(m_ref.parameters())
    assert _modes(ours) == _modes(ref) == [False]
    with pytest.raises(Exception, match="not in train mode"):
        _step(m_ref, ref, 0, torch.float64)
    ref.train()
    for step in range(3):
        _step(m_ours, ours, step, torch.float64)
        _step(m_ref, ref, step, torch.float64)
    assert _modes(ours) == [True]
    assert_same(_params(m_ours), _params(m_ref))
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec)


@pytest.mark.parametrize("name", NAMES)
def test_counters_advance_without_gradients_like_the_oracle(name):
    """k, weight_sum, lr_max and scheduled_lr are the group's, advanced at every step --
    also when no parameter of the group has a gradient (as the authors')."""
    spec = SPECS[name]
    kwargs = {"weight_decay": 0.01}
    ours, ref, (m_ours, m_ref) = _pair(spec, kwargs, torch.float64)
    for step in range(7):
        if step in (1, 4):
            for opt in (ours, ref):
                opt.zero_grad()
                opt.step()
        else:
            _step(m_ours, ours, step, torch.float64)
            _step(m_ref, ref, step, torch.float64)
        assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec, f"step {step}")
        assert_same(_params(m_ours), _params(m_ref), f"step {step}")


def _uninterrupted(spec, kwargs, dtype, stop, total, mode):
    model = mlp(dtype)
    opt = spec.cls(model.parameters(), **clone_kwargs(kwargs))
    for step in range(total):
        if step == stop and mode == "eval":
            opt.eval()
            opt.train()
        _step(model, opt, step, dtype)
    return _params(model), opt.state_dict()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_in_either_mode_is_bit_identical(name, dtype, mode, tmp_path):
    """Saved in train mode (parameters y) or eval mode (parameters x): a fresh model and
    optimizer loaded from the state dicts -- through torch.save -- continue bit for bit
    like the uninterrupted run (which switches modes at the same point)."""
    spec = SPECS[name]
    kwargs = spec.configs[1]
    stop, total = 6, 12
    expected_params, expected_state = _uninterrupted(spec, kwargs, dtype, stop, total, mode)

    model = mlp(dtype)
    opt = spec.cls(model.parameters(), **clone_kwargs(kwargs))
    for step in range(stop):
        _step(model, opt, step, dtype)
    if mode == "eval":
        opt.eval()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    del model, opt

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["opt"]["param_groups"][0]["train_mode"] is (mode == "train")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)
    model.load_state_dict(saved["model"])
    opt = spec.cls(model.parameters(), **clone_kwargs(kwargs))
    opt.load_state_dict(saved["opt"])
    assert _modes(opt) == [mode == "train"]
    if mode == "eval":
        with pytest.raises(RuntimeError, match="not in train mode"):
            opt.step()
        opt.train()
    for step in range(stop, total):
        _step(model, opt, step, dtype)
    assert_same(_params(model), expected_params)
    assert_same(opt.state_dict(), expected_state)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_checkpointer_restores_either_mode(name, mode, tmp_path):
    """optimkit's Checkpointer saves the model's parameters as they are and the mode with the
    optimizer: restoring gives back the same mode and parameters, so training continues exactly."""
    spec = SPECS[name]
    dtype = torch.float64
    stop, total = 5, 10
    expected_params, expected_state = _uninterrupted(spec, spec.configs[0], dtype, stop, total, mode)

    model = mlp(dtype)
    opt = spec.cls(model.parameters())
    for step in range(stop):
        _step(model, opt, step, dtype)
    if mode == "eval":
        opt.eval()
    at_save = _params(model)
    optimkit.Checkpointer(tmp_path).save(stop, model=model, optimizer=opt)

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)
    opt = spec.cls(model.parameters())
    assert optimkit.Checkpointer(tmp_path).restore(model=model, optimizer=opt) == stop
    assert _modes(opt) == [mode == "train"]
    assert_same(_params(model), at_save)
    opt.train()
    for step in range(stop, total):
        _step(model, opt, step, dtype)
    assert_same(_params(model), expected_params)
    assert_same(opt.state_dict(), expected_state)


@pytest.mark.parametrize("name", NAMES)
def test_state_dicts_cross_to_the_oracle_and_back_in_eval_mode(name):
    """A state dict saved in eval mode by either library loads into the other and both go on
    in lockstep (train(), steps, eval())."""
    spec = SPECS[name]
    ours, ref, (m_ours, m_ref) = _pair(spec, spec.configs[1], torch.float64)
    for step in range(6):
        _step(m_ours, ours, step, torch.float64)
        _step(m_ref, ref, step, torch.float64)
    ours.eval()
    ref.eval()
    # Swap: each optimizer takes the other's state dict (on its own, identical, parameters).
    ours_sd, ref_sd = copy.deepcopy(ours.state_dict()), copy.deepcopy(ref.state_dict())
    ours.load_state_dict(ref_sd)
    ref.load_state_dict(ours_sd)
    for opt in (ours, ref):
        opt.train()
    for step in range(6, 10):
        _step(m_ours, ours, step, torch.float64)
        _step(m_ref, ref, step, torch.float64)
    ours.eval()
    ref.eval()
    assert_same(_params(m_ours), _params(m_ref))
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec)


@pytest.mark.parametrize("name", NAMES)
def test_compile_and_packing_agree_in_both_modes(name):
    """compile=True (one fused loop, last bits differ) and the exact packed path, switched to
    eval mode and back: the modes move the same state."""
    spec = SPECS[name]
    m_exact, m_comp = mlp(torch.float32), mlp(torch.float32)
    exact = spec.cls(m_exact.parameters(), **clone_kwargs(spec.configs[1]))
    comp = spec.cls(m_comp.parameters(), **clone_kwargs(spec.configs[1]), compile=True)
    for step in range(8):
        _step(m_exact, exact, step, torch.float32)
        _step(m_comp, comp, step, torch.float32)
        if step % 3 == 2:
            exact.eval(), comp.eval()
            for a, b in zip(m_comp.parameters(), m_exact.parameters()):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
            exact.train(), comp.train()


# ---------------------------------------------------------------------------- FSDP2 (DTensor)
FSDP_STEPS = 4


def _fsdp_modes_case(rank: int, world: int, name: str) -> dict[str, Any]:
    """On 2 ranks: the MLP sharded by FSDP2 (DTensor parameters and state), stepped, switched
    to eval mode (gathered), back to train mode and stepped on."""
    from torch.distributed.fsdp import fully_shard

    model = mlp(torch.float64)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = SPECS[name].cls(model.parameters(), **clone_kwargs(SPECS[name].configs[1]))
    return _modes_run(model, opt, rank, world)


def _modes_run(model, opt, rank=0, world=1):
    gather = full  # DTensors gathered to their full value (a collective), tensors copied
    x, y = data(torch.float64)
    n = len(x) // world
    out = {}

    def step(s):
        opt.zero_grad()
        F.mse_loss(
            model(x[rank * n : (rank + 1) * n] * (1 + s / STEPS)), y[rank * n : (rank + 1) * n]
        ).backward()
        opt.step()

    for s in range(FSDP_STEPS):
        step(s)
    out["train"] = gather(list(model.parameters()))
    opt.eval()
    out["eval"] = gather(list(model.parameters()))
    opt.train()
    for s in range(FSDP_STEPS, 2 * FSDP_STEPS):
        step(s)
    opt.eval()
    out["final"] = gather(list(model.parameters()))
    out["state"] = gather(opt.state_dict())
    return out


@pytest.mark.skipif(not available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("name", NAMES)
def test_train_and_eval_on_fsdp2_dtensor_parameters(name):
    ranks = run_group(_fsdp_modes_case, 2, name, timeout=120)
    model = mlp(torch.float64)
    opt = SPECS[name].cls(model.parameters(), **clone_kwargs(SPECS[name].configs[1]))
    expected = _modes_run(model, opt)
    for got in ranks:
        for key in ("train", "eval", "final"):
            for a, b in zip(got[key], expected[key]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        assert got["state"]["param_groups"][0]["train_mode"] is False
        assert got["state"]["param_groups"][0]["k"] == expected["state"]["param_groups"][0]["k"]
        for pid, st in expected["state"]["state"].items():
            for k, v in st.items():
                torch.testing.assert_close(got["state"]["state"][pid][k], v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_radam_matches_the_oracles_foreach_path_too(dtype):
    """The tables pin the oracle to its per-tensor loop (foreach=False); its default foreach
    loop does the same ops on the CPU: the same bits, in both modes."""
    spec = SPECS["schedulefreeradam"]
    for kwargs in spec.configs:
        m_ours, m_ref = mlp(dtype), mlp(dtype)
        ours = spec.cls(m_ours.parameters(), **clone_kwargs(kwargs))
        ref = spec.oracle_cls(m_ref.parameters(), foreach=True, **clone_kwargs(kwargs))
        ref.train()
        for step in range(12):
            _step(m_ours, ours, step, dtype)
            _step(m_ref, ref, step, dtype)
            assert_same(_params(m_ours), _params(m_ref), f"{kwargs} step {step}")
            if step % 4 == 3:
                ours.eval(), ref.eval()
                assert_same(_params(m_ours), _params(m_ref), f"{kwargs} eval mode, step {step}")
                ours.train(), ref.train()


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_step_changes_nothing(name):
    """A sparse gradient is refused before anything moves: parameters, state and the group's
    counters stay as they were."""
    spec = SPECS[name]
    model = mlp(torch.float64)
    opt = spec.cls(model.parameters())
    for step in range(2):
        _step(model, opt, step, torch.float64)
    before, params = copy.deepcopy(opt.state_dict()), _params(model)
    _step_grads = [torch.ones_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), _step_grads):
        p.grad = g
    model[0].bias.grad = model[0].bias.grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_same(opt.state_dict(), before)
    assert_same(_params(model), params)
