"""L-BFGS with an optional strong-Wolfe line search (Nocedal & Wright, Numerical Optimization).

Unlike the other optimizers, L-BFGS is not one rule per tensor: it works on the flat vector
of all parameters, re-evaluates the objective through the closure, and keeps one global
state. It reproduces ``torch.optim.LBFGS`` bit for bit, so the arithmetic below is written
in torch's order (the loss is a Python float, directional derivatives are 0-d tensors, and
Python ``min``/``max`` pick between the two, whichever type wins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..execution import sharded as dtensor
from ..ops import to_scalar
from ..optimizer import Optimizer
from ..rule import Capabilities

__all__ = ["LBFGS"]

Number = Any  # a Python float or int, or a 0-d tensor (torch mixes them freely here)


def _cubic_interpolate(
    x1: Number, f1: Number, g1: Number, x2: Number, f2: Number, g2: Number, bounds: tuple | None = None
) -> Number:
    """Minimizer of the cubic through (x1, f1) and (x2, f2) with slopes g1 and g2, clamped
    to ``bounds`` (default: between x1 and x2); the midpoint if the cubic has no minimum.
    Ported by torch from ``polyinterp.lua`` of torch7's optim."""
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:  # (written so that NaN also takes the midpoint, as in torch)
        return (lo + hi) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, lo), hi)


