"""The optimizer lab: every idea of the lecture, on real computations, as an HTML report.

``optimkit lab [--out DIR] [--quick] [--optimizers ...]`` (or :func:`build_report`) writes
``DIR/index.html`` with its figures (``DIR/fig``) and the numbers behind them
(``DIR/data``, ``DIR/summary.json``):

1. gradient and directional derivative (:mod:`.gradient`);
2. the learning rate on ``4x²`` (:mod:`.learning_rate`);
3. momentum (:mod:`.momentum`);
4. every registered optimizer on Rosenbrock, Beale and Rastrigin (:mod:`.paths`);
5. an MLP on scikit-learn's digits (:mod:`.digits`);
6. a character-level transformer on text that ships with Python (:mod:`.lm`);
7. resuming from a checkpoint (:mod:`.resume`).

The optimizers come from :mod:`optimkit.registry`; the lab needs the ``lab`` extra
(matplotlib, scikit-learn, tqdm). Importing this package imports none of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def build_report(*args: Any, **kwargs: Any) -> Any:
    """See :func:`optimkit.lab.build.build_report`."""
    from .build import build_report as _build

    return _build(*args, **kwargs)
