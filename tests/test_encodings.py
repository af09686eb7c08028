"""State encodings (bf16, 8-bit, 4-bit, FP8): tables over every registry optimizer that keeps
moments, and the codec against bitsandbytes'/torchao's maps.

The oracle of the executor is the optimizer's own full-precision step with each moment
rounded through the codec after every step (``decode(encode(m))``): an encoded step must give
the same bits. Resume after a state dict round trip is bit-identical for every encoding.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch

from harness import assert_same, clone_kwargs
from optimkit import AdamW, AdamW4bit, AdamW8bit, Lion8bit
from optimkit.execution import encoded as encoded_module
from optimkit.execution import kernels
from optimkit.execution.encoded import conform, stochastic_round, stored_bytes
from optimkit.execution.encodings import ENCODINGS, MIN_SIZE, dynamic_map, encoding
from optimkit.registry import REGISTRY

ENCODED = ["bf16", "8bit", "4bit", "fp8"]
# Every registry optimizer whose rule declares moments and runs elementwise per tensor.
SPECS = {
    name: spec
    for name, spec in REGISTRY.items()
    if spec.cls.rule is not None
    and spec.cls.rule.encodable
    and spec.cls.rule.caps.elementwise
    and spec.cls.rule.caps.scope == "tensor"
}
# Options of a config that cannot run encoded (refused with a reason, tested below).
REFUSED = ("fused", "foreach", "differentiable", "compile", "cautious", "capturable")


def test_the_table_is_what_it_says():
    assert set(SPECS) >= {"adam", "adamw", "sgd", "lion", "rmsprop", "adagrad", "adopt", "ademamix"}


def _params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # Encoded: 64x128 (whole blocks) and 3x2000 (a partial last block); plain: the small ones.
    shapes = [(64, 128), (3, 2000), (7,), (5, 5)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.1 for p in params]


def _step(opt, params, step):
    for p, g in zip(params, _grads(params, step)):
        p.grad = g
    opt.step()


def _roundtrip(opt, enc):
    """The oracle's moments after a step: every encodable moment of a big parameter through
    the codec and back (the rest untouched)."""
    rule = opt.rule
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st or p.numel() < MIN_SIZE or not p.is_contiguous():
                continue
            for key, sign in rule.encodable.items():
                if key in st:
                    stored = enc.empty(p.numel(), sign == "signed", p.device)
                    enc.encode_(st[key].reshape(-1).float(), sign == "signed", stored)
                    st[key] = enc.decode(stored, sign == "signed", 0, p.numel()).to(p.dtype).view(p.shape)


def _decoded(opt, p):
    """``p``'s state with encoded moments decoded (for comparing with the oracle)."""
    st = dict(opt.state[p])
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    out = copy.deepcopy(st)
    conform(opt.rule, p, out, {k: v for k, v in group.items() if k != "state_encoding"})
    return out


def _cases():
    """Every config with the blockwise maps (8-bit, 4-bit); the first and last with bf16 and
    FP8, whose code paths (a cast) do not depend on the rule's options."""
    for name, spec in SPECS.items():
        for i in range(len(spec.configs)):
            for enc in ENCODED:
                if enc in ("8bit", "4bit") or i in (0, len(spec.configs) - 1):
                    yield pytest.param(spec, i, enc, id=f"{name}-{i}-{enc}")


@pytest.fixture
def rule_path(monkeypatch):
    """Adam/AdamW's encoded step through the rule itself, not the fused compiled kernel (whose
    update follows torchao's formulation: tested against this path in test_fused_adam_kernel...)."""
    monkeypatch.setattr(encoded_module, "_adam_kernel", lambda *args: set())


