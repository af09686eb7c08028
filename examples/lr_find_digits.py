"""LR range test on scikit-learn's bundled digits (no download): plot, suggestion, check.

    python examples/lr_find_digits.py [--out docs/img/lr_find.png] [--optimizer adam|sgd]

Runs ``optimkit.find_lr`` on a small MLP, saves the plot, checks that model and optimizer
came back bit-identical, then trains a fresh MLP for 200 steps at the suggested lr and at
10x below and above it, and prints the final training losses.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from sklearn.datasets import load_digits

import optimkit
from optimkit.schedule.lr_finder import find_lr

ROOT = Path(__file__).resolve().parents[1]


class Batches:
    """Shuffled mini-batches of 64, the same order on every pass for a given seed."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, seed: int = 0) -> None:
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed))
        for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return optimkit.Adam(params, lr=lr)
    return optimkit.SGD(params, lr=lr, momentum=0.9)


def train_loss(x, y, name: str, lr: float, steps: int = 200) -> float:
    model = mlp()
    opt = make_optimizer(name, model.parameters(), lr)
    done = 0
    while done < steps:
        for xb, yb in Batches(x, y, seed=1 + done):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    return loss if math.isfinite(loss) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "lr_find.png"))
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    model = mlp()
    opt = make_optimizer(args.optimizer, model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = find_lr(
        model, opt, torch.nn.functional.cross_entropy, Batches(x, y), num_iter=100, plot=args.out
    )
    restored = all(torch.equal(p, q) for p, q in zip(model.parameters(), before)) and not opt.state
    print(f"plot: {args.out}")
    print(f"suggested lr (valley): {result.suggested_lr:.3g}   steepest: {result.steepest_lr:.3g}")
    print(f"model and optimizer restored bit-identically: {restored}")
    print(f"{'lr':>12}  200-step training loss ({args.optimizer})")
    for factor, label in ((0.1, "suggested/10"), (1.0, "suggested"), (10.0, "suggested*10")):
        lr = result.suggested_lr * factor
        print(f"{lr:12.3g}  {train_loss(x, y, args.optimizer, lr):.4f}   {label}")


if __name__ == "__main__":
    main()
