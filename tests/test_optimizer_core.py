"""The Optimizer base class: torch's API and behaviour, implemented here."""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook as torch_register_post

import optimkit
from harness import assert_same
from optimkit.registry import REGISTRY, OptimizerSpec


def _params(n=2):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, 2)) for _ in range(n)]


def _step(opt, params, value=1.0):
    for p in params:
        p.grad = torch.full_like(p, value)
    return opt.step()


def test_is_a_torch_optimizer_but_runs_none_of_its_base_code():
    opt = optimkit.SGD(_params(), lr=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    torch_base = vars(torch.optim.Optimizer)
    ours = vars(optimkit.Optimizer)
    inherited = [
        name
        for name, value in torch_base.items()
        if (inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property)))
        and name not in ours
    ]
    assert inherited == [], f"torch base-class code still reachable: {inherited}"


# Every optimizer with one reference class. MuonWithAuxAdam has none (torch's Muon and AdamW
# together): tests/test_muon_aux_adam.py compares it, defaults included.
WITH_REFERENCE = [name for name, spec in REGISTRY.items() if spec.oracle_cls is not None]


def test_only_muon_with_aux_adam_has_no_reference_class():
    assert [name for name in REGISTRY if name not in WITH_REFERENCE] == ["muonwithauxadam"]


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_signature_and_defaults_equal_torch(name):
    """torch's parameters, in torch's order with torch's defaults -- plus, for the
    elementwise optimizers, optimkit's own keyword-only ``compile=False`` at the end."""
    spec = REGISTRY[name]
    ours = [(p.name, p.kind, p.default) for p in inspect.signature(spec.cls.__init__).parameters.values()]
    theirs = inspect.signature(spec.oracle_cls.__init__)
    if spec.elementwise:
        # compile=False is the last keyword-only argument: before a **kwargs the oracle takes
        # (pytorch-optimizer's Adan), which Python keeps last.
        var = [x for x in ours if x[1] is inspect.Parameter.VAR_KEYWORD]
        ours = [x for x in ours if x[1] is not inspect.Parameter.VAR_KEYWORD]
        assert ours[-1] == ("compile", inspect.Parameter.KEYWORD_ONLY, False)
        ours = ours[:-1] + var
    # optimkit's own options, keyword-only at the end (before compile): off by default.
    if ours and ours[-1] == ("cautious", inspect.Parameter.KEYWORD_ONLY, False):
        ours = ours[:-1]
    # What the oracle is told to be this optimizer (bitsandbytes' optim_bits=32) is not ours.
    fixed = spec.oracle.kwargs if spec.oracle is not None else {}
    theirs = [(p.name, p.kind, p.default) for p in theirs.parameters.values() if p.name not in fixed]
    # A function default (ADOPT's clip_lambda, a lambda in the authors' package) cannot be the
    # same object: it must be the same function of the step.
    ours = [(n, k, _Same(d) if inspect.isfunction(d) else d) for n, k, d in ours]
    assert ours == theirs


class _Same:
    """A callable default equal to another that gives the same values on the steps 0..1000."""

    STEPS = [float(t) for t in range(1001)] + [torch.tensor(7.0)]

    def __init__(self, fn):
        self.fn = fn

    def __eq__(self, other):
        return inspect.isfunction(other) and all(
            torch.equal(torch.as_tensor(self.fn(t)), torch.as_tensor(other(t))) for t in self.STEPS
        )

    def __repr__(self):
        return f"<same as {self.fn!r}>"


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_defaults_and_repr_equal_torch(name):
    spec = REGISTRY[name]
    if spec.torch_cls is None:  # an authors' package: its defaults, beside optimkit's own bookkeeping
        # configs[0] is the defaults, plus what has none (CAME's lr=None must be given).
        theirs = spec.make_oracle(_params(), **spec.configs[0])
        ours = spec.cls(_params(), **spec.configs[0])
        assert_same({k: ours.defaults[k] for k in theirs.defaults}, theirs.defaults)
        return
    ours = spec.cls(_params())
    theirs = spec.torch_cls(_params())
    assert list(ours.defaults) == list(theirs.defaults)
    assert_same(ours.defaults, theirs.defaults)
    assert repr(ours) == repr(theirs)


def test_param_groups_hold_the_very_tensors():
    params = _params()
    opt = optimkit.SGD(params, lr=0.1)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params]
    before = params[0].detach().clone()
    _step(opt, params)
    assert torch.equal(params[0].detach(), before - 0.1)


