"""MuonWithAuxAdam against its oracle: torch.optim.Muon and torch.optim.AdamW(foreach=False)
side by side on the same split of a small transformer-like model, bit for bit after every step.

The hidden matrices take Muon; the embedding, the head, the biases and the norm weights AdamW
(Keller Jordan's recipe). The registry's tables run it too (plain parameter lists: split by
shape), but they have no oracle for it: this module is where it is compared with torch.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import optimkit
from harness import assert_same

STEPS = 20
DTYPES = [torch.float32, torch.float64]
V, D, T = 11, 8, 6  # vocabulary, width, tokens per sequence


class Tiny(torch.nn.Module):
    """Embedding, one block (norm, attention-like and MLP matrices, biases), final norm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.norm1 = torch.nn.LayerNorm(D)
        self.qkv = torch.nn.Linear(D, 3 * D, bias=False)
        self.proj = torch.nn.Linear(D, D)
        self.norm2 = torch.nn.LayerNorm(D)
        self.up = torch.nn.Linear(D, 4 * D)
        self.down = torch.nn.Linear(4 * D, D)
        self.norm = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, V, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1)
        x = x + self.proj(att @ v)
        x = x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))
        return self.head(self.norm(x))

    def split(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(hidden matrices, everything else) -- the embedding and head are 2-D but AdamW's."""
        hidden = [self.qkv.weight, self.proj.weight, self.up.weight, self.down.weight]
        other = [p for p in self.parameters() if all(p is not h for h in hidden)]
        return hidden, other


def make_model(dtype: torch.dtype) -> Tiny:
    torch.manual_seed(0)
    return Tiny().to(dtype)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, V, (4, T + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def backward(model: Tiny, step: int) -> None:
    x, y = batch(step)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).backward()


def torch_pair(model: Tiny, muon: dict, adamw: dict) -> list[torch.optim.Optimizer]:
    hidden, other = model.split()
    return [torch.optim.Muon(hidden, **muon), torch.optim.AdamW(other, foreach=False, **adamw)]


def ours_grouped(model: Tiny, muon: dict, adamw: dict, **kwargs) -> optimkit.MuonWithAuxAdam:
    hidden, other = model.split()
    return optimkit.MuonWithAuxAdam(
        [{"params": hidden, "use_muon": True, **muon}, {"params": other, "use_muon": False, **adamw}], **kwargs
    )


def step_all(model: Tiny, opts: list, step: int) -> None:
    backward(model, step)
    for opt in opts:
        opt.step()


def assert_same_as_torch(ours: optimkit.MuonWithAuxAdam, theirs: list[torch.optim.Optimizer], label: str) -> None:
    """Every parameter's state (torch's keys, dtypes, bits), and each group's hyperparameters."""
    for group, ref in zip(ours.param_groups, theirs, strict=True):
        (ref_group,) = ref.param_groups
        assert_same({k: group[k] for k in ref_group if k not in ("params", "foreach")},
                    {k: v for k, v in ref_group.items() if k not in ("params", "foreach")}, f"{label} group")  # fmt: skip
        for p, q in zip(group["params"], ref_group["params"], strict=True):
            assert_same(dict(ours.state[p]), dict(ref.state[q]), f"{label} state")


MUON_CASES = {
    "defaults": {},
    "original": {"adjust_lr_fn": "original"},
    "match_rms_adamw": {"adjust_lr_fn": "match_rms_adamw", "lr": 0.02, "weight_decay": 0.01},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", list(MUON_CASES))
@pytest.mark.parametrize("adamw", [{}, {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.1}], ids=["adamw-defaults", "adamw-set"])
def test_bit_for_bit_with_torch_muon_and_adamw(dtype, case, adamw):
    """20 steps; after each, every parameter and every state entry has torch's bits. A group
    that sets no hyperparameter takes torch's Muon or AdamW default."""
    muon = MUON_CASES[case]
    ours_model, ref_model = make_model(dtype), make_model(dtype)
    ours = ours_grouped(ours_model, muon, adamw)
    theirs = torch_pair(ref_model, muon, adamw)
    for step in range(STEPS):
        step_all(ours_model, [ours], step)
        step_all(ref_model, theirs, step)
        for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert_same(a.detach(), b.detach(), f"step {step} {name}")
        assert_same_as_torch(ours, theirs, f"step {step}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_constructor_defaults_per_kind(dtype):
    """``muon=`` and ``adamw=`` set the defaults of each kind; a group's own value wins."""
    muon = {"adjust_lr_fn": "match_rms_adamw", "momentum": 0.9}
    adamw = {"betas": (0.9, 0.95), "weight_decay": 0.0}
    ours_model, ref_model = make_model(dtype), make_model(dtype)
    hidden, other = ours_model.split()
    ours = optimkit.MuonWithAuxAdam(
        [{"params": hidden, "use_muon": True, "lr": 0.02}, {"params": other, "use_muon": False}],
        lr=3e-3, muon=muon, adamw=adamw,
    )  # fmt: skip
    theirs = torch_pair(ref_model, {**muon, "lr": 0.02}, {**adamw, "lr": 3e-3})
    for step in range(STEPS):
        step_all(ours_model, [ours], step)
        step_all(ref_model, theirs, step)
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        assert_same(a.detach(), b.detach())
    assert_same_as_torch(ours, theirs, "end")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_plain_list_is_split_by_shape(dtype):
    """A plain list (one group without ``use_muon``): 2-D parameters Muon, the rest AdamW, each
    kind with its own defaults (weight decay 0.1 and 1e-2, eps 1e-7 and 1e-8)."""
    ours_model, ref_model = make_model(dtype), make_model(dtype)
    ours = optimkit.MuonWithAuxAdam(ours_model.parameters())
    (group,) = ours.param_groups
    assert group["weight_decay"] is None and group["eps"] is None and group["lr"] == 1e-3
    mats = [p for p in ref_model.parameters() if p.ndim == 2]
    rest = [p for p in ref_model.parameters() if p.ndim != 2]
    theirs = [torch.optim.Muon(mats), torch.optim.AdamW(rest, foreach=False)]
    for step in range(STEPS):
        step_all(ours_model, [ours], step)
        step_all(ref_model, theirs, step)
        for a, b in zip(ours_model.parameters(), ref_model.parameters()):
            assert_same(a.detach(), b.detach(), f"step {step}")
    ref_state = {**theirs[0].state, **theirs[1].state}
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert_same(dict(ours.state[p]), dict(ref_state[q]))


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("grouped", [True, False], ids=["groups", "plain"])
def test_exact_resume(dtype, grouped):
    """Save after 10 steps, load into a fresh optimizer, 10 more: the same bits as 20 uninterrupted."""
    muon, adamw = {"adjust_lr_fn": "match_rms_adamw"}, {"amsgrad": True}

    def build(model):
        if grouped:
            return ours_grouped(model, muon, adamw)
        return optimkit.MuonWithAuxAdam(model.parameters())

    ref_model = make_model(dtype)
    ref = build(ref_model)
    for step in range(STEPS):
        step_all(ref_model, [ref], step)

    model = make_model(dtype)
    first = build(model)
    for step in range(STEPS // 2):
        step_all(model, [first], step)
    saved = _save_load(first.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = build(resumed_model)
    resumed.load_state_dict(saved)
    for step in range(STEPS // 2, STEPS):
        step_all(resumed_model, [resumed], step)
    for a, b in zip(resumed_model.parameters(), ref_model.parameters()):
        assert_same(a.detach(), b.detach())
    assert_same(resumed.state_dict(), ref.state_dict())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_torchs_state_dicts_load(dtype):
    """torch's Muon and AdamW state dicts, put together (ids renumbered, ``use_muon`` added),
    load into MuonWithAuxAdam, which continues exactly as torch does."""
    ref_model = make_model(dtype)
    theirs = torch_pair(ref_model, {}, {})
    for step in range(STEPS // 2):
        step_all(ref_model, theirs, step)
    model = copy.deepcopy(ref_model)
    muon_sd, adamw_sd = (_save_load(opt.state_dict()) for opt in theirs)
    n = len(muon_sd["param_groups"][0]["params"])
    combined = {
        "state": {**muon_sd["state"], **{k + n: v for k, v in adamw_sd["state"].items()}},
        "param_groups": [
            {**muon_sd["param_groups"][0], "use_muon": True},
            {**adamw_sd["param_groups"][0], "use_muon": False,
             "params": [i + n for i in adamw_sd["param_groups"][0]["params"]]},
        ],
    }  # fmt: skip
    ours = ours_grouped(model, {}, {})
    ours.load_state_dict(combined)
    for step in range(STEPS // 2, STEPS):
        step_all(model, [ours], step)
        step_all(ref_model, theirs, step)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert_same(a.detach(), b.detach())
    assert_same_as_torch(ours, theirs, "end")


def test_refusals():
    model = make_model(torch.float32)
    hidden, other = model.split()
    with pytest.raises(ValueError, match="Muon only supports 2D parameters whereas we found a parameter with size"):
        optimkit.MuonWithAuxAdam([{"params": other, "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon must be True .Muon. or False .AdamW., got 'yes'"):
        optimkit.MuonWithAuxAdam([{"params": hidden, "use_muon": "yes"}])
    with pytest.raises(ValueError, match="a Muon group .use_muon=True. got betas, hyperparameters of AdamW only"):
        optimkit.MuonWithAuxAdam([{"params": hidden, "use_muon": True, "betas": (0.9, 0.95)}])
    with pytest.raises(ValueError, match="an AdamW group|a AdamW group"):
        optimkit.MuonWithAuxAdam([{"params": other, "use_muon": False, "nesterov": False}])
    with pytest.raises(ValueError, match="muon= got betas"):
        optimkit.MuonWithAuxAdam(model.parameters(), muon={"betas": (0.9, 0.95)})
    # torch's own checks and messages, per kind
    with pytest.raises(ValueError, match="momentum should be >= 0 but is: -1"):
        optimkit.MuonWithAuxAdam([{"params": hidden, "use_muon": True, "momentum": -1}])
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        optimkit.MuonWithAuxAdam([{"params": other, "use_muon": False, "betas": (0.9, 1.0)}])
    with pytest.raises(ValueError, match="Adjust learning rate function nope is not supported"):
        optimkit.MuonWithAuxAdam(model.parameters(), muon={"adjust_lr_fn": "nope"})
    # Added later, a group is checked the same way; nothing changes on error.
    opt = optimkit.MuonWithAuxAdam([{"params": hidden, "use_muon": True}])
    bad = {"params": other, "use_muon": True}
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        opt.add_param_group(bad)
    assert bad == {"params": other, "use_muon": True} and len(opt.param_groups) == 1
    good = {"params": other, "use_muon": False}
    opt.add_param_group(good)
    assert opt.param_groups[1] is good and good["weight_decay"] == 1e-2 and good["eps"] == 1e-8


def test_muon_step_checks_are_torchs():
    """Complex parameters are refused in a Muon group (torch's message), before any change."""
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
    opt = optimkit.MuonWithAuxAdam([{"params": [p], "use_muon": True}])
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state


def test_registry_entry():
    from optimkit.registry import REGISTRY

    spec = REGISTRY["muonwithauxadam"]
    assert not spec.elementwise and not spec.matrix_only and spec.oracle_cls is None
    # The AdamW part still runs packed (its job's rule is elementwise).
    model = make_model(torch.float32)
    opt = spec.cls(model.parameters())
    step_all(model, [opt], 0)
    assert sum(len(layout.packs) for layout in opt._store.layouts.values()) > 0
