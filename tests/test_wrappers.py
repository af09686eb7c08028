"""Optimizer wrappers: ``Lookahead`` (outside the registry: it wraps an optimizer *instance*)
and ``SAM`` (in the registry, whose tables check it against ``pytorch_optimizer.SAM``; here
what the tables do not: other base optimizers, the oracle's two-half API, torch behaviour).

Lookahead's table: optimkit's and torch's inner optimizers against ``pytorch_optimizer.Lookahead``
4.1.0 wrapping torch's, on the MLP of ``tests/test_oracles.py`` for 20 steps -- bit for bit
after every step, state dicts included --; exact resume through bytes and through
``optimkit.Checkpointer``; state dicts that move between this class and the oracle.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import schedulefree
import torch
from pytorch_optimizer import SAM as OracleSAM
from pytorch_optimizer import Lookahead as OracleLookahead
from test_oracles import data, mlp

import optimkit
from harness import assert_same, grad_like, skip_pattern
from optimkit import lr_scheduler
from optimkit.checkpoint import Checkpointer

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
STEPS = 20

#: Inner optimizers: (name, optimkit's or torch's factory, the oracle side's torch factory).
INNER = {
    "optimkit-sgd": (lambda ps: optimkit.SGD(ps, lr=0.1, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False)),
    "optimkit-adamw": (lambda ps: optimkit.AdamW(ps, lr=1e-2, weight_decay=0.1),
                       lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=False)),
    "torch-adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False),
                    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False)),
    "optimkit-nesterov": (lambda ps: optimkit.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                          lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, foreach=False)),
}  # fmt: skip
#: (k, alpha, pullback_momentum)
SETTINGS = [(5, 0.5, "none"), (3, 0.8, "reset"), (2, 0.3, "pullback")]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def train(opt, model, x, y, steps, start=0, on_step=None):
    for step in range(start, start + steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        if on_step is not None:
            on_step(step)


def _lookahead_pair(inner, setting, dtype):
    ours_inner, ref_inner = INNER[inner]
    k, alpha, pullback = setting
    models = [mlp(dtype), mlp(dtype)]
    ours = optimkit.Lookahead(
        ours_inner(models[0].parameters()), k=k, alpha=alpha, pullback_momentum=pullback
    )
    ref = OracleLookahead(ref_inner(models[1].parameters()), k=k, alpha=alpha, pullback_momentum=pullback)
    return models, ours, ref


def assert_same_lookahead_state(ours, ref, path="state_dict"):
    """Whole state dicts equal, except group keys only one side's inner optimizer has (optimkit's
    and torch's groups agree; torch's ``foreach=False`` pin is not optimkit's)."""
    assert_same(ours["lookahead_state"], ref["lookahead_state"], f"{path}.lookahead_state")
    assert_same(ours["base_optimizer"]["state"], ref["base_optimizer"]["state"], f"{path}.state")
    for i, (g, rg) in enumerate(
        zip(ours["base_optimizer"]["param_groups"], ref["base_optimizer"]["param_groups"])
    ):
        common = set(g) & set(rg) - {"foreach"}
        assert {"counter", "lr", "params"} <= common
        assert_same({k: g[k] for k in common}, {k: rg[k] for k in common}, f"{path}.param_groups[{i}]")


# ---------------------------------------------------------------------------- Lookahead vs the oracle
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"k{s[0]}-{s[2]}")
@pytest.mark.parametrize("inner", list(INNER))
def test_lookahead_is_the_oracle_bit_for_bit(inner, setting, dtype):
    """20 steps on the MLP: the same bits after every step, and the same state dicts."""
    (m_ours, m_ref), ours, ref = _lookahead_pair(inner, setting, dtype)
    x, y = data(dtype)

    def compare(step):
        train(ref, m_ref, x, y, 1, start=step)
        for i, (a, b) in enumerate(zip(m_ours.parameters(), m_ref.parameters())):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")

    train(ours, m_ours, x, y, STEPS, on_step=compare)
    assert_same_lookahead_state(ours.state_dict(), ref.state_dict())


