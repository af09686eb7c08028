"""optimkit under torch.distributed: DDP, FSDP2, ZeRO-1 and distributed checkpoints.

Every optimizer of the registry is run by torch's own engines -- ``DistributedDataParallel``,
``fully_shard`` (FSDP2, DTensor parameters), ``ZeroRedundancyOptimizer`` and
``torch.distributed.checkpoint`` -- on 2 or 4 gloo ranks on 127.0.0.1, and compared with
the same model trained in one process on the full batch (computed here, in the test process).

Why a tolerance and which one. Each rank computes the gradient of its part of the batch;
the engines average them (all-reduce, reduce-scatter). That is the full-batch gradient
summed in another order, so each gradient element can differ from the one-process value by
a few float64 ulps of the magnitudes summed (~1e-16 relative). The optimizers carry that
through a few steps (Adam-type rules divide by sqrt(v), which amplifies it for the smallest
gradients). Each test prints the largest difference it saw (``-s``); over every optimizer,
config and engine they stay below 3e-14 (most are 0 to 1e-16; the largest is RMSprop's
centered ``grad_avg`` and LBFGS's history), except LBFGS's default config (see
``TOLERANCE``) and SOAP (up to 4e-13 in parameters, 2e-11 in its statistics and bases; see
``FULL_RANK``). ``RTOL``/``ATOL`` = 1e-9/1e-11 sit orders of magnitude above that and orders
of magnitude below what a real mistake gives: an unsynchronised gradient, a missing
1/world_size, state computed from a shard where the whole tensor was needed (Muon
orthogonalizing a shard: 5e-5 after 4 steps) or a stale restored state all move parameters
by 1e-5 .. 1e-1 within these steps. Models are float64 so the two scales are far apart. Everything that is not a floating-point result
(state keys, dtypes, shapes, step counts, hyperparameters) must match exactly, and under DDP
the replicas on all ranks must be bit-identical.

The ranks are started by ``dist_utils.run_group`` (a fork server with torch preloaded,
loopback only, hard timeouts, every process reaped). Each mode runs *one* process group
for all its optimizers and configs; the per-optimizer tests below read its results.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_utils import available, run_group

from harness import clone_kwargs
from optimkit.registry import REGISTRY

pytestmark = [
    pytest.mark.skipif(
        not available(), reason="needs torch.distributed with gloo and the forkserver start method"
    ),
    pytest.mark.usefixtures("one_thread"),
]

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-9, 1e-11
#: LBFGS's default (lr=1, no line search, up to 20 quasi-Newton iterations per step: 80 here)
#: amplifies last-bit differences ~1e7-fold: perturbing the *initial parameters* of the
#: one-process run by 1e-16 (relative) moves its result by 9e-10 (measured). That, not the
#: engines, sets its bound; the DDP run differs by up to 1.5e-9 (1% of this bound). A real
#: mistake changes LBFGS's result at the first digit.
TOLERANCE = {"lbfgs": (1e-5, 1e-7)}
STEPS = 4  # optimizer steps per run (LBFGS: each up to max_iter closure evaluations)
BATCH = 8  # the global batch: it splits evenly over 2 and 4 ranks
IN, HIDDEN, OUT, VOCAB = 6, 10, 3, 24  # odd sizes: FSDP2's shards are uneven, some empty on 4 ranks


def clear_refusal(message: str, optimizer: str) -> bool:
    """A deliberate refusal, not an accident deep inside DTensor: the message names the
    optimizer and says that it does not work with DTensor/FSDP parameters. (DTensor's own
    failures -- "Sharding propagation failed for aten.view.default ..." -- do not count.)"""
    pattern = rf"\b{optimizer}\b.*\b(not|cannot|can't|unsupported)\b.*\b(DTensor|FSDP2?|fully_shard)"
    return re.search(pattern, message, re.DOTALL) is not None


# ---------------------------------------------------------------------------- the problem
#: Optimizers whose step is discontinuous in the last bits of the gradient where a layer's
#: statistics are rank-deficient: SOAP's first eigenbasis of a singular G G^T (a non-square
#: layer, or fewer samples than rows) is arbitrary within the null space, so the engines'
#: last-bit differences change it entirely -- a 1-ulp change of the *initial parameters* moves
#: SOAP's 4-step result on the MLP below by 4% (measured), as it moves pytorch-optimizer's.
#: They train square 6x6 layers (8 samples: full-rank statistics, determined bases) and a
#: frozen output layer.
FULL_RANK = {"soap"}


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A float64 MLP (6 -> 10 -> 10 -> 3) for dense optimizers; Muon's has no biases (it takes
    matrices only); SparseAdam trains a sparse ``EmbeddingBag`` (the only way it gets the
    sparse gradients it requires); ``FULL_RANK`` optimizers train 6 -> 6 -> 6 -> 6 and a frozen
    6 -> 3. Built from a fixed seed, without touching the caller's RNG."""
    spec = REGISTRY[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.sparse == "only":
            model: torch.nn.Module = torch.nn.EmbeddingBag(VOCAB, OUT, mode="mean", sparse=True)
        elif name in FULL_RANK:
            layers: list[torch.nn.Module] = []
            for _ in range(3):
                layers += [torch.nn.Linear(IN, IN), torch.nn.Tanh()]
            model = torch.nn.Sequential(*layers, torch.nn.Linear(IN, OUT).requires_grad_(False))
        else:
            bias = not spec.matrix_only
            model = torch.nn.Sequential(
                torch.nn.Linear(IN, HIDDEN, bias=bias),
                torch.nn.Tanh(),
                torch.nn.Linear(HIDDEN, HIDDEN, bias=bias),
                torch.nn.Tanh(),
                torch.nn.Linear(HIDDEN, OUT, bias=bias),
            )
    return model.double()


def local_batch(name: str, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous 1/world of the step's global batch (world=1: all of it)."""
    g = torch.Generator().manual_seed(1000 + step)
    if REGISTRY[name].sparse == "only":
        x = torch.randint(0, VOCAB, (BATCH, 4), generator=g)
    else:
        x = torch.randn(BATCH, IN, generator=g, dtype=torch.float64)
    y = torch.randn(BATCH, OUT, generator=g, dtype=torch.float64)
    n = BATCH // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def _mean_over_ranks(loss: torch.Tensor) -> torch.Tensor:
    """The full batch's loss from the ranks' losses: every rank must see the same value when
    the optimizer branches on it (LBFGS's line search and stopping tests), or the ranks would
    take different paths -- and a different number of forward/backward passes."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return loss
    loss = loss.clone()
    dist.all_reduce(loss)
    return loss / dist.get_world_size()


def train(
    model: Any, opt: Any, name: str, steps: int, start: int = 0, rank: int = 0, world: int = 1
) -> list[float]:
    """``steps`` steps on the mean squared error; returns the losses (of the full batch)."""
    losses = []
    for step in range(start, start + steps):
        x, y = local_batch(name, step, rank, world)
        if REGISTRY[name].closure:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return _mean_over_ranks(loss.detach())

            losses.append(float(opt.step(closure)))
        else:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(_mean_over_ranks(loss.detach())))
    return losses


def full(obj: Any) -> Any:
    """A copy of ``obj`` with every DTensor gathered to its full value (a collective: all
    ranks call it on the same structure) and every tensor detached."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().detach().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: full(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full(v) for v in obj)
    return obj


@functools.cache
def reference(name: str, config: int, steps: int = STEPS) -> dict[str, Any]:
    """The same model and optimizer trained in this process on the full batch."""
    model = make_model(name)
    opt = REGISTRY[name].cls(model.parameters(), **clone_kwargs(REGISTRY[name].configs[config]))
    losses = train(model, opt, name, steps)
    return {"params": full(list(model.parameters())), "state": full(opt.state_dict()), "losses": losses}


def assert_close_tree(
    actual: Any, expected: Any, path: str = "", tol: tuple[float, float] = (RTOL, ATOL)
) -> float:
    """Tensors and floats equal within ``tol`` = (rtol, atol), tensors of the same dtype and
    shape; everything else (ints, flags, keys) exactly equal. Returns the largest absolute
    difference seen."""
    rtol, atol = tol
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual).__name__} instead of a tensor"
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype}, expected {expected.dtype}"
        assert actual.shape == expected.shape, (
            f"{path}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        )
        a, e = actual.to_dense(), expected.to_dense()
        if a.is_floating_point():
            torch.testing.assert_close(
                a, e, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{path}: {m}"
            )
            finite = torch.isfinite(a) & torch.isfinite(e)
            return (a[finite].double() - e[finite].double()).abs().max().item() if finite.any() else 0.0
        assert torch.equal(a, e), f"{path}: {a} != {e}"
        return 0.0
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {type(actual).__name__} instead of a dict"
        assert set(actual) == set(expected), (
            f"{path}: keys {sorted(map(str, actual))}, expected {sorted(map(str, expected))}"
        )
        return max(
            [assert_close_tree(actual[k], expected[k], f"{path}.{k}", tol) for k in expected], default=0.0
        )
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)}, expected {len(expected)}"
        return max(
            [assert_close_tree(a, e, f"{path}[{i}]", tol) for i, (a, e) in enumerate(zip(actual, expected))],
            default=0.0,
        )
    if isinstance(expected, float):  # LBFGS's prev_loss: a loss summed over the ranks
        assert isinstance(actual, float), f"{path}: {actual!r}, expected a float"
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: {actual!r}, expected nan"
            return 0.0
        assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol), (
            f"{path}: {actual!r}, expected {expected!r}"
        )
        return abs(actual - expected)
    assert actual == expected, f"{path}: {actual!r}, expected {expected!r}"
    return 0.0


def assert_matches(
    result: dict[str, Any], expected: dict[str, Any], name: str, label: str
) -> tuple[float, float]:
    """Parameters and the whole optimizer state dict against the one-process run."""
    if result.get("error"):
        pytest.fail(f"{label} raised on the ranks:\n{result['error']}", pytrace=False)
    tol = TOLERANCE.get(name, (RTOL, ATOL))
    dp = assert_close_tree(result["params"], expected["params"], "params", tol)
    ds = assert_close_tree(result["state"], expected["state"], "state_dict", tol)
    print(f"{label}: max |diff| params {dp:.1e}, state {ds:.1e} (rtol {tol[0]:g}, atol {tol[1]:g})")
    return dp, ds


def _cases(names: list[str], configs: str = "two") -> list[tuple[str, int]]:
    """(name, config index) pairs: the default config, and the spec's last one (most of its
    options at once) unless ``configs="default"``."""
    out = []
    for name in names:
        n = len(REGISTRY[name].configs)
        out += [(name, i) for i in ([0, n - 1] if configs == "two" and n > 1 else [0])]
    return out


def _guard(fn: Any, *args: Any) -> dict[str, Any]:
    """One case on a rank; an exception becomes the case's result (the ranks fail alike and
    stay in step, so the other cases of the group still run). BaseException, because DCP's
    ``CheckpointException`` derives from it."""
    try:
        return fn(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        return {"error": traceback.format_exc(), "message": f"{type(e).__name__}: {e}"}


ALL = list(REGISTRY)
ELEMENTWISE = [n for n, s in REGISTRY.items() if s.elementwise]
#: Rules that need whole tensors: Muon, LBFGS, Adafactor -- and the optimizers whose step
#: size is a sum over every parameter (Prodigy, D-Adaptation: ``GLOBAL_SUMS``), whose sums over
#: DTensor shards are added up across ranks.
WHOLE_TENSOR = [n for n, s in REGISTRY.items() if not s.elementwise and s.sparse != "only"]
#: A step size summed over the whole model (group-scope rules). Under ZeRO-1 each rank's
#: local optimizer holds other parameters, so it must be told to add its sums up over the
#: process group: the oracles' flag ``fsdp_in_use=True``, which their ZeRO cases pass.
GLOBAL_SUMS = [n for n, s in REGISTRY.items() if s.caps.scope == "group"]


# ---------------------------------------------------------------------------- 1. DDP
DDP_WORLD = 2
DDP_CASES = [(name, config, view) for name, config in _cases(ALL) for view in (False, True)]


def _ddp_case(rank: int, world: int, name: str, config: int, bucket_view: bool) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model(name)
    ddp = DDP(model, gradient_as_bucket_view=bucket_view)
    opt = REGISTRY[name].cls(ddp.parameters(), **clone_kwargs(REGISTRY[name].configs[config]))
    losses = train(ddp, opt, name, STEPS, rank=rank, world=world)
    layouts = opt._store.layouts
    return {
        "params": full(list(model.parameters())),
        "state": full(opt.state_dict()),
        "losses": losses,
        "packs": sum(len(layout.packs) for layout in layouts.values()),
    }


def ddp_worker(rank: int, world: int, cases: list[tuple[str, int, bool]]) -> dict[tuple, Any]:
    return {case: _guard(_ddp_case, rank, world, *case) for case in cases}


@pytest.fixture(scope="module")
def ddp_results() -> list[dict[tuple, Any]]:
    t = time.monotonic()
    ranks = run_group(ddp_worker, DDP_WORLD, DDP_CASES, timeout=90)
    print(f"DDP: {len(DDP_CASES)} runs on {DDP_WORLD} ranks in {time.monotonic() - t:.1f} s")
    return ranks


@pytest.mark.parametrize(
    "name,config,bucket_view",
    [pytest.param(*c, id=f"{c[0]}-{c[1]}-{'bucketview' if c[2] else 'copy'}") for c in DDP_CASES],
)
def test_ddp_matches_one_process(ddp_results, name, config, bucket_view):
    """DDP on 2 ranks, half the batch each, matches one process on the full batch; the
    replicas are bit-identical; elementwise rules take the packed fast path, with DDP's
    gradients copied out of its buckets and as views into them alike."""
    case = (name, config, bucket_view)
    result = ddp_results[0][case]
    assert_matches(result, reference(name, config), name, f"DDP {name}-{config} bucket_view={bucket_view}")
    for rank in range(1, DDP_WORLD):
        other = ddp_results[rank][case]
        assert not other.get("error"), other.get("error")
        for i, (a, b) in enumerate(zip(other["params"], result["params"])):
            assert torch.equal(a, b), f"rank {rank}'s replica differs from rank 0's (param {i})"
    if REGISTRY[name].elementwise:
        assert result["packs"] > 0, "the packed fast path was not taken"


# ---------------------------------------------------------------------------- 2. FSDP2
FSDP_WORLD = 2
FSDP_CASES = _cases([n for n in ALL if REGISTRY[n].sparse != "only"])


def _shard(model: torch.nn.Module, mesh: Any = None) -> torch.nn.Module:
    """FSDP2 as it is used: each Linear is a unit, the root holds the rest."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _layout_report(opt: Any) -> list[str]:
    """State entries that have the parameter's shape but are not sharded like it (elementwise
    rules must keep state as DTensors laid out like the parameter: local work, and DCP can
    save and reshard it)."""
    from torch.distributed.tensor import DTensor

    bad = []
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape == p.shape:
                if not isinstance(v, DTensor) or v.placements != p.placements:
                    bad.append(f"param {i} {k}: {type(v).__name__} {getattr(v, 'placements', '')}")
    return bad


def _fsdp_case(rank: int, world: int, name: str, config: int) -> dict[str, Any]:
    model = _shard(make_model(name))
    opt = REGISTRY[name].cls(model.parameters(), **clone_kwargs(REGISTRY[name].configs[config]))
    losses = train(model, opt, name, STEPS, rank=rank, world=world)
    return {
        "params": full(list(model.parameters())),
        "state": full(opt.state_dict()),
        "losses": losses,
        "layout": _layout_report(opt),
    }


def _fsdp_sparse_case(rank: int, world: int) -> dict[str, Any]:
    """SparseAdam given FSDP2's (dense, sharded) gradients."""
    model = _shard(make_model("adam"))
    opt = REGISTRY["sparseadam"].cls(model.parameters())
    train(model, opt, "adam", 1, rank=rank, world=world)  # the MLP's data
    return {"error": None}


def fsdp_worker(rank: int, world: int, cases: list[tuple[str, int]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {case: _guard(_fsdp_case, rank, world, *case) for case in cases}
    out["sparseadam"] = _guard(_fsdp_sparse_case, rank, world)
    return out


@pytest.fixture(scope="module")
def fsdp_results() -> list[dict[Any, Any]]:
    t = time.monotonic()
    ranks = run_group(fsdp_worker, FSDP_WORLD, FSDP_CASES, timeout=90)
    print(f"FSDP2: {len(FSDP_CASES) + 1} runs on {FSDP_WORLD} ranks in {time.monotonic() - t:.1f} s")
    return ranks


@pytest.mark.parametrize(
    "name,config", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in FSDP_CASES if c[0] in ELEMENTWISE]
)
def test_fsdp2_elementwise_matches_one_process(fsdp_results, name, config):
    """Elementwise rules on FSDP2's DTensor parameters: full parameters and full state match
    the unsharded run, and the state stays sharded like the parameters (no gathering)."""
    result = fsdp_results[0][(name, config)]
    assert_matches(result, reference(name, config), name, f"FSDP2 {name}-{config}")
    assert not result["layout"], f"state not sharded like its parameter: {result['layout']}"


@pytest.mark.parametrize(
    "name,config", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in FSDP_CASES if c[0] in WHOLE_TENSOR]
)
def test_fsdp2_whole_tensor_optimizers_match_or_refuse(fsdp_results, name, config):
    """Rules that need whole tensors (Muon's orthogonalization, Adafactor's row and column
    statistics, LBFGS's flat history) either match the unsharded run (they gathered what they
    needed) or raise an error that names DTensor/FSDP sharding -- never a silent wrong result."""
    result = fsdp_results[0][(name, config)]
    error = result.get("error")
    if error is not None:
        message = result["message"]
        cls = REGISTRY[name].cls.__name__
        assert clear_refusal(message, cls), f"{name} failed under FSDP2 without saying why:\n{error}"
        assert all(r[(name, config)].get("error") for r in fsdp_results), "only some ranks refused"
        print(f"FSDP2 {name}-{config}: refused: {message}")
        return
    assert_matches(result, reference(name, config), name, f"FSDP2 {name}-{config}")


