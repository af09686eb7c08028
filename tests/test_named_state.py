"""Name-keyed state: an optimizer built from named parameters loads state by name.

Adding, removing and reordering parameters between save and load: every parameter that
survives continues bit-identical to an uninterrupted run; the report names the rest
(``missing``, ``unexpected``, ``mismatched`` as ``Module.load_state_dict``); ``strict=True``
raises and changes nothing; torch's positional state dicts still load.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optimkit
from harness import assert_same


def model(layers=("a", "b", "c"), widths=None, seed=0):
    torch.manual_seed(seed)
    widths = widths or {}
    return nn.ModuleDict({name: nn.Linear(4, widths.get(name, 4)) for name in layers})


def train(m, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        opt.zero_grad()
        sum(layer(x).pow(2).mean() for layer in m.values()).backward()
        opt.step()


def copy_params(dst, src):
    with torch.no_grad():
        for name, p in dst.named_parameters():
            if name in dict(src.named_parameters()):
                p.copy_(dict(src.named_parameters())[name])


@pytest.mark.parametrize(
    "change",
    ["reorder", "add", "remove", "add-and-remove"],
)
def test_surviving_parameters_continue_bit_identically(change):
    before = ("a", "b", "c")
    after = {"reorder": ("c", "a", "b"), "add": ("a", "new", "b", "c"), "remove": ("a", "c"),
             "add-and-remove": ("new", "c", "a")}[change]  # fmt: skip
    ref = model(before)
    ref_opt = optimkit.AdamW(ref.named_parameters(), lr=0.01, weight_decay=0.1)
    train(ref, ref_opt, 5)
    saved = copy.deepcopy(ref_opt.state_dict())

    m = model(after, seed=1)
    copy_params(m, ref)
    opt = optimkit.AdamW(m.named_parameters(), lr=0.01, weight_decay=0.1)
    with pytest.raises(ValueError, match="by parameter name") if change != "reorder" else _nothing():
        opt.load_state_dict(saved)
    if change != "reorder":
        assert opt.state_dict()["state"] == {}  # strict refused: nothing changed
        report = opt.load_state_dict(saved, strict=False)
        assert report.missing == [f"new.{k}" for k in ("weight", "bias")] * ("new" in after)
        assert report.unexpected == [f"b.{k}" for k in ("weight", "bias")] * ("b" not in after)
    else:
        assert opt.load_state_dict(saved) == ([], [], [])
    # Both continue: every surviving layer moves exactly as in the uninterrupted run (the
    # layers train independently: the loss is a sum over layers).
    train(ref, ref_opt, 3, seed=1)
    train(m, opt, 3, seed=1)
    for name in set(before) & set(after):
        assert_same(m[name].weight.detach(), ref[name].weight.detach(), name)
        assert_same(opt.state[m[name].weight]["exp_avg"], ref_opt.state[ref[name].weight]["exp_avg"], name)
    if "new" in after:  # a new parameter starts fresh: its step count is 3
        assert opt.state[m["new"].weight]["step"].item() == 3


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_changed_shape_is_reported_and_left_fresh():
    ref = model()
    ref_opt = optimkit.Adam(ref.named_parameters())
    train(ref, ref_opt, 2)
    m = model(widths={"b": 6})
    opt = optimkit.Adam(m.named_parameters())
    with pytest.raises(ValueError, match=r"b.weight: saved state has shape \(4, 4\), the parameter has shape \(6, 4\)"):
        opt.load_state_dict(ref_opt.state_dict())
    report = opt.load_state_dict(ref_opt.state_dict(), strict=False)
    assert [n for n, _, _ in report.mismatched] == ["b.weight", "b.bias"]
    assert m["b"].weight not in opt.state and m["a"].weight in opt.state


def test_positional_dicts_still_load_and_names_survive_a_torch_round_trip():
    ref = model()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.01, foreach=False)  # torch, no names
    train(ref, ref_opt, 3)
    m = model()
    copy_params(m, ref)
    opt = optimkit.AdamW(m.named_parameters(), lr=0.01)
    opt.load_state_dict(ref_opt.state_dict())  # positional
    assert opt.param_groups[0]["param_names"] == [n for n, _ in m.named_parameters()]
    train(ref, ref_opt, 2, seed=1)
    train(m, opt, 2, seed=1)
    assert_same([p.detach() for p in m.parameters()], [p.detach() for p in ref.parameters()])
    # optimkit's named state dict loads into torch (positional there) and back.
    theirs = torch.optim.AdamW(model().named_parameters(), lr=0.01, foreach=False)
    theirs.load_state_dict(opt.state_dict())


def test_group_hyperparameters_by_group_and_a_different_group_count():
    ref = model()
    ref_opt = optimkit.SGD(
        [{"params": list(ref["a"].named_parameters(prefix="a")), "lr": 0.5},
         {"params": list(ref["b"].named_parameters(prefix="b")) + list(ref["c"].named_parameters(prefix="c"))}],
        lr=0.1, momentum=0.9,
    )  # fmt: skip
    train(ref, ref_opt, 2)
    m = model()
    opt = optimkit.SGD(m.named_parameters(), lr=0.2, momentum=0.9)  # one group now
    with pytest.raises(ValueError, match="2 saved parameter groups, 1 in the optimizer"):
        opt.load_state_dict(ref_opt.state_dict())
    opt.load_state_dict(ref_opt.state_dict(), strict=False)
    assert opt.param_groups[0]["lr"] == 0.2  # its own: the groups do not correspond
    assert torch.equal(opt.state[m["a"].weight]["momentum_buffer"], ref_opt.state[ref["a"].weight]["momentum_buffer"])
