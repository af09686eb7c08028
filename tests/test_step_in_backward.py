"""The step inside backward (``optimkit.step_in_backward``): every optimizer it accepts gives
the ordinary loop's parameters and state bit for bit; the ones it cannot step are refused
before anything changes; gradients are freed; schedulers, state dicts and resume work."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import optimkit
from harness import assert_same, clone_kwargs
from optimkit.bench_backward import step_in_backward_memory
from optimkit.execution.packed import CHUNKED
from optimkit.in_backward import ACCUMULATION_ERROR, _why_not
from optimkit.registry import REGISTRY

STEPS = 4


def make_model(spec, seed=0, tiny=False):
    """A small MLP: one weight big enough to be chunked (the step of a packed group runs it in
    chunks; not with ``tiny``), the others small enough to be packed. Muon's without biases and without the big
    weight (its rule works on whole matrices); SparseAdam's two sparse embeddings."""
    torch.manual_seed(seed)
    if spec.sparse == "only":
        return torch.nn.ModuleList([torch.nn.Embedding(50, 8, sparse=True), torch.nn.Embedding(30, 4, sparse=True)])
    bias = not spec.matrix_only
    wide = 8 if tiny else 64 if spec.matrix_only else CHUNKED // 64 + 8
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32, bias=bias), torch.nn.Tanh(), torch.nn.Linear(32, 64, bias=bias), torch.nn.Tanh(),
        torch.nn.Linear(64, wide, bias=bias), torch.nn.Tanh(), torch.nn.Linear(wide, 1, bias=bias),
    )  # fmt: skip


def loss_fn(spec, model, step):
    g = torch.Generator().manual_seed(100 + step)
    if spec.sparse == "only":
        a, b = model
        return a(torch.randint(0, 50, (12,), generator=g)).square().sum() + b(
            torch.randint(0, 30, (5,), generator=g)
        ).pow(3).sum()
    x = torch.randn(8, 16, generator=g)
    return (model(x) - torch.randn(8, 1, generator=g)).square().mean()


def build(spec, config, model):
    return spec.cls(model.parameters(), **{**spec.required, **clone_kwargs(config)})


def accepted(spec, config):
    try:
        return _why_not(build(spec, config, make_model(spec, tiny=True))) is None
    except (ValueError, TypeError, RuntimeError):  # a config this model does not take
        return False


CASES = [
    pytest.param(spec, i, id=f"{name}-{i}")
    for name, spec in REGISTRY.items()
    for i in range(len(spec.configs))
    if accepted(spec, spec.configs[i])
]
ACCEPTED = {spec.name for spec, *_ in (c.values for c in CASES)}


def test_the_elementwise_and_per_tensor_optimizers_are_accepted():
    expected = {"sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "nadam", "radam", "asgd",
                "rprop", "sparseadam", "adafactor", "muon", "lion", "came", "adopt", "ademamix"}  # fmt: skip
    assert ACCEPTED == expected


@pytest.mark.parametrize("spec,config", CASES)
def test_bit_identical_to_the_ordinary_loop(spec, config):
    kwargs = spec.configs[config]
    tiny = config > 0  # the big (chunked) weight with the first config only: the table stays fast
    ref_model, model = make_model(spec, tiny=tiny), make_model(spec, tiny=tiny)
    ref, opt = build(spec, kwargs, ref_model), build(spec, kwargs, model)
    handle = optimkit.step_in_backward(opt)
    for step in range(STEPS):
        ref.zero_grad()
        loss_fn(spec, ref_model, step).backward()
        ref.step()
        loss_fn(spec, model, step).backward()
        assert all(p.grad is None for p in model.parameters()), "gradients are freed in backward"
        opt.step()
        for i, (a, b) in enumerate(zip(model.parameters(), ref_model.parameters())):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert opt._step_count == ref._step_count == STEPS
    assert_same(opt.state_dict(), ref.state_dict(), "state_dict")
    handle.remove()


def adam_setup(seed=0, **kwargs):
    spec = REGISTRY["adam"]
    model = make_model(spec, seed)
    return spec, model, optimkit.Adam(model.parameters(), **kwargs)


def train(spec, model, opt, steps, start=0, in_backward=False, sched=None):
    for step in range(start, start + steps):
        if not in_backward:
            opt.zero_grad()
        loss_fn(spec, model, step).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_packed_state_then_in_backward_then_ordinary():
    """Ordinary steps (small parameters' state in packs), then in backward, then ordinary
    again: the same bits as ordinary steps all along."""
    spec, ref_model, ref = adam_setup(weight_decay=0.1)
    _, model, opt = adam_setup(weight_decay=0.1)
    train(spec, ref_model, ref, 9)
    train(spec, model, opt, 3)
    opt.zero_grad()  # (refused while gradients are held: see test_refused_duplicates_...)
    with optimkit.step_in_backward(opt):
        train(spec, model, opt, 3, start=3, in_backward=True)
    train(spec, model, opt, 3, start=6)
    assert_same(list(model.parameters()), list(ref_model.parameters()))
    assert_same(opt.state_dict(), ref.state_dict())


