"""Every optimizer steps every tensor shape and layout exactly like torch.optim.

The shapes that real models have and toy problems lack: 0-dim parameters (CLIP's
``logit_scale``), empty tensors (a size-0 dimension), sizes 0 and 1, non-contiguous
parameters (a transposed view made a leaf, a slice with a step), channels_last 4-D
tensors, float16/bfloat16/float32/float64 mixed in one param group, one big tensor (above
the packing and chunking thresholds) beside tiny ones, and parameters whose grad is None
on some steps.

torch.optim's for-loop implementation (``foreach=False``) -- or the authors' package an
optimizer declares (``Optimizer.oracle``) -- is the oracle, as in
``test_exactness.py``: after every step the parameters (and the whole storage they view)
must be bit-identical, and at the end the whole ``state_dict()`` as well, state tensors
with torch's strides (those of dimensions of size > 1). Where torch raises, optimkit must
raise the same exception type with the same message, and must have changed nothing
(parameters and state) when it raised -- or, where torch's for-loop had already changed
something before raising, exactly what torch changed.

A hypothesis strategy draws the parameter lists; explicit tests pin the cases that matter
most (each of them also reads as an example of the shape it covers).
"""

from __future__ import annotations

import copy
import inspect
import io
import math
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import assert_same, assert_same_state_dict, clone_kwargs
from optimkit.registry import REGISTRY, OptimizerSpec

pytestmark = pytest.mark.usefixtures("one_thread")

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DTYPES = (F32, F64, BF16, F16)
# Hypothesis shrinks towards the first; 0 is drawn 1 time in 7 (a 4-D tensor is then empty
# half the time, and torch raises for some optimizers on empty tensors).
SIZES = (1, 2, 3, 5, 2, 3, 0)
STEPS = 4

# Bit for bit against the oracle in every dtype (the others: tests/test_oracles.py).
SPECS = {name: spec for name, spec in REGISTRY.items() if spec.oracle_cls is not None and spec.exact_everywhere}
ELEMENTWISE = [name for name, spec in SPECS.items() if spec.elementwise]


# --------------------------------------------------------------------------------------
# Parameters of a given shape, dtype and layout, built identically for both optimizers.


@dataclass(frozen=True)
class TensorSpec:
    """One parameter: its shape, dtype and layout, and the layout of its gradients.

    layout: ``contiguous``; ``transposed`` (the transpose of a contiguous tensor, made a
    leaf); ``strided`` (every other element of the last dimension of a bigger tensor);
    ``channels_last`` (4-D only). grad: ``like`` (``empty_like(param)``: the parameter's
    strides where it is dense, as autograd makes them) or ``contiguous``.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str = "contiguous"
    grad: str = "like"

    def __repr__(self) -> str:
        extra = "" if self.grad == "like" else " grad=contiguous"
        return f"<{self.shape} {str(self.dtype)[6:]} {self.layout}{extra}>"


@dataclass(frozen=True)
class Case:
    """A parameter list, which parameters get a gradient at each step, and a seed."""

    tensors: tuple[TensorSpec, ...]
    masks: tuple[tuple[bool, ...], ...]  # masks[step][i]: parameter i gets a gradient
    seed: int = 0

    @property
    def steps(self) -> int:
        return len(self.masks)


def _gen(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) & 0xFFFF_FFFF)


def _randn(shape: tuple[int, ...], dtype: torch.dtype, *key: int) -> torch.Tensor:
    """Deterministic values (drawn in float64, then rounded to ``dtype``)."""
    return torch.randn(shape, generator=_gen(*key), dtype=F64).to(dtype)


def make_param(t: TensorSpec, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the leaf parameter, the whole tensor whose storage it views)."""
    shape = t.shape
    if t.layout == "transposed":
        base = _randn(shape[:-2] + (shape[-1], shape[-2]), t.dtype, *key)
        view = base.transpose(-1, -2)
    elif t.layout == "strided":
        base = _randn(shape[:-1] + (2 * shape[-1],), t.dtype, *key)
        view = base[..., ::2]
    elif t.layout == "channels_last":
        base = _randn(shape, t.dtype, *key).contiguous(memory_format=torch.channels_last)
        view = base
    else:
        base = _randn(shape, t.dtype, *key).contiguous()
        view = base
    return view.detach().requires_grad_(), base