def test_add_param_group_fills_defaults_and_keeps_the_dict():
    params = _params()
    opt = optimkit.SGD(params[:1], lr=0.1, momentum=0.9)
    group = {"params": params[1], "lr": 1e-4}
    opt.add_param_group(group)
    assert opt.param_groups[1] is group
    assert group["params"] == [params[1]] and group["lr"] == 1e-4 and group["momentum"] == 0.9


@pytest.mark.parametrize(
    "bad,error,message",
    [
        ({"params": {torch.nn.Parameter(torch.ones(1))}}, TypeError, "ordered collections"),
        ({"params": [1.0]}, TypeError, "optimizer can only optimize Tensors"),
        ({"params": [torch.ones(2, requires_grad=True) * 2]}, ValueError, "can't optimize a non-leaf Tensor"),
        ([torch.ones(1)], TypeError, "param_group must be a dict"),
    ],
)
def test_add_param_group_rejects_bad_groups(bad, error, message):
    opt = optimkit.SGD(_params(), lr=0.1)
    with pytest.raises(error, match=message):
        opt.add_param_group(bad)
    assert len(opt.param_groups) == 1


def test_required_hyperparameter():
    class Custom(optimkit.Optimizer):
        def __init__(self, params, lr=optimkit.required):
            super().__init__(params, {"lr": lr})

    with pytest.raises(ValueError, match="didn't specify a value of required optimization parameter lr"):
        Custom(_params())
    assert Custom([{"params": _params(), "lr": 0.1}]).param_groups[0]["lr"] == 0.1


def test_named_parameters():
    model = torch.nn.Linear(2, 2)
    opt = optimkit.Adam(model.named_parameters())
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    ref = torch.optim.Adam(torch.nn.Linear(2, 2).named_parameters())
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


def test_zero_grad_both_modes():
    params = _params()
    opt = optimkit.SGD(params, lr=0.1)
    _step(opt, params)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_none_grad_is_skipped_entirely():
    params = _params(3)
    opt = optimkit.Adam(params)
    params[0].grad = torch.ones_like(params[0])
    before = params[1].detach().clone()
    opt.step()
    assert params[0] in opt.state and params[1] not in opt.state
    assert torch.equal(params[1].detach(), before)
    assert list(opt.state_dict()["state"]) == [0]


def test_step_count_and_closure():
    params = _params()
    opt = optimkit.SGD(params, lr=0.1)
    assert opt._step_count == 0

    def closure():
        opt.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt._step_count == 1
    opt.step(closure)
    assert opt._step_count == 2


def test_step_runs_without_autograd():
    params = _params()
    opt = optimkit.Adam(params)
    seen = []
    opt.register_step_post_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    _step(opt, params)
    assert torch.is_grad_enabled() and params[0].grad_fn is None


def test_step_hooks_local_and_global_in_torch_order():
    params = _params()
    opt = optimkit.SGD(params, lr=0.1)
    calls = []

    def pre(o, args, kwargs):
        calls.append("pre")

    def post(o, args, kwargs):
        calls.append("post")

    h1 = opt.register_step_pre_hook(pre)
    h2 = opt.register_step_post_hook(post)
    g1 = optimkit.register_optimizer_step_pre_hook(lambda *a: calls.append("global-pre"))
    g2 = torch_register_post(lambda *a: calls.append("global-post"))
    try:
        _step(opt, params)
    finally:
        for h in (h1, h2, g1, g2):
            h.remove()
    assert calls == ["global-pre", "pre", "post", "global-post"]
    calls.clear()
    _step(opt, params)
    assert calls == []


def test_step_pre_hook_can_replace_arguments():
    params = _params()
    opt = optimkit.SGD(params, lr=0.1)

    def closure():
        return torch.tensor(7.0)

    opt.register_step_pre_hook(lambda o, args, kwargs: ((), {"closure": closure}))
    assert _step(opt, params) == 7.0
    opt.register_step_pre_hook(lambda o, args, kwargs: "nonsense")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        _step(opt, params)


def test_state_dict_hooks():
    params = _params()
    opt = optimkit.Adam(params)
    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_state_dict_post_hook(lambda o, sd: order.append("post-first"), prepend=True)
    sd = opt.state_dict()
    assert sd["extra"] == 1 and order == ["pre", "post-first"]

    loaded = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: {k: v for k, v in sd.items() if k != "extra"})
    opt.register_load_state_dict_post_hook(lambda o: loaded.append(True))
    opt.load_state_dict(sd)
    assert loaded == [True]


def test_state_dict_format_and_shared_params_across_groups():
    params = _params(3)
    opt = optimkit.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == [[0, 1], [2]]


