"""``cautious=True`` (Liang et al. 2024, "Cautious Optimizers"): against timm 1.0.31's
``caution=True``, whose mask optimkit follows op for op.

timm is not a dependency: ``make setup`` installs the pinned wheel with ``--no-deps``, and this
module loads the optimizer files (``timm/optim/adamw.py``, ``lion.py``, ``sgdw.py``) by path,
without importing the ``timm`` package (its ``__init__`` imports torchvision). Where timm is
not installed, the environment variable ``TIMM_SRC`` may name a directory holding an unpacked
wheel (``$TIMM_SRC/timm/optim/adamw.py``); else the comparisons are skipped.

The mask's mean is over a whole parameter: these runs use a model of many small tensors (which
an elementwise rule would pack together) and one tensor bigger than a chunk, so a mean taken
over a pack or a chunk would show.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import optimkit
from harness import assert_same

STEPS = 20
DTYPES = [torch.float32, torch.float64]
TIMM_VERSION = "1.0.31"


def _timm_optim_dir() -> Path | None:
    spec = importlib.util.find_spec("timm")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        from importlib.metadata import version

        assert version("timm") == TIMM_VERSION, f"timm {version('timm')} installed; the test pins {TIMM_VERSION}"
        return Path(next(iter(spec.submodule_search_locations))) / "optim"
    src = os.environ.get("TIMM_SRC")
    if src and (Path(src) / "timm" / "optim" / "adamw.py").exists():
        return Path(src) / "timm" / "optim"
    return None


def timm_module(name: str) -> types.ModuleType:
    """``timm/optim/<name>.py`` as a module of a stand-in package (so its relative imports of
    ``_helpers`` and ``_types`` resolve) that never runs timm's ``__init__`` files."""
    root = _timm_optim_dir()
    if root is None:
        pytest.skip(f"timm=={TIMM_VERSION} is not installed (make setup installs it with --no-deps)")
    package = "_timm_optim_oracle"
    if package not in sys.modules:
        stub = types.ModuleType(package)
        stub.__path__ = [str(root)]
        sys.modules[package] = stub
    full = f"{package}.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


