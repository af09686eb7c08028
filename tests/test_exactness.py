"""The exactness table: every registered optimizer x config x dtype against its oracle.

torch.optim's for-loop implementation (``foreach=False``) is the oracle of torch's optimizers;
the others declare theirs (the authors' package, ``Optimizer.oracle``). After every step
the parameters must be bit-identical, and at the end the whole state dict (every state
tensor, its dtype and device, every hyperparameter) must be too. Gradients include steps
where some parameters have ``grad=None``.
"""

from __future__ import annotations

import pytest
import torch

from harness import (
    assert_same,
    assert_same_state_dict,
    clone_kwargs,
    grad_like,
    make_params,
    oracle_kwargs,
    run,
    skip_pattern,
)
from optimkit.registry import REGISTRY

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def check_parity(spec, kwargs, dtype, sparse=False, steps=6):
    sparse = sparse or spec.sparse == "only"  # SparseAdam: dense params, always sparse grads
    ours_p = make_params(spec, dtype)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    # Both get the same arguments (foreach=False pins torch to its for-loop oracle; for
    # optimkit the flag changes nothing), so the param groups must match too.
    kwargs = oracle_kwargs(spec, kwargs)
    ours = spec.cls(ours_p, **clone_kwargs(kwargs))
    ref = spec.make_oracle(ref_p, **clone_kwargs(kwargs))
    # Step one at a time so a divergence is reported at the first step it appears.
    for step in range(steps):
        run(None, {}, ours_p, spec, steps=1, sparse=sparse, opt=ours, start=step)
        run(None, {}, ref_p, spec, steps=1, sparse=sparse, opt=ref, start=step)
        for i, (a, b) in enumerate(zip(ours_p, ref_p)):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert_same_state_dict(ours.state_dict(), ref.state_dict(), spec, "state_dict")


CASES = [
    pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name, spec in REGISTRY.items()
    if spec.oracle_cls is not None
    for i in range(len(spec.configs))
    for dtype in DTYPES
    if spec.exact(dtype)  # elsewhere close to the oracle: tests/test_oracles.py
]


@pytest.mark.parametrize("spec,config,dtype", CASES)
def test_exact_vs_torch(spec, config, dtype):
    check_parity(spec, spec.configs[config], dtype)


COMPLEX_CASES = [
    pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name, spec in REGISTRY.items()
    if spec.oracle_cls is not None and spec.complex
    for i in range(len(spec.configs))
    for dtype in (torch.complex64, torch.complex128)
    if not spec.configs[i].get("fused") and spec.exact(dtype)
]


@pytest.mark.parametrize("spec,config,dtype", COMPLEX_CASES)
def test_exact_vs_torch_complex(spec, config, dtype):
    check_parity(spec, spec.configs[config], dtype)


SPARSE_CASES = [
    pytest.param(spec, i, id=f"{name}-{i}")
    for name, spec in REGISTRY.items()
    if spec.sparse in ("yes", "only")
    for i in range(len(spec.configs))
    if not spec.configs[i].get("weight_decay") and not spec.configs[i].get("fused")
]


@pytest.mark.parametrize("spec,config", SPARSE_CASES)
def test_exact_vs_torch_sparse_grads(spec, config):
    check_parity(spec, spec.configs[config], torch.float32, sparse=True)


FUSED_CASES = [
    pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name, spec in REGISTRY.items()
    if spec.fused
    for i in range(len(spec.configs))
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("spec,config,dtype", FUSED_CASES)
def test_fused_equals_torch_fused(spec, config, dtype):
    kwargs = {**spec.configs[config], "fused": True}
    check_parity(spec, kwargs, dtype)


def _db_cases():
    from torch.testing._internal.common_optimizers import optim_db

    by_name = {spec.cls.__name__: spec for spec in REGISTRY.values()}
    cases = []
    for info in optim_db:
        spec = by_name.get(info.name)
        if spec is None:
            continue
        for inp in info.optim_inputs_func("cpu", torch.float32):
            cases.append(pytest.param(spec, inp.kwargs, id=f"{spec.name}-{inp.desc}"))
    return cases


@pytest.mark.parametrize("spec,kwargs", _db_cases())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_exact_vs_torch_on_torch_test_database(spec, kwargs, dtype):
    """The configurations of torch's own optimizer test database, exact as well."""
    check_parity(spec, kwargs, dtype)


def test_skip_pattern_really_skips():
    """Sanity of the harness: some parameters get no gradient at some steps."""
    assert skip_pattern(2, 0, 5) and skip_pattern(0, 4, 5) and not skip_pattern(0, 0, 5)
    assert grad_like(torch.zeros(3, 2), 0, 0, sparse=True).is_sparse