def build(case: Case) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pairs = [make_param(t, case.seed, i) for i, t in enumerate(case.tensors)]
    return [p for p, _ in pairs], [b for _, b in pairs]


def make_grad(p: torch.Tensor, t: TensorSpec, sparse: bool, *key: int) -> torch.Tensor:
    values = _randn(tuple(p.shape), p.dtype, *key)
    grad = torch.empty_like(p).copy_(values) if t.grad == "like" else values
    if sparse:  # SparseAdam: only the positive entries are stored
        grad = grad.masked_fill(grad < 0, 0).to_sparse()
    return grad


def grads_of(case: Case, spec: OptimizerSpec) -> Callable[[list[torch.Tensor], int], Any]:
    """What one step needs: synthetic gradients (None where the mask says so), or for a
    closure optimizer (LBFGS) a deterministic loss, its backward, then the mask."""
    sparse = spec.sparse == "only"
    targets = [_randn(t.shape, t.dtype, case.seed, i, 7) for i, t in enumerate(case.tensors)]

    def synthetic(params: list[torch.Tensor], step: int) -> None:
        for i, (p, t) in enumerate(zip(params, case.tensors)):
            p.grad = make_grad(p, t, sparse, case.seed, step, i) if case.masks[step][i] else None

    def loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
        total = torch.zeros((), dtype=F64)
        for i, (p, target) in enumerate(zip(params, targets)):
            # Dtype-preserving math: the loss of a bfloat16 parameter is computed in bfloat16.
            total = total + ((p - target) ** 2 * (1 + i)).sum().double() + (0.1 * p.sin()).sum().double()
        total.backward()
        for p, has_grad in zip(params, case.masks[step]):
            if not has_grad:
                p.grad = None
        return total

    return loss if spec.closure else synthetic


# --------------------------------------------------------------------------------------
# The comparison: step both, compare after every step, or compare the exceptions.


