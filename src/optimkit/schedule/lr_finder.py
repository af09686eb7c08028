r"""The learning-rate range test (Smith 2017; fastai's ``lr_find``).

:func:`find_lr` trains for ``num_iter`` mini-batches while the learning rate grows from
``start_lr`` to ``end_lr`` (geometrically by default), records the loss, stops once the loss
diverges, and suggests a learning rate from the smoothed loss curve:

* **valley** (the suggestion): halfway down the descent of the smoothed loss -- between the
  point where it starts to fall and its minimum (see :func:`valley_index`; a variant of
  fastai's default);
* **steepest**: where the smoothed loss falls fastest per unit of ``log(lr)`` before its
  minimum.

Afterwards model and optimizer are restored *exactly* -- parameters, buffers, gradients,
optimizer state and hyperparameters, bit for bit, the same tensor objects -- and so is
torch's random number generator, so training continues as if the test had never run.

The sweep is written into the param groups by :class:`optimkit.schedules.HyperparamScheduler`,
so a group's ``lr_scale`` is honoured: ``lrs`` are the unscaled learning rates.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .lr_scheduler import _STEP_COUNTER, _untrack_optimizer_steps
from .schedules import HyperparamScheduler, exponential, linear

__all__ = ["find_lr", "LRFinderResult", "plot_lr_find"]


# ---------------------------------------------------------------------------------------------
# Suggestions (pure functions of the curve)
# ---------------------------------------------------------------------------------------------
def _window(n: int, num_iter: int) -> tuple[int, int]:
    """Indices [lo, hi) the suggestions look at: skip the first tenth and the last 5 points."""
    lo, hi = num_iter // 10, n - 5
    if hi - lo < 3:
        lo, hi = 0, n
    return lo, hi


def steepest_index(lrs: list[float], losses: list[float]) -> int | None:
    """Where the loss falls fastest per unit of ``log(lr)`` (central differences), looking
    only up to the loss minimum: past it the curve is noise on the way to divergence."""
    n = len(lrs)
    if n < 2:
        return None
    stop = min(range(n), key=losses.__getitem__) + 1
    logs = [math.log(lr) for lr in lrs]
    best, best_slope = None, math.inf
    for i in range(stop):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        if logs[b] == logs[a]:
            continue
        slope = (losses[b] - losses[a]) / (logs[b] - logs[a])
        if slope < best_slope:
            best, best_slope = i, slope
    return best


def valley_index(losses: list[float], onset: float = 0.1) -> int | None:
    """Halfway down the valley: between the onset of the descent and the loss minimum.

    The descent starts at the last point before the minimum whose loss is still within
    ``onset`` (10%) of the total fall from the highest loss before the minimum; the
    suggestion is the midpoint (in iterations, i.e. the geometric midpoint of the lrs for an
    exponential sweep) of that stretch. fastai's ``valley`` takes the midpoint of the longest
    decreasing *subsequence* instead, which on a curve with a long flat start spreads over
    the flat part: on the digits MLP it suggested 6e-4 for Adam, whose best lr is ~3e-2;
    this rule gives 3e-2 to 7e-2.
    """
    n = len(losses)
    if n < 3:
        return None
    low = min(range(n), key=losses.__getitem__)
    if low == 0:
        return None  # the loss never decreased: no valley
    top = max(range(low + 1), key=lambda i: (losses[i], i))
    threshold = losses[top] - onset * (losses[top] - losses[low])
    start = max(i for i in range(top, low + 1) if losses[i] >= threshold)
    return (start + low) // 2


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass
class LRFinderResult:
    """The range test's curve and suggestions.

    Attributes:
        lrs: the (unscaled) learning rate of every iteration run.
        losses: the raw mini-batch losses.
        smoothed_losses: the debiased exponential moving average of ``losses``.
        valley_lr / steepest_lr: the two suggestions (``None`` if the curve is too short).
        suggested_lr: ``valley_lr`` (falls back to ``steepest_lr``).
        diverged: whether the test stopped early because the loss diverged.
        plot_path: where the plot was saved, if it was.
    """

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    valley_lr: float | None
    steepest_lr: float | None
    diverged: bool
    num_iter: int
    step_mode: str
    plot_path: str | None = None
    _indices: dict[str, int | None] = field(default_factory=dict, repr=False)

    @property
    def suggested_lr(self) -> float | None:
        return self.valley_lr if self.valley_lr is not None else self.steepest_lr

    def plot(self, path: str | None = None, ax: Any = None, show_raw: bool = True) -> Any:
        """Draw the curve with the suggestions marked; see :func:`plot_lr_find`."""
        return plot_lr_find(self, path=path, ax=ax, show_raw=show_raw)


def plot_lr_find(
    result: LRFinderResult, path: str | None = None, ax: Any = None, show_raw: bool = True
) -> Any:
    """Plot loss against learning rate (log axis), marking the valley and steepest suggestions.

    Draws into ``ax`` if given, else into a new figure (matplotlib's Agg canvas; pyplot and
    the global backend are not touched). Saves a PNG to ``path`` if given. Returns the figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    lrs, smooth = result.lrs, result.smoothed_losses
    if show_raw:
        ax.plot(lrs, result.losses, color="0.75", lw=1, label="loss (mini-batch)")
    ax.plot(lrs, smooth, color="C0", lw=2, label="loss (smoothed)")
    ax.set_xscale("log" if result.step_mode == "exp" else "linear")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    title = "LR range test"
    if result.diverged:
        title += f" (stopped at iteration {len(lrs)}: loss diverged)"
    ax.set_title(title)
    idx = result._indices
    marks = [
        ("steepest", idx.get("steepest"), "C1", "v"),
        ("valley (suggested)", idx.get("valley"), "C3", "o"),
    ]
    for name, i, color, marker in marks:
        if i is None:
            continue
        ax.plot(
            [lrs[i]],
            [smooth[i]],
            marker=marker,
            color=color,
            ms=9,
            ls="none",
            label=f"{name}: {lrs[i]:.2e}",
            zorder=5,
        )
    if idx.get("valley") is not None:
        ax.axvline(lrs[idx["valley"]], color="C3", ls="--", lw=1)
    # Keep the interesting part in view: the divergent tail may be orders of magnitude up.
    finite = [v for v in smooth if math.isfinite(v)]
    if finite:
        low = min(finite)
        best = smooth.index(low)
        high = max(v for v in smooth[: best + 1] if math.isfinite(v))
        if show_raw:
            raw_head = [v for v in result.losses[: best + 1] if math.isfinite(v)]
            if raw_head:
                high = max([high, *raw_head[len(raw_head) // 10 :]])
                low = min(low, *raw_head)
        span = max(high - low, abs(low) * 1e-3, 1e-12)
        ax.set_ylim(low - 0.1 * span, high + 0.25 * span)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="lower left")
    if path is not None:
        fig.savefig(path)
        result.plot_path = str(path)
    return fig


# ---------------------------------------------------------------------------------------------
# Exact snapshots of model, optimizer and RNG
# ---------------------------------------------------------------------------------------------
_SCALARS = (int, float, bool, str, type(None))


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _restore_value(original: Any, saved: Any) -> Any:
    """The original object with the saved contents (tensors copied in place), else the copy."""
    if isinstance(original, torch.Tensor) and isinstance(saved, torch.Tensor):
        if original.shape == saved.shape and original.dtype == saved.dtype:
            with torch.no_grad():
                original.copy_(saved)
            return original
    return saved


class _Snapshot:
    """Everything the range test changes, saved so that it can be put back bit for bit."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        tensors: dict[int, torch.Tensor] = {}
        for t in itertools.chain(model.parameters(), model.buffers()):
            tensors[id(t)] = t
        for group in optimizer.param_groups:
            for p in group["params"]:
                tensors[id(p)] = p
        self.tensors = [
            (t, t.detach().clone(), t.grad, None if t.grad is None else t.grad.detach().clone())
            for t in tensors.values()
        ]
        self.training = [(m, m.training) for m in model.modules()]
        self.optimizer = optimizer
        self.group_list = list(optimizer.param_groups)
        self.groups = [
            (g, {k: (v, _copy(v)) for k, v in g.items() if k != "params"}, g["params"], list(g))
            for g in optimizer.param_groups
        ]
        self.state = {p: (s, {k: (v, _copy(v)) for k, v in s.items()}) for p, s in optimizer.state.items()}
        self.attrs = {k: v for k, v in optimizer.__dict__.items() if isinstance(v, _SCALARS)}
        self.attr_keys = set(optimizer.__dict__)
        self.tracked = _STEP_COUNTER in optimizer.__dict__
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        opt = self.optimizer
        if not self.tracked:
            _untrack_optimizer_steps(opt)
        with torch.no_grad():
            for t, saved, grad, saved_grad in self.tensors:
                t.copy_(saved)
                if grad is not None:
                    grad.copy_(saved_grad)
                t.grad = grad
        for module, mode in self.training:
            module.training = mode
        opt.param_groups[:] = self.group_list
        for group, entries, params, order in self.groups:
            values = {k: _restore_value(original, saved) for k, (original, saved) in entries.items()}
            values["params"] = params
            group.clear()
            group.update((k, values[k]) for k in order)  # the same dict, same key order
        opt.state.clear()
        for p, (state, entries) in self.state.items():
            state.clear()
            for k, (original, saved) in entries.items():
                state[k] = _restore_value(original, saved)
            opt.state[p] = state
        for k in set(opt.__dict__) - self.attr_keys:
            del opt.__dict__[k]
        opt.__dict__.update(self.attrs)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


# ---------------------------------------------------------------------------------------------
# The range test
# ---------------------------------------------------------------------------------------------
def _batches(data: Any) -> Iterator[Any]:
    """Endless batches: ``data`` re-iterated as often as needed; an ``(inputs, targets)``
    pair of tensors, or one dict batch, is one batch, repeated."""
    one_pair = isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    if one_pair or isinstance(data, Mapping):
        while True:
            yield data
    if not isinstance(data, Iterable):
        raise TypeError(f"find_lr: `data` must be an iterable of batches (a DataLoader), got {type(data).__name__}")
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("find_lr: `data` yielded no batches")


def _check_batch(batch: Any, loss_fn: Callable[..., torch.Tensor] | None) -> None:
    """Refuse, before the sweep, a batch that :func:`_loss` cannot use."""
    if isinstance(batch, Mapping):
        return
    if isinstance(batch, (tuple, list)):
        if loss_fn is not None and len(batch) < 2:
            raise TypeError(
                f"find_lr: a batch of length {len(batch)} has no targets for loss_fn; give "
                "(inputs, targets, ...) batches, or loss_fn=None for a model that returns its loss"
            )
        return
    if isinstance(batch, torch.Tensor):
        if loss_fn is not None:
            raise TypeError(
                "find_lr: a batch that is one tensor has no targets for loss_fn; give (inputs, targets) "
                "batches, or loss_fn=None for a model that returns its loss"
            )
        return
    raise TypeError(
        f"find_lr: cannot use a batch of type {type(batch).__name__}; give (inputs, targets, ...) tuples, "
        "dicts of keyword arguments (Hugging Face batches), or tensors with loss_fn=None"
    )


def _output_loss(output: Any) -> torch.Tensor:
    """The loss a model returned: ``output.loss`` (Hugging Face's ModelOutput), ``output["loss"]``
    or the output itself when it is a scalar tensor."""
    loss = output
    if isinstance(output, Mapping) and "loss" in output:
        loss = output["loss"]
    elif not isinstance(output, torch.Tensor) and hasattr(output, "loss"):
        loss = output.loss
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.reshape(())
    if loss is None:
        raise TypeError(
            "find_lr: the model's output has loss=None; a Hugging Face model computes its loss only when "
            "the batch has `labels` (for causal LMs, labels=input_ids)"
        )
    raise TypeError(
        f"find_lr: loss_fn=None needs the model to return its loss (`.loss`, ['loss'] or a scalar tensor); "
        f"it returned {type(output).__name__}: pass loss_fn"
    )


def _loss(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor] | None, batch: Any) -> torch.Tensor:
    """One batch's loss. A dict batch is passed as keyword arguments, ``model(**batch)``;
    ``(inputs, targets, ...)`` gives ``loss_fn(model(inputs), targets)``. Without ``loss_fn``
    the model's output carries the loss (tuples are passed positionally, ``model(*batch)``)."""
    if isinstance(batch, Mapping):
        output = model(**batch)
        return _output_loss(output) if loss_fn is None else loss_fn(output, batch)
    if isinstance(batch, torch.Tensor):
        return _output_loss(model(batch))
    if loss_fn is None:
        try:
            output = model(*batch)
        except TypeError as e:
            raise TypeError(
                f"find_lr: with loss_fn=None a tuple batch is passed positionally, model(*batch), and "
                f"that failed ({e}); pass loss_fn to train on model(inputs) against targets"
            ) from e
        return _output_loss(output)
    return loss_fn(model(batch[0]), batch[1])


def _check_plot(plot: str | None) -> None:
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError(
            f"find_lr(plot={plot!r}) needs matplotlib, which is not installed (pip install matplotlib, or "
            "the `lab` extra); refused before the sweep. Without plot=, the result's .plot() draws it later"
        )


def _to(value: Any, device: Any) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    data: Iterable[Any],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    step_mode: str = "exp",
    smooth_beta: float = 0.95,
    diverge_th: float = 4.0,
    plot: str | None = None,
    progress: bool = True,
    device: Any = None,
) -> LRFinderResult:
    """Run the LR range test and restore ``model`` and ``optimizer`` exactly afterwards.

    Args:
        model: the model; it is put in training mode for the test (and back after).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters. Its lr is
            overwritten by the sweep (times each group's ``lr_scale``); everything else --
            momentum, betas, weight decay -- is used as configured.
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar tensor``; for dict batches
            ``loss_fn(model(**batch), batch)``. None: the model returns its loss -- a Hugging
            Face model's ``output.loss``, ``output["loss"]``, or a scalar tensor.
        data: an iterable of batches (a ``DataLoader``), restarted when exhausted: ``(inputs,
            targets, ...)`` tuples, dicts passed as keyword arguments (``model(**batch)``,
            Hugging Face's batches), or -- with ``loss_fn=None`` -- tensors or tuples passed
            positionally; or one ``(inputs, targets)`` pair of tensors, used every step.
            A batch it cannot use is refused before the sweep.
        start_lr, end_lr, num_iter: the sweep: ``num_iter`` steps from ``start_lr`` to ``end_lr``.
        step_mode: ``"exp"`` (geometric, the default) or ``"linear"``.
        smooth_beta: the loss is smoothed by a debiased exponential moving average with this
            factor (0.95, as torch-lr-finder; fastai uses 0.98, which lags ~50 iterations).
        diverge_th: stop once the smoothed loss exceeds ``diverge_th`` times its minimum
            (or the loss is not finite).
        plot: a path: save the plot there (PNG; needs matplotlib, checked before the sweep).
        progress: show a progress bar (tqdm, if installed).
        device: move each batch there first.

    Returns:
        An :class:`LRFinderResult`: the curve, ``suggested_lr`` (valley), ``steepest_lr``,
        and ``plot()``.
    """
    if step_mode not in ("exp", "linear"):
        raise ValueError(f"step_mode must be 'exp' or 'linear', got {step_mode!r}")
    if not isinstance(num_iter, int) or num_iter < 2:
        raise ValueError(f"num_iter must be an integer >= 2, got {num_iter!r}")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if not 0 <= smooth_beta < 1:
        raise ValueError(f"smooth_beta must be in [0, 1), got {smooth_beta}")
    if diverge_th <= 1:
        raise ValueError(f"diverge_th must be > 1, got {diverge_th}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"find_lr: loss_fn must be callable or None, got {type(loss_fn).__name__}")
    _check_plot(plot)
    batches = _batches(data)
    first = next(batches)
    _check_batch(first, loss_fn)
    batches = itertools.chain([first], batches)

    sweep = (exponential if step_mode == "exp" else linear)(start_lr, end_lr, num_iter - 1)
    snapshot = _Snapshot(model, optimizer)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    diverged = False
    try:
        model.train()
        scheduler = HyperparamScheduler(optimizer, {"lr": sweep})
        steps: Iterable[int] = range(num_iter)
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is an optional dependency
                pass
            else:
                bar = tqdm(steps, desc="LR range test", unit="step", leave=False)
                steps = bar
        avg, best = 0.0, math.inf
        for i in steps:
            batch = _to(next(batches), device)
            first_loss: list[float] = []

            def closure(batch: Any = batch, first: list = first_loss) -> torch.Tensor:
                optimizer.zero_grad()
                loss = _loss(model, loss_fn, batch)
                loss.backward()
                first.append(float(loss.detach()))  # LBFGS evaluates several times: keep the first
                return loss

            lr = sweep(i)
            optimizer.step(closure)
            loss = first_loss[0]
            scheduler.step()
            lrs.append(lr)
            losses.append(loss)
            avg = smooth_beta * avg + (1 - smooth_beta) * loss
            value = avg / (1 - smooth_beta ** (i + 1))
            smoothed.append(value)
            if bar is not None:
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{value:.4g}", refresh=False)
            if not math.isfinite(loss) or not math.isfinite(value) or value > diverge_th * best:
                diverged = True
                break
            best = min(best, value)
        if bar is not None:
            bar.close()
    finally:
        snapshot.restore()

    lo, hi = _window(len(lrs), num_iter)
    finite = all(math.isfinite(v) for v in smoothed[lo:hi])
    window_lrs, window_losses = lrs[lo:hi], smoothed[lo:hi]
    steep = steepest_index(window_lrs, window_losses) if finite else None
    valley = valley_index(window_losses) if finite else None
    indices = {
        "steepest": None if steep is None else lo + steep,
        "valley": None if valley is None else lo + valley,
    }
    result = LRFinderResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        valley_lr=None if valley is None else lrs[lo + valley],
        steepest_lr=None if steep is None else lrs[lo + steep],
        diverged=diverged,
        num_iter=num_iter,
        step_mode=step_mode,
        _indices=indices,
    )
    if plot is not None:
        result.plot(plot)
    return result
