"""optimkit.lr_scheduler against torch.optim.lr_scheduler: same lrs, same state dicts.

Table-driven: every scheduler x several configurations, 1,000 steps each, compared with
``==`` (bit for bit) on the lrs (and momenta / betas) written into the groups.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections import Counter

import pytest
import torch
import torch.optim.lr_scheduler as TL

import optimkit
import optimkit.lr_scheduler as OL

STEPS = 1000
LRS = (0.1, 0.03)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ optimizers
def make_optimizer(kind: str, tensor_lr: bool = False, scales: tuple | None = None) -> torch.optim.Optimizer:
    """Two param groups with different lrs; the params never get gradients (steps are cheap)."""
    groups = []
    for i, lr in enumerate(LRS):
        group = {"params": [torch.nn.Parameter(torch.zeros(3))], "lr": torch.tensor(lr) if tensor_lr else lr}
        if scales is not None and scales[i] is not None:
            group["lr_scale"] = scales[i]
        groups.append(group)
    if kind == "sgd":
        return optimkit.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "torch_sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return optimkit.Adam(groups, lr=0.1)
    if kind == "torch_adam":
        return torch.optim.Adam(groups, lr=0.1)
    if kind == "adamw":
        return optimkit.AdamW(groups, lr=0.1)
    raise ValueError(kind)


def lam_exp(e):
    return 0.95**e


def lam_inv(e):
    return 1 / (1 + e)


def lam_cos(e):
    return 0.5 * (1 + math.cos(math.pi * e / STEPS))


def lam_const(e):
    return 0.999


def lam_wave(e):
    return 1.0 + 0.01 * math.sin(e)


def plateau_metric(i: int) -> float:
    """Decreasing, then flat, then noisy: plateaus every few dozen steps."""
    return 1.0 / (1 + i // 60) + (0.001 * math.sin(i) if (i // 30) % 2 else 0.0)


# (id, optimizer kind, factory(L, opt, **kw) -> scheduler, extra constructor kwargs allowed)
CASES = [
    ("Lambda-exp", "sgd", lambda L, o, **kw: L.LambdaLR(o, lam_exp, **kw)),
    ("Lambda-pergroup", "sgd", lambda L, o, **kw: L.LambdaLR(o, [lam_inv, lam_cos], **kw)),
    ("Multiplicative-const", "sgd", lambda L, o, **kw: L.MultiplicativeLR(o, lam_const, **kw)),
    ("Multiplicative-pergroup", "sgd", lambda L, o, **kw: L.MultiplicativeLR(o, [lam_const, lam_wave], **kw)),
    ("Step-30-0.1", "sgd", lambda L, o, **kw: L.StepLR(o, 30, 0.1, **kw)),
    ("Step-7-0.5", "sgd", lambda L, o, **kw: L.StepLR(o, step_size=7, gamma=0.5, **kw)),
    ("Step-100-0.9", "adam", lambda L, o, **kw: L.StepLR(o, 100, gamma=0.9, **kw)),
    ("MultiStep-repeat", "sgd", lambda L, o, **kw: L.MultiStepLR(o, [100, 300, 300, 700], 0.1, **kw)),
    ("MultiStep-0.7", "sgd", lambda L, o, **kw: L.MultiStepLR(o, [5, 10, 15, 999], gamma=0.7, **kw)),
    ("Constant-default", "sgd", lambda L, o, **kw: L.ConstantLR(o, **kw)),
    ("Constant-0.5-40", "sgd", lambda L, o, **kw: L.ConstantLR(o, 0.5, 40, **kw)),
    ("Constant-0.3-1000", "sgd", lambda L, o, **kw: L.ConstantLR(o, factor=0.3, total_iters=1000, **kw)),
    ("Linear-default", "sgd", lambda L, o, **kw: L.LinearLR(o, **kw)),
    ("Linear-warmup-500", "sgd", lambda L, o, **kw: L.LinearLR(o, 0.1, 1.0, 500, **kw)),
    ("Linear-decay-1000", "adam", lambda L, o, **kw: L.LinearLR(o, 1.0, 0.01, 1000, **kw)),
    ("Linear-to-zero-300", "sgd", lambda L, o, **kw: L.LinearLR(o, 0.5, 0.0, 300, **kw)),
    ("Exponential-0.99", "sgd", lambda L, o, **kw: L.ExponentialLR(o, 0.99, **kw)),
    ("Exponential-0.5", "sgd", lambda L, o, **kw: L.ExponentialLR(o, gamma=0.5, **kw)),
    ("Polynomial-default", "sgd", lambda L, o, **kw: L.PolynomialLR(o, **kw)),
    ("Polynomial-1000-2", "sgd", lambda L, o, **kw: L.PolynomialLR(o, 1000, 2.0, **kw)),
    ("Polynomial-500-0.5", "adam", lambda L, o, **kw: L.PolynomialLR(o, total_iters=500, power=0.5, **kw)),
    ("Cosine-100", "sgd", lambda L, o, **kw: L.CosineAnnealingLR(o, 100, **kw)),
    ("Cosine-1000-eta", "sgd", lambda L, o, **kw: L.CosineAnnealingLR(o, 1000, 1e-4, **kw)),
    ("Cosine-37-eta", "adam", lambda L, o, **kw: L.CosineAnnealingLR(o, T_max=37, eta_min=1e-3, **kw)),
    ("Cosine-1", "sgd", lambda L, o, **kw: L.CosineAnnealingLR(o, 1, **kw)),
    ("WarmRestarts-10", "sgd", lambda L, o, **kw: L.CosineAnnealingWarmRestarts(o, 10, **kw)),
    ("WarmRestarts-10-2", "sgd", lambda L, o, **kw: L.CosineAnnealingWarmRestarts(o, 10, 2, 1e-4, **kw)),
    (
        "WarmRestarts-7-3",
        "adam",
        lambda L, o, **kw: L.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=3, eta_min=1e-3, **kw),
    ),
    ("Cyclic-triangular", "sgd", lambda L, o, **kw: L.CyclicLR(o, 0.01, 0.1, 50, **kw)),
    (
        "Cyclic-triangular2",
        "sgd",
        lambda L, o, **kw: L.CyclicLR(o, 0.001, [0.1, 0.2], 20, 30, mode="triangular2", **kw),
    ),
    (
        "Cyclic-exp_range",
        "sgd",
        lambda L, o, **kw: L.CyclicLR(o, 1e-3, 0.05, 33, mode="exp_range", gamma=0.999, **kw),
    ),
    (
        "Cyclic-custom-iter",
        "sgd",
        lambda L, o, **kw: L.CyclicLR(o, 1e-3, 0.05, 40, scale_fn=lam_inv, scale_mode="iterations", **kw),
    ),
    (
        "Cyclic-betas",
        "adam",
        lambda L, o, **kw: L.CyclicLR(o, 1e-4, 1e-2, 25, base_momentum=0.85, max_momentum=0.95, **kw),
    ),
    (
        "Cyclic-nomomentum",
        "adam",
        lambda L, o, **kw: L.CyclicLR(o, 1e-4, 1e-2, 25, cycle_momentum=False, **kw),
    ),
    ("OneCycle-2phase", "sgd", lambda L, o, **kw: L.OneCycleLR(o, 0.1, total_steps=1001, **kw)),
    (
        "OneCycle-3phase",
        "sgd",
        lambda L, o, **kw: L.OneCycleLR(o, [0.1, 0.3], total_steps=1200, three_phase=True, **kw),
    ),
    (
        "OneCycle-linear-epochs",
        "adam",
        lambda L, o, **kw: L.OneCycleLR(
            o, 0.01, epochs=10, steps_per_epoch=101, anneal_strategy="linear", pct_start=0.25, **kw
        ),
    ),
    (
        "OneCycle-nomomentum",
        "adamw",
        lambda L, o, **kw: L.OneCycleLR(
            o, 0.01, total_steps=1001, cycle_momentum=False, div_factor=10.0, final_div_factor=100.0, **kw
        ),
    ),
    (
        "Sequential-const-exp",
        "sgd",
        lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.1, 20), L.ExponentialLR(o, 0.99)], [20]),
    ),
    (
        "Sequential-warmup-cos",
        "sgd",
        lambda L, o: L.SequentialLR(
            o, [L.LinearLR(o, 0.01, total_iters=10), L.CosineAnnealingLR(o, 990)], milestones=[10]
        ),
    ),
    (
        "Sequential-three",
        "adam",
        lambda L, o: L.SequentialLR(
            o, [L.ConstantLR(o), L.StepLR(o, 50, 0.5), L.ExponentialLR(o, 0.995)], [10, 500]
        ),
    ),
    (
        "Chained-const-exp",
        "sgd",
        lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.1, 20), L.ExponentialLR(o, 0.99)]),
    ),
    (
        "Chained-three",
        "sgd",
        lambda L, o: L.ChainedScheduler(
            [L.LinearLR(o, 0.1, total_iters=50), L.CosineAnnealingLR(o, 100), L.StepLR(o, 200)], optimizer=o
        ),
    ),
    ("Plateau-default", "sgd", lambda L, o: L.ReduceLROnPlateau(o)),
    ("Plateau-max-abs", "sgd", lambda L, o: L.ReduceLROnPlateau(o, "max", 0.5, 3, 0.01, "abs", cooldown=5)),
    (
        "Plateau-minlr",
        "adam",
        lambda L, o: L.ReduceLROnPlateau(
            o, factor=0.3, patience=2, min_lr=[1e-3, 1e-4], threshold_mode="abs"
        ),
    ),
]
CASE_IDS = [c[0] for c in CASES]
RESUMABLE = [c for c in CASES if not c[0].startswith(("Sequential", "Chained", "Plateau"))]


def hyper(opt: torch.optim.Optimizer) -> list:
    """What a scheduler may write: lr, momentum, betas of every group."""
    out = []
    for g in opt.param_groups:
        lr = g["lr"]
        out.append(
            (
                float(lr) if isinstance(lr, torch.Tensor) else lr,
                g.get("momentum"),
                tuple(g["betas"]) if "betas" in g else None,
            )
        )
    return out


def step_once(sched, i: int) -> None:
    sched.optimizer.step()
    if type(sched).__name__ == "ReduceLROnPlateau":
        sched.step(plateau_metric(i))
    else:
        sched.step()


def trajectory(sched, start: int, stop: int) -> list:
    """(group hyperparameters, get_last_lr) after each of the steps ``start..stop-1``."""
    out = [(hyper(sched.optimizer), list(sched.get_last_lr()))] if start == 0 else []
    for i in range(start, stop):
        step_once(sched, i)
        last = [float(x) if isinstance(x, torch.Tensor) else x for x in sched.get_last_lr()]
        out.append((hyper(sched.optimizer), last))
    return out


def build(L, kind, factory, tensor_lr=False, **kw):
    opt = make_optimizer(kind, tensor_lr=tensor_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(L, opt, **kw)


def assert_same_state(a, b, path="state"):
    """Recursive exact equality of two state dicts (functions and callables excepted)."""
    if isinstance(a, dict) and not isinstance(a, Counter):
        assert isinstance(b, dict), path
        assert sorted(a, key=str) == sorted(b, key=str), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif callable(a):
        assert callable(b), path
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------ 1,000 steps
@pytest.mark.parametrize("name,kind,factory", CASES, ids=CASE_IDS)
def test_matches_torch_over_1000_steps(name, kind, factory):
    ref = trajectory(build(TL, kind, factory), 0, STEPS)
    ours = build(OL, kind, factory)
    assert type(ours).__module__ == OL.__name__  # optimkit's own class, not torch's
    got = trajectory(ours, 0, STEPS)
    for i, (r, g) in enumerate(zip(ref, got)):
        assert r == g, f"step {i}: torch {r} != optimkit {g}"


@pytest.mark.parametrize("name,kind,factory", CASES, ids=CASE_IDS)
def test_torch_optimizer_driven_identically(name, kind, factory):
    """Our scheduler on a torch.optim optimizer writes torch's numbers too (300 steps)."""
    kind = {"sgd": "torch_sgd", "adam": "torch_adam", "adamw": "torch_adam"}[kind]
    ref = trajectory(build(TL, kind, factory), 0, 300)
    assert trajectory(build(OL, kind, factory), 0, 300) == ref


