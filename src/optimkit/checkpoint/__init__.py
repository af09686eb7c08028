"""Crash-safe checkpoints that resume exactly: one file (``Checkpointer``) or sharded through
``torch.distributed.checkpoint`` (``Checkpointer(distributed=True)``), and ``optimkit ckpt``.

The modules import one way only: :mod:`.format` (the file format, errors, RNG states; imports
none of the others) <- :mod:`.dcp` (the distributed backend) <- :mod:`.checkpointer`
(:class:`Checkpointer`, which hands ``distributed=True`` to :mod:`.dcp`) and :mod:`.cli`
(``describe``, ``inspect``, ``optimkit ckpt show``). ``tests/test_layout.py`` checks it.
"""

from .checkpointer import Checkpointer
from .cli import add_cli, cli_show, describe, inspect
from .format import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load,
)

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "load",
    "inspect",
    "add_cli",
    "cli_show",
    "describe",
]
