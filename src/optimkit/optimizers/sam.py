"""SAM: sharpness-aware minimization (Foret et al. 2021); ASAM with ``adaptive=True`` (Kwon et al. 2021).

A wrapper: it perturbs the weights uphill, lets the closure compute the gradient there, puts
the weights back and hands that gradient to any optimizer (optimkit's or torch's), built from
the class passed as ``base_optimizer`` on the same parameter groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..execution import StateStore
from ..execution import sharded as dtensor
from ..optimizer import Optimizer, Oracle
from ..rule import Capabilities
from .adam import AdamW
from .sgd import SGD

__all__ = ["SAM"]

_HALF = (torch.float16, torch.bfloat16)


def _centralize(grad: Tensor) -> None:
    """Gradient centralization (Yong et al. 2020): subtract each output channel's mean, for
    tensors of 2 or more dimensions (pytorch_optimizer's ``centralize_gradient``, in place)."""
    size = grad.dim()
    if size > 1:
        grad.add_(-grad.mean(dim=tuple(range(1, size)), keepdim=True))


def _foreach_norms(grads: list[Tensor]) -> bool:
    """pytorch_optimizer's choice of ``torch._foreach_norm``: one device and dtype, dense, not
    half precision (and, here, not DTensor: those take the per-tensor path, gathered)."""
    first = grads[0]
    return (
        first.dtype not in _HALF
        and all(g.device == first.device and g.dtype == first.dtype and not g.is_sparse for g in grads)
        and not dtensor.any_dtensor(grads)
    )


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization: Foret, Kleiner, Mobahi and Neyshabur, *Sharpness-Aware
    Minimization for Efficiently Improving Generalization* (ICLR 2021); with ``adaptive=True``
    ASAM: Kwon, Kim, Park and Choi, *ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks* (ICML 2021). Checked bit for bit against
    ``pytorch_optimizer.SAM`` 4.1.0 in every dtype.

    One step, with :math:`g = \nabla L(w)` and :math:`T_w = |w|` for ASAM (:math:`T_w = 1` for SAM):

    .. math::
        \|\cdot\| &= \Big(\sum_{\text{tensors}} \|T_w g\|_2^2\Big)^{1/2} + \epsilon \\
        e_w &= \rho\, T_w^2\, g \,/\, \|\cdot\| \\
        w &\leftarrow \text{base\_optimizer step from } \nabla L(w + e_w)

    Args:
        params: parameters, named parameters or parameter groups (a group may set its own
            ``rho`` and ``adaptive``).
        base_optimizer: the optimizer *class* that takes the step (``optimkit.SGD``,
            ``torch.optim.AdamW``, ...); it is built on the same parameter groups with ``**kwargs``.
        rho (float): :math:`\rho`, the radius of the neighbourhood (default: 0.05; ASAM uses
            larger ones, e.g. 0.5 or 2).
        adaptive (bool): ASAM, the perturbation scaled elementwise by :math:`w^2`.
        use_gc (bool): centralize the gradients (2-D and larger) before the perturbation.
        perturb_eps (float): :math:`\epsilon` (default: 1e-12).
        foreach (bool, optional): passed on to the base optimizer when set (as the oracle does).
        **kwargs: the base optimizer's arguments (``lr``, ``momentum``, ``weight_decay``...).

    ``step(closure)`` needs a closure that zeroes the gradients, computes the loss, calls
    ``backward`` and returns the loss, like LBFGS's: it calls it twice, at :math:`w` and at
    :math:`w + e_w`, and returns the first loss. (pytorch_optimizer's ``step`` calls it once and
    expects the gradient at :math:`w` to be there already; code written for it -- ``closure();
    opt.step(closure)`` -- gives the same result here, at the cost of one more evaluation.)
    ``first_step()`` and ``second_step()`` are the oracle's two halves, for loops that compute
    the gradients themselves.

    The gradient norm is the oracle's: each tensor's norm in the gradient's dtype (float32 for
    half precision), then their squares summed in float32 -- also for float64 parameters, so
    that the result is the oracle's bit for bit (:math:`\rho` is known to about 7 digits).
    Under FSDP2 each tensor's norm is a global one (gathered from the shards); the
    perturbation is elementwise.

    ``state`` and ``param_groups`` *are* the base optimizer's; ``state_dict()`` is its state
    dict (the groups also carry ``rho``, ``adaptive`` and ``foreach``), so a run resumes
    exactly, and a checkpoint of ``pytorch_optimizer.SAM`` loads here and back. Between
    ``first_step`` and ``second_step`` the weights before the perturbation are in
    ``state[p]["old_p"]`` (the oracle's key).
    """

    #: step(closure) computes the gradient at w itself (pytorch-optimizer's expects it done
    #: before the call): the lab's SAM driver reads this.
    first_gradient_in_step = True

    capabilities = Capabilities(closure=True, complex=False)
    oracle = Oracle(
        "oracle_adapters:SAM",
        note="pytorch_optimizer.SAM 4.1.0 driven as its docstring says (gradients at w, then step(closure))",
    )
    lab_lr = 0.1
    configs = (
        {"base_optimizer": SGD, "lr": 0.1},
        {"base_optimizer": SGD, "lr": 0.1, "momentum": 0.9, "adaptive": True, "rho": 0.5},
        {"base_optimizer": AdamW, "lr": 1e-2, "weight_decay": 0.1, "rho": 0.1},
        {"base_optimizer": SGD, "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
         "adaptive": True, "rho": 1.0, "use_gc": True, "perturb_eps": 1e-8},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        use_gc: bool = False,
        perturb_eps: float = 1e-12,
        foreach: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if rho < 0.0:
            raise ValueError("rho must be non-negative")
        if perturb_eps < 0.0:
            raise ValueError("perturb_eps must be non-negative")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                "base_optimizer must be an optimizer class (e.g. optimkit.SGD), which SAM builds on its "
                f"parameter groups; got {base_optimizer!r}"
            )
        self.use_gc = use_gc
        self.perturb_eps = perturb_eps
        if foreach is not None:
            kwargs["foreach"] = foreach
        defaults = {"rho": rho, "adaptive": adaptive, "foreach": foreach, **kwargs}
        super().__init__(params, defaults)
        # The groups built above (SAM's keys) become the base optimizer's: it fills in its own
        # defaults in the same dicts, and from now on both see one list.
        self.base_optimizer = base_optimizer(self._groups, **kwargs)
        del self._groups

    # ------------------------------------------------------------------ one set of groups and state
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        base = self.__dict__.get("base_optimizer")
        return self._groups if base is None else base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is None:
            self._groups = groups
        else:
            base.param_groups = groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base_optimizer.state = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer, with SAM's defaults (``rho``, ...) and then its own."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        if "base_optimizer" not in self.__dict__:  # the constructor, before the base exists
            super().add_param_group(param_group)
            return
        group = {**{k: v for k, v in self.defaults.items() if k not in param_group}, **param_group}
        self.base_optimizer.add_param_group(group)
        if self.param_groups and self.param_groups[-1] is group:  # keep the caller's dict, as torch does
            param_group.clear()
            param_group.update(group)
            self.param_groups[-1] = param_group

    def __getstate__(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            "base_optimizer": self.base_optimizer,
            "use_gc": self.use_gc,
            "perturb_eps": self.perturb_eps,
            "_step_count": self._step_count,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._store = StateStore()
        self._compiled = None
        self._restore_bookkeeping()

    # ------------------------------------------------------------------ state dicts: the base optimizer's
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry SAM's ``rho``, ``adaptive``, ``foreach``)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.base_optimizer.state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer (which validates it; groups and state stay shared)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, but got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self.base_optimizer.load_state_dict(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # ------------------------------------------------------------------ the two passes
    @torch.no_grad()
    def _grad_norm(self) -> Tensor:
        """:math:`\\sum \\|T_w g\\|^2` as a float32 tensor of shape (1,), in the oracle's ops."""
        groups = self.param_groups
        device = next((p.device for group in groups for p in group["params"]), torch.device("cpu"))
        grads = []
        for group in groups:
            adaptive = group.get("adaptive", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if adaptive:
                    if grad.dtype in _HALF:
                        grad = grad.float()
                    grad = grad * p.abs()
                grads.append(grad)
        if not grads:
            return torch.zeros(1, dtype=torch.float32, device=device)
        if _foreach_norms(grads):
            norms = list(torch._foreach_norm(grads))
        else:
            norms = [(g.float() if g.dtype in _HALF else g).norm() for g in grads]
            # A DTensor's norm is a partial result on each rank: complete it (a collective).
            norms = [n.full_tensor() if dtensor.is_dtensor(n) else n for n in norms]
        return torch.stack([n.to(device) for n in norms]).float().square_().sum().reshape(1)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move every parameter with a gradient to :math:`w + e_w` (keeping :math:`w` in ``old_p``)."""
        grad_norm = self._grad_norm()
        grad_norm.sqrt_().squeeze_(0).add_(self.perturb_eps)
        for group in self.param_groups:
            scale = group["rho"] / grad_norm
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if self.use_gc:
                    _centralize(grad)
                self.state[p]["old_p"] = p.clone()
                e_w = (
                    (torch.pow(p, 2) if group["adaptive"] else 1.0)
                    * grad
                    * scale.to(device=p.device, dtype=p.dtype)
                )
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Put :math:`w` back and let the base optimizer step with the gradient at :math:`w + e_w`."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.copy_(self.state[p].pop("old_p"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step: ``closure()`` at :math:`w`, ``first_step``, ``closure()`` at
        :math:`w + e_w`, ``second_step``. Returns the loss at :math:`w`."""
        if closure is None:
            raise RuntimeError(
                "SAM requires a closure: step(closure), where closure() zeroes the gradients, computes "
                "the loss, calls backward() and returns the loss (or use first_step()/second_step())"
            )
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss
