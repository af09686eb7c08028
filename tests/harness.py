"""Shared test machinery: deterministic problems and exact comparisons against torch.optim."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from optimkit.registry import OptimizerSpec

STEPS = 6


def clone_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Tensor hyperparameters are copied so the two optimizers share nothing."""
    return copy.deepcopy(kwargs)


def make_params(spec: OptimizerSpec, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A few parameters of odd sizes; Muon gets matrices only (wide, tall and square)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (6, 2), (4, 4), (2, 7)] if spec.matrix_only else [(3, 5), (7,), (4, 4), (1,), (2, 3, 2)]
    params = []
    for shape in shapes:
        real_dtype = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(real_dtype)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(shape, generator=g, dtype=torch.float64).to(real_dtype))
        params.append(torch.nn.Parameter(t))
    return params


def grad_like(p: torch.Tensor, step: int, index: int, sparse: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + index)
    real = torch.randn(p.shape, generator=g, dtype=torch.float64)
    if p.is_complex():
        real = torch.complex(real, torch.randn(p.shape, generator=g, dtype=torch.float64))
    grad = real.to(p.dtype)
    if sparse:
        # Rows 0 and the last row are touched; row 0 twice (uncoalesced on purpose).
        rows = torch.tensor([0, p.shape[0] - 1, 0])
        values = grad[rows] * 0.5
        return torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape)
    return grad


def skip_pattern(step: int, index: int, n: int) -> bool:
    """Which parameters get no gradient at a step: the last one never does (no state, no
    step count); at step 2 the first one skips, at step 4 the second one does."""
    return index == n - 1 or (step == 2 and index == 0) or (step == 4 and index == 1)


def loss_of(params: list[torch.Tensor]) -> torch.Tensor:
    """A smooth deterministic objective for closure-driven optimizers (LBFGS)."""
    total = 0
    for i, p in enumerate(params):
        target = torch.linspace(-1, 1, p.numel(), dtype=p.real.dtype).reshape(p.shape)
        diff = p - target
        sq = (diff.abs() ** 2) if p.is_complex() else diff**2
        total = total + (1 + i) * sq.sum() + 0.1 * (p.real if p.is_complex() else p).sin().sum()
    return total


def run(
    opt_cls: type,
    kwargs: dict[str, Any],
    params: list[torch.Tensor],
    spec: OptimizerSpec,
    steps: int = STEPS,
    sparse: bool = False,
    opt: Any = None,
    start: int = 0,
) -> Any:
    """Run ``steps`` steps with deterministic gradients; returns the optimizer."""
    if opt is None:
        opt = opt_cls(params, **clone_kwargs(kwargs))
    n = len(params)
    for step in range(start, start + steps):
        if spec.closure:
            skipped = [skip_pattern(step, i, n) for i in range(n)]

            def closure(skipped: list[bool] = skipped) -> torch.Tensor:
                opt.zero_grad()
                loss = loss_of(params)
                loss.backward()
                for p, skip in zip(params, skipped):
                    if skip:
                        p.grad = None
                return loss

            opt.step(closure)
        else:
            for i, p in enumerate(params):
                p.grad = None if skip_pattern(step, i, n) else grad_like(p, step, i, sparse)
            opt.step()
    return opt


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested structures; tensors must match in dtype, shape and bits."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert a.device == b.device, f"{path}: device {a.device} vs {b.device}"
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        same = torch.equal(a, b) or (
            torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
        if not same:
            diff = (a.double() - b.double()).abs().max().item() if not a.is_complex() else float("nan")
            raise AssertionError(f"{path}: tensors differ (max abs diff {diff:.3g})")
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: dict vs {type(b).__name__}"
        assert set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def oracle_kwargs(spec: OptimizerSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The oracle's arguments: torch pinned to its for-loop (``foreach=False``) unless the
    config asks for fused; an authors' package (no such flag) takes the config as it is."""
    import inspect

    kw = dict(kwargs)
    if "foreach" in inspect.signature(spec.oracle_cls).parameters and not kw.get("fused"):
        kw["foreach"] = False
    return kw


def assert_same_state_dict(ours: dict[str, Any], ref: dict[str, Any], spec: OptimizerSpec, path: str = "") -> None:
    """Whole state dicts equal (torch as the oracle); against an authors' package, whose groups
    carry other bookkeeping, the state and every group key the oracle has."""
    if spec.oracle is None:
        assert_same(ours, ref, path)
        return
    assert_same(ours["state"], ref["state"], f"{path}.state")
    for i, (g, rg) in enumerate(zip(ours["param_groups"], ref["param_groups"], strict=True)):
        assert_same({k: g[k] for k in rg}, rg, f"{path}.param_groups[{i}]")