def torch_kwargs(spec: OptimizerSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """torch's for-loop mode (unless fused is asked for); optimkit gets the same kwargs."""
    kw = dict(kwargs)
    if "foreach" in inspect.signature(spec.oracle_cls).parameters and not kw.get("fused"):
        kw["foreach"] = False
    return kw


def _attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - any exception is compared with torch's
        return None, e


def _same_failure(ours: BaseException | None, ref: BaseException | None, where: str) -> bool:
    """True when both raised (the same type and message); fails when only one did."""
    if ours is None and ref is None:
        return False
    if ours is None:
        raise AssertionError(f"{where}: torch raised {type(ref).__name__}: {ref}; optimkit did not")
    if ref is None:
        raise AssertionError(
            f"{where}: optimkit raised {type(ours).__name__}: {ours}; torch did not"
        ) from ours
    assert type(ours) is type(ref), (
        f"{where}: optimkit raised {type(ours).__name__}: {ours}; torch {type(ref).__name__}: {ref}"
    )
    assert str(ours) == str(ref), f"{where}: {type(ref).__name__} message {str(ours)!r} vs torch {str(ref)!r}"
    return True


def _one_step(opt: Any, params: list[torch.Tensor], spec: OptimizerSpec, grads: Callable, step: int) -> Any:
    if spec.closure:

        def closure() -> Any:
            opt.zero_grad()
            return grads(params, step)

        return opt.step(closure)
    grads(params, step)
    return opt.step()


def _snapshot(opt: Any, storages: list[torch.Tensor]) -> Any:
    return {"params": [s.clone() for s in storages], "state_dict": copy.deepcopy(opt.state_dict())}


def _layout(t: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """The strides that mean something: those of dimensions of size > 1 (none when empty)."""
    if t.numel() == 0:
        return ()
    return tuple((size, stride) for size, stride in zip(t.shape, t.stride()) if size > 1)


def _state_layouts(sd: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {
        i: {k: _layout(v) for k, v in s.items() if isinstance(v, torch.Tensor) and not v.is_sparse}
        for i, s in sd["state"].items()
    }


@dataclass
class Pair:
    ours: Any
    ref: Any
    ours_params: list[torch.Tensor]
    ref_params: list[torch.Tensor]
    ours_storages: list[torch.Tensor]
    ref_storages: list[torch.Tensor]
    raised: bool = False


def _assert_untouched_or_like_torch(pair: Pair, before: Any, step: int, spec: OptimizerSpec) -> None:
    """After both raised: optimkit changed nothing, or (where torch itself had changed
    something before raising, e.g. Adafactor's for-loop updated the parameters before the
    one it raised on) optimkit changed exactly what torch did (an authors' package: its state
    and its group keys, as ``assert_same_state_dict``)."""
    after = _snapshot(pair.ours, pair.ours_storages)
    try:
        assert_same(after, before, f"optimkit after raising at step {step}")
    except AssertionError as untouched:
        try:
            ref = _snapshot(pair.ref, pair.ref_storages)
            where = f"after raising at step {step}"
            assert_same(after["params"], ref["params"], f"{where}.params")
            assert_same_state_dict(after["state_dict"], ref["state_dict"], spec, f"{where}.state_dict")
        except AssertionError as like_torch:
            raise AssertionError(f"{untouched}; and unlike torch: {like_torch}") from None


def compare_steps(pair: Pair, spec: OptimizerSpec, grads: Callable, steps: range) -> Pair:
    """Step both optimizers; after each step parameters, their strides and the whole storage
    they view are bit-identical. If torch raises, optimkit raises alike and changed nothing."""
    for step in steps:
        before = _snapshot(pair.ours, pair.ours_storages)
        _, e_ref = _attempt(lambda: _one_step(pair.ref, pair.ref_params, spec, grads, step))  # noqa: B023
        _, e_ours = _attempt(lambda: _one_step(pair.ours, pair.ours_params, spec, grads, step))  # noqa: B023
        if _same_failure(e_ours, e_ref, f"step {step}"):
            _assert_untouched_or_like_torch(pair, before, step, spec)
            pair.raised = True
            return pair
        for i, (a, b) in enumerate(zip(pair.ours_params, pair.ref_params)):
            assert _layout(a) == _layout(b), f"step {step} param {i}: strides {a.stride()} vs {b.stride()}"
            assert_same(a.detach(), b.detach(), f"step {step} param {i}")
        for i, (a, b) in enumerate(zip(pair.ours_storages, pair.ref_storages)):
            assert_same(a, b, f"step {step} storage of param {i}")
    return pair


def compare_state(pair: Pair, spec: OptimizerSpec) -> None:
    ours_sd, ref_sd = pair.ours.state_dict(), pair.ref.state_dict()
    assert_same_state_dict(ours_sd, ref_sd, spec, "state_dict")
    ours_layouts, ref_layouts = _state_layouts(ours_sd), _state_layouts(ref_sd)
    assert ours_layouts == ref_layouts, f"state tensors' strides {ours_layouts} vs torch's {ref_layouts}"


def check_against_torch(
    spec: OptimizerSpec,
    kwargs: dict[str, Any],
    make: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]],
    grads: Callable,
    steps: int,
) -> Pair | None:
    """The whole check; returns the pair (None when both raised in the constructor)."""
    kw = torch_kwargs(spec, kwargs)
    ours_params, ours_storages = make()
    ref_params, ref_storages = make()
    ref, e_ref = _attempt(lambda: spec.make_oracle(ref_params, **clone_kwargs(kw)))
    ours, e_ours = _attempt(lambda: spec.cls(ours_params, **clone_kwargs(kw)))
    if _same_failure(e_ours, e_ref, "constructor"):
        return None
    pair = Pair(ours, ref, ours_params, ref_params, ours_storages, ref_storages)
    compare_steps(pair, spec, grads, range(steps))
    if not pair.raised:
        compare_state(pair, spec)
    return pair


#: Where the oracle itself cannot step a shape that optimkit steps: there the case is compared
#: with those tensors given shape (1,) instead (``tests/test_adam_family.py`` checks optimkit's
#: 0-dim step against the oracle's on the (1,)-shaped tensor). pytorch-optimizer's Adan scales
#: gradients by a (1,)-shaped clip factor in place, which a 0-dim gradient cannot take.
ORACLE_CANNOT_STEP_0DIM = {"adan": lambda kwargs: kwargs.get("max_grad_norm", 0.0) > 0}


def oracle_case(spec: OptimizerSpec, kwargs: dict[str, Any], case: Case) -> Case:
    """``case``, or where the oracle cannot step its 0-dim tensors, the case with shape (1,) for them."""
    cannot = ORACLE_CANNOT_STEP_0DIM.get(spec.name)
    if cannot is None or not cannot(kwargs):
        return case
    tensors = tuple(TensorSpec((1,), *astuple(t)[1:]) if t.shape == () else t for t in case.tensors)
    return Case(tensors, case.masks, case.seed)


def check_case(spec: OptimizerSpec, kwargs: dict[str, Any], case: Case) -> Pair | None:
    case = oracle_case(spec, kwargs, case)
    return check_against_torch(spec, kwargs, lambda: build(case), grads_of(case, spec), case.steps)


# --------------------------------------------------------------------------------------
# The strategy.


@st.composite
def tensor_specs(draw: Any, matrix_only: bool = False) -> TensorSpec:
    ndim = 2 if matrix_only else draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.sampled_from(SIZES), min_size=ndim, max_size=ndim)))
    layouts = ["contiguous"] + ["strided"] * (ndim >= 1) + ["transposed"] * (ndim >= 2)
    layouts += ["channels_last"] * (ndim == 4)
    return TensorSpec(
        shape,
        draw(st.sampled_from(DTYPES)),
        draw(st.sampled_from(layouts)),
        draw(st.sampled_from(("like", "contiguous"))),
    )