@pytest.mark.parametrize("spec,config,enc", list(_cases()))
def test_encoded_step_is_the_rule_on_rounded_moments(spec, config, enc, rule_path):
    """Bit for bit: the encoded optimizer and the full-precision one whose moments go through
    the codec after each step. Configs an encoding cannot take are refused by name."""
    kwargs = spec.configs[config]
    if any(kwargs.get(k) for k in REFUSED):
        with pytest.raises(ValueError, match="fused|foreach|differentiable|compile|elementwise|capturable"):
            spec.cls(_params(), **clone_kwargs(kwargs), state_encoding=enc)
        return
    p_ref, p_enc = _params(), _params()
    ref = spec.cls(p_ref, **clone_kwargs(kwargs))
    opt = spec.cls(p_enc, **clone_kwargs(kwargs), state_encoding=enc)
    codec = encoding(enc)
    exact_start = not kwargs.get("initial_accumulator_value")  # Adagrad: the start is encoded too
    for step in range(3):
        _step(ref, p_ref, step)
        _roundtrip(ref, codec)
        _step(opt, p_enc, step)
    if exact_start:
        for a, b in zip(p_ref, p_enc):
            assert torch.equal(a, b)
        for a, b in zip(p_ref, p_enc):
            if a in ref.state:
                assert_same(_decoded(opt, b), ref.state[a])
    else:
        for a, b in zip(p_ref, p_enc):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    # The big parameters' moments really are stored encoded; the small ones are not.
    big, small = p_enc[0], p_enc[2]
    for key in spec.cls.rule.encodable:
        if key in opt.state[big]:
            stored = opt.state[big][key]
            assert stored.dtype != torch.float32
            assert stored.dtype == (torch.float8_e4m3fn if enc == "fp8" else torch.bfloat16 if enc == "bf16" else torch.uint8)
        if key in opt.state.get(small, {}):
            assert opt.state[small][key].dtype == torch.float32


@pytest.mark.skipif(kernels.load() is None, reason="no C compiler: the torch-ops path runs (tested above)")
@pytest.mark.parametrize("enc", ["8bit", "4bit"])
@pytest.mark.parametrize("config", [{}, {"amsgrad": True, "maximize": True, "weight_decay": 0.1}])
def test_fused_adam_kernel_follows_the_rule(enc, config, monkeypatch):
    """AdamW8bit's default path (the compiled kernel: one pass per block) and the rule on
    decoded moments: the same update up to the last bits of float32 (lerp against
    mul+addcmul for the second moment), so the same codes nearly everywhere."""
    p_kernel, p_rule = _params(), _params()
    fast = AdamW(p_kernel, **config, state_encoding=enc)
    slow = AdamW(p_rule, **config, state_encoding=enc)
    for step in range(5):
        _step(fast, p_kernel, step)
        with monkeypatch.context() as m:
            m.setattr(encoded_module, "_adam_kernel", lambda *args: set())
            _step(slow, p_rule, step)
    for a, b in zip(p_kernel, p_rule):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    codes_a, codes_b = fast.state[p_kernel[0]]["exp_avg"], slow.state[p_rule[0]]["exp_avg"]
    assert (codes_a == codes_b).float().mean() > 0.999


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("enc", ENCODED)
def test_resume_is_bit_identical(name, enc):
    spec = SPECS[name]
    kwargs = spec.configs[0]
    p_ref = _params()
    ref = spec.cls(p_ref, **clone_kwargs(kwargs), state_encoding=enc)
    for step in range(6):
        _step(ref, p_ref, step)
    p_a = _params()
    a = spec.cls(p_a, **clone_kwargs(kwargs), state_encoding=enc)
    for step in range(3):
        _step(a, p_a, step)
    sd = _save_load(a.state_dict())
    p_b = [p.detach().clone().requires_grad_() for p in p_a]
    b = spec.cls(p_b, **clone_kwargs(kwargs), state_encoding=enc)
    b.load_state_dict(sd)
    for step in range(3, 6):
        _step(b, p_b, step)
    for x, y in zip(p_ref, p_b):
        assert torch.equal(x, y)
    assert_same(b.state_dict(), ref.state_dict())


