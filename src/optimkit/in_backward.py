r"""The step inside backward: each parameter is stepped as soon as its gradient is ready, and
the gradient is freed.

An ordinary training step holds every gradient at once: ``loss.backward()`` fills all of them,
``optimizer.step()`` reads them, ``zero_grad()`` frees them. With :func:`step_in_backward`, a
hook (``Tensor.register_post_accumulate_grad_hook``, as in PyTorch's tutorial *How to save
memory by fusing the optimizer step into the backward pass*) steps each parameter the moment
autograd has accumulated its gradient, then sets ``p.grad = None``: at most a few gradients
are alive at a time, so the peak memory of a step falls by about the size of the gradients
(``optimkit.bench_backward`` measures it).

The parameters come out **bit-identical** to the ordinary loop's: each parameter runs the same
rule, through the same executors, with the group's hyperparameters as they are when its hook
fires (:meth:`optimkit.Optimizer._step_params`; small parameters are not packed, which an
elementwise rule does not notice: :mod:`optimkit.execution.unpacked`).

``optimizer.step()`` is still called once per iteration. It is the end of the iteration: the
parameters stepped in backward have no gradient left, so it updates nothing twice; it runs the
step hooks, counts ``_step_count`` (LR schedulers, torch's and optimkit's, see a step and do
not warn), and steps, as ever, any parameter that has a gradient the hooks did not see (one
assigned by hand, or of a parameter frozen when the hooks were registered). A scheduler's
change of ``lr`` takes effect at the next backward. ``zero_grad()`` is harmless. Parameters
added with ``add_param_group`` are hooked by the next ``step()`` at the latest (until then
``step()`` steps them, as ordinary), and ``load_state_dict`` may be called at any time.
``state_dict()`` / ``load_state_dict()`` are the optimizer's own: checkpoints resume
bit-identically, and a state dict moves freely between this mode and the ordinary one.

What cannot work, refused with an error before anything changes:

* a ``step(closure)`` that re-evaluates the loss (LBFGS, SAM) and wrappers that change the
  parameters at ``step()`` (Lookahead);
* rules over all parameters at once: sums over a group (Prodigy, DAdaptAdam, DAdaptSGD), a
  global gradient norm (Adan with ``max_grad_norm > 0``, LAMB with ``pre_norm``);
* optimizers whose ``step()`` does more than each parameter's rule -- group step counters
  (Adan, LAMB, LARS, MARS, SOAP), Schedule-Free's group averages, ``MuonWithAuxAdam``'s two
  rules per group;
* ``compile=True`` (its graphs are built for packs of a group), ``differentiable=True``, a
  parameter listed twice, parameters that already hold a gradient;
* **gradient accumulation over several backward passes**: a parameter whose gradient arrives a
  second time before ``optimizer.step()`` raises ``RuntimeError`` (its first gradient was
  already applied and freed). Accumulate in the loss instead (sum the micro-batches' losses
  before one ``backward()``), or step after every backward.

What it cannot detect: anything that reads all the gradients between ``backward()`` and
``step()`` sees none -- **gradient clipping by the global norm** (``clip_grad_norm_`` returns
0 and clips nothing), ``GradScaler``'s unscaling and inf checks (the step already used the
scaled gradients), logging of gradient norms. Clip per parameter inside the rule's inputs, or
use the ordinary loop.

Example::

    import torch
    import optimkit

    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = optimkit.AdamW(model.parameters(), lr=1e-3)
    sched = optimkit.lr_scheduler.StepLR(opt, step_size=10)
    with optimkit.step_in_backward(opt):        # or handle = ...; handle.remove()
        for _ in range(20):
            loss = model(torch.randn(16, 8)).square().mean()
            loss.backward()                     # each parameter is stepped here; grads freed
            opt.step()                          # the end of the iteration: hooks, _step_count
            sched.step()
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .optimizer import Optimizer

__all__ = ["step_in_backward", "StepInBackward", "ACCUMULATION_ERROR"]

#: The message of the error a second gradient of a parameter before ``step()`` raises.
ACCUMULATION_ERROR = (
    "step_in_backward: a parameter received a second gradient before optimizer.step() was called. "
    "Each parameter is stepped (and its gradient freed) as soon as backward has accumulated its "
    "gradient, so gradients cannot be accumulated over several backward passes. Accumulate in the "
    "loss instead (add up the micro-batches' losses and call backward() once), or call "
    "optimizer.step() after every backward()."
)

# The optimizers with an active handle (one per optimizer).
_active: weakref.WeakKeyDictionary[Optimizer, StepInBackward] = weakref.WeakKeyDictionary()


def step_in_backward(optimizer: Optimizer) -> StepInBackward:
    """Step each parameter of ``optimizer`` during backward, as soon as its gradient is ready,
    and free the gradient (see :mod:`optimkit.in_backward`).

    Returns:
        :class:`StepInBackward`: ``.remove()`` restores the ordinary behaviour; it is also a
        context manager that removes itself on exit.

    Raises:
        TypeError: ``optimizer`` is not an optimkit optimizer.
        ValueError: the optimizer cannot be stepped one parameter at a time (the message says
            why); nothing has been changed.
    """
    return StepInBackward(optimizer)


def _why_not(opt: Any) -> str | None:
    """Why ``opt`` cannot be stepped one parameter at a time inside backward (None: it can)."""
    from .optimizers import WRAPPERS, Adan

    name = type(opt).__name__
    caps = opt.caps()
    if name in WRAPPERS:
        return (
            f"{name} wraps another optimizer and moves the parameters itself at step() "
            "(every k steps); enable step_in_backward on the inner optimizer only without the wrapper"
        )
    if caps.closure:
        return (
            f"{name}.step() needs a closure that re-evaluates the loss (a line search, or SAM's second "
            "pass); a step inside backward has no loss to re-evaluate"
        )
    if isinstance(opt, Adan) and opt.defaults.get("max_grad_norm", 0.0) > 0.0:
        return (
            "Adan with max_grad_norm > 0 scales every gradient by the global gradient norm over all "
            "parameters, which is not known until the whole backward has run"
        )
    if any(group.get("pre_norm") for group in opt.param_groups):
        return (
            f"{name} with pre_norm=True scales every gradient by the global gradient norm over all "
            "parameters, which is not known until the whole backward has run"
        )
    if opt.rule is None:
        return f"{name} has no per-parameter update rule (its step() is written whole)"
    if caps.scope == "group" or any(opt._rule_for(g).caps.scope == "group" for g in opt.param_groups):
        return (
            f"{name}'s step needs sums over all parameters (its step size, scope='group'), "
            "which are not known until the whole backward has run"
        )
    base = (Optimizer.step, Optimizer._step_group)
    if (type(opt).step, type(opt)._step_group) != base:
        return (
            f"{name}.step() does per-step work beyond each parameter's rule (group step counters or "
            "values computed over a group), which a step of one parameter at a time cannot reproduce"
        )
    if opt.compile:
        return "compile=True compiles the step of whole groups; use compile=False with step_in_backward"
    if any(group.get("differentiable") for group in opt.param_groups):
        return "differentiable=True records the step in autograd's graph; it cannot run inside backward"
    params = [p for group in opt.param_groups for p in group["params"]]
    if len({id(p) for p in params}) != len(params):
        return "a parameter is listed twice (the ordinary step updates it twice, a hook only once)"
    if any(p.grad is not None for p in params):
        return (
            "some parameters already have a gradient, which backward would add to: call "
            "optimizer.zero_grad() (or step()) before enabling step_in_backward"
        )
    return None


class StepInBackward:
    """The hooks that step ``optimizer``'s parameters inside backward (:func:`step_in_backward`).

    Attributes:
        optimizer: the optimizer.
        active: False once :meth:`remove` was called.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"step_in_backward needs an optimkit optimizer, got {type(optimizer).__module__}."
                f"{type(optimizer).__qualname__}"
            )
        if optimizer in _active:
            raise ValueError("step_in_backward is already enabled for this optimizer (remove() it first)")
        reason = _why_not(optimizer)
        if reason is not None:
            raise ValueError(f"step_in_backward cannot step {type(optimizer).__name__}: {reason}")
        self.optimizer = optimizer
        self.active = True
        self._hooks: dict[int, RemovableHandle] = {}
        self._group_of: dict[int, dict[str, Any]] = {}
        self._key: tuple = ()
        self._stepped: set[int] = set()
        self._profile_name = f"Optimizer.step_in_backward#{type(optimizer).__name__}"
        self._sync()
        self._end = optimizer.register_step_post_hook(self._end_of_iteration)
        _active[optimizer] = self

    # ------------------------------------------------------------------ hooks
    def _groups_key(self) -> tuple:
        return tuple((id(g), len(g["params"])) for g in self.optimizer.param_groups)

    def _sync(self) -> None:
        """Map each parameter to its group and hook every parameter that requires a gradient
        (again after ``add_param_group`` or ``load_state_dict``, which replaces the groups)."""
        self._group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in self._hooks and p.requires_grad:
                    self._hooks[id(p)] = p.register_post_accumulate_grad_hook(self._step_param)
        for pid in [pid for pid in self._hooks if pid not in self._group_of]:
            self._hooks.pop(pid).remove()
        self._key = self._groups_key()

    def _step_param(self, p: torch.Tensor) -> None:
        """The hook: step ``p`` with its gradient, then free the gradient."""
        if not self.active or p.grad is None:
            return
        if id(p) in self._stepped:
            raise RuntimeError(ACCUMULATION_ERROR)
        if self._groups_key() != self._key:
            self._sync()
        group = self._group_of.get(id(p))
        if group is None:  # no longer optimized by this optimizer
            return
        opt = self.optimizer
        with torch.no_grad(), torch.autograd.profiler.record_function(self._profile_name):
            params, grads = opt._params_with_grad({"params": [p]})  # its sparse-gradient check
            opt._step_params(group, params, grads, packed=False)
        self._stepped.add(id(p))
        p.grad = None

    def _end_of_iteration(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped.clear()
        if self._groups_key() != self._key:
            self._sync()

    # ------------------------------------------------------------------ handle
    def remove(self) -> None:
        """Remove the hooks: backward fills gradients and ``step()`` uses them, as usual."""
        if not self.active:
            return
        self.active = False
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._end.remove()
        if _active.get(self.optimizer) is self:
            del _active[self.optimizer]

    def __enter__(self) -> StepInBackward:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<StepInBackward {type(self.optimizer).__name__} ({state}, {len(self._hooks)} parameters)>"
