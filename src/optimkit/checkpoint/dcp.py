"""The distributed mode of :class:`optimkit.Checkpointer`, built on ``torch.distributed.checkpoint``.

``Checkpointer(directory, distributed=True)`` is used the same way as the single-process
one, but ``save`` and ``restore`` are collective: every rank calls them, with the same step.
What it writes, per step, is one directory on a filesystem all ranks share::

    step-00000100.dcp/
        .metadata, __0_0.distcp, ...   torch.distributed.checkpoint (DCP): model + optimizer,
                                       each rank writing its own shards, resharded on load
        meta.ckpt                      step, class names, scheduler, scaler, extra, world size
                                       (optimkit's checksummed, code-free format; rank 0)
        rng-<rank>.ckpt                each rank's random number generators

The model's and optimizer's state come from torch's ``get_state_dict`` (parameter names as
keys, DTensor shards under FSDP2), so a job saved on 4 ranks restores on 2 (or on 1, or 8):
DCP reads the slices each rank now owns. RNG states are per rank; a rank that did not exist
when the checkpoint was written keeps its generators (with a warning).

**Crash safety** as in the single-process mode: everything is written (and fsynced, DCP's
``sync_files``) into ``.step-<step>.dcp.tmp``; after a barrier rank 0 renames it to its final
name and fsyncs the directory, and only then deletes old checkpoints. A directory without a
valid ``meta.ckpt`` is not a checkpoint; ``restore`` falls back past damaged ones.

**Restoring changes nothing unless it all fits.** Class names are compared first, then DCP
loads into *copies* of the current state (so a missing key or a shape mismatch leaves the
model and optimizer untouched), and only then is everything set. The copies cost the memory
of one extra model + optimizer state per rank during ``restore``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .format import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    check_data,
    class_name,
    describe_objects,
    encode,
    entries,
    fsync_dir,
    header_fields,
    human_size,
    load,
    pairs,
    prepare_rng,
    rng_state,
    saved_entries,
    set_rng,
    several,
    short,
)

__all__ = ["save", "restore", "checkpoints"]

_SUFFIX = ".dcp"
_META = "meta.ckpt"
# Rank 0 chooses the checkpoint and sends the other ranks an error by its class's name.
_ERRORS = {
    cls.__name__: cls
    for cls in (CheckpointError, CorruptCheckpointError, UnsafeCheckpointError, CheckpointMismatchError)
}


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def _barrier() -> None:
    dist = _dist()
    if dist:
        dist.barrier()


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (every rank must decide the same way)."""
    dist = _dist()
    if not dist:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """Without a process group DCP works in one process, as asked, and warns each time that it
    assumes so: the warning says nothing to a user who chose ``distributed=True`` there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent")
        yield


def path_of(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}{_SUFFIX}"


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, oldest step first (a directory counts once its meta is there)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith("step-") and name.endswith(_SUFFIX) and (entry / _META).exists():
            digits = name[len("step-") : -len(_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), entry))
    return [path for _, path in sorted(found)]


def _write(path: Path, payload: dict[str, Any]) -> None:
    check_data(payload, "")
    header, body = encode(payload)
    with open(path, "wb") as f:
        f.write(header)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())


def _payload(step: int, **fields: Any) -> dict[str, Any]:
    return {**header_fields(step), **fields}


def _optimizers(optimizer: Any) -> Any:
    items = several(optimizer, "optimizer")
    return optimizer if items is None else list(items.values())


def _as_list(optimizer: Any) -> list[Any]:
    items = several(optimizer, "optimizer")
    return [optimizer] if items is None else list(items.values())


def _states(model: Any, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is not None:
        if model is None:
            raise ValueError(
                "a distributed checkpoint of an optimizer needs its model too: torch's "
                "get_state_dict keys the optimizer state by parameter name"
            )
        # Several optimizers (a list or dict): torch merges their states, keyed by parameter name.
        model_sd, optim_sd = get_state_dict(model, _optimizers(optimizer))
        return {"model": model_sd, "optimizer": optim_sd}
    return {} if model is None else {"model": get_model_state_dict(model)}


def save(
    directory: Path, keep: int | None, step: int, *, model: Any, optimizer: Any, scheduler: Any,
    scaler: Any, extra: dict[str, Any] | None,
) -> Path:  # fmt: skip
    import torch.distributed.checkpoint as dcp

    rank, world = _rank_world()
    states = _states(model, optimizer)
    final = path_of(directory, step)
    tmp = directory / f".{final.name}.tmp"
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that crashed
        tmp.mkdir()
    _barrier()
    if states:
        with _quiet_single_process():
            dcp.save(states, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
    _write(tmp / f"rng-{rank}.ckpt", _payload(step, rng=rng_state()))
    if rank == 0:
        meta = _payload(
            step, world_size=world, extra=extra, model=model is not None,
            optimizer=None if optimizer is None else saved_entries(optimizer, "optimizer", class_name),
            scheduler=None if scheduler is None else saved_entries(scheduler, "scheduler", _entry),
            scaler=None if scaler is None else {**class_name(scaler), "state_dict": scaler.state_dict()},
        )  # fmt: skip
        _write(tmp / _META, meta)
    _barrier()  # every rank's files are on disk
    if rank == 0:
        if final.exists():  # the same step saved again (a rolled-back run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(directory)
        _prune(directory, keep, step)
    _barrier()
    return final


def _prune(directory: Path, keep: int | None, step: int) -> None:
    paths = checkpoints(directory)
    stale = [p for p in paths if int(p.name[5:-len(_SUFFIX)]) > step]
    kept = [p for p in paths if p not in stale]
    if keep is not None:
        stale += kept[:-keep]
    stale += list(directory.glob(f".step-*{_SUFFIX}.tmp"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


def _choose(directory: Path, path: Any) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """(rank 0) The checkpoint to restore and its meta, or an error message."""
    if path is not None:
        try:
            return Path(path), load(Path(path) / _META), None
        except CheckpointError as e:
            return None, None, f"{type(e).__name__}: {e}"
    candidates = checkpoints(directory)[::-1]
    for candidate in candidates:
        try:
            meta = load(candidate / _META)
            if meta.get("model") and not (candidate / ".metadata").exists():
                raise CorruptCheckpointError(f"{candidate} has no DCP .metadata")
            return candidate, meta, None
        except UnsafeCheckpointError as e:
            return None, None, f"UnsafeCheckpointError: {e}"
        except CorruptCheckpointError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=3)
    if candidates:
        return None, None, f"CorruptCheckpointError: no valid checkpoint in {directory}: all {len(candidates)} are damaged"
    return None, None, None


def _entry(obj: Any) -> dict[str, Any]:
    return {**class_name(obj), "state_dict": obj.state_dict()}


def _check_fit(meta: dict[str, Any], path: Path, objects: dict[str, Any]) -> None:
    problems: list[str] = []
    for key in ("model", "optimizer", "scheduler", "scaler"):
        if objects[key] is not None and not meta.get(key):
            problems.append(f"the checkpoint holds no {key} state, but a {key} was given")
    for key in ("optimizer", "scheduler", "scaler"):
        if objects[key] is None or not meta.get(key):
            continue
        for label, obj, saved in pairs(objects[key], meta[key], key, problems):
            if saved["class"] != type(obj).__qualname__:
                name = f"{key} {label}" if label else key
                problems.append(f"checkpoint holds {name} {saved['class']}, {name} is {type(obj).__qualname__}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} (step {meta['step']}) does not fit, nothing was restored:\n  - "
            + "\n  - ".join(problems)
        )


def _reason(e: BaseException) -> str:
    """The underlying errors of a DCP failure (one line per distinct message, not every
    rank's traceback)."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        return "; ".join(sorted({f"{type(f).__name__}: {f}" for f in failures.values()}))
    return f"{type(e).__name__}: {e}"


def restore(
    directory: Path, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any, path: Any
) -> tuple[int | None, dict[str, Any] | None, Path | None]:
    """Collective restore; returns (step, extra, path) -- (None, None, None) if there is none."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict
    from torch.utils._pytree import tree_map_only

    rank, world = _rank_world()
    chosen, meta, error = _broadcast(_choose(directory, path) if rank == 0 else None)
    if error is not None:
        kind, _, message = error.partition(": ")
        raise _ERRORS.get(kind, CheckpointError)(message)
    if chosen is None:
        return None, None, None
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    _check_fit(meta, chosen, objects)

    # torch's get_state_dict initialises an optimizer without state by a step with lr=0
    # (its state's shapes are needed); undo that if anything below fails.
    fresh = [o for o in ([] if optimizer is None else _as_list(optimizer)) if not o.state]
    try:
        states = _states(model, optimizer)
        # Load into copies: a failed load (a missing key, another shape) changes nothing.
        copies = tree_map_only(torch.Tensor, lambda t: torch.empty_like(t), states)
        if copies:
            with _quiet_single_process():
                dcp.load(copies, storage_reader=dcp.FileSystemReader(str(chosen)))
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        for o in fresh:
            o.state.clear()
        raise CheckpointMismatchError(
            f"checkpoint {chosen} (step {meta['step']}) does not fit, nothing was restored: {_reason(e)}"
        ) from e
    rng_path = chosen / f"rng-{rank}.ckpt"
    rng = prepare_rng(load(rng_path)["rng"]) if rng_path.exists() else None

    if model is not None:
        set_state_dict(
            model, _optimizers(optimizer) if optimizer is not None else [],
            model_state_dict=copies["model"], optim_state_dict=copies.get("optimizer", {}),
        )  # fmt: skip
    for key, value in (("scheduler", scheduler), ("scaler", scaler)):
        if value is not None:
            for _, obj, saved in pairs(value, meta[key], key, []):
                obj.load_state_dict(saved["state_dict"])
    if rng is not None:
        set_rng(rng)
    else:
        warnings.warn(
            f"checkpoint {chosen} was saved by {meta.get('world_size')} ranks and holds no RNG state "
            f"for rank {rank} (of {world}): its random generators were not restored",
            stacklevel=3,
        )
    return meta["step"], meta.get("extra"), chosen


def describe(path: Path) -> str:
    """What ``optimkit ckpt show`` prints for a distributed checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    meta = load(path / _META)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta.get("saved_at", 0)))
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines = [
        f"distributed checkpoint {path} ({human_size(size)}, saved by {meta.get('world_size')} rank(s))",
        f"step: {meta['step']}  (saved {saved}; {versions})",
    ]
    if (path / ".metadata").exists():
        md = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        for prefix in ("model", "optimizer"):
            keys = [k for k in md if k.startswith(prefix + ".")]
            sizes = [v.size for k, v in md.items() if k in keys and hasattr(v, "size")]
            numel = sum(int(torch.Size(s).numel()) for s in sizes)
            if keys:
                lines.append(f"{prefix}: {len(keys)} entries, {numel:,} elements (global shapes)")
    for label, opt in entries(meta.get("optimizer")).items():
        lines.append(f"optimizer{' ' + label if label else ''} class: {opt['module']}.{opt['class']}")
    lines += describe_objects(meta)
    ranks = sorted(int(f.name[4:-5]) for f in path.glob("rng-*.ckpt"))
    lines.append(f"rng: per rank, ranks {ranks}")
    extra = meta.get("extra")
    if extra is not None:
        lines.append("extra: " + (", ".join(f"{k}={short(v)}" for k, v in extra.items()) or "{}"))
    return "\n".join(lines)
