"""Parameter groups from a model, against timm 1.0.31's helpers on models built here.

timm is installed without its dependencies (its package ``__init__`` imports torchvision,
whose index build breaks CPU torch): its ``optim/_param_groups.py`` and
``models/_manipulate.py`` are loaded as files, with the two names they import from timm
provided here.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import optimkit
from optimkit.groups import layer_ids, param_groups


# ----------------------------------------------------------------------------- timm, as files
@pytest.fixture(scope="module")
def timm_groups():
    spec = importlib.util.find_spec("timm")
    if spec is None:
        pytest.skip("timm==1.0.31 is installed by `make setup` (--no-deps); not here")
    root = Path(spec.submodule_search_locations[0])
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.layers", "timm.models")}
    try:
        sys.modules["timm"] = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")
        layers.use_reentrant_ckpt = lambda *a, **k: False
        sys.modules["timm.layers"] = layers
        manipulate = _load("timm_manipulate", root / "models" / "_manipulate.py")
        models = types.ModuleType("timm.models")
        models.group_parameters = manipulate.group_parameters
        sys.modules["timm.models"] = models
        yield _load("timm_param_groups", root / "optim" / "_param_groups.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT-like: patch embedding, class token, position embedding, blocks, norm, head --
    with timm's ``group_matcher`` for a VisionTransformer."""

    def __init__(self, d=16, depth=4, classes=5):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        self.patch_embed = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def group_matcher(self, coarse=False):
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class ResNet(nn.Module):
    """CNN-like: stem, four stages of conv/BN blocks, head -- with a ResNet ``group_matcher``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        for i in range(1, 5):
            stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            setattr(self, f"layer{i}", stage)
        self.fc = nn.Linear(8, 4)

    def group_matcher(self, coarse=False):
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")


def _same(ours, theirs):
    assert len(ours) == len(theirs)
    for g, t in zip(ours, theirs):
        assert [p for _, p in g["params"]] == t["params"]
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in t.items() if k != "params"}


@pytest.mark.parametrize("make", [ViT, ResNet], ids=["vit", "cnn"])
def test_weight_decay_groups_equal_timm(timm_groups, make):
    model = make()
    _same(param_groups(model, weight_decay=0.05, no_decay_types=()), timm_groups.param_groups_weight_decay(model, 0.05))
    names = ["pos_embed", "cls_token"] if make is ViT else ["conv1.weight"]
    _same(
        param_groups(model, weight_decay=0.05, no_decay_types=(), no_decay=names),
        timm_groups.param_groups_weight_decay(model, 0.05, no_weight_decay_list=names),
    )


@pytest.mark.parametrize("make", [ViT, ResNet], ids=["vit", "cnn"])
@pytest.mark.parametrize("decay", [0.75, 0.5])
def test_layer_decay_groups_equal_timm(timm_groups, make, decay):
    model = make()
    ours = param_groups(model, weight_decay=0.05, no_decay_types=(), layer_decay=decay)
    _same(ours, timm_groups.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay))
    assert max(g["lr_scale"] for g in ours) == 1.0


def test_frozen_parameters_leave_the_depth_of_the_trainable_ones(timm_groups):
    """timm #2691: frozen blocks still count in timm's depth, so the deepest trainable block
    does not get lr_scale 1. Here the depth is the trainable layers'."""
    model = ViT()
    model.norm.requires_grad_(False)
    model.head.requires_grad_(False)
    model.blocks[3].requires_grad_(False)
    ours = param_groups(model, weight_decay=0.05, no_decay_types=(), layer_decay=0.5)
    theirs = timm_groups.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    top = {id(p) for p in model.blocks[2].parameters()}
    assert {g["lr_scale"] for g in ours if top & {id(p) for _, p in g["params"]}} == {1.0}
    # timm: scaled as if the frozen layers above (blocks.3 with the final norm, and the head) trained
    assert {g["lr_scale"] for g in theirs if top & {id(p) for p in g["params"]}} == {0.25}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert not frozen & {id(p) for g in ours for _, p in g["params"]}


def test_defaults_exclude_norms_embeddings_and_biases():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    groups = param_groups(model, weight_decay=0.1)
    assert [[n for n, _ in g["params"]] for g in groups] == [
        ["0.weight", "1.bias", "2.weight", "2.bias", "3.bias"],
        ["1.weight", "3.weight"],
    ]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.1]
    text = groups.summary()
    assert "group 1: weight_decay=0.1 -- 2 tensors, 144 values" in text and "    3.weight" in text
    opt = optimkit.AdamW(groups, lr=1e-3)  # takes the dicts, as torch does: the summary still reads them
    assert opt.param_groups[1]["param_names"] == ["1.weight", "3.weight"]
    assert "group 1: weight_decay=0.1, lr=0.001" in groups.summary()