def test_lookahead_updates_only_parameters_with_gradients():
    """The slow update skips parameters without a gradient at that step (the oracle's rule)."""
    params = [
        torch.nn.Parameter(torch.randn(3, 2, generator=torch.Generator().manual_seed(i))) for i in range(4)
    ]
    twins = [p.detach().clone().requires_grad_() for p in params]
    ours = optimkit.Lookahead(optimkit.SGD(params, lr=0.1, momentum=0.9), k=2)
    ref = OracleLookahead(torch.optim.SGD(twins, lr=0.1, momentum=0.9, foreach=False), k=2)
    for step in range(7):
        for ps, opt in ((params, ours), (twins, ref)):
            for i, p in enumerate(ps):
                p.grad = None if skip_pattern(step, i, len(ps)) else grad_like(p, step, i)
            opt.step()
        assert_same([p.detach() for p in params], [p.detach() for p in twins], f"step {step}")
    assert_same_lookahead_state(ours.state_dict(), ref.state_dict())


def test_lookahead_takes_the_oracles_constructor_forms_and_refuses_alike():
    params = list(mlp(torch.float32).parameters())
    by_class = optimkit.Lookahead(optimkit.AdamW, params=params, lr=1e-3, k=4)
    assert isinstance(by_class.optimizer, optimkit.AdamW) and by_class.optimizer.defaults["lr"] == 1e-3
    assert by_class.defaults["lookahead_k"] == 4 and by_class.defaults["lr"] == 1e-3
    for kwargs in ({"k": 0}, {"alpha": 1.0}, {"alpha": -0.1}, {"pullback_momentum": "bogus"}):
        with pytest.raises(ValueError) as ours:
            optimkit.Lookahead(optimkit.SGD(params, lr=0.1), **kwargs)
        with pytest.raises(ValueError) as theirs:
            OracleLookahead(torch.optim.SGD(params, lr=0.1), **kwargs)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="params"):
        optimkit.Lookahead(optimkit.SGD, lr=0.1)
    with pytest.raises(TypeError, match="optimizer instance or class"):
        optimkit.Lookahead(params)
    with pytest.raises(TypeError, match="unexpected arguments"):
        optimkit.Lookahead(optimkit.SGD(params, lr=0.1), lr=0.2)