def test_state_dict_holds_codes_and_scales_as_plain_tensors():
    params = _params()
    opt = AdamW8bit(params)
    _step(opt, params, 0)
    st = opt.state_dict()["state"][0]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg"].shape == params[0].shape
    assert st["exp_avg.scale"].dtype == torch.float32 and st["exp_avg.scale"].shape == (64 * 128 // 256,)
    assert opt.state_dict()["param_groups"][0]["state_encoding"] == "8bit"
    # 4-bit: two codes a byte, bfloat16 scales; a partial last block.
    opt4 = AdamW4bit(params)
    _step(opt4, params, 0)
    st4 = opt4.state_dict()["state"][1]
    assert st4["exp_avg"].shape == (3000,) and st4["exp_avg.scale"].shape == (math.ceil(6000 / 128),)
    assert st4["exp_avg.scale"].dtype == torch.bfloat16


@pytest.mark.parametrize("enc", ["8bit", "4bit", "fp8", "bf16"])
def test_float32_state_dicts_convert_both_ways(enc):
    """A float32 state dict loads into an encoded optimizer (encoding it, with a warning), and
    an encoded one into a float32 optimizer (decoded exactly)."""
    p32 = _params()
    full = AdamW(p32)
    for step in range(2):
        _step(full, p32, step)
    p8 = [p.detach().clone().requires_grad_() for p in p32]
    low = AdamW(p8, state_encoding=enc)
    with pytest.warns(UserWarning, match=f"float32 -> {enc}"):
        low.load_state_dict(full.state_dict())
    assert low.param_groups[0]["state_encoding"] == enc  # the optimizer's own, not the dict's
    codec = encoding(enc)
    m = full.state[p32[0]]["exp_avg"].reshape(-1)
    stored = codec.empty(m.numel(), True, m.device)
    codec.encode_(m, True, stored)
    decoded_expected = codec.decode(stored, True, 0, m.numel())
    back = AdamW([p.detach().clone().requires_grad_() for p in p32])
    with pytest.warns(UserWarning, match=f"{enc} -> float32"):
        back.load_state_dict(low.state_dict())
    got = back.state[back.param_groups[0]["params"][0]]["exp_avg"]
    assert got.dtype == torch.float32 and torch.equal(got.reshape(-1), decoded_expected)
    # Loading the same encoding converts nothing and warns nothing.
    again = AdamW([p.detach().clone().requires_grad_() for p in p32], state_encoding=enc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(low.state_dict())


# GPT-2 small (124M): token and position embeddings, 12 blocks, the final norm.
def _gpt2_small_shapes():
    d, ff = 768, 3072
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    return [(50257, d), (1024, d)] + block * 12 + [(d,), (d,)]


@pytest.mark.parametrize(
    "enc,limit", [(None, 8.0001), ("bf16", 4.01), ("8bit", 2.05), ("4bit", 1.05), ("fp8", 2.05)]
)
def test_bytes_per_parameter_on_gpt2_small(enc, limit):
    """Adam's two moments (and its step counters) per parameter on GPT-2-small shapes, counted
    from the encodings (the same arithmetic ``stored_bytes`` gives on a model, checked below)."""
    shapes = _gpt2_small_shapes()
    n_total = sum(math.prod(s) for s in shapes)
    assert 124_000_000 < n_total < 124_500_000
    total = 0
    for s in shapes:
        n = math.prod(s)
        per_moment = encoding(enc).nbytes(n) if enc and n >= MIN_SIZE else 4 * n
        total += 2 * per_moment + 4  # exp_avg, exp_avg_sq, step
    assert total / n_total <= limit
    # The count is what an optimizer really stores (a scaled-down model, one step).
    params = [torch.nn.Parameter(torch.zeros(s[0] // 64, *s[1:]) if len(s) > 1 else torch.zeros(s)) for s in shapes[:8]]
    opt = AdamW(params, state_encoding=enc) if enc else AdamW(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    expected = sum(
        2 * (encoding(enc).nbytes(p.numel()) if enc and p.numel() >= MIN_SIZE else 4 * p.numel()) + 4 for p in params
    )
    assert stored_bytes(opt.state) == expected


# -- the codec ---------------------------------------------------------------------------------
def test_dynamic_maps_are_bitsandbytes_and_torchaos():
    qmaps = pytest.importorskip("bitsandbytes.functional")
    signed = qmaps.create_dynamic_map(signed=True).tolist()
    unsigned = qmaps.create_dynamic_map(signed=False).tolist()
    assert dynamic_map(True) == pytest.approx(signed, abs=0) or dynamic_map(True) == sorted(signed)
    assert torch.equal(torch.tensor(dynamic_map(True)), torch.tensor(sorted(signed)))
    assert torch.equal(torch.tensor(dynamic_map(False)), torch.tensor(sorted(unsigned)))
    assert len(dynamic_map(True, 3, 4)) == 16


@pytest.mark.parametrize("enc", ["8bit", "4bit", "fp8", "bf16"])
@pytest.mark.parametrize("n", [4096, 4097, 5000, 256 * 7 + 1])
@pytest.mark.parametrize("signed", [True, False])
def test_codec_round_trip(enc, n, signed):
    codec = encoding(enc)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.logspace(-6, 0, n)
    x[: codec.block_size or 0] = 0.0  # a zero block stays zero
    if not signed:
        x = x.abs()
    stored = codec.empty(n, signed, x.device)
    codec.encode_(x, signed, stored)
    y = codec.decode(stored, signed, 0, n)
    assert y.dtype == torch.float32 and y.shape == (n,)
    if codec.block_size:
        assert torch.all(y[: codec.block_size] == 0)
    tolerance = {"bf16": 4e-3, "8bit": 8e-3, "fp8": 4e-2, "4bit": 0.12}[enc]
    assert (y - x).abs().max() <= tolerance * x.abs().max()
    # Chunks starting on a block boundary give the same codes as the whole tensor.
    b = codec.block_size or 1
    chunked = codec.empty(n, signed, x.device)
    codec.encode_(x[: 2 * b], signed, chunked, 0)
    codec.encode_(x[2 * b :], signed, chunked, 2 * b)
    for key in stored:
        assert torch.equal(stored[key].view(torch.uint8) if stored[key].dtype == torch.float8_e4m3fn else stored[key],
                           chunked[key].view(torch.uint8) if chunked[key].dtype == torch.float8_e4m3fn else chunked[key])  # fmt: skip
    assert torch.equal(torch.cat([codec.decode(stored, signed, 0, b), codec.decode(stored, signed, b, n)]), y)


def test_8bit_and_4bit_codes_equal_torchaos():
    quant = pytest.importorskip("torchao.optim.quant_utils")
    x = torch.randn(256 * 64, generator=torch.Generator().manual_seed(0))
    for enc, signed, block, qfn in [
        ("8bit", True, 256, quant.quantize_8bit_with_qmap), ("8bit", False, 256, quant.quantize_8bit_with_qmap),
        ("4bit", True, 128, quant.quantize_4bit_with_qmap),
    ]:  # fmt: skip
        v = x if signed else x.abs()
        scaled, scale = quant.scale_tensor(v, block)
        q = torch.tensor(dynamic_map(True) if signed else dynamic_map(False)) if enc == "8bit" else torch.tensor(dynamic_map(True, 3, 4))
        ref = qfn(scaled, q)
        codec = encoding(enc)
        stored = codec.empty(v.numel(), signed, v.device)
        if enc == "4bit":  # torchao's float32 scale; ours is bfloat16 rounded up: compare on its scale
            stored = codec.empty(v.numel(), signed, v.device)
            codec.encode_(v, signed, stored)
            ours = torch.stack([stored["codes"] & 15, stored["codes"] >> 4], 1).view(-1)
            ref = qfn(v / stored["scale"].float().repeat_interleave(block), q)
            assert torch.equal(ours, ref)
        else:
            codec.encode_(v, signed, stored)
            assert torch.equal(stored["codes"], ref) and torch.equal(stored["scale"], scale)


def test_4bit_scales_are_rounded_up():
    codec = encoding("4bit")
    x = torch.full((4096,), 1.0009765625)  # not a bfloat16
    stored = codec.empty(x.numel(), True, x.device)
    codec.encode_(x, True, stored)
    assert torch.all(stored["scale"].float() >= 1.0009765625)


# -- bfloat16 parameters: stochastic rounding and Kahan summation -----------------------------
def test_stochastic_rounding_is_unbiased_and_deterministic():
    x = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of the way between two bfloat16 values
    seed = torch.tensor(12345, dtype=torch.int64)
    r = stochastic_round(x, seed)
    assert r.dtype == torch.bfloat16
    up = (r.float() > 1.0).float().mean().item()
    assert abs(up - 0.125) < 0.01  # 2**-10 of a 2**-7 step: rounds up 1/8 of the time
    assert torch.equal(r, stochastic_round(x, seed))
    assert not torch.equal(r, stochastic_round(x, seed + 1))
    special = torch.tensor([math.inf, -math.inf, 0.0, -0.0])
    assert torch.equal(stochastic_round(special, seed).float(), special)
    assert torch.isnan(stochastic_round(torch.tensor([math.nan]), seed)).all()


def _bf16_training(**options):
    """Minimize ||w - target||^2 in bfloat16 with updates far below bfloat16's resolution at 1."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    target = torch.full((4096,), 1.05)
    from optimkit import SGD

    # Steps of at most 5e-4 where bfloat16's spacing at 1 is 2**-7: round-to-nearest drops them.
    opt = SGD([w], lr=5e-3, **options)
    for _ in range(200):
        w.grad = (2 * (w.float() - target)).to(torch.bfloat16)
        opt.step()
    return (w.float() - target).abs().mean().item()


def test_bf16_parameters_do_not_stall_with_stochastic_rounding_or_kahan():
    plain = _bf16_training()
    sr = _bf16_training(bf16_stochastic_round=True)
    kahan = _bf16_training(kahan_summation=True)
    assert plain == pytest.approx(0.05, rel=0.05)  # each update rounds away: no progress
    assert sr < 0.5 * plain and kahan < 0.5 * plain


@pytest.mark.parametrize("options", [{"bf16_stochastic_round": True}, {"kahan_summation": True}])
def test_bf16_rounding_resumes_exactly(options):
    def params():
        return [torch.nn.Parameter(torch.randn(64, 80, generator=torch.Generator().manual_seed(3)).bfloat16())]

    # Each parameter's rounding_seed is drawn from torch's generator at its first step.
    torch.manual_seed(0)
    p_ref = params()
    ref = AdamW(p_ref, **options)
    for step in range(6):
        _step(ref, p_ref, step)
    torch.manual_seed(0)
    p_a = params()
    a = AdamW(p_a, **options)
    for step in range(3):
        _step(a, p_a, step)
    sd = _save_load(a.state_dict())
    torch.manual_seed(1)  # the resumed run's generator is elsewhere: the seed comes from the dict
    p_b = [p.detach().clone().requires_grad_() for p in p_a]
    b = AdamW(p_b, **options)
    b.load_state_dict(sd)
    for step in range(3, 6):
        _step(b, p_b, step)
    assert torch.equal(p_ref[0], p_b[0])


# -- shapes, groups, refusals -------------------------------------------------------------------
def test_shapes_that_stay_full_precision_step_like_the_plain_optimizer(rule_path):
    """0-dim, empty, small, strided and channels_last parameters keep full-precision state and
    step exactly as without an encoding (a parameter without a gradient at a step is skipped, as
    torch skips it); a big bfloat16 parameter is encoded and computed in float32."""
    g = torch.Generator().manual_seed(0)
    base = [torch.randn((), generator=g), torch.randn(0, 5, generator=g), torch.randn(3, 4, generator=g),
            torch.randn(128, 64, generator=g).t(), torch.randn(256, 64, generator=g)[::2],
            torch.randn(16, 8, 8, 8, generator=g).to(memory_format=torch.channels_last),
            torch.randn(64, 128, generator=g)]  # fmt: skip
    p_ref = [torch.nn.Parameter(t.clone(memory_format=torch.preserve_format)) for t in base]
    p_enc = [torch.nn.Parameter(t.clone(memory_format=torch.preserve_format)) for t in base]
    ref, opt = AdamW(p_ref), AdamW(p_enc, state_encoding="8bit")
    codec = encoding("8bit")
    for step in range(3):
        for ps in (p_ref, p_enc):
            for i, (p, gr) in enumerate(zip(ps, _grads(ps, step))):
                p.grad = None if (i + step) % 3 == 0 else gr  # some without gradients each step
        ref.step()
        _roundtrip(ref, codec)  # the one big contiguous float32 parameter is encoded
        opt.step()
    for a, b in zip(p_ref, p_enc):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert not p_enc[3].is_contiguous() and not p_enc[5].is_contiguous()
    for p in p_enc[3:]:  # encoded exactly where the parameter is big and contiguous
        big = p.numel() >= MIN_SIZE and p.is_contiguous()
        assert (opt.state[p]["exp_avg"].dtype == torch.uint8) == big
    bf = torch.nn.Parameter(torch.randn(64, 128, generator=g).bfloat16())
    o = AdamW([bf], state_encoding="8bit")
    bf.grad = torch.randn(64, 128, generator=g).bfloat16()
    o.step()
    assert o.state[bf]["exp_avg"].dtype == torch.uint8 and bf.dtype == torch.bfloat16


def test_per_group_encodings():
    params = _params()
    opt = AdamW([{"params": params[:1]}, {"params": params[1:2], "state_encoding": None}], state_encoding="4bit")
    assert opt.param_groups[0]["state_encoding"] == "4bit" and opt.param_groups[1]["state_encoding"] is None
    _step(opt, params[:2], 0)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
    assert opt.state[params[1]]["exp_avg"].dtype == torch.float32
    opt.add_param_group({"params": params[2:], "state_encoding": "8bit"})
    assert opt.param_groups[2]["state_encoding"] == "8bit"


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: AdamW(p, state_encoding="3bit"), "unknown state_encoding"),
        (lambda p: AdamW(p, state_encoding="8bit", block_size=3), "block_size"),
        (lambda p: AdamW(p, block_size=64), "needs a state_encoding"),
        (lambda p: AdamW(p, state_encoding="8bit", fused=True), "fused=True"),
        (lambda p: AdamW(p, state_encoding="8bit", foreach=True), "foreach=True"),
        (lambda p: AdamW(p, state_encoding="8bit", compile=True), "compile=True"),
        (lambda p: AdamW(p, state_encoding="8bit", cautious=True), "elementwise"),
        (lambda p: AdamW(p, bf16_stochastic_round=True, kahan_summation=True), "choose one"),
        (lambda p: AdamW(p, bf16_stochastic_round=1), "True or False"),
        (lambda p: REGISTRY["muon"].cls([torch.nn.Parameter(torch.randn(64, 64))], state_encoding="8bit"), "elementwise"),
        (lambda p: REGISTRY["lbfgs"].cls(p, state_encoding="8bit"), "elementwise"),
        (lambda p: REGISTRY["asgd"].cls(p, state_encoding="8bit"), "no moment"),
        (lambda p: Lion8bit(p, percentile_clipping=5), "percentile_clipping"),
        (lambda p: Lion8bit(p, is_paged=True), "is_paged"),
    ],
)
def test_refusals_name_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        make(_params())


def test_bad_group_changes_nothing():
    params = _params()
    opt = AdamW(params[:1], state_encoding="8bit")
    before = copy.deepcopy(opt.param_groups[0]["state_encoding"])
    with pytest.raises(ValueError, match="unknown state_encoding"):
        opt.add_param_group({"params": params[1:], "state_encoding": "2bit"})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["state_encoding"] == before


def test_create_optimizer_takes_the_encoding():
    from optimkit import create_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 8))
    opt = create_optimizer("adamw", model, lr=1e-3, state_encoding="8bit")
    assert all(g["state_encoding"] == "8bit" for g in opt.param_groups)


def test_every_encoding_name_is_tested():
    assert set(ENCODED) == set(ENCODINGS)


# -- property: random shapes, layouts and dtypes ------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SHAPE = st.one_of(
    st.lists(st.sampled_from([0, 1, 2, 3, 7]), min_size=0, max_size=4).map(tuple),  # tiny, 0-dim, empty
    st.sampled_from([(4096,), (65, 64), (3, 1500), (2, 3, 700), (4097,)]),  # encoded, partial blocks
)
_TENSOR = st.tuples(_SHAPE, st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), st.booleans())


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(tensors=st.lists(_TENSOR, min_size=1, max_size=4), name=st.sampled_from(["adamw", "lion", "sgd", "rmsprop"]),
       enc=st.sampled_from(["8bit", "4bit"]))  # fmt: skip
def test_any_shape_layout_and_dtype_steps(tensors, name, enc, rule_path):
    """float32/float64 parameters of any shape and layout step exactly as the full-precision
    optimizer on codec-rounded moments (small, empty, 0-dim and non-contiguous ones with plain
    state); bfloat16 ones are encoded and computed in float32, staying finite and bfloat16."""
    spec = REGISTRY[name]
    kwargs = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    g = torch.Generator().manual_seed(0)

    def make():
        out = []
        for shape, dtype, transposed in tensors:
            t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
            if transposed and t.dim() >= 2:
                t = t.transpose(0, -1)  # non-contiguous: stays full precision
            out.append(torch.nn.Parameter(t))
        return out

    p_ref = make()
    g.manual_seed(0)
    p_enc = make()
    ref = spec.cls(p_ref, **kwargs)
    opt = spec.cls(p_enc, **kwargs, state_encoding=enc)
    codec = encoding(enc)
    for step in range(2):
        for ps in (p_ref, p_enc):
            for p, gr in zip(ps, _grads(ps, step)):
                p.grad = gr
        ref.step()
        _roundtrip(ref, codec)
        opt.step()
    for a, b in zip(p_ref, p_enc):
        assert b.dtype == a.dtype and b.shape == a.shape and b.stride() == a.stride()
        if a.dtype != torch.bfloat16:
            assert torch.equal(a, b)
        else:
            assert torch.isfinite(b.float()).all()
            big = b.numel() >= MIN_SIZE and b.is_contiguous()
            assert (opt.state[b][next(iter(spec.cls.rule.encodable))].dtype == torch.uint8) == big


@pytest.mark.parametrize("make", [lambda p: AdamW8bit(p), lambda p: Lion8bit(p, lr=1e-3),
                                  lambda p: REGISTRY["rmsprop"].cls(p, momentum=0.9, state_encoding="4bit")])  # fmt: skip
def test_step_in_backward_with_encoded_state(make):
    """The step inside backward gives the same bits as the ordinary step, encodings included."""
    from optimkit import step_in_backward

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x, y = torch.randn(32, 96), torch.randint(0, 10, (32,))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa, ob = make(a.parameters()), make(b.parameters())
    for _ in range(4):
        oa.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        oa.step()
    with step_in_backward(ob):
        for _ in range(4):
            torch.nn.functional.cross_entropy(b(x), y).backward()
            assert all(p.grad is None for p in b.parameters())
            ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("use_kernels", [False, True])
def test_a_positive_second_moment_never_decodes_to_zero(use_kernels, monkeypatch):
    """The zero-point problem (Li et al. 2023): on the unsigned 8-bit map, a value far below
    its block's maximum takes the smallest positive code, not 0 (which would make the next
    step divide by eps alone); 0 stays 0."""
    if use_kernels and kernels.load() is None:
        pytest.skip("no C compiler")
    if not use_kernels:
        monkeypatch.setenv("OPTIMKIT_NO_KERNELS", "1")
    codec = encoding("8bit")
    x = torch.zeros(4096)
    x[0], x[1], x[2] = 1.0, 1e-12, 1e-30
    stored = codec.empty(x.numel(), False, x.device)
    encoded_module._encode(codec, x, False, stored, 0)
    y = encoded_module._decode(codec, stored, False, 0, x.numel())
    assert y[1] > 0 and y[2] > 0 and y[1] == y[2] == min(v for v in dynamic_map(False) if v > 0)
    assert torch.all(y[3:256] == 0) and y[0] == 1.0
