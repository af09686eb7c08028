"""Bad input: the error-input cases of torch's own test database, for every optimizer.

Each case must raise the same exception type with a message matching torch's pattern --
and, where torch raises too, the very same message.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

from optimkit.registry import REGISTRY


def _cases():
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

    by_name = {spec.cls.__name__: spec for spec in REGISTRY.values()}
    cases = []
    for info in optim_db:
        spec = by_name.get(info.name)
        if spec is None or info.optim_error_inputs_func is None:
            continue
        for i, err in enumerate(info.optim_error_inputs_func("cpu", torch.float32)):
            on_step = err.error_on == OptimizerErrorEnum.STEP_ERROR
            cases.append(pytest.param(spec, err, on_step, id=f"{spec.name}-{i}-{err.optimizer_error_input.desc}"))
    return cases


def _trigger(cls, inp, on_step):
    params = copy.deepcopy(inp.params)
    kwargs = copy.deepcopy(inp.kwargs)
    opt = cls(params, **kwargs)
    if on_step:
        opt.step()


def _outcome(cls, inp, on_step, error_type):
    """The exception (or warning) raised, as (type, message)."""
    if issubclass(error_type, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _trigger(cls, inp, on_step)
        hits = [w for w in caught if issubclass(w.category, error_type)]
        return (hits[0].category, str(hits[0].message)) if hits else (None, "")
    try:
        _trigger(cls, inp, on_step)
    except Exception as e:  # noqa: BLE001 - we compare whatever was raised
        return type(e), str(e)
    return None, ""


@pytest.mark.parametrize("spec,err,on_step", _cases())
def test_error_inputs_match_torch(spec, err, on_step):
    inp = err.optimizer_error_input
    ours_type, ours_msg = _outcome(spec.cls, inp, on_step, err.error_type)
    assert ours_type is not None, f"no {err.error_type.__name__} raised"
    assert issubclass(ours_type, err.error_type), f"{ours_type.__name__}: {ours_msg}"
    assert re.search(err.error_regex, ours_msg), ours_msg
    torch_type, torch_msg = _outcome(spec.torch_cls, inp, on_step, err.error_type)
    assert (ours_type, ours_msg) == (torch_type, torch_msg)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_error_leaves_nothing_half_done(name):
    """A group that fails validation changes neither the optimizer nor the dict passed in."""
    spec = REGISTRY[name]
    shape = (2, 2)
    p1, p2 = torch.nn.Parameter(torch.ones(shape)), torch.nn.Parameter(torch.ones(shape))
    opt = spec.cls([p1], **spec.required)
    before = copy.deepcopy(opt.param_groups[0])
    bad = {"params": [p2, p1], "lr": 0.5}
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group(bad)
    assert bad == {"params": [p2, p1], "lr": 0.5}
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0].keys() == before.keys()


CAPTURABLE = [
    pytest.param(spec, id=name)
    for name, spec in REGISTRY.items()
    if spec.torch_cls is not None and "capturable" in __import__("inspect").signature(spec.cls).parameters
]


@pytest.mark.parametrize("spec", CAPTURABLE)
def test_capturable_on_cpu_raises_torchs_error(spec):
    """capturable=True needs an accelerator: the same AssertionError as torch, before any change."""
    outcomes = []
    for cls in (spec.cls, spec.torch_cls):
        p = torch.nn.Parameter(torch.ones(2, 2))
        p.grad = torch.ones(2, 2)
        try:
            cls([p], capturable=True).step()
        except AssertionError as e:
            outcomes.append(str(e))
        assert torch.equal(p.detach(), torch.ones(2, 2))
    assert len(outcomes) == 2 and outcomes[0] == outcomes[1], outcomes
