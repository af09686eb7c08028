"""optimkit: the PyTorch optimizer system, written from first principles.

``import optimkit as optim`` is a drop-in for ``torch.optim``: same classes, signatures,
defaults, state-dict format and -- on the default path -- the same numbers, bit for bit.
"""

import sys

from .checkpoint import Checkpointer
from .groups import param_groups
from .in_backward import StepInBackward, step_in_backward
from .optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
    required,
)
from .optimizers import *  # noqa: F403 - every optimizer, listed once in optimizers/__init__.py
from .optimizers import LOWBIT as _lowbit
from .optimizers import WRAPPERS as _wrappers
from .optimizers import Lookahead as Lookahead
from .optimizers import __all__ as _optimizers
from .optimizers.lowbit import *  # noqa: F403 - AdamW8bit, ... (optimizers.LOWBIT)
from .registry import create_optimizer
from .schedule import lr_scheduler, schedules, swa_utils
from .schedule.lr_finder import LRFinderResult, find_lr

# torch has ``torch.optim.lr_scheduler`` and ``torch.optim.swa_utils``: ``import
# optimkit.lr_scheduler`` works the same (as ``os.path`` names ``posixpath``).
for _module in (lr_scheduler, schedules, swa_utils):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module

__version__ = "0.1.0"

__all__ = [
    *_optimizers,
    *_wrappers,
    *_lowbit,
    "Optimizer",
    "Checkpointer",
    "create_optimizer",
    "param_groups",
    "find_lr",
    "step_in_backward",
    "StepInBackward",
    "LRFinderResult",
    "lr_scheduler",
    "schedules",
    "swa_utils",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "required",
]