def test_layer_decay_from_the_model_structure_and_lr():
    model = ViT()
    del ViT.group_matcher  # noqa: B009 - structure only: the longest Sequential is `blocks`
    try:
        ids = layer_ids(model)
    finally:
        ViT.group_matcher = _vit_matcher
    assert ids["cls_token"] == ids["patch_embed.weight"] == 0
    assert ids["blocks.0.norm1.weight"] == 1 and ids["blocks.3.mlp.2.bias"] == 4
    assert ids["norm.weight"] == ids["head.weight"] == 5
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, layers=lambda n: ids[n])
    by_name = {n: g for g in groups for n, _ in g["params"]}
    assert by_name["head.weight"]["lr"] == 1e-3 and by_name["cls_token"]["lr"] == 1e-3 * 0.5**5


_vit_matcher = ViT.group_matcher


def test_overrides_and_muon_split():
    model = nn.ModuleDict(
        {"embed": nn.Embedding(10, 8), "hidden": nn.Linear(8, 8), "norm": nn.LayerNorm(8), "head": nn.Linear(8, 10)}
    )
    groups = param_groups(model, weight_decay=0.1, muon=True, overrides={"head.*": {"lr_scale": 2.0, "betas": (0.9, 0.95)}})
    by_name = {n: g for g in groups for n, _ in g["params"]}
    assert by_name["hidden.weight"]["use_muon"] is True
    assert not any(by_name[n]["use_muon"] for n in ("embed.weight", "hidden.bias", "norm.weight", "head.weight"))
    assert by_name["head.weight"]["lr_scale"] == 2.0 and by_name["head.weight"]["betas"] == (0.9, 0.95)


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        param_groups([torch.zeros(2)])
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(nn.Linear(2, 2), layer_decay=1.5)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(ValueError, match="cannot find the model's blocks"):
        param_groups(nn.Linear(2, 2), layer_decay=0.5)


def test_create_optimizer_from_a_model():
    model = ViT()
    opt = optimkit.create_optimizer("adamw", model, lr=3e-4, weight_decay=0.05, layer_decay=0.75)
    assert isinstance(opt, optimkit.AdamW)
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by_name["head.weight"]["lr"] == 3e-4 and by_name["head.weight"]["weight_decay"] == 0.05
    assert by_name["head.bias"]["weight_decay"] == 0.0
    assert by_name["cls_token"]["lr"] == pytest.approx(3e-4 * 0.75**5)
    # The optimizer's own default weight decay; biases and norms without it.
    opt = optimkit.create_optimizer("adamw", model)
    assert sorted({g["weight_decay"] for g in opt.param_groups}) == [0.0, 1e-2]
    assert len(optimkit.create_optimizer("adamw", model, filter_bias_and_bn=False).param_groups) == 1
    # No weight decay to group by (Rprop), but layer decay still applies.
    opt = optimkit.create_optimizer("rprop", model, layer_decay=0.5, lr=0.01)
    assert "weight_decay" not in opt.param_groups[0] and len(opt.param_groups) == 6
    # Parameters pass as they are; a model-only option on parameters is refused.
    assert len(optimkit.create_optimizer("sgd", model.parameters(), lr=0.1).param_groups) == 1
    with pytest.raises(TypeError, match="need a model"):
        optimkit.create_optimizer("sgd", model.parameters(), lr=0.1, layer_decay=0.5)
    opt = optimkit.create_optimizer("sgd", model, lr=0.1, param_group_fn=lambda m: [{"params": m.head.parameters()}])
    assert len(opt.param_groups[0]["params"]) == 2


def test_create_optimizer_splits_a_model_for_muon_and_wraps_in_lookahead():
    model = nn.ModuleDict(
        {"embed": nn.Embedding(10, 8), "hidden": nn.Linear(8, 8), "norm": nn.LayerNorm(8), "head": nn.Linear(8, 10)}
    )
    opt = optimkit.create_optimizer("muonwithauxadam", model, lr=0.02)
    kinds = {n: g["use_muon"] for g in opt.param_groups for n in g["param_names"]}
    assert kinds == {"embed.weight": False, "hidden.weight": True, "hidden.bias": False, "norm.weight": False,
                     "norm.bias": False, "head.weight": False, "head.bias": False}  # fmt: skip
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by_name["hidden.weight"]["weight_decay"] == 0.1  # Muon's default
    assert by_name["head.weight"]["weight_decay"] == 1e-2  # AdamW's default
    assert by_name["head.bias"]["weight_decay"] == 0.0 and by_name["embed.weight"]["weight_decay"] == 0.0
    opt = optimkit.create_optimizer("muonwithauxadam", model, weight_decay=0.05)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    for spelled in ({"name": "lookahead_adamw"}, {"name": "adamw", "lookahead": {"k": 3}}):
        opt = optimkit.create_optimizer(**spelled, model_or_params=model, lr=1e-3)
        assert isinstance(opt, optimkit.Lookahead) and isinstance(opt.optimizer, optimkit.AdamW)
    assert opt.k == 3
