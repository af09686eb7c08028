"""Training checkpoints that resume exactly and survive crashes.

A :class:`Checkpointer` owns one directory holding one run's checkpoints::

    ckpt = Checkpointer("runs/exp1", keep=3)
    step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler) or 0
    while step < total_steps:
        train_one_step()
        step += 1
        ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler)

**What a checkpoint holds.** The model's and optimizer's state dicts, the scheduler's and the
``GradScaler``'s, the step, the random number generators (Python's ``random``, NumPy's global
one, torch's CPU generator and, where CUDA is initialised, every CUDA generator) and the
user's ``extra`` dict. The optimizer's and scheduler's class names are recorded, so a
checkpoint that does not fit is refused naming the difference; ``torch.optim.X`` and
``optimkit.X`` of the same name are interchangeable (their state dicts are the same format).

**File format.** ``step-<step>.ckpt`` is one header line ``OPTIMKIT-CHECKPOINT 1 <size>
<sha256>`` followed by ``<size>`` bytes written by ``torch.save``. The SHA-256 of those bytes
detects truncated and corrupted files. The bytes are read with ``torch.load(...,
weights_only=True)``: only tensors, numbers, strings and containers of them can come back,
never code. ``save`` checks that what it writes is of that kind, so every checkpoint it
writes can be loaded.

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
saved on 4 ranks restores on 2. See :mod:`optimkit.checkpoint_dist`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import os
import pickle
import random
import re
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

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

_MAGIC = b"OPTIMKIT-CHECKPOINT"
_FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.ckpt$")
_TMP_PREFIX = ".step-"
_TMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, damaged or not an optimkit checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects whose loading would run code (refused, never executed)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the objects it is restored into (nothing was changed)."""


# ---------------------------------------------------------------------------- the file format
def _encode(payload: dict[str, Any]) -> tuple[bytes, bytes]:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = b"%s %d %d %s\n" % (_MAGIC, _FORMAT, len(body), hashlib.sha256(body).hexdigest().encode())
    return header, body


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read, verify and safely unpickle a checkpoint file (tensors land on the CPU).

    Raises :class:`CorruptCheckpointError` for a truncated, damaged or foreign file and
    :class:`UnsafeCheckpointError` for a file that would run code when loaded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptCheckpointError(f"cannot read checkpoint {path}: {e}") from e
    header, sep, body = data.partition(b"\n")
    fields = header.split(b" ")
    if not sep or len(fields) != 4 or fields[0] != _MAGIC:
        raise CorruptCheckpointError(f"{path} is not an optimkit checkpoint (no valid header)")
    if fields[1] != str(_FORMAT).encode():
        raise CorruptCheckpointError(f"{path} has checkpoint format {fields[1].decode(errors='replace')}")
    if not fields[2].isdigit() or int(fields[2]) != len(body):
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or damaged: the header promises "
            f"{fields[2].decode(errors='replace')} bytes, the file holds {len(body)}"
        )
    if hashlib.sha256(body).hexdigest().encode() != fields[3]:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupted: its SHA-256 checksum does not match")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The checksum matched, so these are the bytes someone wrote on purpose.
        found = re.search(r"Unsupported (global|operand)[^.]*?(\S+) was not", str(e))
        detail = f"it would call {found.group(2)}" if found else str(e).split("\n")[0]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: loading it would run code ({detail}); "
            "an optimkit checkpoint holds only tensors, numbers and strings"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure means the bytes are not a torch file
        raise CorruptCheckpointError(f"checkpoint {path} is corrupted: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or "step" not in payload:
        raise CorruptCheckpointError(f"{path} is not an optimkit checkpoint (unexpected contents)")
    return payload


# Exactly the types ``torch.load(weights_only=True)`` gives back; ``save`` refuses others.
_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray)
_TORCH_LEAVES = (torch.Tensor, torch.nn.Parameter, torch.dtype, torch.device, torch.Size)
_CONTAINERS = (list, tuple, set)


def _check_data(obj: Any, where: str) -> None:
    if type(obj) in _LEAVES or type(obj) in _TORCH_LEAVES:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_data(key, f"a key of {where or 'the checkpoint'}")
            _check_data(value, f"{where}[{key!r}]" if where else str(key))
        return
    if type(obj) in _CONTAINERS:
        for i, value in enumerate(obj):
            _check_data(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"cannot checkpoint {where}: a {type(obj).__qualname__} ({type(obj).__module__}) is not a "
        "tensor, number, string or a list/tuple/dict of them (checkpoints hold data only, so "
        "that loading one never runs code)"
    )