def _strong_wolfe(
    obj_func: Callable[[list[Tensor], Number, Tensor], tuple[float, Tensor]],
    x: list[Tensor],
    t: Number,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, Number, int]:
    """Find a step ``t`` along ``d`` satisfying the strong Wolfe conditions (Nocedal & Wright,
    Algorithms 3.5 and 3.6): sufficient decrease ``f(t) <= f + c1 t g'd`` and curvature
    ``|g(t)'d| <= -c2 g'd``. Returns ``(f(t), g(t), t, evaluations)``. Ported by torch from
    ``lswolfe.lua``; at most ``max_ls`` evaluations after the first.
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = obj_func(x, t, d)
    evals = 1
    gtd_new = g_new.dot(d)

    def armijo_fails(t: Number, f_new: float) -> bool:
        return bool(f_new > (f + c1 * t * gtd))

    def curvature_ok(gtd_new: Tensor) -> bool:
        return bool(abs(gtd_new) <= -c2 * gtd)

    # Phase 1, bracketing: grow the step until an interval [lo, hi] contains a Wolfe point.
    # ``bracket*`` hold the step, value, gradient and slope at the interval's two ends.
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if armijo_fails(t, f_new) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if curvature_ok(gtd_new):
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # Extrapolate: the cubic's minimizer, at least 1% further and at most 10x the step.
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        t_next = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, t = t, t_next
        f_prev = f_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        gtd_prev = gtd_new
        f_new, g_new = obj_func(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

    if ls_iter == max_ls:  # out of evaluations: fall back to [0, t]
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # Phase 2, zoom: shrink the bracket by cubic interpolation until a Wolfe point is found.
    insufficient_progress = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break  # the bracket is too small to matter
        t = _cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        # A trial point too close to an end of the bracket makes little progress: twice in a
        # row (or at/after the end), move it to 10% of the bracket's length from that end.
        b_max, b_min = max(bracket), min(bracket)
        eps = 0.1 * (b_max - b_min)
        if min(b_max - t, t - b_min) < eps:
            if insufficient_progress or t >= b_max or t <= b_min:
                t = b_max - eps if abs(t - b_max) < abs(t - b_min) else b_min + eps
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        f_new, g_new = obj_func(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        if armijo_fails(t, f_new) or f_new >= bracket_f[low]:
            # Not low enough: t becomes the new high end.
            bracket[high], bracket_f[high] = t, f_new
            bracket_g[high] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high] = gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if curvature_ok(gtd_new):
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                # The slope points away from the high end: the old low end becomes the high one.
                bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
            # t becomes the new low end.
            bracket[low], bracket_f[low] = t, f_new
            bracket_g[low] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low] = gtd_new

    return bracket_f[low], bracket_g[low], bracket[low], evals


class LBFGS(Optimizer):
    r"""L-BFGS, exactly as ``torch.optim.LBFGS`` (inspired by minFunc).

    Each ``step(closure)`` runs up to ``max_iter`` quasi-Newton iterations: the direction is
    :math:`-H g` with :math:`H` the limited-memory inverse-Hessian approximation from the last
    ``history_size`` curvature pairs (two-loop recursion, Nocedal & Wright Algorithm 7.4); the
    step length is ``lr`` (the first iteration ever: :math:`\min(1, 1/\|g\|_1)\,\gamma`) or is
    found by a strong-Wolfe line search. Complex parameters are handled as pairs of reals.

    Args:
        params: parameters (one group only; all on one device).
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1).
        max_iter (int): iterations per ``step`` (default: 20).
        max_eval (int or None): function evaluations per ``step`` (default: ``max_iter * 5 // 4``).
        tolerance_grad (float): stop when :math:`\|g\|_\infty` is at most this (default: 1e-7).
        tolerance_change (float): stop when the step or the change of the loss is below this
            (default: 1e-9).
        history_size (int): number of curvature pairs kept (default: 100).
        line_search_fn (str or None): ``"strong_wolfe"`` or None (default: None).

    State (global, stored as torch does under the first parameter): ``func_evals``, ``n_iter``,
    ``d`` (last direction), ``t`` (last step length), ``old_dirs`` / ``old_stps`` (the
    :math:`y` and :math:`s` history), ``ro`` (:math:`1/y^\top s`), ``H_diag`` (initial Hessian
    scale), ``prev_flat_grad``, ``prev_loss``, ``al`` (two-loop workspace).
    """

    # No per-tensor rule: the step works on all parameters at once, with a closure.
    capabilities = Capabilities(closure=True)
    lab_lr = 1.0
    configs = (
        {}, {"lr": 0.1}, {"lr": torch.tensor(0.5)}, {"line_search_fn": "strong_wolfe"},
        {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 6},
        {"line_search_fn": "strong_wolfe", "lr": torch.tensor(0.3), "max_eval": 7, "tolerance_change": 1e-4},
        {"history_size": 3, "max_iter": 7, "max_eval": 9, "lr": 0.5},
        {"tolerance_grad": 1e-3, "tolerance_change": 1e-4}, {"max_iter": 1},
        {"line_search_fn": "strong_wolfe", "max_iter": 1},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn,
        )  # fmt: skip
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params: list[Tensor] = self.param_groups[0]["params"]
        self._numel_cache: int | None = None
        self._refuse_dtensor()

    def _refuse_dtensor(self) -> None:
        if dtensor.any_dtensor(self._params):
            dtensor.refuse(
                "LBFGS",
                "its two-loop recursion and line search take dot products over the whole flattened "
                "parameter vector, which a rank's shards do not hold",
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Not pickled (torch loses them too): rebuild from the one group.
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None

    # ------------------------------------------------------------------ the flat vector
    def _numel(self) -> int:
        if self._numel_cache is None:
            self._numel_cache = sum(2 * p.numel() if p.is_complex() else p.numel() for p in self._params)
        return self._numel_cache

    def _gather_flat_grad(self) -> Tensor:
        """All gradients as one real vector (zeros for a missing gradient)."""
        views = []
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            if view.is_complex():
                view = torch.view_as_real(view).view(-1)
            views.append(view)
        return torch.cat(views, 0)

    def _add_grad(self, step_size: Number, update: Tensor) -> None:
        """``params += step_size * update`` for the flat ``update``."""
        offset = 0
        for p in self._params:
            if p.is_complex():
                p = torch.view_as_real(p)
            numel = p.numel()
            p.add_(update[offset : offset + numel].view_as(p), alpha=step_size)
            offset += numel
        if offset != self._numel():
            raise AssertionError(f"Expected offset {offset} to equal {self._numel()}")

    def _clone_param(self) -> list[Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _set_param(self, params_data: list[Tensor]) -> None:
        for p, data in zip(self._params, params_data, strict=True):
            p.copy_(data)

    def _directional_evaluate(
        self, closure: Callable, x: list[Tensor], t: Number, d: Tensor
    ) -> tuple[float, Tensor]:
        """Loss and flat gradient at ``x + t d``; the parameters are restored to ``x``."""
        self._add_grad(t, d)
        loss = float(closure())
        flat_grad = self._gather_flat_grad()
        self._set_param(x)
        return loss, flat_grad

    # ------------------------------------------------------------------ the step
    def _direction(self, state: dict[str, Any], al: list, flat_grad: Tensor, history_size: int) -> None:
        """Update the curvature history with the last step and set ``state["d"] = -H g``
        (``al`` is the two-loop recursion's workspace)."""
        y = flat_grad.sub(state["prev_flat_grad"])
        s = state["d"].mul(state["t"])
        ys = y.dot(s)
        if ys > 1e-10:  # keep the pair only if it has positive curvature
            if len(state["old_dirs"]) == history_size:
                for key in ("old_dirs", "old_stps", "ro"):
                    state[key].pop(0)
            state["old_dirs"].append(y)
            state["old_stps"].append(s)
            state["ro"].append(1.0 / ys)
            state["H_diag"] = ys / y.dot(y)

        old_dirs, old_stps, ro = state["old_dirs"], state["old_stps"], state["ro"]
        # Two-loop recursion, in one buffer: q = -g, then r = H q.
        q = flat_grad.neg()
        for i in range(len(old_dirs) - 1, -1, -1):
            al[i] = old_stps[i].dot(q) * ro[i]
            q.add_(old_dirs[i], alpha=-al[i])
        r = torch.mul(q, state["H_diag"])
        for i in range(len(old_dirs)):
            be_i = old_dirs[i].dot(r) * ro[i]
            r.add_(old_stps[i], alpha=al[i] - be_i)
        state["d"] = r

    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; ``closure`` re-evaluates the loss and its
        gradients (it is called with gradients enabled). Returns the loss before the step."""
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        self._refuse_dtensor()
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = to_scalar(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]

        # Global state, registered under the first parameter (so load_state_dict casts it).
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss  # already optimal: the state is left as it was

        # torch keeps these entries in local variables and stores them at the end of the step
        # (which fixes the state's key order); ``work`` plays the part of those locals.
        work = {k: state.get(k) for k in ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad")}
        prev_loss = state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # Direction: steepest descent at the very first iteration, else L-BFGS.
            if state["n_iter"] == 1:
                work.update(d=flat_grad.neg(), old_dirs=[], old_stps=[], ro=[], H_diag=1)
            else:
                # Unlike the other entries, torch keeps the workspace in the state right away.
                al = state.setdefault("al", [None] * history_size)
                self._direction(work, al, flat_grad, history_size)
            d = work["d"]

            if work["prev_flat_grad"] is None:
                work["prev_flat_grad"] = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                work["prev_flat_grad"].copy_(flat_grad)
            prev_loss = loss

            # Step length: the first iteration ever is scaled down by the gradient's size.
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)  # directional derivative
            if gtd > -tolerance_change:
                work["t"] = t
                break  # not a descent direction (any more)

            if line_search_fn is not None:
                if line_search_fn != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                x_init = self._clone_param()

                def obj_func(x: list[Tensor], t: Number, d: Tensor) -> tuple[float, Tensor]:
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                # Fixed step; the loss is re-evaluated except after the last iteration (in a
                # stochastic setting that evaluation would be wasted).
                self._add_grad(t, d)
                ls_func_evals = 0
                opt_cond = False
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1
            work["t"] = t
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break  # the step is negligible
            if abs(loss - prev_loss) < tolerance_change:
                break  # the loss no longer changes

        for key in ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad"):
            state[key] = work[key]
        state["prev_loss"] = prev_loss
        return orig_loss
