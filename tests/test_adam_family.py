"""ADOPT, Adan and AdEMAMix: what the registry's tables cannot see.

* AdEMAMix is bit for bit with bitsandbytes in float32, but its state is named as the authors'
  code (bitsandbytes stacks both momenta in one float32 ``state1``): the tables skip the bits
  (``Oracle.exact=False``), so they are checked here, state mapped key by key; and float64 runs
  in full precision where bitsandbytes computes in float32.
* Adan's global-norm clip spans every group; pytorch-optimizer cannot step a 0-dim parameter
  with it (``tests/test_shapes.py`` compares shape (1,) there), so the 0-dim step is checked
  against the oracle's (1,) one here; and optimkit leaves ``p.grad`` alone.
* ADOPT's ``clip_lambda`` lives on the optimizer, as in the authors' class.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import optimkit
from harness import assert_same, grad_like, make_params, oracle_kwargs, run, skip_pattern
from optimkit.registry import REGISTRY

ADEMAMIX = REGISTRY["ademamix"]
ADAN = REGISTRY["adan"]
ADOPT = REGISTRY["adopt"]


def _pair(spec, kwargs, dtype, params=None):
    ours_p = params if params is not None else make_params(spec, dtype)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    kwargs = oracle_kwargs(spec, kwargs)
    return spec.cls(ours_p, **copy.deepcopy(kwargs)), ours_p, spec.make_oracle(ref_p, **copy.deepcopy(kwargs)), ref_p


# ---------------------------------------------------------------------------- AdEMAMix
@pytest.mark.parametrize("config", range(len(ADEMAMIX.configs)))
def test_ademamix_float32_bit_for_bit_with_bitsandbytes(config):
    """Parameters after every step, and the state: exp_avg_fast/exp_avg_slow are
    bitsandbytes' state1[0]/state1[1], exp_avg_sq its state2, step its int step."""
    ours, ours_p, ref, ref_p = _pair(ADEMAMIX, ADEMAMIX.configs[config], torch.float32)
    for step in range(8):
        run(None, {}, ours_p, ADEMAMIX, steps=1, opt=ours, start=step)
        run(None, {}, ref_p, ADEMAMIX, steps=1, opt=ref, start=step)
        for i, (a, b) in enumerate(zip(ours_p, ref_p)):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    for p, q in zip(ours_p, ref_p):
        assert (p in ours.state) == (q in ref.state)
        if p not in ours.state:
            continue
        st, rst = ours.state[p], ref.state[q]
        assert_same(st["exp_avg_fast"], rst["state1"][0])
        assert_same(st["exp_avg_slow"], rst["state1"][1])
        assert_same(st["exp_avg_sq"], rst["state2"])
        assert st["step"].item() == rst["step"]


@pytest.mark.parametrize("config", [0, 2, 4])
def test_ademamix_float64_in_full_precision(config):
    """bitsandbytes rounds float64 parameters to float32 at every step; optimkit computes in
    float64: within float32 rounding of bitsandbytes, with float64 state, and equal to the same
    formula run in float64 by hand."""
    kwargs = ADEMAMIX.configs[config]
    ours, ours_p, ref, ref_p = _pair(ADEMAMIX, kwargs, torch.float64)
    run(None, {}, ours_p, ADEMAMIX, steps=6, opt=ours)
    run(None, {}, ref_p, ADEMAMIX, steps=6, opt=ref)
    for p, q in zip(ours_p, ref_p):
        assert (p - q).abs().max() <= 1e-5 * q.abs().max()
        if p in ours.state:
            assert ours.state[p]["exp_avg_sq"].dtype == torch.float64
            assert ref.state[q]["state2"].dtype == torch.float32
    assert any(not torch.equal(p, q) for p, q in zip(ours_p, ref_p))  # bitsandbytes' float32 shows


def test_ademamix_schedules_follow_each_parameters_own_step():
    """The warm-ups of alpha and beta3 use each parameter's step (bitsandbytes' kernel path),
    not a schedule compounded over the parameters (its _ReferenceAdEMAMix): a parameter that
    joins late starts its warm-up from its first step."""
    kwargs = {"t_alpha": 5, "t_beta3": 5, "alpha": 4.0}
    late = torch.nn.Parameter(torch.randn(4, dtype=torch.float32))
    alone = torch.nn.Parameter(late.detach().clone())
    early = torch.nn.Parameter(torch.randn(3, dtype=torch.float32))
    opt = optimkit.AdEMAMix([early, late], **kwargs)
    single = optimkit.AdEMAMix([alone], **kwargs)
    for step in range(6):
        early.grad = grad_like(early, step, 0)
        late.grad = grad_like(late, step, 1) if step >= 3 else None
        opt.step()
        if step >= 3:
            alone.grad = grad_like(alone, step, 1)
            single.step()
    assert_same(late.detach(), alone.detach())


def test_ademamix_refuses_paged_state_and_takes_no_optim_bits():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="is_paged"):
        optimkit.AdEMAMix(p, is_paged=True)
    with pytest.raises(TypeError):
        optimkit.AdEMAMix(p, optim_bits=8)
    optimkit.AdEMAMix(p, min_8bit_size=16)  # accepted: the state is never 8-bit