@st.composite
def cases(draw: Any, matrix_only: bool = False) -> Case:
    tensors = tuple(draw(st.lists(tensor_specs(matrix_only), min_size=1, max_size=5)))
    n = len(tensors)
    steps = draw(st.integers(3, STEPS))
    masks = draw(st.lists(st.tuples(*[st.booleans()] * n), min_size=steps, max_size=steps))
    return Case(tensors, tuple(masks), draw(st.integers(0, 2**16)))


PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _configs(spec: OptimizerSpec) -> list[int]:
    """The registry's configs; fused ones are compared with torch's fused kernels below."""
    return [i for i, c in enumerate(spec.configs) if not c.get("fused")]


@pytest.mark.parametrize("name", list(SPECS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_every_shape_dtype_and_layout_like_torch(name, data):
    spec = SPECS[name]
    config = data.draw(st.sampled_from(_configs(spec)), label="config")
    case = data.draw(cases(spec.matrix_only), label="case")
    check_case(spec, spec.configs[config], case)


# --------------------------------------------------------------------------------------
# Explicit cases: every config on a zoo of the shapes that matter.

# Every odd shape at once, grads None on some steps: 0-dim, empty, transposed, channels_last,
# strided, size 1, and four dtypes in one group.
ZOO = (
    TensorSpec((), F32),
    TensorSpec((0, 3), F64),
    TensorSpec((3, 2), BF16, "transposed"),
    TensorSpec((2, 3, 2, 2), F16, "channels_last"),
    TensorSpec((4,), F32, "strided"),
    TensorSpec((1,), F64),
    TensorSpec((2, 1, 3), F32, "contiguous", "contiguous"),
)
MATRIX_ZOO = (
    TensorSpec((3, 5), F32),
    TensorSpec((5, 3), BF16, "transposed"),
    TensorSpec((2, 3), F64, "strided"),
    TensorSpec((0, 3), F32),
    TensorSpec((1, 1), F16),
    TensorSpec((4, 4), F32, "transposed", "contiguous"),
)
# Parameters 1, 3 and 5 get their first gradient at step 1 (their state is created beside
# parameters that have some), parameter 0 skips step 1, the last one never gets a gradient.
ZOO_MASKS = ((1, 0, 1, 0, 1, 0, 0), (0, 1, 1, 1, 1, 1, 0), (1, 1, 0, 1, 0, 1, 0), (1, 0, 1, 1, 1, 1, 0))


def zoo_case(spec: OptimizerSpec, tensors: tuple[TensorSpec, ...] | None = None) -> Case:
    tensors = tensors or (MATRIX_ZOO if spec.matrix_only else ZOO)
    masks = tuple(tuple(bool(m) for m in row[: len(tensors)]) for row in ZOO_MASKS)
    return Case(tensors, masks, seed=3)


ZOO_CASES = [
    pytest.param(name, i, id=f"{name}-{i}") for name, spec in SPECS.items() for i in _configs(spec)
]


@pytest.mark.parametrize("name,config", ZOO_CASES)
def test_zoo_every_config(name, config):
    spec = SPECS[name]
    check_case(spec, spec.configs[config], zoo_case(spec))


# Where torch itself raises on the zoo (LBFGS views non-contiguous grads, Adafactor divides
# by a size-0 dimension), the same zoo without those tensors must step like torch.
PLAIN_ZOO = (
    TensorSpec((), F32),
    TensorSpec((3, 2), BF16),
    TensorSpec((2, 3, 2, 2), F16),
    TensorSpec((4,), F32, "strided"),  # not dense: its grads are contiguous
    TensorSpec((1,), F64),
    TensorSpec((2, 1, 3), F32),
)


@pytest.mark.parametrize("name", list(SPECS))
def test_zoo_of_contiguous_nonempty_tensors(name):
    spec = SPECS[name]
    tensors = tuple(t for t in MATRIX_ZOO if 0 not in t.shape) if spec.matrix_only else PLAIN_ZOO
    pair = check_case(spec, spec.configs[0], zoo_case(spec, tensors))
    assert pair is not None and not pair.raised, "torch raised: the zoo is meant to be one it steps"


SOME_STEPS = ((True,), (False,), (True,), (True,))


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_one_0dim_param_alone(name, dtype):
    """A group of one 0-dim parameter (Muon: torch's ValueError at construction)."""
    spec = SPECS[name]
    case = Case((TensorSpec((), dtype),), SOME_STEPS, seed=1)
    for config in (0, len(spec.configs) - 1):
        check_case(spec, spec.configs[config], case)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("late", ["0dim_first", "0dim_late"])
def test_0dim_beside_a_param_that_gets_its_first_grad_later(name, late):
    """A 0-dim parameter with state stepped together with one whose state is new (SGD's
    momentum: the 0-dim buffer exists, the other is created in the same step)."""
    spec = SPECS[name]
    if spec.matrix_only:
        tensors = (TensorSpec((1, 1), F32), TensorSpec((3, 2), F32))
    else:
        tensors = (TensorSpec((), F32), TensorSpec((3,), F32))
    masks = ((True, False), (True, True), (True, True))
    if late == "0dim_late":
        masks = tuple(row[::-1] for row in masks)
    for config in range(len(spec.configs)):
        check_case(spec, spec.configs[config], Case(tensors, masks, seed=10))


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 1, 3)], ids=str)
def test_one_empty_param_alone(name, shape):
    spec = SPECS[name]
    case = Case((TensorSpec(shape, F32),), SOME_STEPS, seed=2)
    check_case(spec, spec.configs[0], case)


