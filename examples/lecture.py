"""The classic torch.optim lecture, runnable with optimkit.

Walks the lecture's sections -- step, param_groups, zero_grad, add_param_group, state_dict,
load_state_dict -- with ``import optimkit as optim`` and prints what each one shows. Run it
with ``--torch`` to print the same walk-through with torch.optim: the output is identical
(tests/test_lecture.py checks that, number for number).

    python examples/lecture.py            # optimkit
    python examples/lecture.py --torch    # torch.optim, for comparison
"""

from __future__ import annotations

import argparse
import os
import tempfile
from types import ModuleType

import torch

import optimkit as optim


def lecture(optim: ModuleType, workdir: str) -> dict[str, object]:
    """Print the walk-through; return the objects it printed (for exact comparison)."""
    torch.manual_seed(1)

    print("== 1. step(): one update with lr=0.1 and a gradient of ones")
    weight = torch.randn((2, 2), requires_grad=True)
    weight.grad = torch.ones((2, 2))
    optimizer = optim.SGD([weight], lr=0.1)
    print(f"weight before step:\n{weight.data}")
    optimizer.step()
    print(f"weight after step:\n{weight.data}")
    shown: dict[str, object] = {"after_first_step": weight.detach().clone()}
    print("(every entry moved by -lr * grad = -0.1)")

    print("\n== 2. param_groups hold the very tensor, not a copy")
    print(f"id of the weight in the optimizer: {id(optimizer.param_groups[0]['params'][0])}")
    print(f"id of the weight itself:           {id(weight)}")
    print(f"same object: {optimizer.param_groups[0]['params'][0] is weight}")

    print("\n== 3. zero_grad()")
    print(f"weight.grad before zero_grad():\n{weight.grad}")
    optimizer.zero_grad(set_to_none=False)
    print(f"after zero_grad(set_to_none=False), weight.grad is\n{weight.grad}")
    optimizer.zero_grad()
    print(f"after zero_grad() (default set_to_none=True), weight.grad is {weight.grad}")

    print("\n== 4. add_param_group(): a 3x3 weight with its own lr")
    print(f"optimizer.param_groups is\n{optimizer.param_groups}")
    w2 = torch.randn((3, 3), requires_grad=True)
    optimizer.add_param_group({"params": w2, "lr": 0.0001})
    print(f"optimizer.param_groups is\n{optimizer.param_groups}")
    print(f"the new group's lr: {optimizer.param_groups[1]['lr']}; "
          f"its momentum, from the defaults: {optimizer.param_groups[1]['momentum']}")  # fmt: skip

    print("\n== 5. state_dict(): SGD with momentum 0.9, before and after ten steps")
    optimizer = optim.SGD([weight], lr=0.1, momentum=0.9)
    print(f"state_dict before step:\n{optimizer.state_dict()}")
    for _ in range(10):
        weight.grad = torch.ones((2, 2))
        optimizer.step()
    print(f"state_dict after step:\n{optimizer.state_dict()}")
    shown["after_ten_steps"] = (weight.detach().clone(), optimizer.state_dict())
    path = os.path.join(workdir, "optimizer_state_dict.pkl")
    torch.save(optimizer.state_dict(), path)
    print("saved with torch.save to optimizer_state_dict.pkl")

    print("\n== 6. load_state_dict(): a fresh optimizer picks up where the old one stopped")
    optimizer = optim.SGD([weight], lr=0.1, momentum=0.9)
    state_dict = torch.load(path, weights_only=True)
    print(f"state_dict before load state:\n{optimizer.state_dict()}")
    optimizer.load_state_dict(state_dict)
    print(f"state_dict after load state:\n{optimizer.state_dict()}")
    shown["loaded"] = optimizer.state_dict()
    return shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="use torch.optim instead of optimkit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        lecture(torch.optim if args.torch else optim, workdir)


if __name__ == "__main__":
    main()
