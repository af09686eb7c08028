"""Authors' packages driven the way their documentation says, where that differs from
torch's calling convention (the test tables call ``step(closure)`` and nothing else).

Named by ``Optimizer.oracle`` as ``"oracle_adapters:<Class>"``; importable while the tests run.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_optimizer import SAM as _SAM


class SAM(_SAM):
    """``pytorch_optimizer.SAM`` 4.1.0 as its docstring uses it: the gradients at ``w`` first
    (``closure()``), then ``step(closure)`` (which perturbs, calls the closure at ``w + e_w``
    and lets the base optimizer step). Nothing else is changed; returns the first loss."""

    def step(self, closure: Any = None) -> Any:
        with torch.enable_grad():
            loss = closure()
        super().step(closure)
        return loss