# ---------------------------------------------------------------------------- resume
def _through_bytes(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _schedulefree(ps):
    opt = schedulefree.AdamWScheduleFree(ps, lr=1e-2, warmup_steps=3)
    opt.train()
    return opt


RESUME = {
    "optimkit-sgd": INNER["optimkit-sgd"][0],
    "optimkit-adamw": INNER["optimkit-adamw"][0],
    "torch-adamw": INNER["torch-adamw"][0],
    "schedulefree-adamw": _schedulefree,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("pullback", ["none", "pullback"])
@pytest.mark.parametrize("inner", list(RESUME))
def test_lookahead_resumes_bit_for_bit(inner, pullback, dtype):
    """Save after 10 steps (mid-period: k=3), load into a fresh wrapper around a fresh inner
    optimizer, 10 more steps: the same bits as 20 steps without stopping."""
    x, y = data(dtype)
    make = RESUME[inner]

    def build():
        model = mlp(dtype)
        return model, optimkit.Lookahead(
            make(list(model.parameters())), k=3, alpha=0.6, pullback_momentum=pullback
        )

    m_ref, ref = build()
    train(ref, m_ref, x, y, 20)
    m_a, a = build()
    train(a, m_a, x, y, 10)
    saved_model, saved = copy.deepcopy(m_a.state_dict()), _through_bytes(a.state_dict())
    assert saved["base_optimizer"]["param_groups"][0]["counter"] == 1
    m_b, b = build()
    m_b.load_state_dict(saved_model)
    b.load_state_dict(saved)
    train(b, m_b, x, y, 10, start=10)
    assert_same([p.detach() for p in m_b.parameters()], [p.detach() for p in m_ref.parameters()], "params")
    assert_same(b.state_dict(), ref.state_dict(), "state_dict")


@pytest.mark.parametrize("direction", ["oracle->optimkit", "optimkit->oracle"])
def test_lookahead_state_dicts_move_to_and_from_the_oracle(direction):
    """A checkpoint of ``pytorch_optimizer.Lookahead`` continues here exactly, and back."""
    dtype = torch.float64
    x, y = data(dtype)
    makers = {
        "optimkit": lambda ps: optimkit.Lookahead(optimkit.SGD(ps, lr=0.1, momentum=0.9), k=3, pullback_momentum="pullback"),
        "oracle": lambda ps: OracleLookahead(torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False), k=3,
                                             pullback_momentum="pullback"),
    }  # fmt: skip
    first, second = direction.split("->")
    m_ref = mlp(dtype)
    ref = makers[second](m_ref.parameters())
    train(ref, m_ref, x, y, 10)
    m_a = mlp(dtype)
    a = makers[first](m_a.parameters())
    train(a, m_a, x, y, 5)
    m_b = mlp(dtype)
    m_b.load_state_dict(m_a.state_dict())
    b = makers[second](m_b.parameters())
    b.load_state_dict(_through_bytes(a.state_dict()))
    train(b, m_b, x, y, 5, start=5)
    assert_same([p.detach() for p in m_b.parameters()], [p.detach() for p in m_ref.parameters()], "params")


def test_lookahead_failed_load_changes_nothing():
    model = mlp(torch.float32)
    x, y = data(torch.float32)
    opt = optimkit.Lookahead(optimkit.SGD(model.parameters(), lr=0.1, momentum=0.9), k=2)
    train(opt, model, x, y, 3)
    good = copy.deepcopy(opt.state_dict())
    bad = []
    bad.append(("missing the key", {"lookahead_state": good["lookahead_state"]}))
    short = copy.deepcopy(good)
    del short["lookahead_state"][(0, 0)]
    bad.append(("does not match the current parameters", short))
    wrong = copy.deepcopy(good)
    wrong["lookahead_state"][(0, 1)]["slow_params"] = torch.zeros(3)
    bad.append(("has shape", wrong))
    inner = copy.deepcopy(good)
    inner["base_optimizer"]["param_groups"].append(copy.deepcopy(inner["base_optimizer"]["param_groups"][0]))
    bad.append(("different number of parameter groups", inner))
    for message, sd in bad:
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(sd)
        assert_same(opt.state_dict(), good, f"after a failed load ({message})")


@pytest.mark.parametrize("wrapper", ["lookahead", "sam"])
def test_the_checkpointer_saves_and_restores_a_wrapper_with_its_scheduler(tmp_path, wrapper):
    """``optimkit.Checkpointer`` with a wrapper and an LR scheduler driving it: restored at
    step 7 into fresh objects, 6 more steps give the bits of 13 uninterrupted ones."""
    x, y = data(torch.float64)

    def build():
        model = mlp(torch.float64)
        if wrapper == "lookahead":
            opt = optimkit.Lookahead(
                optimkit.AdamW(model.parameters(), lr=1e-2), k=4, pullback_momentum="reset"
            )
        else:
            opt = optimkit.SAM(model.parameters(), optimkit.SGD, lr=0.1, momentum=0.9, adaptive=True, rho=0.5)
        return model, opt, lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    def steps(model, opt, sched, n):
        for _ in range(n):

            def closure():
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                return loss

            if wrapper == "sam":
                opt.step(closure)
            else:
                closure()
                opt.step()
            sched.step()

    m_ref, o_ref, s_ref = build()
    steps(m_ref, o_ref, s_ref, 13)
    m_a, o_a, s_a = build()
    steps(m_a, o_a, s_a, 7)
    Checkpointer(tmp_path).save(7, model=m_a, optimizer=o_a, scheduler=s_a)
    m_b, o_b, s_b = build()
    assert Checkpointer(tmp_path).restore(model=m_b, optimizer=o_b, scheduler=s_b) == 7
    assert o_b.param_groups[0]["lr"] == o_a.param_groups[0]["lr"] != 1e-2
    steps(m_b, o_b, s_b, 6)
    assert_same(m_b.state_dict(), m_ref.state_dict(), "model")
    assert_same(o_b.state_dict(), o_ref.state_dict(), "optimizer")


# ---------------------------------------------------------------------------- a torch optimizer
@pytest.mark.parametrize("wrapper", ["lookahead", "sam"])
def test_wrappers_behave_as_torch_optimizers(wrapper):
    model = mlp(torch.float32)
    params = list(model.parameters())
    if wrapper == "lookahead":
        opt = optimkit.Lookahead(optimkit.SGD(params[:2], lr=0.1, momentum=0.9))
        inner = opt.optimizer
    else:
        opt = optimkit.SAM(params[:2], optimkit.SGD, lr=0.1, momentum=0.9)
        inner = opt.base_optimizer
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    # An LR scheduler (torch's, too) drives the inner optimizer through the wrapper.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o)))
    opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o)))
    x, y = data(torch.float32)

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    loss = closure()
    returned = opt.step(closure)
    assert wrapper == "lookahead" or torch.equal(returned, loss)  # SAM: the loss at w
    sched.step()
    assert inner.param_groups[0]["lr"] == 0.05
    assert calls == [("pre", opt), ("post", opt)] and opt._step_count == 1
    opt.zero_grad()
    assert all(p.grad is None for p in params[:2])
    # add_param_group: the wrapper's and the inner optimizer's defaults, the caller's dict kept.
    group = {"params": params[2:], "lr": 0.01}
    opt.add_param_group(group)
    assert opt.param_groups[-1] is group and inner.param_groups[-1] is group
    assert group["momentum"] == 0.9 and group["lr"] == 0.01
    if wrapper == "lookahead":
        assert group["counter"] == 0 and all("slow_params" in opt.state[p] for p in params[2:])
    else:
        assert group["rho"] == 0.05 and group["adaptive"] is False
        assert opt.state is inner.state
    # state dict hooks, deepcopy and pickle
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(sd) or None)
    sd = opt.state_dict()
    assert seen == [sd]
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert_same(clone.state_dict(), sd, "copy")
    assert "Lookahead" in repr(opt) or "SAM" in repr(opt)


