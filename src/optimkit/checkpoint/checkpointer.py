"""Training checkpoints that resume exactly and survive crashes.

A :class:`Checkpointer` owns one directory holding one run's checkpoints::

    ckpt = Checkpointer("runs/exp1", keep=3)
    step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler) or 0
    while step < total_steps:
        train_one_step()
        step += 1
        ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler)

What a checkpoint holds and its file format: :mod:`optimkit.checkpoint.format`.

**Crash safety.** A checkpoint is written to a temporary file in the same directory,
flushed and fsynced, renamed over its final name (atomic) and the directory is fsynced; only
then are old checkpoints deleted. A crash at any moment leaves the previous checkpoints
intact, and ``restore`` skips (with a warning) a newest checkpoint that is damaged anyway --
by a disk error, or a copy that was cut short.

**Restoring changes nothing unless it all fits.** Every object is checked against the
checkpoint (model keys and shapes, optimizer type, groups and parameter shapes, scheduler
type) before the first one is loaded; a mismatch raises :class:`CheckpointMismatchError`
listing every difference, and nothing -- RNG states included -- has changed.

One process writes to a directory at a time (as with any checkpoint directory).

**Distributed training** (DDP, FSDP2, ZeRO): ``Checkpointer(directory, distributed=True)``
saves with ``torch.distributed.checkpoint`` -- every rank writes its own shards, and a job
saved on 4 ranks restores on 2. See :mod:`optimkit.checkpoint.dcp`.

**Several optimizers and schedulers**: ``optimizer=[a, b]`` or ``{"muon": a, "adamw": b}``
(and the same for ``scheduler``) in ``save`` and ``restore``; each is checked and restored
under its position or key.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from . import dcp
from .format import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    check_data,
    class_name,
    encode,
    fsync_dir,
    header_fields,
    load,
    pairs,
    prepare_rng,
    rng_state,
    saved_entries,
    set_rng,
    shape_text,
)

__all__ = ["Checkpointer"]

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
_TMP_PREFIX = ".step-"
_TMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """Save and restore a training run in ``directory``, keeping the newest ``keep`` checkpoints.

    Args:
        directory: where the checkpoints live (created if needed); one run per directory.
        keep: how many checkpoints to keep (the newest, by step); ``None`` keeps all.
        distributed: save and restore with ``torch.distributed.checkpoint`` (one directory
            per step, sharded; ``save``/``restore`` are then called by every rank); see
            :mod:`optimkit.checkpoint.dcp`.

    After :meth:`restore`, ``extra`` holds the restored ``extra`` dict and ``restored_path``
    the file it came from.
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3, *, distributed: bool = False) -> None:
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive int or None, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.distributed = bool(distributed)
        self.extra: dict[str, Any] | None = None
        self.restored_path: Path | None = None

    def __repr__(self) -> str:
        flag = ", distributed=True" if self.distributed else ""
        return f"Checkpointer({str(self.directory)!r}, keep={self.keep}{flag})"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files (directories if distributed), oldest step first (validity is not checked)."""
        if self.distributed:
            return dcp.checkpoints(self.directory)
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return [path for _, path in sorted(found)]

    def path_of(self, step: int) -> Path:
        if self.distributed:
            return dcp.path_of(self.directory, step)
        return self.directory / f"step-{step:08d}.ckpt"

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        *,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` atomically and return its path.

        Checkpoints of later steps (a run that was rolled back to ``step``) and all but the
        newest ``keep`` are deleted once the new one is safely on disk.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
        if self.distributed:
            return dcp.save(
                self.directory, self.keep, step, model=model, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, extra=extra,
            )  # fmt: skip
        payload: dict[str, Any] = {
            **header_fields(step),
            "model": None if model is None else model.state_dict(),
            "optimizer": None,
            "scheduler": None,
            "scaler": None,
            "rng": rng_state(),
            "extra": extra,
        }
        if optimizer is not None:
            payload["optimizer"] = saved_entries(optimizer, "optimizer", _optimizer_entry)
        if scheduler is not None:
            payload["scheduler"] = saved_entries(scheduler, "scheduler", _entry)
        if scaler is not None:
            payload["scaler"] = _entry(scaler)
        check_data(payload, "")
        header, body = encode(payload)

        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)  # the new directory is an entry of its parent
        path = self.path_of(step)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(body)
                f.flush()  # Python's buffer -> the operating system
                # The data must be on disk *before* the rename makes it visible under its
                # final name; otherwise a power cut can persist the rename but not the data
                # and leave an empty or partial file that looks like the newest checkpoint.
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never a mix
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.directory)  # make the rename itself durable before deleting anything
        self._prune(step)
        return path

    def _prune(self, step: int) -> None:
        paths = self.checkpoints()
        stale = [p for p in paths if int(_NAME.match(p.name).group(1)) > step]
        kept = [p for p in paths if p not in stale]
        if self.keep is not None:
            stale += kept[: -self.keep]
        # Temporary files left by a process killed in the middle of a save.
        stale += [p for p in self.directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}")]
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()
        # Deletions need no fsync: one that a power cut forgets only brings back an old file.

    # ------------------------------------------------------------------ restore
    def restore(
        self,
        *,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        path: str | os.PathLike | None = None,
    ) -> int | None:
        """Restore the newest valid checkpoint (or ``path``) into the objects given and the
        RNG states; return its step, or ``None`` when the directory holds no checkpoint.

        A damaged newest checkpoint is skipped with a warning and the previous one used;
        if every checkpoint is damaged :class:`CorruptCheckpointError` is raised (starting
        over would silently discard the run). A checkpoint that does not fit the objects
        raises :class:`CheckpointMismatchError` and changes nothing; one whose loading would
        run code raises :class:`UnsafeCheckpointError` (it is never skipped silently).
        """
        if self.distributed:
            step, self.extra, self.restored_path = dcp.restore(
                self.directory, model=model, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, path=path,
            )  # fmt: skip
            return step
        if path is not None:
            payload, path = load(path), Path(path)
        else:
            candidates = self.checkpoints()[::-1]
            if not candidates:
                return None
            for path in candidates:
                try:
                    payload = load(path)
                    break
                except UnsafeCheckpointError:
                    raise
                except CorruptCheckpointError as e:
                    warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
            else:
                raise CorruptCheckpointError(
                    f"no valid checkpoint in {self.directory}: all {len(candidates)} are damaged"
                )
        objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        _apply(payload, path, objects)
        self.extra = payload["extra"]
        self.restored_path = path
        return payload["step"]


def _entry(obj: Any) -> dict[str, Any]:
    return {**class_name(obj), "state_dict": obj.state_dict()}


def _optimizer_entry(optimizer: Any) -> dict[str, Any]:
    return {
        **class_name(optimizer),
        "param_shapes": [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups],
        "state_dict": optimizer.state_dict(),
    }


def _check_fit(payload: dict[str, Any], objects: dict[str, Any]) -> list[str]:
    """Every way the checkpoint does not fit the objects, as sentences (empty: it fits)."""
    problems = []
    for key, obj in objects.items():
        if obj is not None and payload.get(key) is None:
            problems.append(f"the checkpoint holds no {key} state, but a {key} was given")

    model = objects["model"]
    if model is not None and payload.get("model") is not None:
        saved, current = payload["model"], model.state_dict()
        missing = [k for k in current if k not in saved]
        unexpected = [k for k in saved if k not in current]
        if missing:
            problems.append(f"model keys missing from the checkpoint: {missing}")
        if unexpected:
            problems.append(f"checkpoint keys the model does not have: {unexpected}")
        for k, v in saved.items():
            if k in current and isinstance(v, torch.Tensor) and v.shape != current[k].shape:
                problems.append(
                    f"model {k!r} has shape {shape_text(v.shape)} in the checkpoint, "
                    f"{shape_text(current[k].shape)} in the model"
                )

    if objects["optimizer"] is not None and payload.get("optimizer") is not None:
        for label, optimizer, saved_opt in pairs(objects["optimizer"], payload["optimizer"], "optimizer", problems):
            problems += [f"optimizer {label}: {p}" if label else p for p in _optimizer_fit(optimizer, saved_opt)]
    if objects["scheduler"] is not None and payload.get("scheduler") is not None:
        for label, scheduler, saved_sched in pairs(objects["scheduler"], payload["scheduler"], "scheduler", problems):
            if saved_sched["class"] != type(scheduler).__qualname__:
                problems.append(
                    f"checkpoint holds scheduler {label + ' ' if label else ''}{saved_sched['class']}, "
                    f"scheduler is {type(scheduler).__qualname__}"
                )
    return problems


def _optimizer_fit(optimizer: Any, saved_opt: dict[str, Any]) -> list[str]:
    """How one optimizer does not fit its saved entry: class, groups, parameter shapes."""
    if saved_opt["class"] != type(optimizer).__qualname__:
        return [f"checkpoint holds {saved_opt['class']}, optimizer is {type(optimizer).__qualname__}"]
    problems = []
    saved_shapes = saved_opt["param_shapes"]
    shapes = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    if len(saved_shapes) != len(shapes):
        problems.append(
            f"the checkpoint's optimizer has {len(saved_shapes)} parameter group(s), the optimizer has {len(shapes)}"
        )
    for i, (a, b) in enumerate(zip(saved_shapes, shapes)):
        if len(a) != len(b):
            problems.append(f"optimizer group {i} has {len(a)} parameters in the checkpoint, {len(b)} in the optimizer")
            continue
        for j, (sa, sb) in enumerate(zip(a, b)):
            if sa != sb:
                problems.append(
                    f"optimizer group {i} parameter {j} has shape {shape_text(sa)} in the "
                    f"checkpoint, {shape_text(sb)} in the optimizer"
                )
    return problems


def _apply(payload: dict[str, Any], path: Path, objects: dict[str, Any]) -> None:
    """Check everything, then load everything; on a failure undo what was loaded."""
    problems = _check_fit(payload, objects)
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} (step {payload['step']}) does not fit, nothing was restored:\n  - "
            + "\n  - ".join(problems)
        )
    try:
        rng = prepare_rng(payload["rng"])
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(f"checkpoint {path} has unusable RNG states: {e}") from e

    # The optimizer, scheduler and scaler are loaded first: each can be put back from a
    # snapshot (loading replaces their state rather than writing into it). The model, whose
    # tensors are written in place, comes last, after its keys and shapes were checked.
    undo = []
    what = ""
    try:
        for what in ("optimizer", "scheduler", "scaler"):
            if objects[what] is None:
                continue
            for _, obj, saved in pairs(objects[what], payload[what], what, []):
                before = obj.state_dict() if what == "optimizer" else copy.deepcopy(obj.state_dict())
                obj.load_state_dict(saved["state_dict"])
                undo.append((obj, before))
        what = "model"
        if objects["model"] is not None:
            objects["model"].load_state_dict(payload["model"])
    except Exception as e:
        for obj, before in reversed(undo):
            obj.load_state_dict(before)
        # (A model is not copied beforehand -- that could double the memory it takes --, so a
        # model whose keys and shapes fit but whose load still fails may be partly loaded.)
        outcome = "the model may be partly loaded" if what == "model" else "nothing was restored"
        raise CheckpointMismatchError(
            f"restoring the {what} from {path} failed, {outcome}: {type(e).__name__}: {e}"
        ) from e
    set_rng(rng)
