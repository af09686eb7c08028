"""Every optimizer: one module each, the update rule (tensor math) and its torch-style class.

Adding an optimizer is one module here and one line below; the registry, the test tables, the
lab, the benchmarks and the CLI find it through this list.
"""

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .lbfgs import LBFGS
from .lion import Lion
from .muon import Muon
from .muon_aux_adam import MuonWithAuxAdam
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam

__all__ = [
    "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD",
    "Rprop", "SparseAdam", "LBFGS", "Adafactor", "Muon", "Lion",
    "MuonWithAuxAdam",
]  # fmt: skip
