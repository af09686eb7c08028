"""LBFGS's strong-Wolfe line search on a non-convex objective, exact against torch.optim.

The exactness table's smooth objective never leads the zoom phase into its rarer branches
(a reversed bracket, the "old high becomes new low" swap); a wavy Rosenbrock function does.
"""

from __future__ import annotations

import pytest
import torch

import optimkit
from harness import assert_same


def wavy_rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() + 0.5 * torch.sin(5 * x).sum()


def solve(cls: type, x0: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:
    x = torch.nn.Parameter(x0.clone())
    opt = cls([x], **kwargs)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = wavy_rosenbrock(x)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return x.detach(), opt.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kwargs", [{}, {"history_size": 3, "lr": 2.0}], ids=["default", "short-history"])
def test_strong_wolfe_exact_on_nonconvex_objective(dtype, kwargs):
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x0 = (1.5 * torch.randn(6, generator=g, dtype=torch.float64)).to(dtype)
        ours = solve(optimkit.LBFGS, x0, line_search_fn="strong_wolfe", **kwargs)
        ref = solve(torch.optim.LBFGS, x0, line_search_fn="strong_wolfe", **kwargs)
        assert_same(ours, ref)