@pytest.mark.parametrize("scheduler", ["torch", "optimkit"])
def test_lr_scheduler_takes_effect_at_the_next_backward_without_warnings(scheduler):
    lr_scheduler = torch.optim.lr_scheduler if scheduler == "torch" else optimkit.lr_scheduler
    spec, ref_model, ref = adam_setup(lr=0.01)
    _, model, opt = adam_setup(lr=0.01)
    ref_sched = lr_scheduler.StepLR(ref, step_size=2, gamma=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise
        sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)
        with optimkit.step_in_backward(opt):
            train(spec, model, opt, 6, in_backward=True, sched=sched)
    train(spec, ref_model, ref, 6, sched=ref_sched)
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != 0.01
    assert_same(list(model.parameters()), list(ref_model.parameters()))


def test_state_dict_round_trip_and_resume_bit_identical(tmp_path):
    spec, ref_model, ref = adam_setup(amsgrad=True)
    train(spec, ref_model, ref, 8)

    _, model, opt = adam_setup(amsgrad=True)
    with optimkit.step_in_backward(opt):
        train(spec, model, opt, 4, in_backward=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    _, resumed_model, resumed = adam_setup(seed=1, amsgrad=True)  # other weights: all from the checkpoint
    resumed_model.load_state_dict(ckpt["model"])
    resumed.load_state_dict(ckpt["opt"])
    assert_same(resumed.state_dict(), opt.state_dict())
    with optimkit.step_in_backward(resumed):
        train(spec, resumed_model, resumed, 4, start=4, in_backward=True)
    assert_same(list(resumed_model.parameters()), list(ref_model.parameters()))
    assert_same(resumed.state_dict(), ref.state_dict())


def test_load_state_dict_and_add_param_group_while_enabled():
    """load_state_dict replaces the groups, add_param_group adds one: the hooks follow."""
    spec, ref_model, ref = adam_setup()
    _, model, opt = adam_setup()
    extra, ref_extra = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    with optimkit.step_in_backward(opt):
        train(spec, model, opt, 2, in_backward=True)
        opt.load_state_dict(opt.state_dict())
        opt.add_param_group({"params": [extra], "lr": 0.1})
        for step in range(2, 5):
            (loss_fn(spec, model, step) + extra.square().sum()).backward()
            if step > 2:  # hooked by the step() after add_param_group at the latest
                assert extra.grad is None
            opt.step()
            opt.zero_grad()
    train(spec, ref_model, ref, 2)
    ref.add_param_group({"params": [ref_extra], "lr": 0.1})
    for step in range(2, 5):
        ref.zero_grad()
        (loss_fn(spec, ref_model, step) + ref_extra.square().sum()).backward()
        ref.step()
    assert_same([*model.parameters(), extra], [*ref_model.parameters(), ref_extra])
    assert_same(opt.state_dict(), ref.state_dict())


def test_unused_and_frozen_parameters():
    """A parameter without a gradient is skipped (no state, no step count), as in the ordinary
    step; a frozen one gets no hook; one given a gradient by hand is stepped by step()."""
    torch.manual_seed(0)
    a, b, frozen = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Parameter(torch.ones(2), requires_grad=False)
    ref_a, ref_b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    ref_a.load_state_dict(a.state_dict())
    ref_b.load_state_dict(b.state_dict())
    ref_frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = optimkit.AdamW([*a.parameters(), *b.parameters(), frozen])
    ref = optimkit.AdamW([*ref_a.parameters(), *ref_b.parameters(), ref_frozen])
    handle = optimkit.step_in_backward(opt)
    assert len(handle._hooks) == 4
    x = torch.randn(3, 4)
    for step in range(4):
        use_b = step % 2 == 1
        ref.zero_grad()
        ref_out = ref_a(x)
        (ref_b(ref_out) if use_b else ref_out).sum().backward()
        ref_frozen.grad = torch.full((2,), 0.5)
        ref.step()
        out = a(x)
        (b(out) if use_b else out).sum().backward()
        frozen.grad = torch.full((2,), 0.5)  # no hook: step() steps it
        opt.step()
        assert frozen.grad is not None
        opt.zero_grad()
        if step == 0:
            assert b.weight not in opt.state
    assert_same([*a.parameters(), *b.parameters(), frozen], [*ref_a.parameters(), *ref_b.parameters(), ref_frozen])
    assert_same(opt.state_dict(), ref.state_dict())


def test_gradient_accumulation_over_two_backwards_is_refused():
    spec, model, opt = adam_setup()
    with optimkit.step_in_backward(opt):
        loss_fn(spec, model, 0).backward()
        with pytest.raises(RuntimeError, match="cannot be accumulated over several backward passes"):
            loss_fn(spec, model, 1).backward()
    assert "Accumulate in the loss" in ACCUMULATION_ERROR


def test_step_hooks_and_step_count():
    spec, model, opt = adam_setup()
    calls = []
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    with optimkit.step_in_backward(opt):
        train(spec, model, opt, 2, in_backward=True)
    assert calls == ["pre", "post"] * 2 and opt._step_count == 2


def test_remove_restores_the_ordinary_loop():
    spec, model, opt = adam_setup()
    handle = optimkit.step_in_backward(opt)
    with pytest.raises(ValueError, match="already enabled"):
        optimkit.step_in_backward(opt)
    handle.remove()
    handle.remove()  # idempotent
    loss_fn(spec, model, 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not opt.state
    opt.step()
    opt.zero_grad()
    with optimkit.step_in_backward(opt) as again:  # may be enabled again
        assert again.active
    assert not again.active


def _refusal_cases():
    linear = lambda: torch.nn.Linear(4, 4)  # noqa: E731
    cases = {
        "lbfgs": (lambda: optimkit.LBFGS(linear().parameters()), "needs a closure"),
        "sam": (lambda: optimkit.SAM(linear().parameters(), optimkit.SGD, lr=0.1), "needs a closure"),
        "lookahead": (lambda: optimkit.Lookahead(optimkit.AdamW(linear().parameters())), "wraps another optimizer"),
        "prodigy": (lambda: optimkit.Prodigy(linear().parameters()), "sums over all parameters"),
        "dadaptadam": (lambda: optimkit.DAdaptAdam(linear().parameters()), "sums over all parameters"),
        "dadaptsgd": (lambda: optimkit.DAdaptSGD(linear().parameters()), "sums over all parameters"),
        "adan-clip": (lambda: optimkit.Adan(linear().parameters(), max_grad_norm=1.0), "global gradient norm"),
        "lamb-pre_norm": (lambda: optimkit.LAMB(linear().parameters(), pre_norm=True), "global gradient norm"),
        "adan": (lambda: optimkit.Adan(linear().parameters()), "per-step work"),
        "lars": (lambda: optimkit.LARS(linear().parameters()), "per-step work"),
        "soap": (lambda: optimkit.SOAP(linear().parameters()), "per-step work"),
        "schedulefree": (lambda: optimkit.ScheduleFreeAdamW(linear().parameters()), "per-step work"),
        "muonwithauxadam": (lambda: optimkit.MuonWithAuxAdam(linear().parameters()), "no per-parameter update rule"),
        "compile": (lambda: optimkit.Adam(linear().parameters(), compile=True), "compile=True"),
        "differentiable": (lambda: optimkit.Adam(linear().parameters(), differentiable=True), "differentiable"),
    }
    return [pytest.param(make, match, id=name) for name, (make, match) in cases.items()]


@pytest.mark.parametrize("make,match", _refusal_cases())
def test_refused_before_anything_changes(make, match):
    opt = make()
    params = [p for g in opt.param_groups for p in g["params"]]
    with pytest.raises(ValueError, match=match):
        optimkit.step_in_backward(opt)
    sum(p.sum() for p in params).backward()  # no hook was left behind: gradients stay
    assert all(p.grad is not None for p in params)


def test_refused_duplicates_existing_gradients_and_torch_optimizers():
    w = torch.nn.Parameter(torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's duplicate-parameter warning
        dup = optimkit.SGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="listed twice"):
        optimkit.step_in_backward(dup)
    opt = optimkit.SGD([w], lr=0.1)
    w.sum().backward()
    with pytest.raises(ValueError, match="already have a gradient"):
        optimkit.step_in_backward(opt)
    with pytest.raises(TypeError, match="optimkit optimizer"):
        optimkit.step_in_backward(torch.optim.SGD([w], lr=0.1))


def test_clip_grad_norm_sees_no_gradients():
    """Documented limitation: after backward the gradients are gone, so global-norm clipping
    has nothing to clip (it returns 0)."""
    spec, model, opt = adam_setup()
    with optimkit.step_in_backward(opt):
        loss_fn(spec, model, 0).backward()
        assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) == 0.0
        opt.step()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_falls_by_about_the_gradients():
    """MLP blocks of 21M parameters (80 MB of float32 gradients): the peak resident memory of a
    training step, each mode in a fresh process, falls by at least half the gradients' size."""
    result = step_in_backward_memory(width=512, depth=10, batch=8)
    if result["ordinary_mb"] is None:
        pytest.skip("peak memory cannot be reset on this system")
    assert result["grad_mb"] > 75
    assert result["ordinary_mb"] - result["in_backward_mb"] >= 0.5 * result["grad_mb"], result
