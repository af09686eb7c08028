"""Training quality of low-bit optimizer state: AdamW with float32, bf16, 8-bit, 4-bit and FP8
moments (optimkit), torchao's AdamW8bit/AdamW4bit/AdamWFp8 and bitsandbytes' AdamW8bit, on the
lab's two small tasks (see docs/memory.md).

python benchmarks/lowbit_quality.py                         # both tasks
python benchmarks/lowbit_quality.py --task digits --digits-steps 200
python benchmarks/lowbit_quality.py --torchao-compile       # torchao as shipped (compiles per shape)

Every optimizer trains the same model from the same initial weights on the same mini-batches
with the same learning rate (the registry's ``lab_lr`` of AdamW, 1e-2) and weight decay (1e-2).
Printed: the final loss (digits: cross-entropy on the whole training set; language model: on
the lab's fixed sample of training windows, and on validation windows), its relative difference
from float32 AdamW, and the parameter drift after ``--drift-steps`` steps: the largest absolute
and the relative L2 difference ``|p - p_fp32| / |p_fp32|`` of all parameters, concatenated,
from the float32 run's parameters after the same steps.

Only tensors of at least 4,096 elements get low-bit state (optimkit, torchao and bitsandbytes
alike); the share of parameters that do is printed per task.

torchao compiles its step per parameter shape (tens of seconds each on 2 CPU cores); by
default it runs here with ``torch.compile`` replaced by the identity -- the same function,
``torchao.optim.adam.single_param_adam``, on the same state subclasses, eagerly.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

import optimkit

LR, WEIGHT_DECAY = 1e-2, 1e-2
REFERENCE = "AdamW fp32"


def _torchao(name: str) -> Callable[[Any], Any]:
    def make(params: Any) -> Any:
        import torchao.optim

        return getattr(torchao.optim, name)(params, lr=LR, weight_decay=WEIGHT_DECAY)

    return make


def _bnb(params: Any) -> Any:
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=LR, weight_decay=WEIGHT_DECAY)


def _ok(cls: Callable[..., Any], **kw: Any) -> Callable[[Any], Any]:
    return lambda params: cls(params, lr=LR, weight_decay=WEIGHT_DECAY, **kw)


#: Name -> optimizer factory (``params -> optimizer``).
OPTIMIZERS: dict[str, Callable[[Any], Any]] = {
    REFERENCE: _ok(optimkit.AdamW),
    "AdamW bf16 state": _ok(optimkit.AdamW, state_encoding="bf16"),
    "AdamW8bit": _ok(optimkit.AdamW8bit),
    "AdamW4bit": _ok(optimkit.AdamW4bit),
    "AdamWFp8": _ok(optimkit.AdamWFp8),
    "torchao AdamW8bit": _torchao("AdamW8bit"),
    "torchao AdamW4bit": _torchao("AdamW4bit"),
    "torchao AdamWFp8": _torchao("AdamWFp8"),
    "bnb AdamW8bit": _bnb,
}


def available(name: str) -> bool:
    """Whether the package ``name``'s optimizer needs is importable."""
    module = "torchao.optim" if name.startswith("torchao") else "bitsandbytes" if name.startswith("bnb") else None
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a package that is missing or broken: the row is skipped
        return False


@contextlib.contextmanager
def torchao_eager(enabled: bool = True) -> Iterator[None]:
    """torchao's step without ``torch.compile`` (the same function, run eagerly)."""
    if not enabled:
        yield
        return
    with mock.patch("torch.compile", lambda fn=None, **kw: fn if fn is not None else (lambda f: f)):
        yield


@dataclass
class Result:
    name: str
    final_loss: float
    val_loss: float | None
    drift: list[torch.Tensor]  # the parameters after drift_steps
    quantized_share: float  # of the parameters with low-bit state (>= 4,096 elements)


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _share(model: torch.nn.Module) -> float:
    sizes = [p.numel() for p in model.parameters()]
    return sum(n for n in sizes if n >= 4096) / sum(sizes)


def train_digits(make: Callable[[Any], Any], steps: int, drift_steps: int = 30, seed: int = 0,
                 data: Any = None) -> Result:  # fmt: skip
    """The lab's digits MLP (``optimkit.lab.digits``: data, model, batch size and batch order)."""
    from optimkit.lab import digits

    data = data if data is not None else digits.load_data(seed)
    model = digits.make_model(seed)
    opt = make(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    n, step, snap = len(data.y_train), 0, None
    while step < steps:
        perm = torch.randperm(n, generator=gen)
        for b in range(0, n, digits.BATCH_SIZE):
            if step == steps:
                break
            idx = perm[b : b + digits.BATCH_SIZE]
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            step += 1
            if step == drift_steps:
                snap = _snapshot(model)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(data.x_train), data.y_train))
    return Result("", loss, None, snap if snap is not None else _snapshot(model), _share(model))