def test_fsdp2_sparseadam_is_refused_clearly(fsdp_results):
    """SparseAdam cannot train under FSDP2. FSDP2 reduce-scatters gradients as dense flat
    shards: a sparse ``EmbeddingBag`` fails inside FSDP's own backward (torch 2.13: "Could not
    run 'fsdp::chunk_cat' with arguments from the 'SparseCPU' backend" -- torch's engine, not
    optimkit), and a dense model gives SparseAdam dense DTensor gradients. Those it must refuse
    with its error saying that it needs sparse gradients, on every rank -- not step them."""
    results = [r["sparseadam"] for r in fsdp_results]
    assert all(r.get("error") for r in results), (
        "SparseAdam stepped FSDP2's dense gradients: it should have refused"
    )
    message = results[0]["message"]
    assert re.search(r"SparseAdam.*(sparse|dense)", message), f"unclear error:\n{results[0]['error']}"
    print(f"FSDP2 sparseadam: refused: {message}")


#: HSDP: FSDP2 on a 2-D mesh (replicate across "nodes", shard within one), the layout for
#: several machines. Parameters are DTensors with placements (Replicate(), Shard(0)).
HSDP_CASES = [("adamw", 0), ("rprop", 0), ("muon", 0), ("adafactor", 0)]


def _hsdp_case(rank: int, world: int, name: str, config: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    model = _shard(make_model(name), mesh=mesh)
    opt = REGISTRY[name].cls(model.parameters(), **clone_kwargs(REGISTRY[name].configs[config]))
    train(model, opt, name, STEPS, rank=rank, world=world)
    return {"params": full(list(model.parameters())), "state": full(opt.state_dict()), "layout": _layout_report(opt)}


def hsdp_worker(rank: int, world: int, cases: list[tuple[str, int]]) -> dict[Any, Any]:
    return {case: _guard(_hsdp_case, rank, world, *case) for case in cases}


@pytest.fixture(scope="module")
def hsdp_results() -> list[dict[Any, Any]]:
    return run_group(hsdp_worker, 4, HSDP_CASES, timeout=90)


@pytest.mark.parametrize("name,config", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in HSDP_CASES])
def test_hsdp_two_dimensional_mesh_matches_one_process(hsdp_results, name, config):
    """FSDP2 on a 2x2 mesh (Replicate, Shard): local-shard rules and gathered rules alike give
    the one-process result on every rank, with state laid out like the parameters."""
    for rank, ranks in enumerate(hsdp_results):
        result = ranks[(name, config)]
        assert_matches(result, reference(name, config), name, f"HSDP {name}-{config} rank {rank}")
        if REGISTRY[name].elementwise:
            assert not result["layout"], result["layout"]


