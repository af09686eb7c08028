"""``compile=True``: the same rules under torch.compile (see ``src/optimkit/execution/compiled.py``).

Not bit-exact by design (inductor fuses into FMAs): every elementwise optimizer is checked
against the exact path over several steps to 1e-6 relative to each tensor's magnitude. Each
case compiles one graph (a few seconds with a cold compile cache), so the cases are chosen to
cover every optimizer once and the options that change the graph (amsgrad, centered, momentum,
Nesterov, maximize, weight decay, a tensor lr) without compiling the same rule many times.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch

import optimkit
from harness import assert_same, grad_like, skip_pattern
from optimkit.execution import compiled
from optimkit.execution import packed as flat
from optimkit.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread", "strict_dynamo")

STEPS = 8  # RAdam's rectified branch starts at step 6


@pytest.fixture(scope="module")
def strict_dynamo():
    """A hit of the recompile limit would silently run the rule uncompiled: make it fail."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=16):
        yield


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x)


# Hand-picked combinations of options; an optimizer without one takes its richest config.
CHOSEN = {
    "sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "lr": _t(0.05)},
    "adam": {"weight_decay": 0.1, "amsgrad": True, "maximize": True, "lr": _t(0.02)},
    "adamw": {"betas": (0.8, 0.95)},
    "adagrad": {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1},
    "rmsprop": {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
    "adadelta": {"rho": 0.5, "weight_decay": 0.9, "lr": _t(0.1), "maximize": True},
    "adamax": {"weight_decay": 0.1, "maximize": True},
    "nadam": {"weight_decay": 0.1, "decoupled_weight_decay": True, "lr": _t(0.01), "maximize": True},
    "radam": {"weight_decay": 0.1},
    "asgd": {"t0": 2, "lambd": 0.5, "lr": 0.02},
    "rprop": {"maximize": True, "etas": (0.4, 1.3)},
}
ELEMENTWISE = [n for n, s in REGISTRY.items() if s.elementwise]
CASES = {
    n: CHOSEN.get(n) or max((c for c in REGISTRY[n].configs if not c.get("fused")), key=len) for n in ELEMENTWISE
}


def test_every_hand_picked_case_is_an_elementwise_optimizer():
    assert set(CHOSEN) <= set(ELEMENTWISE)


# One big parameter (fed whole), small ones (packed), one that never gets a gradient.
SHAPES = [(flat.SMALL + 3,), (3, 5), (7,), (4, 4), (1,), (2, 3, 2)]


def _params(dtype=torch.float32, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in shapes]


def _step(opt, params, step):
    n = len(params)
    for i, p in enumerate(params):
        p.grad = None if skip_pattern(step, i, n) else grad_like(p, step, i)
    opt.step()


def assert_close(a, b, path=""):
    """Within 1e-6 relative to the tensor's magnitude (elementwise relative error is
    meaningless where a value crosses zero); non-tensors and integer-valued steps equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), path
        scale = b.abs().max().item() if b.numel() else 0.0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{path}: {m}")
    else:
        assert a == b, path


def _pair(name, kwargs, dtype=torch.float32, shapes=SHAPES):
    cls = REGISTRY[name].cls
    exact_params, comp_params = _params(dtype, shapes), _params(dtype, shapes)
    exact = cls(exact_params, **copy.deepcopy(kwargs))
    comp = cls(comp_params, **copy.deepcopy(kwargs), compile=True)
    return exact, exact_params, comp, comp_params


def _drift(group, step):
    """Change every number of the group a little (as schedulers do), tensor lr in place."""
    f = 1 - 0.01 * step
    for k, v in group.items():
        if isinstance(v, torch.Tensor):
            v.mul_(f)
        elif isinstance(v, tuple):
            group[k] = tuple(x * f for x in v)
        elif type(v) in (int, float) and k != "initial_accumulator_value":
            group[k] = v * f


@pytest.mark.parametrize("name", sorted(CASES))
def test_close_to_the_exact_path(name):
    """Every hyperparameter changes at every step: no recompile, and no value baked in."""
    exact, exact_params, comp, comp_params = _pair(name, CASES[name])
    for step in range(STEPS):
        if step >= 1:
            _drift(exact.param_groups[0], step)
            _drift(comp.param_groups[0], step)
        _step(exact, exact_params, step)
        # After two steps (SGD compiles its first step apart: it creates the buffer), no
        # recompiles, though every number changes and the packs are rebuilt (skipped grads).
        with torch._dynamo.config.patch(error_on_recompile=step >= 2):
            _step(comp, comp_params, step)
        assert_close([p.detach() for p in comp_params], [p.detach() for p in exact_params], f"step {step}")
    assert comp.rule.fn in compiled._COMPILED  # the compiled strategy ran
    assert comp.compile_seconds >= 0
    # The state dict is torch's format, key for key; only the last bits differ.
    assert_close(comp.state_dict(), exact.state_dict())


def test_no_recompile_when_schedulers_change_lr_betas_and_momentum_every_step():
    # (A parameter or pack of one element compiles once more: dynamo specializes size 1.)
    params = _params(shapes=[(flat.SMALL + 3,), (3, 5), (7,), (4, 4), (2, 3, 2), (6,)])
    adam = optimkit.Adam(params[:3], lr=1e-3, compile=True)
    rms = optimkit.RMSprop(params[3:5], lr=1e-2, momentum=0.9, compile=True)
    sgd = optimkit.SGD(params[5:], lr=1e-2, momentum=0.9, weight_decay=1e-4, compile=True)
    opts = (adam, rms, sgd)
    scheds = [
        torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=0.01, total_steps=20),  # lr and beta1
        optimkit.lr_scheduler.LambdaLR(rms, lambda e: 0.9**e),
        optimkit.lr_scheduler.OneCycleLR(sgd, max_lr=0.1, total_steps=20),  # lr and momentum
    ]

    def step(i):
        for p in params:
            p.grad = grad_like(p, i, 0)
        for opt in opts:
            opt.step()

    def numbers():
        return [(o.param_groups[0]["lr"], o.param_groups[0].get("betas"), o.param_groups[0]["momentum"]
                 if "momentum" in o.param_groups[0] else None) for o in opts]  # fmt: skip

    step(0)  # compiles (SGD's first step, which creates the momentum buffer, apart)
    step(1)
    before = numbers()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(2, 8):
            for s in scheds:
                s.step()
            step(i)
    after = numbers()
    assert after[0][0] != before[0][0] and after[0][1][0] != before[0][1][0]  # Adam: lr, beta1
    assert after[1][0] != before[1][0] and after[2][0] != before[2][0] and after[2][2] != before[2][2]


def test_state_dict_round_trip_and_resume():
    name, kwargs = "nadam", CASES["nadam"]
    _, _, comp, params = _pair(name, kwargs)
    for step in range(3):
        _step(comp, params, step)
    saved = copy.deepcopy(comp.state_dict())
    snapshot = [p.detach().clone() for p in params]
    for step in range(3, 6):
        _step(comp, params, step)

    # Resume in a fresh compile=True optimizer: the same compiled kernels, the same bits.
    resumed_params = [torch.nn.Parameter(t.clone()) for t in snapshot]
    resumed = optimkit.NAdam(resumed_params, **copy.deepcopy(kwargs), compile=True)
    resumed.load_state_dict(copy.deepcopy(saved))
    for step in range(3, 6):
        _step(resumed, resumed_params, step)
    assert_same([p.detach() for p in resumed_params], [p.detach() for p in params])
    assert_same(resumed.state_dict(), comp.state_dict())

    # Into the exact path and back: the state is the same format both ways.
    exact_params = [torch.nn.Parameter(t.clone()) for t in snapshot]
    exact = optimkit.NAdam(exact_params, **copy.deepcopy(kwargs))
    exact.load_state_dict(copy.deepcopy(saved))
    for step in range(3, 6):
        _step(exact, exact_params, step)
    assert_close([p.detach() for p in params], [p.detach() for p in exact_params])
    back_params = [torch.nn.Parameter(p.detach().clone()) for p in exact_params]
    back = optimkit.NAdam(back_params, **copy.deepcopy(kwargs), compile=True)
    back.load_state_dict(exact.state_dict())
    _step(back, back_params, 6)
    _step(exact, exact_params, 6)
    assert_close([p.detach() for p in back_params], [p.detach() for p in exact_params])
    assert "compile" not in saved["param_groups"][0]


def test_pickle_and_deepcopy_keep_compile():
    opt = optimkit.RMSprop(_params(), compile=True)
    assert copy.deepcopy(opt).compile and pickle.loads(pickle.dumps(opt)).compile
    assert not copy.deepcopy(optimkit.RMSprop(_params())).compile


def test_what_the_compiled_path_does_not_take_runs_the_exact_rule():
    """bfloat16 (inductor would round differently from torch's op-by-op rounding), complex,
    non-contiguous parameters: in the same group, they get the exact rule, bit for bit."""
    g = torch.Generator().manual_seed(3)
    others = [
        torch.randn(5, 3, generator=g).to(torch.bfloat16),
        torch.randn(4, 2, dtype=torch.complex64, generator=g),
        torch.randn(6, 4, generator=g).t(),
    ]
    assert not others[2].is_contiguous()
    kwargs = CASES["adam"]
    runs = {}
    for comp in (False, True):
        params = _params() + [torch.nn.Parameter(t.clone()) for t in others]
        opt = optimkit.Adam(params, **copy.deepcopy(kwargs), compile=comp)
        for step in range(4):
            _step(opt, params, step)
        runs[comp] = params
    n = len(SHAPES)
    assert_same([p.detach() for p in runs[True][n:]], [p.detach() for p in runs[False][n:]])
    assert_close([p.detach() for p in runs[True][:n]], [p.detach() for p in runs[False][:n]])


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_compile_refuses_differentiable_and_fused(name):
    cls = REGISTRY[name].cls
    if "differentiable" in inspect.signature(cls).parameters:
        with pytest.raises(ValueError, match="compile=True does not support differentiable"):
            cls(_params(), differentiable=True, compile=True)
    if REGISTRY[name].fused:
        with pytest.raises(ValueError, match="compile=True and fused=True"):
            cls(_params(), fused=True, compile=True)


def test_compile_is_keyword_only_and_not_in_the_groups():
    opt = optimkit.Adam(_params(), compile=True)
    assert "compile" not in opt.defaults and "compile" not in opt.param_groups[0]
    assert repr(opt) == repr(optimkit.Adam(_params()))
    with pytest.raises(TypeError):
        optimkit.RMSprop(_params(), 0.01, 0.99, 1e-8, 0, 0, False, False, None, False, False, True)


def test_sharded_dtensor_parameters_run_the_compiled_rule_on_local_shards(tmp_path, monkeypatch):
    """Under FSDP2/tensor parallelism the elementwise rule runs on each rank's local shard
    (``optimkit.execution.sharded``); with compile=True that is the compiled rule. One rank is enough
    to check the wiring: the result stays within the tolerance of the exact path, and the
    state stays a DTensor laid out like its parameter."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    taken = []
    compilable = compiled.packable
    monkeypatch.setattr(compiled, "packable", lambda *a: taken.append(compilable(*a)) or taken[-1])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        full = [torch.randn(flat.SMALL + 5), torch.randn(6, 5)]
        runs = {}
        for mode in (False, True):
            params = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
            opt = optimkit.Adam(params, lr=0.01, weight_decay=0.1, compile=mode)
            for step in range(4):
                for i, p in enumerate(params):
                    p.grad = distribute_tensor(grad_like(p.full_tensor(), step, i), mesh, [Shard(0)])
                opt.step()
            assert all(isinstance(opt.state[p]["exp_avg"], DTensor) for p in params)
            runs[mode] = [p.full_tensor() for p in params]
        assert taken and all(taken), taken  # every local shard went to the compiled rule
        for exact, comp in zip(runs[False], runs[True]):
            assert (exact - comp).abs().max() <= 1e-6 * exact.abs().max()
    finally:
        dist.destroy_process_group()