def test_load_keeps_hyperparameters_a_foreign_dict_lacks():
    params = _params()
    opt = optimkit.Adam(params, lr=0.1)
    _step(opt, params)
    sd = copy.deepcopy(opt.state_dict())
    del sd["param_groups"][0]["decoupled_weight_decay"], sd["param_groups"][0]["amsgrad"]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["decoupled_weight_decay"] is False and opt.param_groups[0]["amsgrad"] is False


def test_old_style_number_step_is_converted():
    params = _params()
    opt = optimkit.Adam(params)
    _step(opt, params)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = 1
    opt.load_state_dict(sd)
    assert opt.state[params[0]]["step"].dtype == torch.float32
    _step(opt, params)


def test_load_copies_tensors():
    params = _params()
    opt = optimkit.Adam(params)
    _step(opt, params)
    sd = opt.state_dict()
    fresh = optimkit.Adam(params)
    fresh.load_state_dict(sd)
    assert fresh.state[params[0]]["exp_avg"] is not opt.state[params[0]]["exp_avg"]


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch.save"])
def test_pickle_and_deepcopy_continue_identically(how):
    params = _params()
    opt = optimkit.Adam(params, lr=0.01)
    _step(opt, params)
    if how == "pickle":
        clone = pickle.loads(pickle.dumps(opt))
    elif how == "deepcopy":
        clone = copy.deepcopy(opt)
    else:
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        clone = torch.load(buf, weights_only=False)
    clone_params = clone.param_groups[0]["params"]
    assert clone._step_count == 1
    _step(opt, params, 0.5)
    _step(clone, clone_params, 0.5)
    assert_same([p.detach() for p in params], [p.detach() for p in clone_params])
    calls = []
    clone.register_step_post_hook(lambda *a: calls.append(1))
    _step(clone, clone_params)
    assert calls == [1]


def test_torch_lr_scheduler_drives_optimkit():
    params = _params()
    opt = optimkit.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        _step(opt, params)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_scheduler_warns_when_called_before_optimizer_step():
    opt = optimkit.SGD(_params(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()


def test_grad_scaler_with_optimkit_optimizers():
    """torch.amp.GradScaler unscales, skips inf steps, and uses the fused path's in-kernel unscale."""
    for fused in (False, True):
        results = []
        for cls in (optimkit.Adam, torch.optim.Adam):
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 2)
            opt = cls(model.parameters(), lr=0.1, fused=fused)
            scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
            for step in range(4):
                opt.zero_grad()
                loss = model(torch.ones(3, 4) * (1e30 if step == 1 else 1.0)).pow(2).sum()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            results.append([p.detach().clone() for p in model.parameters()] + [torch.tensor(scaler.get_scale())])
        assert_same(results[0], results[1], f"fused={fused}")


def test_duplicate_parameters_warn():
    p = torch.nn.Parameter(torch.ones(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimkit.SGD([p, p], lr=0.1)
    assert any("duplicate parameters" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_capabilities_are_the_classes(name):
    """The registry restates nothing: its capabilities are the ones the rule declares."""
    spec = REGISTRY[name]
    assert spec.caps is spec.cls.caps()
    assert spec.cls.rule is None or spec.caps is spec.cls.rule.caps
    assert spec.fused == (spec.caps.fused is not None)
    assert spec.configs is spec.cls.configs and spec.lab_lr == spec.cls.lab_lr


def test_a_spec_can_describe_a_class_that_declares_nothing():
    spec = OptimizerSpec("t_lbfgs", torch.optim.LBFGS, configs=({},), lab_lr=1.0, closure=True)
    assert spec.closure and not spec.elementwise and spec.lab_lr == 1.0 and not spec.fused


def test_registry_lists_every_exported_optimizer():
    import optimkit.optimizers

    assert sorted(REGISTRY) == sorted(name.lower() for name in optimkit.optimizers.__all__)
    assert all(getattr(optimkit, spec.cls.__name__) is spec.cls for spec in REGISTRY.values())


def test_an_optimizer_without_a_rule_says_what_is_missing():
    class NoRule(optimkit.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.raises(NotImplementedError, match="declares no update rule"):
        NoRule([p]).step()
    assert torch.equal(p, torch.ones(2))


def test_compile_needs_an_elementwise_rule():
    with pytest.raises(ValueError, match="compile=True needs an elementwise update rule"):
        optimkit.Optimizer([torch.nn.Parameter(torch.ones(2))], {"lr": 0.1}, compile=True)