# ---------------------------------------------------------------------------- 3. ZeRO-1
ZERO_WORLD = 2
#: LBFGS cannot run under ZeRO: each rank's LBFGS steps only its own parameters, and its
#: closure (a DDP forward/backward, i.e. a collective) would be called a data-dependent number
#: of times on each rank -- the ranks would fall out of step.
ZERO_CASES = _cases([n for n in ALL if not REGISTRY[n].closure], configs="default")


def make_even_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Four 8x8 layers (biases too, except for Muon): ZeRO's greedy partition by size can
    split them exactly in half, so "1/world_size of the state" can be checked tightly.
    SparseAdam: two equal sparse embeddings whose outputs are added."""
    spec = REGISTRY[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.sparse == "only":
            model: torch.nn.Module = _TwoBags()
        else:
            layers: list[torch.nn.Module] = []
            for _ in range(4):
                layers += [torch.nn.Linear(8, 8, bias=not spec.matrix_only), torch.nn.Tanh()]
            model = torch.nn.Sequential(*layers[:-1])
    return model.double()


class _TwoBags(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.EmbeddingBag(VOCAB, 8, mode="mean", sparse=True)
        self.b = torch.nn.EmbeddingBag(VOCAB, 8, mode="mean", sparse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x.flip(1))


def even_batch(name: str, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + step)
    if REGISTRY[name].sparse == "only":
        x = torch.randint(0, VOCAB, (BATCH, 4), generator=g)
    else:
        x = torch.randn(BATCH, 8, generator=g, dtype=torch.float64)
    y = torch.randn(BATCH, 8, generator=g, dtype=torch.float64)
    n = BATCH // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def _train_even(model: Any, opt: Any, name: str, rank: int = 0, world: int = 1) -> None:
    for step in range(STEPS):
        x, y = even_batch(name, step, rank, world)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def state_numel(state: Any) -> int:
    """Elements of an optimizer's tensor state, scalars (step counters) excluded."""
    return sum(
        v.numel() for st in state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0
    )