class Model(torch.nn.Module):
    """Small tensors of several shapes (packed, were the rule elementwise) and one tensor of
    more than a chunk (chunked, were it elementwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        self.big = torch.nn.Parameter(torch.randn(600, 1000) * 0.01)  # > CHUNKED (512K) elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (self.big[:4, :8] @ x.T).T


def make_model(dtype: torch.dtype) -> Model:
    torch.manual_seed(0)
    return Model().to(dtype)


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :4] * 2) + x[:, 4:] ** 2 / 4
    return x.to(dtype), y.to(dtype)


def side_by_side(ours_cls, ours_kw, ref_cls, ref_kw, dtype, check_state=True, steps=STEPS):
    x, y = data(dtype)
    models = [make_model(dtype), make_model(dtype)]
    ours = ours_cls(models[0].parameters(), **copy.deepcopy(ours_kw))
    ref = ref_cls(models[1].parameters(), **copy.deepcopy(ref_kw))
    for step in range(steps):
        for model, opt in zip(models, (ours, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        for i, (a, b) in enumerate(zip(models[0].parameters(), models[1].parameters())):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
        if check_state:
            for p, q in zip(models[0].parameters(), models[1].parameters()):
                mine, theirs = ours.state[p], ref.state[q]
                assert_same({k: mine[k] for k in theirs}, dict(theirs), f"step {step} state")
    return ours, ref, models


ADAMW_CASES = {
    "defaults": {},
    "decay": {"lr": 0.01, "weight_decay": 0.1},
    "amsgrad-maximize": {"amsgrad": True, "maximize": True, "betas": (0.8, 0.95)},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", list(ADAMW_CASES))
def test_adamw_cautious_is_timms_bit_for_bit(case, dtype):
    """AdamW(cautious=True) == timm's AdamW (``AdamWLegacy``, single-tensor path) with
    ``caution=True``: every parameter and state entry, after each of 20 steps."""
    timm = timm_module("adamw")
    kw = ADAMW_CASES[case]
    side_by_side(optimkit.AdamW, {**kw, "cautious": True}, timm.AdamWLegacy,
                 {**kw, "caution": True, "foreach": False}, dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_adam_cautious_is_timms_without_weight_decay(dtype):
    """Adam and AdamW are one rule: without weight decay Adam(cautious=True) is timm's too."""
    timm = timm_module("adamw")
    side_by_side(optimkit.Adam, {"lr": 0.01, "cautious": True}, timm.AdamWLegacy,
                 {"lr": 0.01, "weight_decay": 0.0, "caution": True, "foreach": False}, dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("kw", [{}, {"lr": 1e-3, "weight_decay": 0.1}], ids=["defaults", "decay"])
def test_lion_cautious_is_timms(kw, dtype):
    """Lion(cautious=True) against timm's Lion(caution=True). optimkit's Lion is lion-pytorch's
    op order (``mul_``/``add`` where timm ``lerp``s), so the momentum differs from timm's in the
    last bits; the parameters -- signs times the same mask -- are the same bits (measured:
    no sign differed in these runs), the momentum within 1e-6 relative (float32) / 1e-14
    (float64)."""
    timm = timm_module("lion")
    ours, ref, models = side_by_side(optimkit.Lion, {**kw, "cautious": True}, timm.Lion,
                                     {**kw, "caution": True, "foreach": False}, dtype, check_state=False)  # fmt: skip
    tol = {torch.float32: 1e-6, torch.float64: 1e-14}[dtype]
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        a, b = ours.state[p]["exp_avg"], ref.state[q]["exp_avg"]
        assert ((a - b).abs().max() / b.abs().max()).item() <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
def test_sgd_cautious_is_timms(nesterov, dtype):
    """SGD(momentum, cautious=True) == timm's SGDW(caution=True) without weight decay (timm's
    is decoupled, torch's coupled: with none they are the same algorithm)."""
    timm = timm_module("sgdw")
    kw = {"lr": 0.05, "momentum": 0.9, "nesterov": nesterov}
    side_by_side(optimkit.SGD, {**kw, "cautious": True}, timm.SGDW,
                 {**kw, "weight_decay": 0.0, "caution": True, "foreach": False}, dtype)  # fmt: skip


def test_cautious_false_is_torch_exactly():
    """Off (the default), nothing changes: the group carries no ``cautious`` key and the step
    is torch's (the registry's exactness tables run every config that way)."""
    for cls in (optimkit.Adam, optimkit.AdamW, optimkit.Lion, optimkit.SGD):
        opt = cls([torch.nn.Parameter(torch.ones(3))], lr=0.1)
        assert "cautious" not in opt.param_groups[0] and "cautious" not in opt.defaults
    opt = optimkit.AdamW([torch.nn.Parameter(torch.ones(3))], cautious=True)
    assert opt.param_groups[0]["cautious"] is True


def test_cautious_is_per_group_and_never_packed():
    """A cautious group runs whole tensors through the rule (its mean is each parameter's);
    another group of the same optimizer still runs packed."""
    model = make_model(torch.float32)
    params = list(model.body.parameters())
    opt = optimkit.AdamW([{"params": params[:2], "cautious": True}, {"params": params[2:]}])
    x, y = data(torch.float32)
    torch.nn.functional.mse_loss(model.body(x), y).backward()
    opt.step()
    packed = {gid: layout for gid, layout in opt._store.layouts.items()}
    assert id(opt.param_groups[0]) not in packed and packed[id(opt.param_groups[1])].packs


def test_refusals():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="cautious=True has no fused kernel"):
        optimkit.AdamW(p, cautious=True, fused=True)
    with pytest.raises(ValueError, match="cautious=True needs a mean over each whole parameter"):
        optimkit.Adam(p, cautious=True, compile=True)
    with pytest.raises(ValueError, match="cautious=True needs a mean over each whole parameter"):
        optimkit.Lion(p, cautious=True, compile=True)
    with pytest.raises(ValueError, match="cautious must be True or False"):
        optimkit.Lion(p, cautious=1)
    opt = optimkit.AdamW([{"params": p, "cautious": True, "fused": True}])
    p[0].grad = torch.ones(3)
    with pytest.raises(ValueError, match="cautious=True has no fused kernel"):
        opt.step()
    assert torch.equal(p[0].detach(), torch.ones(3)) and not opt.state


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("cls", [optimkit.AdamW, optimkit.Lion, optimkit.SGD], ids=lambda c: c.__name__)
def test_exact_resume(cls):
    kw = {"lr": 0.01, "cautious": True, **({"momentum": 0.9} if cls is optimkit.SGD else {})}
    x, y = data(torch.float64)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model.body(x), y).backward()
            opt.step()

    ref_model = make_model(torch.float64)
    ref = cls(ref_model.body.parameters(), **kw)
    train(ref_model, ref, 6)
    model = make_model(torch.float64)
    first = cls(model.body.parameters(), **kw)
    train(model, first, 3)
    resumed_model = copy.deepcopy(model)
    resumed = cls(resumed_model.body.parameters(), **kw)
    resumed.load_state_dict(_save_load(first.state_dict()))
    train(resumed_model, resumed, 3)
    assert_same([p.detach() for p in resumed_model.body.parameters()], [p.detach() for p in ref_model.body.parameters()])
    assert_same(resumed.state_dict(), ref.state_dict())


# ---------------------------------------------------------------------------- FSDP2
def _mlp() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3)).double()


def _train_mlp(model, opt, rank=0, world=1, steps=4):
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 + step)
        x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
        n = 8 // world
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[rank * n : (rank + 1) * n]), y[rank * n : (rank + 1) * n]).backward()
        opt.step()


def _full(obj):
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().detach().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _full(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_full(v) for v in obj)
    return obj


def _fsdp_worker(rank: int, world: int, name: str) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = getattr(optimkit, name)(model.parameters(), lr=0.01, cautious=True)
    _train_mlp(model, opt, rank, world)
    return {"params": _full(list(model.parameters())), "state": _full(opt.state_dict())}


@pytest.mark.parametrize("name", ["AdamW", "Lion"])
def test_fsdp2_mask_mean_is_over_the_whole_parameter(name):
    """Under FSDP2 each rank holds a shard; a cautious group is gathered, so the mask's mean
    is the whole parameter's and the result is the one-process run's (a mean over the local
    shard would differ at the first step)."""
    from dist_utils import available, run_group

    if not available():
        pytest.skip("torch.distributed with gloo and fork is not available")
    model = _mlp()
    opt = getattr(optimkit, name)(model.parameters(), lr=0.01, cautious=True)
    _train_mlp(model, opt)
    result = run_group(_fsdp_worker, 2, name, timeout=90)[0]
    for a, b in zip(result["params"], model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-11)
    ref = opt.state_dict()
    for pid, st in ref["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(result["state"]["state"][pid][k], v, rtol=1e-9, atol=1e-11)
