"""Every optimizer: one module each, the update rule (tensor math) and its torch-style class.

Adding an optimizer is one module here and one line below; the registry, the test tables, the
lab, the benchmarks and the CLI find it through this list. ``Lookahead`` lives here too but is
not listed: it wraps an optimizer *instance*, which the registry's ``cls(params, **config)``
cannot build (``optimkit.Lookahead``; its table is ``tests/test_wrappers.py``). Nor are the
low-bit names (``AdamW8bit``...: :mod:`.lowbit`), which are registry optimizers with a
``state_encoding``.
"""

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .adan import Adan
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .asgd import ASGD
from .came import CAME
from .dadapt_adam import DAdaptAdam
from .dadapt_sgd import DAdaptSGD
from .lamb import LAMB
from .lars import LARS
from .lbfgs import LBFGS
from .lion import Lion
from .lookahead import Lookahead as Lookahead  # a wrapper: not in __all__ (see above)
from .mars import MARS
from .muon import Muon
from .muon_aux_adam import MuonWithAuxAdam
from .nadam import NAdam
from .prodigy import Prodigy
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sam import SAM
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeRAdam, ScheduleFreeSGD
from .sgd import SGD
from .soap import SOAP
from .sparse_adam import SparseAdam

__all__ = [
    "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD",
    "Rprop", "SparseAdam", "LBFGS", "Adafactor", "Muon", "Lion", "CAME", "SOAP", "SAM", "Prodigy",
    "DAdaptAdam", "DAdaptSGD", "ADOPT", "Adan", "AdEMAMix", "LAMB", "LARS", "MARS",
    "ScheduleFreeAdamW", "ScheduleFreeSGD", "ScheduleFreeRAdam", "MuonWithAuxAdam",
]  # fmt: skip

WRAPPERS = ["Lookahead"]  # exported by optimkit, outside the registry
#: Registry optimizers under a state encoding, by the names torchao and bitsandbytes give them
#: (exported by optimkit; the registry's tables run the encodings over every optimizer instead).
LOWBIT = ["AdamW8bit", "AdamW4bit", "AdamWFp8", "Adam8bit", "Adam4bit", "AdamFp8", "Lion8bit", "AdEMAMix8bit"]
