"""optimkit: the PyTorch optimizer system, written from first principles.

``import optimkit as optim`` is a drop-in for ``torch.optim``: same classes, signatures,
defaults, state-dict format and -- on the default path -- the same numbers, bit for bit.
"""

from . import lr_scheduler, schedules, swa_utils
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .checkpoint import Checkpointer
from .lbfgs import LBFGS
from .lr_finder import LRFinderResult, find_lr
from .muon import Muon
from .nadam import NAdam
from .optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
    required,
)
from .radam import RAdam
from .registry import create_optimizer
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "Checkpointer",
    "create_optimizer",
    "find_lr",
    "LRFinderResult",
    "lr_scheduler",
    "schedules",
    "swa_utils",
    "SGD",
    "SparseAdam",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "required",
]