# ---------------------------------------------------------------------------- RNG states
def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain data
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],  # the uint32 array as ints
        "torch": torch.get_rng_state(),
    }
    # Reading CUDA generators initialises CUDA; a process that has not done so has not
    # used them either, and a resumed process seeds them the same way.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _prepare_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Convert saved RNG states back to what the setters take (errors surface before any set)."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "python": (int(version), tuple(int(x) for x in internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
        "torch": torch.as_tensor(state["torch"], dtype=torch.uint8),
        "cuda": state.get("cuda"),
    }


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            warnings.warn(
                f"the checkpoint holds the RNG states of {len(cuda)} CUDA device(s), this process "
                f"has {have}: CUDA RNG states not restored",
                stacklevel=3,
            )


# ---------------------------------------------------------------------------- the checkpointer
def _header(step: int) -> dict[str, Any]:
    """The fields every checkpoint file starts with (``load`` checks ``format`` and ``step``)."""
    from .. import __version__

    return {
        "format": _FORMAT,
        "step": step,
        "saved_at": time.time(),
        "versions": {"torch": str(torch.__version__), "optimkit": __version__},
    }


def _class_name(obj: Any) -> dict[str, str]:
    return {"class": type(obj).__qualname__, "module": type(obj).__module__}


def _fsync_dir(directory: Path) -> None:
    # A rename or a new file is an entry in the directory: until the directory itself is
    # fsynced, a power cut may forget the entry even though the file's data is on disk.
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Save and restore a training run in ``directory``, keeping the newest ``keep`` checkpoints.

    Args:
        directory: where the checkpoints live (created if needed); one run per directory.
        keep: how many checkpoints to keep (the newest, by step); ``None`` keeps all.
        distributed: save and restore with ``torch.distributed.checkpoint`` (one directory
            per step, sharded; ``save``/``restore`` are then called by every rank); see
            :mod:`optimkit.checkpoint_dist`.

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
            return checkpoint_dist.checkpoints(self.directory)
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
            return checkpoint_dist.path_of(self.directory, step)
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
            return checkpoint_dist.save(
                self.directory, self.keep, step, model=model, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, extra=extra,
            )  # fmt: skip
        payload: dict[str, Any] = {
            **_header(step),
            "model": None if model is None else model.state_dict(),
            "optimizer": None,
            "scheduler": None,
            "scaler": None,
            "rng": _rng_state(),
            "extra": extra,
        }
        if optimizer is not None:
            payload["optimizer"] = {
                **_class_name(optimizer),
                "param_shapes": [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups],
                "state_dict": optimizer.state_dict(),
            }
        for key, obj in (("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                payload[key] = {**_class_name(obj), "state_dict": obj.state_dict()}
        _check_data(payload, "")
        header, body = _encode(payload)

        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)  # the new directory is an entry of its parent
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
        _fsync_dir(self.directory)  # make the rename itself durable before deleting anything
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
            step, self.extra, self.restored_path = checkpoint_dist.restore(
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


def _shape(shape: Any) -> str:
    return str(tuple(shape))


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
                    f"model {k!r} has shape {_shape(v.shape)} in the checkpoint, "
                    f"{_shape(current[k].shape)} in the model"
                )

    optimizer, saved_opt = objects["optimizer"], payload.get("optimizer")
    if optimizer is not None and saved_opt is not None:
        if saved_opt["class"] != type(optimizer).__qualname__:
            problems.append(
                f"checkpoint holds {saved_opt['class']}, optimizer is {type(optimizer).__qualname__}"
            )
        else:
            saved_shapes = saved_opt["param_shapes"]
            shapes = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
            if len(saved_shapes) != len(shapes):
                problems.append(
                    f"the checkpoint's optimizer has {len(saved_shapes)} parameter group(s), "
                    f"the optimizer has {len(shapes)}"
                )
            for i, (a, b) in enumerate(zip(saved_shapes, shapes)):
                if len(a) != len(b):
                    problems.append(
                        f"optimizer group {i} has {len(a)} parameters in the checkpoint, {len(b)} in the optimizer"
                    )
                    continue
                for j, (sa, sb) in enumerate(zip(a, b)):
                    if sa != sb:
                        problems.append(
                            f"optimizer group {i} parameter {j} has shape {_shape(sa)} in the "
                            f"checkpoint, {_shape(sb)} in the optimizer"
                        )

    scheduler, saved_sched = objects["scheduler"], payload.get("scheduler")
    if scheduler is not None and saved_sched is not None:
        if saved_sched["class"] != type(scheduler).__qualname__:
            problems.append(
                f"checkpoint holds scheduler {saved_sched['class']}, scheduler is {type(scheduler).__qualname__}"
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
        rng = _prepare_rng(payload["rng"])
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(f"checkpoint {path} has unusable RNG states: {e}") from e

    # The optimizer, scheduler and scaler are loaded first: each can be put back from a
    # snapshot (loading replaces their state rather than writing into it). The model, whose
    # tensors are written in place, comes last, after its keys and shapes were checked.
    undo = []
    what = ""
    try:
        for what in ("optimizer", "scheduler", "scaler"):
            obj = objects[what]
            if obj is not None:
                before = obj.state_dict() if what == "optimizer" else copy.deepcopy(obj.state_dict())
                obj.load_state_dict(payload[what]["state_dict"])
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
    _set_rng(rng)


# ---------------------------------------------------------------------------- inspect
def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return f"tensor({value.item():g})"
        return f"tensor{_shape(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return f"dict of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_objects(payload: dict[str, Any]) -> list[str]:
    """The scheduler and scaler lines of :func:`describe` (shared with the distributed format)."""
    lines = []
    for key in ("scheduler", "scaler"):
        entry = payload.get(key)
        if entry:
            fields = ", ".join(
                f"{k}={_short(v)}" for k, v in entry["state_dict"].items() if not k.startswith("__")
            )
            lines.append(f"{key}: {entry['module']}.{entry['class']}: {fields}")
    return lines


def describe(path: str | os.PathLike) -> str:
    """What :func:`inspect` prints, as a string."""
    path = Path(path)
    if path.is_dir():
        return checkpoint_dist.describe(path)
    payload = load(path)
    lines = [f"checkpoint {path} ({_size(path.stat().st_size)}, SHA-256 verified)"]
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(payload.get("saved_at", 0)))
    versions = ", ".join(f"{k} {v}" for k, v in payload.get("versions", {}).items())
    lines.append(f"step: {payload['step']}  (saved {saved}; {versions})")

    model = payload.get("model")
    if model is not None:
        tensors = [(k, v) for k, v in model.items() if isinstance(v, torch.Tensor)]
        numel = sum(v.numel() for _, v in tensors)
        lines.append(f"model: {len(tensors)} tensors, {numel:,} elements, {_size(_nbytes(model))}")
        for k, v in tensors[:12]:
            lines.append(f"  {k}: {_shape(v.shape)} {str(v.dtype).removeprefix('torch.')}")
        if len(tensors) > 12:
            lines.append(f"  ... {len(tensors) - 12} more")

    opt = payload.get("optimizer")
    if opt is not None:
        sd = opt["state_dict"]
        groups = sd.get("param_groups", [])
        lines.append(
            f"optimizer: {opt['module']}.{opt['class']}, {len(groups)} group(s), state for "
            f"{len(sd.get('state', {}))} parameter(s), {_size(_nbytes(sd.get('state', {})))}"
        )
        for i, group in enumerate(groups):
            hyper = ", ".join(
                f"{k}={_short(v)}" for k, v in group.items() if k not in ("params", "param_names")
            )
            lines.append(f"  group {i}: {len(group.get('params', []))} params; {hyper}")

    lines += _describe_objects(payload)

    rng = payload.get("rng", {})
    names = [k for k in ("python", "numpy", "torch") if k in rng]
    if rng.get("cuda") is not None:
        names.append(f"cuda ({len(rng['cuda'])} device(s))")
    lines.append(f"rng: {', '.join(names) if names else 'none'}")
    extra = payload.get("extra")
    if extra is not None:
        lines.append("extra: " + (", ".join(f"{k}={_short(v)}" for k, v in extra.items()) or "{}"))
    return "\n".join(lines)


def inspect(path: str | os.PathLike, *, file: TextIO | None = None) -> None:
    """Print what a checkpoint holds (step, objects, optimizer type and hyperparameters,
    sizes) without loading it into a model. Verifies the checksum; never runs code."""
    print(describe(path), file=file if file is not None else sys.stdout)


from . import dcp as checkpoint_dist  # noqa: E402 - it builds on this module's file format


# ---------------------------------------------------------------------------- CLI
def _run_show(args: argparse.Namespace) -> int:
    try:
        inspect(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ckpt show PATH`` on an argparse ``subparsers``; the handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser("ckpt", help="inspect training checkpoints")
    commands = parser.add_subparsers(dest="ckpt_command", required=True)
    show = commands.add_parser("show", help="print what a checkpoint holds")
    show.add_argument("path", help="a checkpoint file (step-*.ckpt) or distributed checkpoint directory (step-*.dcp)")
    show.set_defaults(func=_run_show)
    return parser


def cli_show(argv: list[str]) -> int:
    """``optimkit ckpt show PATH`` as a function: ``cli_show([PATH])`` returns the exit code."""
    parser = argparse.ArgumentParser(prog="optimkit ckpt show", description="print what a checkpoint holds")
    parser.add_argument("path", help="a checkpoint file (step-*.ckpt) or distributed checkpoint directory (step-*.dcp)")
    return _run_show(parser.parse_args(argv))


if __name__ == "__main__":  # python -m optimkit.checkpoint show PATH
    parser = argparse.ArgumentParser(prog="python -m optimkit.checkpoint")
    add_cli(parser.add_subparsers(dest="command", required=True))
    cli_args = parser.parse_args(["ckpt", *sys.argv[1:]])
    sys.exit(cli_args.func(cli_args))