def train_lm(make: Callable[[Any], Any], steps: int, drift_steps: int = 30, seed: int = 0) -> Result:
    """The lab's character-level language model (``optimkit.lab.lm``: corpus, model, batch
    sampling and the fixed evaluation windows, as its trainer does)."""
    from optimkit.lab import lm

    corpus = lm.load_corpus()
    (xt, yt), (xv, yv) = lm._eval_sets(corpus, 32)
    model = lm.make_model(corpus.vocab, seed)
    opt = make(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    data, n, snap = corpus.train, len(corpus.train) - lm.CONTEXT - 1, None
    for step in range(1, steps + 1):
        starts = torch.randint(0, n + 1, (lm.BATCH_SIZE,), generator=gen).tolist()
        x = torch.stack([data[s : s + lm.CONTEXT] for s in starts])
        y = torch.stack([data[s + 1 : s + lm.CONTEXT + 1] for s in starts])
        opt.zero_grad()
        lm._loss(model, x, y).backward()
        opt.step()
        if step == drift_steps:
            snap = _snapshot(model)
    with torch.no_grad():
        train_loss, val_loss = float(lm._loss(model, xt, yt)), float(lm._loss(model, xv, yv))
    return Result("", train_loss, val_loss, snap if snap is not None else _snapshot(model), _share(model))


def drift(a: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, float]:
    """(max |a - ref|, |a - ref|_2 / |ref|_2) over all parameters."""
    d = torch.cat([(x - r).flatten() for x, r in zip(a, ref)])
    r = torch.cat([t.flatten() for t in ref])
    return float(d.abs().max()), float(d.norm() / r.norm())


def compare(task: str, steps: int, drift_steps: int = 30, names: list[str] | None = None,
            compile_torchao: bool = False) -> dict[str, Result]:  # fmt: skip
    """Train ``task`` (``"digits"`` or ``"lm"``) with each optimizer; the float32 one first."""
    names = [n for n in (names or list(OPTIMIZERS)) if available(n)]
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    extra: dict[str, Any] = {}
    if task == "digits":
        from optimkit.lab import digits

        extra["data"] = digits.load_data(0)
    results = {}
    for name in names:
        torch.manual_seed(0)
        with torchao_eager(name.startswith("torchao") and not compile_torchao):
            fn = train_digits if task == "digits" else train_lm
            r = fn(OPTIMIZERS[name], steps, drift_steps, **extra)
        r.name = name
        results[name] = r
    return results


def table(task: str, steps: int, drift_steps: int, results: dict[str, Result]) -> list[str]:
    ref = results[REFERENCE]
    share = next(iter(results.values())).quantized_share
    lines = [
        f"{task}: {steps} steps, lr {LR}, weight decay {WEIGHT_DECAY}; {100 * share:.0f}% of the parameters "
        "in tensors of >= 4,096 elements (low-bit state)",
        "",
        f"| optimizer | final loss | vs fp32 |{' val loss | vs fp32 |' if ref.val_loss is not None else ''} "
        f"max abs drift @{drift_steps} | rel L2 drift @{drift_steps} |",
    ]
    lines.append("|" + "---|" * (lines[-1].count("|") - 1))
    for name, r in results.items():
        rel = (r.final_loss - ref.final_loss) / ref.final_loss
        cells = [name, f"{r.final_loss:.5f}", f"{100 * rel:+.2f}%"]
        if r.val_loss is not None and ref.val_loss is not None:
            cells += [f"{r.val_loss:.5f}", f"{100 * (r.val_loss - ref.val_loss) / ref.val_loss:+.2f}%"]
        mx, l2 = drift(r.drift, ref.drift)
        cells += [f"{mx:.3e}", f"{l2:.3e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["digits", "lm", "both"], default="both")
    parser.add_argument("--digits-steps", type=int, default=300, help="about 14 epochs of 21 batches")
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--drift-steps", type=int, default=30)
    parser.add_argument("--only", help="comma-separated optimizer names (float32 AdamW always runs)")
    parser.add_argument("--torchao-compile", action="store_true", help="torchao with its torch.compile")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for task in (["digits", "lm"] if args.task == "both" else [args.task]):
        steps = args.digits_steps if task == "digits" else args.lm_steps
        results = compare(task, steps, args.drift_steps, names, args.torchao_compile)
        print()
        print("\n".join(table(task, steps, args.drift_steps, results)), flush=True)
        missing = [n for n in (names or OPTIMIZERS) if n not in results]
        if missing:
            print(f"(not importable here: {', '.join(missing)})")


if __name__ == "__main__":
    main()
