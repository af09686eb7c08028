"""The lab's settings and budgets (full and ``--quick``), and its progress bars."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from .engine import lab_names, log_grid

__all__ = ["LabConfig", "progress", "torch_threads"]

T = TypeVar("T")


@dataclass
class LabConfig:
    """What to run and how long.

    Attributes:
        quick: small budgets (the whole report in a minute or two on two cores).
        seed: seeds every random choice (initial weights, data split, batch order).
        optimizers: registry names to run; empty means every registered optimizer.
        progress: show progress bars (on stderr).
    """

    quick: bool = False
    seed: int = 0
    optimizers: Sequence[str] = field(default_factory=list)
    progress: bool = True

    @property
    def names(self) -> list[str]:
        return lab_names(self.optimizers)

    # part 4: paths on the test functions
    @property
    def path_steps(self) -> int:
        return 400 if self.quick else 1500

    @property
    def path_grid(self) -> list[float]:
        """Learning rates searched on the test functions: 1e-4 ... 10, one (quick) or two per decade."""
        return log_grid(1e-4, 10.0, 1 if self.quick else 2)

    # part 5: the digits MLP
    @property
    def digits_epochs(self) -> int:
        return 8 if self.quick else 30

    @property
    def digits_search_epochs(self) -> int:
        return 2 if self.quick else 5

    @property
    def digits_search_factors(self) -> list[float]:
        """Multiples of the registry's ``lab_lr`` searched on the digits MLP."""
        return [0.1, 1.0, 10.0] if self.quick else [0.1, 0.316, 1.0, 3.16, 10.0]

    # part 6: the character-level language model
    @property
    def lm_steps(self) -> int:
        return 100 if self.quick else 600

    @property
    def lm_search_steps(self) -> int:
        """Steps of each search run (a multiple of :attr:`lm_eval_every`)."""
        return 20 if self.quick else 100

    @property
    def lm_search_factors(self) -> list[float]:
        """Multiples of the registry's ``lab_lr`` searched on the language model (as on the digits)."""
        return [0.1, 1.0, 10.0] if self.quick else [0.1, 0.316, 1.0, 3.16, 10.0]

    @property
    def lm_eval_every(self) -> int:
        return 10 if self.quick else 20

    @property
    def lm_eval_windows(self) -> int | None:
        """Validation windows the loss is measured on (None: all of them)."""
        return 32 if self.quick else None

    # part 7: resume
    @property
    def resume_steps(self) -> int:
        return 40 if self.quick else 120


def progress(items: Iterable[T], desc: str, enabled: bool, total: int | None = None) -> Iterator[T]:
    """``tqdm`` over ``items`` on stderr (plain iteration when disabled or tqdm is missing)."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the lab extra
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=True, dynamic_ncols=True)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads. The lab's tensors are tiny: one thread is faster (no
    pool hand-offs, which are very slow on a busy machine) and makes the numbers independent
    of the machine's core count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
