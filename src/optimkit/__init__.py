"""optimkit: the PyTorch optimizer system, written from first principles.

``import optimkit as optim`` is a drop-in for ``torch.optim``: same classes, signatures,
defaults, state-dict format and -- on the default path -- the same numbers, bit for bit.
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
    required,
)
from .registry import create_optimizer
from .sgd import SGD

# ---- helper-A imports

# ---- helper-B imports
# isort: split
from .adafactor import Adafactor
from .lbfgs import LBFGS
from .muon import Muon
from .sparse_adam import SparseAdam

__version__ = "0.1.0"

__all__ = [
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "LBFGS",
    "Muon",
    "Optimizer",
    "create_optimizer",
    "SGD",
    "SparseAdam",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "required",
]