@functools.cache
def zero_kwargs(name: str, config: int) -> dict[str, Any]:
    """The config (for ``GLOBAL_SUMS``: with ``fsdp_in_use=True``, which one process ignores)."""
    return {**clone_kwargs(REGISTRY[name].configs[config]), **({"fsdp_in_use": True} if name in GLOBAL_SUMS else {})}


def even_reference(name: str, config: int) -> dict[str, Any]:
    model = make_even_model(name)
    opt = REGISTRY[name].cls(model.parameters(), **zero_kwargs(name, config))
    _train_even(model, opt, name)
    return {
        "params": full(list(model.parameters())),
        "state": full(opt.state_dict()),
        "numel": state_numel(opt.state),
    }


def _zero_case(rank: int, world: int, name: str, config: int) -> dict[str, Any]:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_even_model(name)
    ddp = DDP(model)
    opt = ZeroRedundancyOptimizer(
        ddp.parameters(), optimizer_class=REGISTRY[name].cls, **zero_kwargs(name, config)
    )
    _train_even(ddp, opt, name, rank, world)
    local = opt.optim
    opt.consolidate_state_dict(to=0)
    return {
        "params": full(list(model.parameters())),
        "state": full(opt.state_dict()) if rank == 0 else None,
        "local_cls": type(local).__module__,
        "numel": state_numel(local.state),
    }


def zero_worker(rank: int, world: int, cases: list[tuple[str, int]]) -> dict[tuple, Any]:
    return {case: _guard(_zero_case, rank, world, *case) for case in cases}


@pytest.fixture(scope="module")
def zero_results() -> list[dict[tuple, Any]]:
    t = time.monotonic()
    ranks = run_group(zero_worker, ZERO_WORLD, ZERO_CASES, timeout=90)
    print(f"ZeRO-1: {len(ZERO_CASES)} runs on {ZERO_WORLD} ranks in {time.monotonic() - t:.1f} s")
    return ranks


