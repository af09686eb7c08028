"""optimkit.schedules: pure schedule functions and the HyperparamScheduler that applies them."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as TL
from hypothesis import given, settings
from hypothesis import strategies as st

import optimkit
from optimkit.schedules import (
    HyperparamScheduler,
    Schedule,
    constant,
    cosine,
    exponential,
    inverse_sqrt,
    join,
    linear,
    warmup_cosine,
    wsd,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ the functions
def test_constant_and_linear():
    assert [constant(0.3)(t) for t in (0, 5, 10**9)] == [0.3, 0.3, 0.3]
    f = linear(1.0, 0.0, 10)
    assert [f(0), f(5), f(10), f(20)] == [1.0, 0.5, 0.0, 0.0]
    assert linear(0.0, 2.0, 0)(0) == 2.0  # zero-length: already at the end


def test_cosine_endpoints_and_midpoint():
    f = cosine(1.0, 0.1, 100)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1, abs=1e-16)
    assert f(1000) == f(100)
    assert all(f(t) > f(t + 1) for t in range(100))


def test_cosine_is_the_closed_form_of_torchs_recursion():
    """Same curve as torch's CosineAnnealingLR within rounding, but not its exact bits."""
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=1.0)
    sched = TL.CosineAnnealingLR(opt, T_max=100, eta_min=0.1)
    f = cosine(1.0, 0.1, 100)
    for t in range(101):
        assert opt.param_groups[0]["lr"] == pytest.approx(f(t), rel=1e-13, abs=1e-15)
        opt.step()
        sched.step()


def test_exponential_is_geometric():
    f = exponential(1e-6, 1.0, 6)
    assert f(0) == 1e-6
    assert f(6) == pytest.approx(1.0)
    assert f(3) == pytest.approx(1e-3)
    assert all(f(t + 1) / f(t) == pytest.approx(10.0) for t in range(6))
    with pytest.raises(ValueError, match="positive"):
        exponential(0.0, 1.0, 10)


def test_warmup_cosine():
    f = warmup_cosine(peak=1.0, total_steps=110, warmup_steps=10, final=0.1)
    assert f(0) == 0.0
    assert f(5) == 0.5
    assert f(10) == 1.0
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)
    assert f(500) == f(110)
    assert all(f(t) < f(t + 1) for t in range(10))
    assert all(f(t) > f(t + 1) for t in range(10, 110))
    g = warmup_cosine(peak=2.0, total_steps=50, init=0.2, warmup_steps=4)
    assert g(0) == 0.2
    assert warmup_cosine(1.0, 100)(0) == 1.0  # no warmup: starts at the peak


@pytest.mark.parametrize(
    "cooldown,quarter",
    [("linear", 0.75), ("cosine", (1 + math.cos(math.pi / 4)) / 2), ("1-sqrt", 0.5)],
)
def test_wsd_phases_and_cooldown_shapes(cooldown, quarter):
    f = wsd(peak=1.0, total_steps=1000, warmup_steps=100, decay_steps=200, cooldown=cooldown, final=0.0)
    assert f(0) == 0.0
    assert f(50) == 0.5
    assert all(f(t) == 1.0 for t in range(100, 801))  # stable phase: exactly the peak
    assert f(850) == pytest.approx(quarter)
    assert f(1000) == pytest.approx(0.0, abs=1e-15)
    assert f(2000) == f(1000)
    assert all(f(t) >= f(t + 1) for t in range(800, 1000))


def test_wsd_decay_fraction_and_final():
    f = wsd(peak=3e-4, total_steps=100, decay_fraction=0.1, final=3e-5)
    assert f(89) == 3e-4 and f(90) == 3e-4
    assert f(95) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5)
    assert f(100) == pytest.approx(3e-5)


def test_inverse_sqrt():
    f = inverse_sqrt(peak=1.0, warmup_steps=100)
    assert f(50) == 0.5
    assert f(100) == 1.0
    assert f(400) == pytest.approx(0.5)
    assert f(10_000) == pytest.approx(0.1)
    g = inverse_sqrt(peak=1.0, timescale=10)  # no warmup
    assert g(0) == 1.0
    assert g(30) == pytest.approx(0.5)


def test_join_counts_steps_from_each_boundary():
    f = join([linear(0.0, 1.0, 10), cosine(1.0, 0.0, 90), constant(0.0)], [10, 100])
    assert f(0) == 0.0
    assert f(10) == 1.0  # cosine's step 0
    assert f(55) == pytest.approx(0.5)
    assert f(150) == 0.0
    with pytest.raises(ValueError, match="boundaries"):
        join([constant(1.0)], [5])


