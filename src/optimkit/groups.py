r"""Parameter groups from a model: weight decay where it belongs, layer-wise lr decay, and
per-pattern hyperparameters -- the grouping every training codebase rewrites by hand.

:func:`param_groups` walks ``model.named_parameters()`` (frozen parameters are left out) and
sorts each parameter into a group by three questions:

* **weight decay?** Not for biases and other 0-/1-D parameters (``exclude_1d``, timm's
  ``weight_decay_exclude_1d``), not for the parameters of normalization and embedding modules
  (``no_decay_types``), not for names matching ``no_decay`` (shell-style patterns, as timm's
  ``no_weight_decay_list``);
* **which layer?** (with ``layer_decay``) -- the layer id of a parameter: 0 for what comes
  before the model's blocks (embeddings, stem), ``i + 1`` for block ``i``, the last id for what
  comes after (final norm, head); its lr is scaled by :math:`\text{decay}^{L - \text{id}}`
  (BEiT, Bao et al. 2022), so the head learns at the full rate. The blocks are found by
  ``layers`` (a timm ``group_matcher`` dict or callable, the model's own ``group_matcher()``,
  or the longest ``ModuleList``/``Sequential`` of the model);
* **which pattern?** ``overrides`` maps name patterns to hyperparameters for the matching
  parameters (``{"head.*": {"lr_scale": 10.0}}``; the first pattern that matches wins); with
  ``muon=True`` each group says ``use_muon``: hidden weight matrices (2-D, not an embedding,
  not the output head) go to Muon, the rest to AdamW (``MuonWithAuxAdam``).

Each group carries ``params`` as ``(name, tensor)`` pairs -- optimizers (optimkit's, and
torch's since 2.6) keep the names as the group's ``param_names`` -- plus ``weight_decay`` and,
with layer decay, ``lr_scale`` (and ``lr`` = ``lr * lr_scale`` when ``lr`` is given, because
torch's schedulers do not read ``lr_scale``). ``print(groups.summary())`` says which parameter
went where.

Compared with timm 1.0.31 (``tests/test_groups.py``): ``param_groups(model, weight_decay=wd,
no_decay_types=())`` gives timm's ``param_groups_weight_decay(model, wd)``, and with
``layer_decay`` timm's ``param_groups_layer_decay`` -- the same groups, in the same order, with
the same ``lr_scale`` -- except where a model has frozen parameters: timm counts frozen layers
in the depth (issue #2691), so the deepest *trainable* layer does not get scale 1; here the
depth is that of the trainable layers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = ["param_groups", "ParamGroups", "NO_DECAY_TYPES", "layer_ids"]

#: Modules whose parameters get no weight decay by default: normalizations and embeddings.
NO_DECAY_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

Matcher = Mapping[str, Any] | Callable[[str], Any]


class ParamGroups(list):
    """The groups (a plain list of dicts, ready for any optimizer) and :meth:`summary`."""

    def summary(self) -> str:
        """One line per group: its hyperparameters, parameter count and names."""
        lines = []
        for i, group in enumerate(self):
            names = [n for n, _ in group["params"]] if _named(group) else group.get("param_names", [])
            count = sum(p.numel() for p in _tensors(group))
            hyper = ", ".join(f"{k}={_fmt(v)}" for k, v in group.items() if k not in ("params", "param_names"))
            lines.append(f"group {i}: {hyper} -- {len(names)} tensors, {count:,} values")
            lines.extend(f"    {name}" for name in names)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def param_groups(
    model: nn.Module,
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    no_decay: Iterable[str] = (),
    no_decay_types: Sequence[type[nn.Module]] = NO_DECAY_TYPES,
    exclude_1d: bool = True,
    layer_decay: float | None = None,
    layers: Matcher | None = None,
    min_scale: float = 0.0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    muon: bool = False,
    named: bool = True,
) -> ParamGroups:
    """Parameter groups for ``model`` (see the module docstring).

    Args:
        model: the model; its trainable parameters (``requires_grad``) are grouped.
        lr: the base learning rate; with ``layer_decay``, each group gets ``lr * lr_scale``.
            None: groups set no ``lr`` (the optimizer's applies; ``lr_scale`` is still given).
        weight_decay: for the parameters that get it; the others get 0.
        no_decay: name patterns (``fnmatch``: ``"*.bias"``, ``"pos_embed"``) with no decay.
        no_decay_types: module types whose own parameters get no decay (default
            :data:`NO_DECAY_TYPES`: normalizations and embeddings; ``()``: as timm).
        exclude_1d: no decay for 0-/1-D parameters and names ending in ``.bias``.
        layer_decay: lr decay per layer from the output (e.g. 0.75); None: no layer decay.
        layers: how to find the layer of a parameter name: a timm ``group_matcher`` dict
            (``{"stem": r"^embed", "blocks": r"^blocks\\.(\\d+)"}``) or a callable
            ``name -> int``; default: the model's ``group_matcher()`` if it has one, else
            its longest ``ModuleList``/``Sequential`` of blocks.
        min_scale: the smallest ``lr_scale`` (timm's ``min_scale``).
        overrides: ``{pattern: {hyperparameter: value}}`` for the matching names; a value
            for ``lr_scale`` or ``weight_decay`` multiplies (``{"head.*": {"lr_scale": 10}}``),
            any other key is set.
        muon: add ``use_muon`` to every group: True for hidden weight matrices.
        named: ``params`` as ``(name, tensor)`` pairs (False: tensors only).

    Returns:
        :class:`ParamGroups`: a list of group dicts. Without layer decay the groups without
        weight decay come first, then those with it (timm's order); with layer decay, in
        order of first appearance.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups needs an nn.Module, got {type(model).__name__}")
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    no_decay = tuple(no_decay)
    overrides = dict(overrides or {})
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("param_groups: the model has no trainable parameters")
    owners = _owners(model)
    no_decay_types = tuple(no_decay_types)
    head = _head_names(model) if muon else set()

    ids: dict[str, int] = {}
    scales: list[float] = []
    if layer_decay is not None:
        ids = layer_ids(model, layers, [n for n, _ in trainable])
        top = max(ids.values())
        scales = [max(min_scale, layer_decay ** (top - i)) for i in range(top + 1)]

    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in trainable:
        decays = bool(weight_decay) and not (
            (exclude_1d and (p.ndim <= 1 or name.endswith(".bias")))
            or any(fnmatch.fnmatch(name, pat) for pat in no_decay)
            or isinstance(owners[name], no_decay_types)
        )
        hyper: dict[str, Any] = {}
        if layer_decay is not None:
            hyper["lr_scale"] = scales[ids[name]]
        hyper["weight_decay"] = weight_decay if decays else 0.0
        if muon:
            hyper["use_muon"] = p.ndim == 2 and not isinstance(owners[name], (nn.Embedding, nn.EmbeddingBag)) and (
                name not in head
            )
        pattern = next((pat for pat in overrides if fnmatch.fnmatch(name, pat)), None)
        if pattern is not None:
            for k, v in overrides[pattern].items():
                hyper[k] = hyper[k] * v if k in ("lr_scale", "weight_decay") and k in hyper else v
        if lr is not None:
            hyper["lr"] = lr * hyper.get("lr_scale", 1.0)
        key = (ids.get(name, 0), decays, pattern, hyper.get("use_muon"))
        group = groups.setdefault(key, {"params": [], **hyper})
        group["params"].append((name, p) if named else p)
    if layer_decay is None:  # as timm: the groups without weight decay first
        return ParamGroups(group for key, group in sorted(groups.items(), key=lambda kv: kv[0][1]))
    return ParamGroups(groups.values())


def layer_ids(model: nn.Module, layers: Matcher | None = None, names: Sequence[str] | None = None) -> dict[str, int]:
    """The layer id of each parameter name (default: every trainable one), numbered from 0
    (the input side) without gaps over the layers that hold one of ``names``."""
    names = list(names if names is not None else (n for n, p in model.named_parameters() if p.requires_grad))
    if layers is None and callable(getattr(model, "group_matcher", None)):
        layers = model.group_matcher(coarse=False)
    if layers is None:
        ordinal = _block_ordinals(model)
    elif isinstance(layers, Mapping):
        ordinal = _regex_ordinals(layers)
    elif callable(layers):
        ordinal = layers
    else:
        raise TypeError(f"layers must be a group_matcher dict or a callable, got {type(layers).__name__}")
    keys = {n: _as_tuple(ordinal(n)) for n in names}
    # Ordinals sort into layers; a matcher's MATCH_PREV_GROUP suffix (99999) joins the layer before.
    dense: dict[tuple, int] = {}
    lid = -1
    for key in sorted(set(keys.values())):
        if lid < 0 or key[-1] != _MATCH_PREV:
            lid += 1
        dense[key] = lid
    return {n: dense[k] for n, k in keys.items()}


_MATCH_PREV = 99999.0


def _as_tuple(value: Any) -> tuple[float, ...]:
    if isinstance(value, Iterable) and not isinstance(value, str):
        return tuple(float(v) for v in value)
    return (float(value),)


def _regex_ordinals(matcher: Mapping[str, Any]) -> Callable[[str], tuple[float, ...]]:
    """timm's ``group_matcher`` dict: each entry is a regex (or a list of ``(regex, suffix)``);
    a name's ordinal is (entry index, the regex's captured numbers, the suffix)."""
    compiled = []
    for index, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        if isinstance(spec, (tuple, list)):
            compiled += [(re.compile(s[0]), (index,), s[1]) for s in spec]
        else:
            compiled.append((re.compile(spec), (index,), None))

    def ordinal(name: str) -> tuple[float, ...]:
        for pattern, prefix, suffix in compiled:
            m = pattern.match(name)
            if m:
                return tuple(map(float, chain.from_iterable(filter(None, (prefix, m.groups(), suffix)))))
        return (float("inf"),)  # unmatched (neck, head): the last layer

    return ordinal


def _block_ordinals(model: nn.Module) -> Callable[[str], int]:
    """Layers from the model's structure: the longest ``ModuleList``/``Sequential`` whose
    children hold parameters are the blocks (the model itself, if it is one); parameters
    registered before them are layer 0, block ``i`` is ``i + 1``, parameters after them the
    last layer."""
    best, best_name, most = None, "", 0
    for mname, module in model.named_modules():  # the model itself counts (a Sequential model)
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            n = sum(1 for child in module.children() if any(True for _ in child.parameters()))
            if n > most:
                best, best_name, most = module, mname, n
    if best is None:
        raise ValueError(
            "layer_decay: cannot find the model's blocks (no ModuleList or Sequential of modules with parameters); "
            "pass layers= (a timm group_matcher dict or a callable name -> layer id)"
        )
    prefix = best_name + "." if best_name else ""
    order = [n for n, _ in model.named_parameters()]
    first = next(i for i, n in enumerate(order) if n.startswith(prefix))
    children = {name: i for i, (name, _) in enumerate(best.named_children())}
    count = len(children)

    def ordinal(name: str) -> int:
        if name.startswith(prefix):
            return 1 + children[name[len(prefix) :].split(".", 1)[0]]
        return 0 if order.index(name) < first else count + 1

    return ordinal


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """The module that registers each parameter."""
    owners = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = module
    return owners


def _head_names(model: nn.Module) -> set[str]:
    """The output head's parameters: the last Linear registered (often tied to the embedding)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return set()
    name, module = linears[-1]
    return {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}


def _named(group: Mapping[str, Any]) -> bool:
    return bool(group["params"]) and isinstance(group["params"][0], tuple)


def _tensors(group: Mapping[str, Any]) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in group["params"]]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)