@pytest.mark.parametrize("name", list(SPECS))
def test_size_one_dims(name):
    spec = SPECS[name]
    shapes = [(1, 1), (1, 4), (4, 1)] if spec.matrix_only else [(1,), (1, 1), (1, 1, 1, 1), (1, 3, 1)]
    case = Case(tuple(TensorSpec(s, F32) for s in shapes), ((True,) * len(shapes),) * 3, seed=4)
    check_case(spec, spec.configs[0], case)


@pytest.mark.parametrize("name", list(SPECS))
def test_empty_matrix_after_a_normal_one(name):
    """torch's Adafactor (divides by the numel) and Muon (by the number of columns) raise on
    a (2, 0) parameter, after their for-loop has updated the parameter before it; optimkit
    raises alike and leaves parameters and state untouched, or exactly as torch does."""
    spec = SPECS[name]
    case = Case((TensorSpec((2, 2), F32), TensorSpec((2, 0), F32)), ((True, True),) * 3, seed=11)
    check_case(spec, spec.configs[0], case)


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.matrix_only])
@pytest.mark.parametrize("shape", [(), (3,), (2, 2, 2), (1, 1, 1, 1), (0,)], ids=str)
def test_matrix_only_rejects_other_ndims_like_torch(name, shape):
    spec = SPECS[name]
    _, e_ref = _attempt(lambda: spec.make_oracle([torch.zeros(shape, requires_grad=True)]))
    _, e_ours = _attempt(lambda: spec.cls([torch.zeros(shape, requires_grad=True)]))
    assert e_ref is not None, "torch accepts it now: drop the shape from this test"
    assert _same_failure(e_ours, e_ref, f"{name} {shape}")


# --------------------------------------------------------------------------------------
# Real modules: CLIP's logit_scale beside a Linear, a channels_last conv.


