"""State dicts: exact resume, torch <-> optimkit interchange, and loads that fail cleanly.

Every registered optimizer and config, float32 and float64. "Exact" means bit-identical
parameters and state (``harness.assert_same``), also where torch's own loader is not exact
(it casts NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` to float64 for float64 params).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from harness import assert_same, clone_kwargs, make_params, run
from optimkit.registry import REGISTRY

DTYPES = [torch.float32, torch.float64]
K = 3  # steps before the save


def _cases(require_torch: bool):
    return [
        pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
        for name, spec in REGISTRY.items()
        if not require_torch or spec.torch_cls is not None
        for i in range(len(spec.configs))
        for dtype in DTYPES
    ]


def _save_load(sd):
    """Through bytes, as a checkpoint file would go (weights_only: plain data only)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _fresh(spec, dtype, cls, kwargs):
    params = make_params(spec, dtype)
    return params, cls(params, **clone_kwargs(kwargs))


def _sparse(spec):
    return spec.sparse == "only"


@pytest.mark.parametrize("spec,config,dtype", _cases(require_torch=False))
def test_exact_resume(spec, config, dtype):
    """Save after K steps, load into a fresh optimizer, continue: identical to never stopping."""
    kwargs = spec.configs[config]
    p_ref, ref = _fresh(spec, dtype, spec.cls, kwargs)
    run(None, {}, p_ref, spec, steps=2 * K, sparse=_sparse(spec), opt=ref)

    p_a, a = _fresh(spec, dtype, spec.cls, kwargs)
    run(None, {}, p_a, spec, steps=K, sparse=_sparse(spec), opt=a)
    sd = _save_load(a.state_dict())
    p_b = [p.detach().clone().requires_grad_() for p in p_a]
    b = spec.cls(p_b, **clone_kwargs(kwargs))
    b.load_state_dict(sd)
    run(None, {}, p_b, spec, steps=K, sparse=_sparse(spec), opt=b, start=K)

    assert_same([p.detach() for p in p_b], [p.detach() for p in p_ref], "params")
    assert_same(b.state_dict(), ref.state_dict(), "state_dict")


@pytest.mark.parametrize("spec,config,dtype", _cases(require_torch=True))
def test_torch_state_dict_loads_into_optimkit(spec, config, dtype):
    """torch.optim runs K steps and saves; optimkit loads and continues exactly like torch
    would have without stopping."""
    kwargs = spec.configs[config]
    p_ref, ref = _fresh(spec, dtype, spec.torch_cls, kwargs)
    run(None, {}, p_ref, spec, steps=2 * K, sparse=_sparse(spec), opt=ref)

    p_t, t = _fresh(spec, dtype, spec.torch_cls, kwargs)
    run(None, {}, p_t, spec, steps=K, sparse=_sparse(spec), opt=t)
    p_o = [p.detach().clone().requires_grad_() for p in p_t]
    o = spec.cls(p_o, **clone_kwargs(kwargs))
    o.load_state_dict(_save_load(t.state_dict()))
    run(None, {}, p_o, spec, steps=K, sparse=_sparse(spec), opt=o, start=K)

    assert_same([p.detach() for p in p_o], [p.detach() for p in p_ref], "params")
    assert_same(o.state_dict(), ref.state_dict(), "state_dict")


@pytest.mark.parametrize("spec,config,dtype", _cases(require_torch=True))
def test_optimkit_state_dict_loads_into_torch(spec, config, dtype):
    """optimkit saves; torch.optim loads it and continues exactly as from its own save."""
    kwargs = spec.configs[config]

    def continue_in_torch(saver_cls):
        params, saver = _fresh(spec, dtype, saver_cls, kwargs)
        run(None, {}, params, spec, steps=K, sparse=_sparse(spec), opt=saver)
        p_t = [p.detach().clone().requires_grad_() for p in params]
        t = spec.torch_cls(p_t, **clone_kwargs(kwargs))
        t.load_state_dict(_save_load(saver.state_dict()))
        run(None, {}, p_t, spec, steps=K, sparse=_sparse(spec), opt=t, start=K)
        return p_t, t

    p_ours, t_ours = continue_in_torch(spec.cls)
    p_torch, t_torch = continue_in_torch(spec.torch_cls)
    assert_same([p.detach() for p in p_ours], [p.detach() for p in p_torch], "params")
    assert_same(t_ours.state_dict(), t_torch.state_dict(), "state_dict")


def _bad_dicts(sd, spec):
    """Ways a state dict can fail to fit, each with the message it must produce."""
    out = []
    two = copy.deepcopy(sd)
    two["param_groups"].append(copy.deepcopy(two["param_groups"][0]))
    out.append(("different number of parameter groups", two))
    short = copy.deepcopy(sd)
    short["param_groups"][0]["params"] = short["param_groups"][0]["params"][:-1]
    out.append(("doesn't match the size of optimizer's group", short))
    out.append(("missing the key", {"state": sd["state"]}))
    alien = copy.deepcopy(sd)
    alien["state"][99] = {}
    out.append(("parameter id 99", alien))
    for pid, st in sd["state"].items():
        for key in spec.cls.rule.param_keys if spec.cls.rule else ():
            if isinstance(st.get(key), torch.Tensor) and st[key].dim() > 0:
                wrong = copy.deepcopy(sd)
                wrong["state"][pid][key] = torch.zeros(st[key].numel() + 1)
                out.append((f"'{key}' for parameter id {pid} has shape", wrong))
                return out
    return out


@pytest.mark.parametrize("name", list(REGISTRY))
def test_failed_load_changes_nothing(name):
    spec = REGISTRY[name]
    params, opt = _fresh(spec, torch.float32, spec.cls, spec.configs[0])
    run(None, {}, params, spec, steps=2, sparse=_sparse(spec), opt=opt)
    good = copy.deepcopy(opt.state_dict())
    for message, bad in _bad_dicts(good, spec):
        groups_before = opt.param_groups
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(bad)
        assert opt.param_groups is groups_before
        assert_same(opt.state_dict(), good, f"after failed load ({message})")


TEN_CASES = [
    pytest.param(spec, i, dtype, id=f"{name}-{i}-{str(dtype)[6:]}")
    for name, spec in REGISTRY.items()
    for i in sorted({0, len(spec.configs) - 1})
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("spec,config,dtype", TEN_CASES)
def test_resume_at_step_ten_then_ten_more(spec, config, dtype):
    """The issue's check: save at step 10, load into a fresh optimizer, 10 more steps --
    bit-identical to 20 uninterrupted (past SOAP's preconditioner refresh, Prodigy's and
    D-Adaptation's growth of d, Schedule-Free's averaging weights)."""
    kwargs = spec.configs[config]
    p_ref, ref = _fresh(spec, dtype, spec.cls, kwargs)
    run(None, {}, p_ref, spec, steps=20, sparse=_sparse(spec), opt=ref)
    p_a, a = _fresh(spec, dtype, spec.cls, kwargs)
    run(None, {}, p_a, spec, steps=10, sparse=_sparse(spec), opt=a)
    sd = _save_load(a.state_dict())
    p_b = [p.detach().clone().requires_grad_() for p in p_a]
    b = spec.cls(p_b, **clone_kwargs(kwargs))
    b.load_state_dict(sd)
    run(None, {}, p_b, spec, steps=10, sparse=_sparse(spec), opt=b, start=10)
    assert_same([p.detach() for p in p_b], [p.detach() for p in p_ref], "params")
    assert_same(b.state_dict(), ref.state_dict(), "state_dict")
