"""Crash-safe checkpoints that resume exactly: one file (``Checkpointer``) or sharded through
``torch.distributed.checkpoint`` (``Checkpointer(distributed=True)``), and ``optimkit ckpt``."""

from .file import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    add_cli,
    cli_show,
    describe,
    inspect,
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