def test_ademamix_zero_warmup_is_off_as_in_bitsandbytes():
    runs = []
    for t in (None, 0):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 5))
        opt = optimkit.AdEMAMix([p], t_alpha=t, t_beta3=t)
        for step in range(3):
            p.grad = grad_like(p, step, 0)
            opt.step()
        runs.append(p.detach())
    assert_same(*runs)


# ---------------------------------------------------------------------------- Adan
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adan_clip_spans_every_group_like_the_oracle(dtype):
    """Two groups (one with no gradient at some steps): one global norm, per-group steps."""
    params = make_params(ADAN, dtype)
    ref_params = [p.detach().clone().requires_grad_() for p in params]

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.1}]

    kwargs = {"max_grad_norm": 0.5, "foreach": False}
    ours = optimkit.Adan(groups(params), **kwargs)
    ref = ADAN.make_oracle(groups(ref_params), **kwargs)
    for step in range(6):
        for ps, opt in ((params, ours), (ref_params, ref)):
            for i, p in enumerate(ps):
                skip = skip_pattern(step, i, len(ps)) or (i < 2 and step in (1, 3))
                p.grad = None if skip else grad_like(p, step, i) * 3
            opt.step()
        for i, (a, b) in enumerate(zip(params, ref_params)):
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
    assert [g["step"] for g in ours.param_groups] == [g["step"] for g in ref.param_groups] == [6, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adan_0dim_with_clipping_like_the_oracle_on_shape_1(dtype):
    kwargs = {"max_grad_norm": 0.3, "weight_decay": 0.1, "foreach": False}
    zero = torch.nn.Parameter(torch.tensor(0.7, dtype=dtype))
    other = torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=dtype))
    one = torch.nn.Parameter(zero.detach().reshape(1).clone())
    other_ref = torch.nn.Parameter(other.detach().clone())
    ours = optimkit.Adan([zero, other], **kwargs)
    ref = ADAN.make_oracle([one, other_ref], **kwargs)
    for step in range(5):
        g0, g1 = grad_like(zero, step, 0), grad_like(other, step, 1)
        zero.grad, other.grad = g0, g1
        one.grad, other_ref.grad = g0.reshape(1).clone(), g1.clone()
        ours.step()
        ref.step()
        assert_same(zero.detach().reshape(1), one.detach())
        assert_same(other.detach(), other_ref.detach())


def test_adan_leaves_the_gradient_alone():
    p = torch.nn.Parameter(torch.linspace(-1, 1, 6))
    opt = optimkit.Adan([p], max_grad_norm=0.1, maximize=True)
    g = torch.randn(6)
    p.grad = g.clone()
    opt.step()
    assert_same(p.grad, g)


def test_adan_refuses_the_oracles_extensions_and_keeps_other_keys():
    p = [torch.nn.Parameter(torch.ones(2))]
    for key in ("use_gc", "adanorm"):
        with pytest.raises(ValueError, match=key):
            optimkit.Adan(p, **{key: True})
    opt = optimkit.Adan(p, use_gc=False, adanorm_r=0.95)
    assert opt.param_groups[0]["adanorm_r"] == 0.95 and opt.param_groups[0]["use_gc"] is False


def test_adan_resumes_its_group_step_exactly():
    params = make_params(ADAN, torch.float64)
    opt = run(optimkit.Adan, {"max_grad_norm": 1.0}, params, ADAN, steps=3)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = optimkit.Adan(clone, max_grad_norm=1.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["step"] == 3
    run(None, {}, params, ADAN, steps=3, opt=opt, start=3)
    run(None, {}, clone, ADAN, steps=3, opt=resumed, start=3)
    assert_same([p.detach() for p in clone], [p.detach() for p in params])


# ---------------------------------------------------------------------------- ADOPT
def test_adopt_clip_lambda_is_the_optimizers_and_travels_with_it():
    params = make_params(ADOPT, torch.float32)
    ours, ours_p, ref, ref_p = _pair(ADOPT, {"clip_lambda": lambda step: 0.5 + step / 10}, torch.float32, params)
    for step in range(5):
        run(None, {}, ours_p, ADOPT, steps=1, opt=ours, start=step)
        run(None, {}, ref_p, ADOPT, steps=1, opt=ref, start=step)
        assert_same([p.detach() for p in ours_p], [p.detach() for p in ref_p])
    assert "clip_lambda" not in ours.state_dict()["param_groups"][0]  # plain data
    default = optimkit.ADOPT(make_params(ADOPT, torch.float32))
    assert pickle.loads(pickle.dumps(default)).clip_lambda is optimkit.optimizers.adopt.quarter_power
    assert copy.deepcopy(ours).clip_lambda is ours.clip_lambda


def test_adopt_refuses_fused_as_the_oracle():
    with pytest.raises(RuntimeError, match="`fused` is not currently supported"):
        optimkit.ADOPT([torch.nn.Parameter(torch.ones(2))], fused=True)


def test_ademamix_refuses_complex_parameters_before_changing_anything():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    before = p.detach().clone()
    opt = optimkit.AdEMAMix([p])
    p.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="AdEMAMix does not support complex parameters"):
        opt.step()
    assert_same(p.detach(), before)
    assert p not in opt.state
