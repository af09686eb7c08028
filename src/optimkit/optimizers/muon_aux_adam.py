"""Muon for the hidden matrices, AdamW for everything else: one optimizer, two rules.

Muon is meant for the 2-D weights of hidden layers only; embeddings, the output head, biases
and norm weights are trained with AdamW beside it (Jordan et al. 2024; Liu et al. 2025). Keller
Jordan's ``MuonWithAuxAdam`` does this in one optimizer whose parameter groups carry a
``use_muon`` flag. This is that optimizer on optimkit's own rules: the Muon groups run
:func:`~optimkit.optimizers.muon.muon_` (torch's Muon), the AdamW groups
:func:`~optimkit.optimizers.adam.adam_` (torch's AdamW) -- the same functions, not copies, each
through its own executor (the AdamW groups packed, the Muon groups per tensor, gathered under
FSDP2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..execution import Job, pick
from ..optimizer import Optimizer
from ..rule import Capabilities
from ..transforms import cautious_rule
from ._checks import check_impl_flags
from .adam import adam_, check_adam_args
from .muon import (
    DEFAULT_A,
    DEFAULT_B,
    DEFAULT_C,
    DEFAULT_NS_STEPS,
    EPS,
    check_matrices,
    check_muon_args,
    check_muon_step,
    muon_,
)

__all__ = ["MuonWithAuxAdam", "MUON_DEFAULTS", "ADAMW_DEFAULTS"]

#: torch.optim.Muon's defaults (2.13).
MUON_DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C),
    eps=EPS, ns_steps=DEFAULT_NS_STEPS, adjust_lr_fn=None,
)  # fmt: skip
#: torch.optim.AdamW's defaults (2.13), in its order.
ADAMW_DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False, foreach=None,
    capturable=False, differentiable=False, fused=None, decoupled_weight_decay=True,
)  # fmt: skip


class MuonWithAuxAdam(Optimizer):
    r"""Muon on the groups flagged ``use_muon=True``, AdamW on those flagged ``use_muon=False``:
    exactly ``torch.optim.Muon`` and ``torch.optim.AdamW`` run side by side on the same split.

    Keller Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024
    (https://kellerjordan.github.io/posts/muon/: its ``MuonWithAuxAdam`` is the model for the
    ``use_muon`` groups); Liu et al., "Muon is Scalable for LLM Training" (Moonlight), 2025, for
    ``adjust_lr_fn="match_rms_adamw"``, which gives Muon's update AdamW's RMS so that one
    learning rate and weight decay serve both kinds.

    Each group takes the hyperparameters of its kind, by torch's names; what a group does not
    set comes from ``muon`` / ``adamw``, then ``lr``, then torch's default of that kind (Muon:
    lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients, eps=1e-7,
    ns_steps=5, adjust_lr_fn=None; AdamW: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2, amsgrad=False, ...). A group of one kind holding a hyperparameter only
    the other kind has is refused.

    **A group without ``use_muon``** -- what a plain list of parameters gives, and what
    ``ZeroRedundancyOptimizer`` hands each rank (it regroups a plain list into one group
    without the flag) -- is split by shape at every step: its 2-D parameters take Muon, all
    others AdamW. It holds both kinds' hyperparameters; ``lr``, ``weight_decay`` and ``eps``
    (the names both have) apply to both kinds when set, and are stored as ``None`` -- each
    kind's own default -- where those defaults differ (``weight_decay`` 0.1 / 1e-2, ``eps``
    1e-7 / 1e-8). Keller Jordan's recipe keeps the embedding and the head on AdamW although they
    are 2-D: pass explicit groups for that.

    Args:
        params: parameter groups, each with ``use_muon`` (True: Muon, False: AdamW) or
            without it (split by shape, see above); or a plain iterable of tensors or named
            tensors (one group without ``use_muon``).
        lr (float or Tensor): the learning rate of every group that sets none (default: 1e-3,
            torch's default for both kinds).
        muon (dict): defaults for the Muon groups (``lr``, ``weight_decay``, ``momentum``,
            ``nesterov``, ``ns_coefficients``, ``eps``, ``ns_steps``, ``adjust_lr_fn``).
        adamw (dict): defaults for the AdamW groups (``lr``, ``betas``, ``eps``,
            ``weight_decay``, ``amsgrad``, ``maximize``, ``foreach``, ``capturable``,
            ``differentiable``, ``fused``; and optimkit's ``cautious``, which in a group
            without ``use_muon`` applies to its AdamW part).

    Validation is torch's, per kind: a Muon group refuses parameters that are not 2-D
    (checked for every group, also those added later; torch checks at construction), complex
    parameters and sparse gradients at the step; an AdamW group refuses what torch's AdamW
    does.

    State per parameter: ``momentum_buffer`` (Muon); ``step``, ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq`` with amsgrad (AdamW) -- torch's keys, so a state dict compares equal to
    torch's two optimizers' together.
    """

    #: Built from a model (``create_optimizer("muonwithauxadam", model)``), its groups say
    #: ``use_muon``: hidden weight matrices to Muon, embeddings, head, biases and norms to AdamW.
    model_groups = {"muon": True}

    rule = None
    # Not elementwise as a whole (Muon's groups need whole matrices); each group's job still
    # goes to the executor its own rule calls for -- AdamW's packed or fused, Muon's per tensor.
    capabilities = Capabilities(elementwise=False, complex=False)
    lab_lr = 0.01
    configs = (
        {},
        {"lr": 0.01, "muon": {"adjust_lr_fn": "match_rms_adamw"}, "adamw": {"weight_decay": 0.1}},
        {"muon": {"lr": 0.02, "nesterov": False, "adjust_lr_fn": "original", "weight_decay": 0.0},
         "adamw": {"lr": 3e-3, "betas": (0.8, 0.95), "amsgrad": True, "eps": 1e-10}},
        {"lr": torch.tensor(0.01), "muon": {"ns_steps": 3, "momentum": 0.8}, "adamw": {"maximize": True}},
    )  # fmt: skip

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, *, muon: dict[str, Any] | None = None,
                 adamw: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._kind_defaults = {
            True: _defaults_of_kind(MUON_DEFAULTS, lr, muon, "muon"),
            False: _defaults_of_kind(ADAMW_DEFAULTS, lr, adamw, "adamw"),
        }
        # Each group is filled from the defaults of its kind (add_param_group), as in Keller
        # Jordan's MuonWithAuxAdam, whose defaults are empty as well.
        super().__init__(params, {})

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_kind_defaults": self._kind_defaults}

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, filled with the defaults of its kind and checked as torch checks it
        (see the class docstring); the dict passed in is not changed on error."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        group = dict(param_group)
        kind = group.get("use_muon")
        if "use_muon" in group and not isinstance(kind, bool):
            raise ValueError(f"use_muon must be True (Muon) or False (AdamW), got {kind!r}")
        if kind is None:
            self._fill_split(group)
        else:
            own, other = (MUON_DEFAULTS, ADAMW_DEFAULTS) if kind else (ADAMW_DEFAULTS, MUON_DEFAULTS)
            strays = sorted(k for k in group if k in other and k not in own)
            if strays:
                name, other_name = ("Muon", "AdamW") if kind else ("AdamW", "Muon")
                raise ValueError(
                    f"a {name} group (use_muon={kind}) got {', '.join(strays)}, "
                    f"hyperparameters of {other_name} only"
                )
            if kind and group.get("cautious"):
                raise ValueError("cautious=True is an option of the AdamW groups (optimkit's, see AdamW), not of Muon's")
            for k, v in self._kind_defaults[kind].items():
                group.setdefault(k, v)
        self._check_kinds(group)
        super().add_param_group(group)
        # torch keeps the caller's dict as the group (param_groups[i] is param_group).
        param_group.clear()
        param_group.update(group)
        self.param_groups[-1] = param_group

    def _fill_split(self, group: dict[str, Any]) -> None:
        """A group without ``use_muon``: both kinds' hyperparameters; a name both have whose
        defaults differ is None unless the group sets it (each kind then takes its own)."""
        muon, adamw = self._kind_defaults[True], self._kind_defaults[False]
        for defaults, other in ((muon, adamw), (adamw, muon)):
            for k, v in defaults.items():
                if k not in group:
                    group[k] = v if k not in other or _same(other[k], v) else None

    def _hyper_group(self, group: dict[str, Any], kind: bool) -> dict[str, Any]:
        """The group as the rule of ``kind`` reads it: a None (split groups) is the kind's default."""
        defaults = self._kind_defaults[kind]
        return {**group, **{k: defaults[k] for k in defaults if group.get(k, 0) is None and k in _SHARED}}

    def _check_kinds(self, group: dict[str, Any]) -> None:
        """torch's constructor checks for each kind the group has parameters of."""
        tensors = [p[1] if isinstance(p, tuple) else p for p in _as_list(group["params"])]
        kind = group.get("use_muon")
        for muon in (True, False):
            if kind is not None and kind != muon:
                continue
            g = self._hyper_group(group, muon)
            if muon:
                check_muon_args(g["lr"], g["momentum"], g["weight_decay"], g["adjust_lr_fn"])
                if kind:
                    check_matrices(tensors)
            else:
                group["betas"] = check_adam_args(
                    g["lr"], g["betas"], g["eps"], g["weight_decay"], foreach=g["foreach"], capturable=g["capturable"]
                )  # fmt: skip
                check_impl_flags(g["foreach"], g["fused"], g["differentiable"])
                group["decoupled_weight_decay"] = True

    def _normalize_group(self, group: dict[str, Any]) -> None:
        if group.get("use_muon") is not True:
            group["decoupled_weight_decay"] = True

    # ------------------------------------------------------------------ the step
    def _step_group(self, group: dict[str, Any]) -> None:
        """Each kind's parameters through its own rule and executor: the group's, or (without
        ``use_muon``) the 2-D ones through Muon and the rest through AdamW."""
        params, grads = self._params_with_grad(group)
        kind = group.get("use_muon")
        if kind is None:
            parts = [(k, [i for i, p in enumerate(params) if (p.ndim == 2) == k]) for k in (True, False)]
        else:
            parts = [(kind, list(range(len(params))))]
        for muon, index in parts:
            if not index:
                continue
            ps, gs = [params[i] for i in index], [grads[i] for i in index]
            hyper_group = self._hyper_group(group, muon)
            # AdamW's cautious=True (a group key) makes its step whole-tensor, as in AdamW.
            rule = muon_ if muon else cautious_rule(adam_, group)
            if muon:
                super()._check_group(group, ps)
                check_muon_step(hyper_group, ps)
            elif not group.get("fused"):
                super()._check_group(group, ps)
            job = Job(
                rule=rule, group=group, params=ps, grads=gs, hyper=rule.hyperparameters(hyper_group),
                store=self._store, grad_scale=getattr(self, "grad_scale", None),
                found_inf=getattr(self, "found_inf", None),
            )  # fmt: skip
            pick(job).step(job)


#: The hyperparameters both kinds have (None in a split group: each kind's own default).
_SHARED = frozenset(MUON_DEFAULTS) & frozenset(ADAMW_DEFAULTS)


def _as_list(params: Any) -> list[Any]:
    return [params] if isinstance(params, Tensor) else list(params)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    return type(a) is type(b) and a == b


def _defaults_of_kind(torch_defaults: dict[str, Any], lr: Any, given: dict[str, Any] | None,
                      name: str) -> dict[str, Any]:  # fmt: skip
    """torch's defaults of one kind, with ``lr`` and then the user's ``given`` over them."""
    given = dict(given or {})
    allowed = set(torch_defaults) - {"decoupled_weight_decay"}  # AdamW's is always decoupled
    if name == "adamw":
        allowed.add("cautious")  # optimkit's AdamW option (optimkit.transforms.caution)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{name}= got {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
    return {**torch_defaults, "lr": lr, **given}