@pytest.mark.parametrize("name,config", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in ZERO_CASES])
def test_zero1_matches_and_shards_state(zero_results, name, config):
    """ZeroRedundancyOptimizer(params, optimizer_class=<optimkit class>) over DDP: parameters
    (on every rank) and the consolidated state dict match one process; each rank's local
    optimkit optimizer holds 1/world_size of the state (exactly, for this evenly splittable
    model), and together they hold all of it. ``GLOBAL_SUMS`` optimizers run with
    ``fsdp_in_use=True`` (see there)."""
    expected = even_reference(name, config)
    results = [r[(name, config)] for r in zero_results]
    for rank, result in enumerate(results):
        if result.get("error"):
            pytest.fail(f"rank {rank} raised:\n{result['error']}", pytrace=False)
        assert result["local_cls"].startswith("optimkit"), result["local_cls"]
        dp = assert_close_tree(result["params"], expected["params"], f"rank {rank} params")
    ds = assert_close_tree(results[0]["state"]["state"], expected["state"]["state"], "consolidated state")
    counts = [r["numel"] for r in results]
    total = expected["numel"]
    print(
        f"ZeRO-1 {name}-{config}: max |diff| params {dp:.1e}, state {ds:.1e}; state elements {counts} of {total}"
    )
    assert sum(counts) == total, f"ranks hold {counts} state elements, one process {total}"
    assert max(counts) == total / ZERO_WORLD, f"state per rank {counts}, not 1/{ZERO_WORLD} of {total}"


# ---------------------------------------------------------------------------- 4. DCP
SAVE_WORLD, LOAD_WORLD = 4, 2
K, N = 3, 2  # steps before the save (on 4 ranks), steps after the resume (on 2 ranks)
#: Every optimizer FSDP2 can train (not SparseAdam, not LBFGS), default config: NAdam and
#: ASGD bring extra scalar state (mu_product; eta, mu), Rprop per-element step sizes,
#: Adafactor factored (non-param-shaped) state, Muon a momentum buffer on a gathered rule.
DCP_CASES = [n for n in ALL if REGISTRY[n].sparse != "only" and not REGISTRY[n].closure]


def _fsdp_optimizer(name: str, world: int, seed: int) -> tuple[torch.nn.Module, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    model = _shard(make_model(name, seed), mesh=init_device_mesh("cpu", (world,)))
    return model, REGISTRY[name].cls(model.parameters(), **clone_kwargs(REGISTRY[name].configs[0]))


def _dcp_save_case(rank: int, world: int, name: str, root: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model, opt = _fsdp_optimizer(name, world, seed=0)
    train(model, opt, name, K, rank=rank, world=world)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, name)))
    return {"error": None}


def dcp_save_worker(rank: int, world: int, names: list[str], root: str) -> dict[str, Any]:
    return {name: _guard(_dcp_save_case, rank, world, name, root) for name in names}


def _dcp_load_case(rank: int, world: int, name: str, root: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # Another seed: everything that matches afterwards came from the checkpoint.
    model, opt = _fsdp_optimizer(name, world, seed=1)
    # The templates DCP loads into, in the new layout (2 shards instead of 4). For a fresh
    # optimizer torch creates the state by a step with zero gradients and lr=0 (_init_optim_state).
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(os.path.join(root, name)))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    restored = {"params": full(list(model.parameters())), "state": full(opt.state_dict())}
    train(model, opt, name, N, start=K, rank=rank, world=world)
    return {
        "restored": restored,
        "params": full(list(model.parameters())),
        "state": full(opt.state_dict()),
        "layout": _layout_report(opt),
    }


def dcp_load_worker(rank: int, world: int, names: list[str], root: str) -> dict[str, Any]:
    return {name: _guard(_dcp_load_case, rank, world, name, root) for name in names}


@pytest.fixture(scope="module")
def dcp_results(tmp_path_factory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("dcp"))
    t = time.monotonic()
    saved = run_group(dcp_save_worker, SAVE_WORLD, DCP_CASES, root, timeout=90)[0]
    loaded = run_group(dcp_load_worker, LOAD_WORLD, DCP_CASES, root, timeout=90)[0]
    took = time.monotonic() - t
    print(
        f"DCP: {len(DCP_CASES)} optimizers saved on {SAVE_WORLD} ranks, resumed on {LOAD_WORLD}, in {took:.1f} s"
    )
    return {"saved": saved, "loaded": loaded}


