"""The one-file checkpoint format, and what both checkpoint backends share.

This module imports no other part of :mod:`optimkit.checkpoint`: the single-process
:class:`~optimkit.checkpoint.checkpointer.Checkpointer`, the distributed backend
(:mod:`optimkit.checkpoint.dcp`) and the command line (:mod:`optimkit.checkpoint.cli`) build
on it. Its names without a leading underscore are the package's internal API; the public
ones (the errors and :func:`load`) are re-exported by :mod:`optimkit.checkpoint`.

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
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "load",
]

_MAGIC = b"OPTIMKIT-CHECKPOINT"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, damaged or not an optimkit checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects whose loading would run code (refused, never executed)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the objects it is restored into (nothing was changed)."""


# ---------------------------------------------------------------------------- the file format
def encode(payload: dict[str, Any]) -> tuple[bytes, bytes]:
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


def check_data(obj: Any, where: str) -> None:
    if type(obj) in _LEAVES or type(obj) in _TORCH_LEAVES:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            check_data(key, f"a key of {where or 'the checkpoint'}")
            check_data(value, f"{where}[{key!r}]" if where else str(key))
        return
    if type(obj) in _CONTAINERS:
        for i, value in enumerate(obj):
            check_data(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"cannot checkpoint {where}: a {type(obj).__qualname__} ({type(obj).__module__}) is not a "
        "tensor, number, string or a list/tuple/dict of them (checkpoints hold data only, so "
        "that loading one never runs code)"
    )


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
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


def prepare_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Convert saved RNG states back to what the setters take (errors surface before any set)."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "python": (int(version), tuple(int(x) for x in internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
        "torch": torch.as_tensor(state["torch"], dtype=torch.uint8),
        "cuda": state.get("cuda"),
    }


def set_rng(state: dict[str, Any]) -> None:
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


# ---------------------------------------------------------------------------- shared by both backends
def header_fields(step: int) -> dict[str, Any]:
    """The fields every checkpoint file starts with (``load`` checks ``format`` and ``step``)."""
    from .. import __version__

    return {
        "format": _FORMAT,
        "step": step,
        "saved_at": time.time(),
        "versions": {"torch": str(torch.__version__), "optimkit": __version__},
    }


def class_name(obj: Any) -> dict[str, str]:
    return {"class": type(obj).__qualname__, "module": type(obj).__module__}


def fsync_dir(directory: Path) -> None:
    # A rename or a new file is an entry in the directory: until the directory itself is
    # fsynced, a power cut may forget the entry even though the file's data is on disk.
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- describing a checkpoint
def shape_text(shape: Any) -> str:
    return str(tuple(shape))


def human_size(nbytes: int) -> str:
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


def short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return f"tensor({value.item():g})"
        return f"tensor{shape_text(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return f"dict of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def entries(saved: Any) -> dict[str, Any]:
    """The saved objects of one kind, by key: ``{"": entry}`` for one object, ``{key: entry}``
    for several (``Checkpointer.save(optimizer=[a, b])`` saves ``{"several": "list", "items":
    {"0": ..., "1": ...}}``)."""
    if not saved:
        return {}
    if "several" in saved:
        return dict(saved["items"])
    return {"": saved}


def several(value: Any, what: str) -> dict[str, Any] | None:
    """``{key: object}`` for a list or dict of objects (None: one object). Several optimizers
    (or schedulers) are saved under their list positions or dict keys."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{what}=[] holds no {what}")
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        if not value or not all(isinstance(k, str) for k in value):
            raise ValueError(f"a dict of {what}s needs string keys (and at least one {what})")
        return dict(value)
    return None


def saved_entries(value: Any, what: str, entry: Any) -> dict[str, Any]:
    """What a checkpoint holds for one object (``entry(obj)``) or several (see :func:`entries`)."""
    items = several(value, what)
    if items is None:
        return entry(value)
    kind = "list" if isinstance(value, (list, tuple)) else "dict"
    return {"several": kind, "items": {k: entry(v) for k, v in items.items()}}


def pairs(value: Any, saved: Any, what: str, problems: list[str]) -> list[tuple[str, Any, Any]]:
    """``(label, object, saved entry)`` for each object given, or the structural problems."""
    items = several(value, what)
    if items is None:
        if saved and "several" in saved:
            problems.append(f"the checkpoint holds {len(saved['items'])} {what}s ({saved['several']}), one {what} was given")
            return []
        return [("", value, saved)]
    if not saved or "several" not in saved:
        problems.append(f"the checkpoint holds one {what}, {len(items)} were given")
        return []
    if list(saved["items"]) != list(items):
        problems.append(f"the checkpoint's {what}s are {list(saved['items'])}, the {what}s given are {list(items)}")
        return []
    return [(k, items[k], saved["items"][k]) for k in items]


def describe_objects(payload: dict[str, Any]) -> list[str]:
    """The scheduler and scaler lines of :func:`describe` (shared with the distributed format)."""
    lines = []
    for key in ("scheduler", "scaler"):
        for label, entry in entries(payload.get(key)).items():
            fields = ", ".join(
                f"{k}={short(v)}" for k, v in entry["state_dict"].items() if not k.startswith("__")
            )
            name = f"{key} {label}" if label else key
            lines.append(f"{name}: {entry['module']}.{entry['class']}: {fields}")
    return lines


def describe_file(path: Path) -> str:
    """What ``optimkit ckpt show`` prints for a one-file checkpoint (``step-*.ckpt``)."""
    payload = load(path)
    lines = [f"checkpoint {path} ({human_size(path.stat().st_size)}, SHA-256 verified)"]
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(payload.get("saved_at", 0)))
    versions = ", ".join(f"{k} {v}" for k, v in payload.get("versions", {}).items())
    lines.append(f"step: {payload['step']}  (saved {saved}; {versions})")

    model = payload.get("model")
    if model is not None:
        tensors = [(k, v) for k, v in model.items() if isinstance(v, torch.Tensor)]
        numel = sum(v.numel() for _, v in tensors)
        lines.append(f"model: {len(tensors)} tensors, {numel:,} elements, {human_size(_nbytes(model))}")
        for k, v in tensors[:12]:
            lines.append(f"  {k}: {shape_text(v.shape)} {str(v.dtype).removeprefix('torch.')}")
        if len(tensors) > 12:
            lines.append(f"  ... {len(tensors) - 12} more")

    for label, opt in entries(payload.get("optimizer")).items():
        sd = opt["state_dict"]
        groups = sd.get("param_groups", [])
        lines.append(
            f"optimizer{' ' + label if label else ''}: {opt['module']}.{opt['class']}, {len(groups)} group(s), state for "
            f"{len(sd.get('state', {}))} parameter(s), {human_size(_nbytes(sd.get('state', {})))}"
        )
        for i, group in enumerate(groups):
            hyper = ", ".join(
                f"{k}={short(v)}" for k, v in group.items() if k not in ("params", "param_names")
            )
            lines.append(f"  group {i}: {len(group.get('params', []))} params; {hyper}")

    lines += describe_objects(payload)

    rng = payload.get("rng", {})
    names = [k for k in ("python", "numpy", "torch") if k in rng]
    if rng.get("cuda") is not None:
        names.append(f"cuda ({len(rng['cuda'])} device(s))")
    lines.append(f"rng: {', '.join(names) if names else 'none'}")
    extra = payload.get("extra")
    if extra is not None:
        lines.append("extra: " + (", ".join(f"{k}={short(v)}" for k, v in extra.items()) or "{}"))
    return "\n".join(lines)
