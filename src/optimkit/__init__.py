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
from .sgd import SGD

# ---- helper-A imports

# ---- helper-B imports

__version__ = "0.1.0"

__all__ = [
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "SGD",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "required",
]