@pytest.mark.parametrize(
    "name",
    [
        "Step-30-0.1",
        "Cosine-100",
        "Linear-warmup-500",
        "Exponential-0.99",
        "Polynomial-1000-2",
        "Cyclic-triangular",
    ],
)
def test_tensor_lr(name):
    _, kind, factory = CASES[CASE_IDS.index(name)]
    kind = "torch_sgd"  # torch.optim.SGD takes a tensor lr
    ref_sched = build(TL, kind, factory, tensor_lr=True)
    ours = build(OL, kind, factory, tensor_lr=True)
    assert trajectory(ours, 0, 200) == trajectory(ref_sched, 0, 200)
    assert all(isinstance(g["lr"], torch.Tensor) for g in ours.optimizer.param_groups)


@pytest.mark.parametrize("name,kind,factory", CASES, ids=CASE_IDS)
def test_state_dict_equals_torch(name, kind, factory):
    """After the same steps, our state dict *equals* torch's: same keys, same values."""
    t, o = build(TL, kind, factory), build(OL, kind, factory)
    for sched in (t, o):
        trajectory(sched, 0, 123)
    assert_same_state(t.state_dict(), o.state_dict())
    assert_same_state(t.optimizer.state_dict()["param_groups"], o.optimizer.state_dict()["param_groups"])


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("src,dst", [("torch", "ours"), ("ours", "torch"), ("ours", "ours")])
@pytest.mark.parametrize("name,kind,factory", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_mid_schedule(name, kind, factory, src, dst):
    """Save mid-schedule, load into a fresh scheduler (either library), continue: identical."""
    k = 137
    ref = trajectory(build(TL, kind, factory), 0, STEPS)
    mods = {"torch": TL, "ours": OL}
    first = build(mods[src], kind, factory)
    trajectory(first, 0, k)
    sched_state = copy.deepcopy(first.state_dict())
    opt_state = copy.deepcopy(first.optimizer.state_dict())
    second = build(mods[dst], kind, factory)  # construct first, then load (torch's recipe)
    second.optimizer.load_state_dict(opt_state)
    second.load_state_dict(sched_state)
    assert trajectory(second, k, STEPS) == ref[k + 1 :]


@pytest.mark.parametrize("name,kind,factory", RESUMABLE, ids=[c[0] for c in RESUMABLE])
def test_last_epoch_resumption(name, kind, factory):
    """Constructing with ``last_epoch=k`` on a restored optimizer continues as torch does."""
    k = 250
    runs = []
    for L in (TL, OL):
        first = build(TL, kind, factory)
        trajectory(first, 0, k)
        opt = make_optimizer(kind)
        opt.load_state_dict(copy.deepcopy(first.optimizer.state_dict()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = factory(L, opt, last_epoch=k - 1)
        runs.append(trajectory(sched, k, 600))
    assert runs[0] == runs[1]


def test_resume_without_initial_lr_raises():
    opt = make_optimizer("sgd")
    with pytest.raises(KeyError, match="initial_lr"):
        OL.StepLR(opt, 10, last_epoch=5)


def test_state_dict_survives_torch_save_weights_only():
    sched = OL.CosineAnnealingLR(make_optimizer("sgd"), 100, eta_min=1e-4)
    trajectory(sched, 0, 10)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert_same_state(loaded, sched.state_dict())


def test_callable_lambda_state_is_saved():
    class Decay:
        def __init__(self, gamma):
            self.gamma = gamma

        def __call__(self, e):
            return self.gamma**e

    a = OL.LambdaLR(make_optimizer("sgd"), Decay(0.9))
    a.lr_lambdas[0].gamma = 0.5
    b = OL.LambdaLR(make_optimizer("sgd"), Decay(0.9))
    sd = a.state_dict()
    assert sd["lr_lambdas"] == [{"gamma": 0.5}, {"gamma": 0.5}]
    b.load_state_dict(sd)
    assert b.lr_lambdas[0].gamma == 0.5
    assert "lr_lambdas" in sd  # the caller's dict is left intact


def test_step_with_epoch_uses_closed_form_like_torch():
    outs = []
    for L in (TL, OL):
        sched = build(L, "sgd", lambda L, o: L.CosineAnnealingLR(o, 50, 1e-3))
        vals = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for e in (3, 10, 10, 49, 77):
                sched.optimizer.step()
                sched.step(e)
                vals.append(hyper(sched.optimizer))
        outs.append(vals)
    assert outs[0] == outs[1]


def test_warm_restarts_fractional_epochs_like_torch():
    outs = []
    for L in (TL, OL):
        sched = build(L, "sgd", lambda L, o: L.CosineAnnealingWarmRestarts(o, 10, 2))
        vals = []
        for epoch in range(40):
            for i in range(5):
                sched.optimizer.step()
                sched.step(epoch + i / 5)
                vals.append(hyper(sched.optimizer))
        outs.append(vals)
    assert outs[0] == outs[1]


def test_one_cycle_overrun_raises():
    sched = OL.OneCycleLR(make_optimizer("sgd"), 0.1, total_steps=5)
    trajectory(sched, 0, 5)
    with pytest.raises(ValueError, match="Tried to step 6 times"):
        step_once(sched, 5)


# ------------------------------------------------------------------------------ warnings
@pytest.mark.parametrize("kind", ["sgd", "torch_sgd"])
def test_warns_when_scheduler_steps_before_optimizer(kind):
    sched = OL.StepLR(make_optimizer(kind), 10)
    with pytest.warns(UserWarning, match=r"before `optimizer.step\(\)`"):
        sched.step()


@pytest.mark.parametrize("kind", ["sgd", "torch_sgd"])
def test_no_warning_in_the_right_order(kind):
    sched = OL.ExponentialLR(make_optimizer(kind), 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            sched.optimizer.step()
            sched.step()


def test_warns_when_optimizer_stepped_only_before_construction():
    opt = make_optimizer("sgd")
    opt.step()
    sched = OL.StepLR(opt, 10)
    with pytest.warns(UserWarning, match="before"):
        sched.step()


def test_get_lr_outside_step_warns():
    sched = OL.StepLR(make_optimizer("sgd"), 10)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()


def test_rejects_non_optimizer():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        OL.StepLR(object(), 10)


# ------------------------------------------------------------------------------ cross-driving
def _train(opt_cls, sched_mod, sched_factory, steps=60, **opt_kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = opt_cls(model.parameters(), **opt_kw)
    sched = sched_factory(sched_mod, opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the order is right: no warning from either library
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
    return [p.detach().clone() for p in model.parameters()], lrs


@pytest.mark.parametrize(
    "factory",
    [
        lambda L, o: L.CosineAnnealingLR(o, 20, 1e-3),
        lambda L, o: L.OneCycleLR(o, 0.05, total_steps=60),
        lambda L, o: L.CyclicLR(o, 1e-3, 0.05, 7),
    ],
    ids=["cosine", "onecycle", "cyclic"],
)
@pytest.mark.parametrize(
    "ours_opt,torch_opt,kw",
    [
        (optimkit.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (optimkit.Adam, torch.optim.Adam, {"lr": 0.01}),
    ],
    ids=["sgd", "adam"],
)
def test_torch_schedulers_drive_optimkit_and_ours_drive_torch(factory, ours_opt, torch_opt, kw):
    ref_params, ref_lrs = _train(torch_opt, TL, factory, **kw)
    for opt_cls, mod in [(ours_opt, TL), (torch_opt, OL), (ours_opt, OL)]:
        params, lrs = _train(opt_cls, mod, factory, **kw)
        assert lrs == ref_lrs
        for p, q in zip(params, ref_params):
            assert torch.equal(p, q)


def test_torch_scheduler_order_warning_works_on_optimkit():
    opt = make_optimizer("sgd")
    sched = TL.StepLR(opt, 10)
    with pytest.warns(UserWarning, match="before"):
        sched.step()


def test_sequential_accepts_torch_children():
    ref = trajectory(build(TL, "sgd", CASES[CASE_IDS.index("Sequential-const-exp")][2]), 0, 200)
    opt = make_optimizer("sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = OL.SequentialLR(opt, [TL.ConstantLR(opt, 0.1, 20), TL.ExponentialLR(opt, 0.99)], [20])
    assert trajectory(sched, 0, 200) == ref


# ------------------------------------------------------------------------------ lr_scale
def _scaled_case(name, scale):
    _, kind, factory = CASES[CASE_IDS.index(name)]
    opt = make_optimizer(kind, scales=(None, scale))
    opt.param_groups[1]["lr"] = opt.param_groups[0]["lr"]  # same base lr, scaled second group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = factory(OL, opt)
    # Per-group arguments (lists) must be equal across groups for the comparison to make sense.
    return sched


SCALE_CASES = [
    n
    for n in CASE_IDS
    if n
    not in (
        "Lambda-pergroup",
        "Multiplicative-pergroup",
        "Cyclic-triangular2",
        "OneCycle-3phase",
        "Plateau-minlr",
    )
]


@pytest.mark.parametrize("name", SCALE_CASES)
def test_lr_scale_honoured_by_every_scheduler(name):
    """A group with ``lr_scale=0.5`` gets exactly half the lr of an identical unscaled group."""
    sched = _scaled_case(name, 0.5)
    traj = trajectory(sched, 0, 400)
    for i, (groups, last) in enumerate(traj):
        (lr0, m0, b0), (lr1, m1, b1) = groups
        assert lr1 == 0.5 * lr0, f"step {i}: {lr1} != 0.5 * {lr0}"
        assert (m0, b0) == (m1, b1)
        assert last[1] == lr1


@pytest.mark.parametrize(
    "name", ["Cosine-100", "Linear-warmup-500", "Cyclic-triangular", "Plateau-default", "Step-7-0.5"]
)
def test_lr_scale_non_power_of_two_is_close(name):
    sched = _scaled_case(name, 0.3)
    for i, (groups, _) in enumerate(trajectory(sched, 0, 400)):
        lr0, lr1 = groups[0][0], groups[1][0]
        assert lr1 == pytest.approx(0.3 * lr0, rel=1e-12, abs=1e-300), f"step {i}"


def test_lr_scale_flat_phases_do_not_drift():
    opt = make_optimizer("sgd", scales=(None, 0.3))
    sched = OL.StepLR(opt, 100)
    first = opt.param_groups[1]["lr"]
    trajectory(sched, 0, 99)
    assert opt.param_groups[1]["lr"] == first  # bit-identical through 99 unchanged steps


def test_lr_scale_applied_once_when_chained():
    opt = make_optimizer("sgd", scales=(None, 0.5))
    opt.param_groups[1]["lr"] = 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        OL.ChainedScheduler([OL.ConstantLR(opt, 0.5, 10), OL.ExponentialLR(opt, 0.9)])
    assert opt.param_groups[0]["lr"] == 0.05
    assert opt.param_groups[1]["lr"] == 0.025
    assert opt.param_groups[1]["initial_lr"] == 0.1  # initial_lr is unscaled


@pytest.mark.parametrize("outer", ["Sequential", "Chained"])
def test_torch_composites_accept_our_children(outer):
    def make(L_outer, L_inner, o):
        children = [L_inner.ConstantLR(o, 0.1, 20), L_inner.ExponentialLR(o, 0.99)]
        if outer == "Sequential":
            return L_outer.SequentialLR(o, children, [20])
        return L_outer.ChainedScheduler(children)

    ref = trajectory(build(TL, "sgd", lambda L, o: make(TL, TL, o)), 0, 200)
    assert trajectory(build(TL, "sgd", lambda L, o: make(TL, OL, o)), 0, 200) == ref


@pytest.mark.parametrize("kind", ["sgd", "torch_sgd"])
def test_pickle_and_deepcopy(kind):
    import pickle

    sched = OL.CosineAnnealingLR(make_optimizer(kind), 10)
    trajectory(sched, 0, 3)
    for clone in (copy.deepcopy(sched), pickle.loads(pickle.dumps(sched))):
        assert clone.last_epoch == 3 and clone.get_last_lr() == sched.get_last_lr()
        assert trajectory(clone, 3, 20) == trajectory(copy.deepcopy(sched), 3, 20)


def test_isinstance_of_torch_schedulers_but_none_of_their_code_runs():
    """Frameworks check ``isinstance(s, torch.optim.lr_scheduler.LRScheduler)`` (and
    ``ReduceLROnPlateau`` to pass it the metric); the behaviour is still all optimkit's."""
    import inspect

    opt = optimkit.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau = OL.ReduceLROnPlateau(opt)
    assert isinstance(OL.StepLR(opt, 1), TL.LRScheduler)
    assert isinstance(plateau, TL.ReduceLROnPlateau) and isinstance(plateau, TL.LRScheduler)
    for ours, theirs in ((OL.LRScheduler, TL.LRScheduler), (OL.ReduceLROnPlateau, TL.ReduceLROnPlateau)):
        reachable = [
            name
            for klass in theirs.__mro__
            if klass.__module__.startswith("torch")
            for name, value in vars(klass).items()
            if inspect.isfunction(value) and getattr(ours, name) is value
        ]
        assert reachable == [], f"torch scheduler code reachable from {ours.__name__}: {reachable}"