def test_lookahead_evaluates_the_slow_weights_and_returns():
    model = mlp(torch.float64)
    x, y = data(torch.float64)
    opt = optimkit.Lookahead(optimkit.SGD(model.parameters(), lr=0.1), k=3)
    train(opt, model, x, y, 4)
    fast = [p.detach().clone() for p in model.parameters()]
    opt.backup_and_load_cache()
    assert_same(
        [p.detach() for p in model.parameters()], [opt.state[p]["slow_params"] for p in model.parameters()]
    )
    opt.clear_and_load_backup()
    assert_same([p.detach() for p in model.parameters()], fast)
    assert all("backup_params" not in opt.state[p] for p in model.parameters())


# ---------------------------------------------------------------------------- SAM beyond the registry
SAM_BASES = {
    "torch-adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "foreach": False}),
    "optimkit-adamw": (optimkit.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "torch-sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "foreach": False}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("base", list(SAM_BASES))
def test_sam_around_other_bases_is_the_oracle_bit_for_bit(base, adaptive, dtype):
    """Both halves by hand (``first_step``/``second_step``, the oracle's API) and ``step``."""
    cls, kwargs = SAM_BASES[base]
    kwargs = {**kwargs, "adaptive": adaptive, "rho": 0.5 if adaptive else 0.05}
    models = [mlp(dtype), mlp(dtype)]
    ours = optimkit.SAM(models[0].parameters(), cls, **kwargs)
    ref = OracleSAM(models[1].parameters(), cls, **kwargs)
    x, y = data(dtype)
    for step in range(STEPS):
        for model, opt in zip(models, (ours, ref)):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if step % 2 or opt is ref:  # the oracle's way: gradients first, then step(closure)

                def closure(model=model, opt=opt):
                    opt.zero_grad()
                    loss = _loss(model, x, y)
                    loss.backward()
                    return loss

                opt.step(closure)
            else:
                opt.first_step(zero_grad=True)
                _loss(model, x, y).backward()
                opt.second_step(zero_grad=True)
        for i, (a, b) in enumerate(zip(*(m.parameters() for m in models))):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert_same(ours.state_dict(), ref.state_dict(), "state_dict")


def test_sam_state_dicts_move_to_and_from_the_oracle():
    x, y = data(torch.float64)
    models = [mlp(torch.float64), mlp(torch.float64)]
    ours = optimkit.SAM(models[0].parameters(), optimkit.SGD, lr=0.1, momentum=0.9)
    ref = OracleSAM(models[1].parameters(), optimkit.SGD, lr=0.1, momentum=0.9)
    for model, opt in zip(models, (ours, ref)):
        for _ in range(3):
            _loss(model, x, y).backward()
            opt.first_step(zero_grad=True)
            _loss(model, x, y).backward()
            opt.second_step(zero_grad=True)
    assert_same(ours.state_dict(), ref.state_dict())
    fresh = optimkit.SAM(mlp(torch.float64).parameters(), optimkit.SGD, lr=0.1, momentum=0.9)
    fresh.load_state_dict(_through_bytes(ref.state_dict()))
    assert_same(fresh.state_dict(), ref.state_dict())
    back = OracleSAM(mlp(torch.float64).parameters(), optimkit.SGD, lr=0.1, momentum=0.9)
    back.load_state_dict(_through_bytes(ours.state_dict()))
    assert_same(back.state_dict(), ours.state_dict())


def test_sam_around_a_schedule_free_optimizer_resumes_bit_for_bit():
    x, y = data(torch.float64)

    def build():
        model = mlp(torch.float64)
        opt = optimkit.SAM(model.parameters(), schedulefree.SGDScheduleFree, lr=0.1, warmup_steps=2)
        opt.base_optimizer.train()
        return model, opt

    def steps(model, opt, n):
        for _ in range(n):

            def closure():
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                return loss

            opt.step(closure)

    m_ref, ref = build()
    steps(m_ref, ref, 8)
    m_a, a = build()
    steps(m_a, a, 4)
    m_b, b = build()
    m_b.load_state_dict(m_a.state_dict())
    b.load_state_dict(_through_bytes(a.state_dict()))
    steps(m_b, b, 4)
    assert_same(m_b.state_dict(), m_ref.state_dict())


def test_sam_refuses_clearly():
    params = list(mlp(torch.float32).parameters())
    with pytest.raises(TypeError, match="base_optimizer must be an optimizer class"):
        optimkit.SAM(params, optimkit.SGD(params, lr=0.1))
    with pytest.raises(ValueError, match="rho must be non-negative"):
        optimkit.SAM(params, optimkit.SGD, rho=-1.0)
    opt = optimkit.SAM(params, optimkit.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="SAM requires a closure"):
        opt.step()
    assert optimkit.create_optimizer("sam", params).base_optimizer.__class__ is optimkit.SGD


def test_lookahead_around_sam_is_the_oracles_pair():
    """The wrappers compose: Lookahead(SAM(...)) steps with a closure, as the oracles' pair does."""
    from oracle_adapters import SAM as DrivenOracleSAM

    x, y = data(torch.float64)
    models = [mlp(torch.float64), mlp(torch.float64)]
    ours = optimkit.Lookahead(optimkit.SAM(models[0].parameters(), optimkit.SGD, lr=0.1, momentum=0.9), k=3)
    ref = OracleLookahead(
        DrivenOracleSAM(models[1].parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, foreach=False), k=3
    )
    for step in range(10):
        for model, opt in zip(models, (ours, ref)):

            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                return loss

            opt.step(closure)
        ours_p, ref_p = ([p.detach() for p in m.parameters()] for m in models)
        assert_same(ours_p, ref_p, f"step {step}")