@pytest.mark.parametrize("name", DCP_CASES)
def test_dcp_resume_on_fewer_ranks(dcp_results, name):
    """FSDP2 on 4 ranks saves model and optimizer with torch.distributed.checkpoint after K
    steps; 2 ranks load it (resharding every DTensor), continue N steps, and match a single
    uninterrupted run of K+N steps. Right after the load the state is the state after K
    steps -- including the scalar entries' dtypes and values (``step`` float32 and equal to
    K, NAdam's ``mu_product``, ASGD's ``eta``/``mu``), which a resharding load must not cast."""
    saved, loaded = dcp_results["saved"][name], dcp_results["loaded"][name]
    if saved.get("error"):
        pytest.fail(f"saving on {SAVE_WORLD} ranks raised:\n{saved['error']}", pytrace=False)
    if loaded.get("error"):
        pytest.fail(f"resuming on {LOAD_WORLD} ranks raised:\n{loaded['error']}", pytrace=False)
    at_save = reference(name, 0, K)
    assert_close_tree(loaded["restored"]["params"], at_save["params"], "restored params")
    assert_close_tree(loaded["restored"]["state"], at_save["state"], "restored state_dict")
    for pid, st in loaded["restored"]["state"]["state"].items():
        if "step" in st:
            assert float(st["step"]) == K, f"param {pid}: restored step {float(st['step'])}, expected {K}"
    assert_matches(loaded, reference(name, 0, K + N), name, f"DCP {name} {SAVE_WORLD}->{LOAD_WORLD} ranks")
    if REGISTRY[name].elementwise:
        assert not loaded["layout"], f"resumed state not sharded like its parameter: {loaded['layout']}"


# ---------------------------------------------------------------------------- 5. examples
EXAMPLE_LOSS = re.compile(r"^step\s+(\d+)\s.*\bloss\s+([0-9.]+)", re.MULTILINE)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): torchrun starts each worker in a session of
    its own, out of reach of a signal to torchrun's process group."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _torchrun(script: str, nproc: int, *args: str, timeout: float = 120) -> str:
    """Launch an example as a user would (``torchrun --standalone``), on loopback only;
    return its output. The output goes to a file, not a pipe, so that nothing can keep the
    test waiting for an end of file; on timeout torchrun and all its workers are killed."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
        "--nproc-per-node", str(nproc), str(ROOT / "examples" / script), *args,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for pid in [proc.pid, *_descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if timed_out:
        pytest.fail(f"{script} timed out after {timeout} s:\n{text}", pytrace=False)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{text}"
    return text


def _losses(text: str) -> list[tuple[int, float]]:
    found = [(int(s), float(v)) for s, v in EXAMPLE_LOSS.findall(text)]
    assert len(found) >= 2, f"fewer than two loss lines in the output:\n{text}"
    return found


def test_example_ddp_train():
    """examples/ddp_train.py under torchrun on 2 ranks: trains, loss goes down, exits 0."""
    text = _torchrun("ddp_train.py", 2, "--optimizer", "adamw", "--steps", "30", "--log-every", "10")
    losses = _losses(text)
    assert losses[-1][1] < losses[0][1], f"loss did not decrease: {losses}\n{text}"


def test_example_fsdp_train_saves_and_resumes(tmp_path):
    """examples/fsdp_train.py: 2 ranks train, checkpoint with DCP and stop half-way (as if
    preempted); a second launch on one rank (another world size: DCP reshards) resumes from
    the saved step and goes on lowering the loss."""
    ckpt = tmp_path / "ckpt"
    common = ["--optimizer", "adam", "--steps", "40", "--ckpt-dir", str(ckpt), "--log-every", "10"]
    first = _losses(_torchrun("fsdp_train.py", 2, *common, "--stop-after", "20"))
    assert [s for s, _ in first] == [10, 20], first
    assert first[-1][1] < first[0][1], f"loss did not decrease: {first}"
    text = _torchrun("fsdp_train.py", 1, *common, "--resume")
    assert "resumed from step 20" in text, text
    second = _losses(text)
    assert second[0][0] > 20, f"the resumed run started over: {second}"
    assert second[-1][1] < first[0][1], f"resumed run: {second}; first run: {first}"
