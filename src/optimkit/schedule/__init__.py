"""Learning rates over time: torch's schedulers (``lr_scheduler``), schedules as pure functions
(``schedules``), stochastic weight averaging (``swa_utils``) and the LR range test (``lr_finder``).

``optimkit.lr_scheduler`` and ``optimkit.swa_utils`` are these modules, where torch has them
(``torch.optim.lr_scheduler``, ``torch.optim.swa_utils``).
"""

from . import lr_finder, lr_scheduler, schedules, swa_utils

__all__ = ["lr_finder", "lr_scheduler", "schedules", "swa_utils"]