def clip_like() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 4, generator=g))
        linear.bias.copy_(torch.randn(3, generator=g))
    logit_scale = torch.nn.Parameter(torch.tensor(2.6))  # CLIP: log(1 / 0.07)
    params = [linear.weight, linear.bias, logit_scale]
    return params, [p.detach() for p in params]


def clip_loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    weight, bias, logit_scale = params
    g = torch.Generator().manual_seed(100 + step)
    x, labels = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    logits = logit_scale.exp() * torch.nn.functional.linear(x, weight, bias)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    for p in params:
        p.grad = None
    loss.backward()
    return loss


@pytest.mark.parametrize("name", list(SPECS))
def test_clip_logit_scale_beside_a_linear(name):
    spec = SPECS[name]
    grads = clip_loss
    if spec.sparse == "only":  # SparseAdam: the same gradients, made sparse

        def grads(params, step):
            loss = clip_loss(params, step)
            for p in params:
                p.grad = p.grad.to_sparse()
            return loss

    check_against_torch(spec, spec.configs[0], clip_like, grads, steps=5)


def conv_channels_last() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    params = [conv.weight, conv.bias]
    return params, [p.detach() for p in params]


def conv_loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    weight, bias = params
    g = torch.Generator().manual_seed(200 + step)
    x = torch.randn(2, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.conv2d(x, weight, bias).square().mean()
    for p in params:
        p.grad = None
    loss.backward()
    return loss


@pytest.mark.parametrize("name", list(SPECS))
def test_channels_last_conv_weight(name):
    spec = SPECS[name]
    grads = conv_loss
    if spec.sparse == "only":

        def grads(params, step):
            loss = conv_loss(params, step)
            for p in params:
                p.grad = p.grad.to_sparse()
            return loss

    check_against_torch(spec, spec.configs[0], conv_channels_last, grads, steps=4)


# --------------------------------------------------------------------------------------
# One big tensor (above the packing and chunking thresholds) beside tiny ones.

BIG = 600_000


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("which", ["float32", "mixed"])
def test_big_tensor_beside_tiny_ones(name, which):
    spec = SPECS[name]
    if which == "float32":
        tensors = (TensorSpec((BIG,), F32), TensorSpec((), F32), TensorSpec((3,), F32))
        config = 0
    else:  # a non-contiguous float64 giant, tiny half-precision ones, the last config
        tensors = (
            TensorSpec((1000, BIG // 1000), F64, "transposed"),
            TensorSpec((), BF16),
            TensorSpec((3,), F16),
            TensorSpec((2, 2), F32, "strided"),
        )
        config = len(spec.configs) - 1
    masks = ((True,) * len(tensors), (True, False, True, True), (True,) * len(tensors))
    check_case(spec, spec.configs[config], Case(tensors, tuple(m[: len(tensors)] for m in masks), seed=5))


# --------------------------------------------------------------------------------------
# fused=True: torch's fused kernels are the oracle.


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.fused])
@pytest.mark.parametrize("dtypes", [(F32, F32, F32), (F64, F64, F64), (F32, BF16, F16)], ids=str)
def test_fused_with_0dim_and_empty(name, dtypes):
    spec = SPECS[name]
    tensors = (TensorSpec((), dtypes[0]), TensorSpec((0, 3), dtypes[1]), TensorSpec((3, 2), dtypes[2]))
    case = Case(tensors, ((True,) * 3, (False, True, True), (True,) * 3), seed=6)
    check_case(spec, {**spec.configs[0], "fused": True}, case)


# --------------------------------------------------------------------------------------
# State dict round trip between optimkit and torch on the odd shapes.


def _through_bytes(sd: dict[str, Any]) -> dict[str, Any]:
    """As a checkpoint file would carry it (weights_only: plain data only)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", list(SPECS))
def test_state_dict_round_trip_between_optimkit_and_torch(name):
    """Three steps; the state dict goes through bytes into a fresh optimizer of the other
    library (and of its own); all continue exactly like torch. The references are those of
    ``test_state_dict.py``: optimkit resumes exactly like torch never stopping; torch loading
    optimkit's state dict continues exactly like torch loading its own (which is not always
    torch never stopping: torch's load_state_dict casts NAdam's mu_product and ASGD's eta to
    the parameter's dtype)."""
    spec = SPECS[name]
    if spec.matrix_only:
        tensors = MATRIX_ZOO
    elif spec.closure:
        # torch's LBFGS cannot view non-contiguous grads, and its load_state_dict casts the
        # whole history to the first parameter's dtype (then fails on mixed dtypes): one dtype.
        tensors = tuple(TensorSpec(t.shape, F64, t.layout, t.grad) for t in PLAIN_ZOO)
    else:
        tensors = tuple(t for t in ZOO if not (spec.name == "adafactor" and 0 in t.shape))
    masks = tuple(tuple(bool(m) for m in row[: len(tensors)]) for row in ZOO_MASKS * 2)
    case = Case(tensors, masks, seed=8)
    kwargs = torch_kwargs(spec, spec.configs[-1])
    case = oracle_case(spec, kwargs, case)
    grads = grads_of(case, spec)

    def fresh(make, steps=0, saved=None):
        """(optimizer, params, storages): ``steps`` steps, or ``saved`` = (state dict,
        params) loaded into it."""
        params, storages = build(case)
        opt = make(params, **clone_kwargs(kwargs))
        for step in range(steps):
            _one_step(opt, params, spec, grads, step)
        if saved is not None:
            with torch.no_grad():
                for p, q in zip(params, saved[1]):
                    p.copy_(q)
            opt.load_state_dict(_through_bytes(saved[0]))
        return opt, params, storages

    pair = check_against_torch(spec, kwargs, lambda: build(case), grads, steps=3)
    assert pair is not None and not pair.raised
    ours_saved = (pair.ours.state_dict(), pair.ours_params)
    ref_saved = (pair.ref.state_dict(), pair.ref_params)
    torch_resumed = fresh(spec.make_oracle, saved=ref_saved)
    runs = {
        "optimkit into torch": (fresh(spec.make_oracle, saved=ours_saved), torch_resumed),
        "torch into optimkit": (fresh(spec.cls, saved=ref_saved), fresh(spec.make_oracle, steps=3)),
        "optimkit into optimkit": (fresh(spec.cls, saved=ours_saved), fresh(spec.make_oracle, steps=3)),
    }
    for what, (ours, ref) in runs.items():
        try:
            p = compare_steps(Pair(ours[0], ref[0], ours[1], ref[1], ours[2], ref[2]), spec, grads, range(3, 6))
            assert not p.raised
            compare_state(p, spec)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
    compare_steps(pair, spec, grads, range(3, 6))  # and the uninterrupted pair
    compare_state(pair, spec)


# --------------------------------------------------------------------------------------
# compile=True (optimkit only): close to torch, not bit-exact; a 0-dim, an empty and a
# normal tensor in one group.


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_compile_with_0dim_and_empty(name):
    spec = SPECS[name]
    case = Case(
        (TensorSpec((), F32), TensorSpec((0, 3), F32), TensorSpec((3, 4), F32)),
        ((True, True, True),) * 3,
        seed=9,
    )
    grads = grads_of(case, spec)
    ours_params, _ = build(case)
    ref_params, _ = build(case)
    kw = torch_kwargs(spec, spec.configs[0])
    ours = spec.cls(ours_params, **clone_kwargs(kw), compile=True)
    ref = spec.make_oracle(ref_params, **clone_kwargs(kw))
    for step in range(case.steps):
        _one_step(ref, ref_params, spec, grads, step)
        _one_step(ours, ours_params, spec, grads, step)
        for i, (a, b) in enumerate(zip(ours_params, ref_params)):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(
                a.detach(), b.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, i=i, s=step: f"step {s} param {i}: {m}"
            )
    ours_state, ref_state = ours.state_dict()["state"], ref.state_dict()["state"]
    assert set(ours_state) == set(ref_state)
    for i in ref_state:
        assert set(ours_state[i]) == set(ref_state[i]), f"state {i} keys"
        for k, v in ref_state[i].items():
            if isinstance(v, torch.Tensor):
                w = ours_state[i][k]
                assert (w.shape, w.dtype) == (v.shape, v.dtype), f"state {i}.{k}"
                torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-6, msg=lambda m, i=i, k=k: f"state {i}.{k}: {m}")
            elif isinstance(v, float):
                assert math.isclose(ours_state[i][k], v, rel_tol=1e-6), f"state {i}.{k}"
