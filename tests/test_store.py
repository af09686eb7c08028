"""What users get of packed state (optimkit.execution.store): live views in ``opt.state``,
tensors of their own in ``state_dict()`` -- so saved files are torch's size and safetensors
takes them -- and no parameter keeping an old pack alive."""

from __future__ import annotations

import io

import pytest
import torch

import optimkit
from harness import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64,), (8, 8), (), (3, 5), (0, 4), (100,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _train(cls, params, steps=3, **kw):
    opt = cls(params, **kw)
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt


def _nbytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def test_state_entries_are_live_views_of_the_pack():
    params = _model()
    opt = _train(optimkit.Adam, params)
    exp_avg = opt.state[params[0]]["exp_avg"]
    assert exp_avg._base is not None  # packed: a view of the pack's buffer
    before = exp_avg.clone()
    params[0].grad = torch.ones(64)
    for p in params[1:]:
        p.grad = torch.zeros(p.shape)
    opt.step()
    assert not torch.equal(exp_avg, before)  # updated in place, as torch's state is


def test_state_dict_entries_own_their_storage_and_save_at_torchs_size():
    ours, ref = _model(), _model()
    opt = _train(optimkit.Adam, ours, foreach=False)
    ref_opt = _train(torch.optim.Adam, ref, foreach=False)
    sd = opt.state_dict()
    for st in sd["state"].values():
        for v in st.values():
            assert v.untyped_storage().nbytes() == v.numel() * v.element_size()
    assert_same(sd, ref_opt.state_dict())
    assert abs(_nbytes(sd) - _nbytes(ref_opt.state_dict())) < 512  # pickle framing only


def test_safetensors_takes_a_state_dict():
    safetensors = pytest.importorskip("safetensors.torch")
    opt = _train(optimkit.AdamW, _model())
    flat = {f"{pid}.{k}": v for pid, st in opt.state_dict()["state"].items() for k, v in st.items()}
    loaded = safetensors.load(safetensors.save(flat))
    assert_same(loaded, flat)


def test_a_parameter_leaving_the_packs_keeps_no_old_pack_alive():
    params = _model()
    opt = _train(optimkit.Adam, params)
    left = params[1]
    left.grad = None  # skips this step: the layout is planned anew without it
    for p in params:
        if p is not left:
            p.grad = torch.ones(p.shape)
    opt.step()
    for v in opt.state[left].values():
        assert v.untyped_storage().nbytes() == v.numel() * v.element_size()


def test_zero_dim_parameters_have_zero_dim_moments_in_packs_and_state_dicts():
    ours, ref = _model(), _model()
    opt = _train(optimkit.RMSprop, ours, momentum=0.9, centered=True, foreach=False)
    ref_opt = _train(torch.optim.RMSprop, ref, momentum=0.9, centered=True, foreach=False)
    scalar = ours[2]
    assert scalar.dim() == 0 and opt.state[scalar]["square_avg"].dim() == 0
    assert_same([p.detach() for p in ours], [p.detach() for p in ref])
    assert_same(opt.state_dict(), ref_opt.state_dict())