def test_validation():
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(1.0, total_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="cooldown"):
        wsd(1.0, 100, cooldown="sqrt")
    with pytest.raises(ValueError, match="must not exceed"):
        wsd(1.0, 100, warmup_steps=50, decay_steps=60)
    with pytest.raises(ValueError, match="non-negative integer"):
        linear(0.0, 1.0, -1)
    with pytest.raises(ValueError, match="timescale"):
        inverse_sqrt(1.0, timescale=0)


def test_schedules_are_values():
    f = wsd(1.0, 1000, 100, cooldown="1-sqrt")
    assert isinstance(f, Schedule)
    assert pickle.loads(pickle.dumps(f)) == f
    assert copy.deepcopy(f) == f
    assert repr(f).startswith("wsd(peak=1.0, total_steps=1000, warmup_steps=100")
    assert f == wsd(1.0, 1000, 100, cooldown="1-sqrt")
    with pytest.raises(AttributeError):
        f.peak = 2.0  # frozen


@settings(max_examples=60, deadline=None)
@given(
    peak=st.floats(1e-6, 10.0),
    total=st.integers(1, 5000),
    warm_frac=st.floats(0.0, 1.0),
    final_frac=st.floats(0.0, 1.0),
    step=st.integers(0, 10_000),
)
def test_warmup_cosine_stays_in_range_and_is_pure(peak, total, warm_frac, final_frac, step):
    warmup = int(warm_frac * total)
    f = warmup_cosine(peak, total, warmup, final=final_frac * peak)
    v = f(step)
    assert f(step) == v  # pure: same input, same output
    assert -1e-12 <= v <= peak * (1 + 1e-12)
    if step >= total:
        assert v == pytest.approx(final_frac * peak, rel=1e-9, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(10, 5000),
    cooldown=st.sampled_from(["linear", "cosine", "1-sqrt"]),
    step=st.integers(0, 6000),
)
def test_wsd_is_monotone_after_warmup(total, cooldown, step):
    f = wsd(1.0, total, warmup_steps=total // 10, cooldown=cooldown)
    if step >= total // 10:
        assert f(step + 1) <= f(step)


# ------------------------------------------------------------------------------ the scheduler
def two_groups(kind="sgd", scale=None, wd_scale=None):
    g0 = {"params": [torch.nn.Parameter(torch.zeros(3))]}
    g1 = {"params": [torch.nn.Parameter(torch.zeros(2))]}
    if scale is not None:
        g1["lr_scale"] = scale
    if wd_scale is not None:
        g1["weight_decay_scale"] = wd_scale
    if kind == "sgd":
        return optimkit.SGD([g0, g1], lr=0.1, momentum=0.9, weight_decay=0.01)
    if kind == "adamw":
        return optimkit.AdamW([g0, g1], lr=0.1)
    if kind == "torch_adam":
        return torch.optim.Adam([g0, g1], lr=0.1)
    raise ValueError(kind)


def run(sched, steps):
    out = []
    for _ in range(steps):
        out.append(
            [dict((k, v) for k, v in g.items() if k != "params") for g in sched.optimizer.param_groups]
        )
        sched.optimizer.step()
        sched.step()
    return out


def test_writes_the_schedule_value_at_every_step():
    f = warmup_cosine(0.5, 300, 30, final=0.01)
    sched = HyperparamScheduler(two_groups(), f)
    for t, groups in enumerate(run(sched, 320)):
        assert groups[0]["lr"] == f(t) and groups[1]["lr"] == f(t)
    assert sched.get_last_lr() == [f(320), f(320)]


def test_any_hyperparameter_with_per_group_scales():
    f_lr = warmup_cosine(1e-3, 200, 20)
    f_wd = linear(0.01, 0.1, 200)
    f_b1 = cosine(0.85, 0.95, 200)
    f_b2 = constant(0.98)
    opt = two_groups("adamw", scale=0.25, wd_scale=0.0)
    sched = HyperparamScheduler(opt, {"lr": f_lr, "weight_decay": f_wd, "beta1": f_b1, "beta2": f_b2})
    for t, (g0, g1) in enumerate(run(sched, 250)):
        assert g0["lr"] == f_lr(t) and g1["lr"] == f_lr(t) * 0.25
        assert g0["weight_decay"] == f_wd(t) and g1["weight_decay"] == 0.0
        assert g0["betas"] == (f_b1(t), 0.98) == g1["betas"]
    assert sched.get_last_values()["beta1"] == [f_b1(250)] * 2


def test_momentum_means_momentum_or_beta1():
    f = cosine(0.95, 0.85, 10)
    sgd = HyperparamScheduler(two_groups("sgd"), {"momentum": f})
    adam = HyperparamScheduler(two_groups("torch_adam"), {"momentum": f})
    for t, (a, b) in enumerate(zip(run(sgd, 12), run(adam, 12))):
        assert a[0]["momentum"] == f(t)
        assert b[1]["betas"][0] == f(t)


def test_per_group_schedules_and_unscheduled_lr_untouched():
    opt = two_groups()
    fs = [constant(0.2), linear(0.0, 0.1, 10)]
    sched = HyperparamScheduler(opt, {"weight_decay": fs})
    for t, (g0, g1) in enumerate(run(sched, 15)):
        assert g0["weight_decay"] == 0.2 and g1["weight_decay"] == fs[1](t)
        assert g0["lr"] == 0.1 and g1["lr"] == 0.1


def test_bad_specs():
    with pytest.raises(ValueError, match="no hyperparameter 'momentum_x'"):
        HyperparamScheduler(two_groups(), {"momentum_x": constant(1.0)})
    with pytest.raises(ValueError, match="no hyperparameter 'beta1'"):
        HyperparamScheduler(two_groups("sgd"), {"beta1": constant(0.9)})
    with pytest.raises(ValueError, match="2 param groups"):
        HyperparamScheduler(two_groups(), {"lr": [constant(1.0)]})
    with pytest.raises(TypeError, match="not callable"):
        HyperparamScheduler(two_groups(), {"lr": 0.1})
    with pytest.raises(TypeError, match="is not an Optimizer"):
        HyperparamScheduler(object(), constant(0.1))


def test_state_dict_round_trip_mid_schedule():
    f = {"lr": wsd(0.1, 500, 50, cooldown="1-sqrt"), "weight_decay": linear(0.0, 0.1, 500)}
    ref = run(HyperparamScheduler(two_groups(scale=0.5), f), 500)
    first = HyperparamScheduler(two_groups(scale=0.5), f)
    run(first, 123)
    buf = io.BytesIO()
    torch.save({"sched": first.state_dict(), "opt": first.optimizer.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain data only: no functions pickled
    second = HyperparamScheduler(two_groups(scale=0.5), f)
    second.optimizer.load_state_dict(saved["opt"])
    second.load_state_dict(saved["sched"])
    assert run(second, 500 - 123) == ref[123:]


def test_last_epoch_resumption():
    f = inverse_sqrt(0.1, 20)
    opt = two_groups()
    sched = HyperparamScheduler(opt, f, last_epoch=41)
    assert sched.last_epoch == 42 and opt.param_groups[0]["lr"] == f(42)
    for t, groups in enumerate(run(sched, 10), start=42):
        assert groups[0]["lr"] == f(t)


def test_warns_when_stepped_before_the_optimizer():
    sched = HyperparamScheduler(two_groups(), constant(0.1))
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        sched.step()


def test_matches_lambda_lr_within_rounding():
    f = warmup_cosine(0.1, 1000, 100, final=1e-3)
    ours = HyperparamScheduler(two_groups(), f)
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.1)
    ref = TL.LambdaLR(opt, lambda t: f(t) / 0.1)
    for _ in range(1000):
        assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-14)
        for o, s in ((ours.optimizer, ours), (opt, ref)):
            o.step()
            s.step()


@pytest.mark.parametrize("opt_cls", [optimkit.SGD, torch.optim.SGD, optimkit.Adam, torch.optim.Adam])
def test_drives_training_like_setting_the_lr_by_hand(opt_cls):
    """The scheduler is only a writer: training equals writing f(t) into the groups by hand."""
    f = warmup_cosine(0.05, 40, 5, final=1e-3)

    def train(use_scheduler):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        opt = opt_cls(model.parameters(), lr=1.0)
        sched = HyperparamScheduler(opt, f) if use_scheduler else None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for t in range(40):
                if sched is None:
                    opt.param_groups[0]["lr"] = f(t)
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                if sched is not None:
                    sched.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train(True), train(False)):
        assert torch.equal(a, b)
