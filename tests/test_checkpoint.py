"""optimkit.checkpoint: atomic saves, keep, damaged and malicious files, mismatches that change
nothing, inspect / ``ckpt show``, and checkpoints moving between torch.optim and optimkit.

The SIGKILL tests (exact resume, kills during saves) are in test_checkpoint_crash.py.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import os
import pickle
import random
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_worker import Run, assert_same_bits

import optimkit
from optimkit.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    add_cli,
    cli_show,
    inspect,
    load,
)
from optimkit.registry import REGISTRY


@pytest.fixture(autouse=True)
def keep_global_rngs():
    """The tests set the global RNGs (as restore does); put them back afterwards."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def make(hidden: int = 3, opt_cls=optimkit.Adam, sched_cls=torch.optim.lr_scheduler.StepLR):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    optimizer = opt_cls(model.parameters(), lr=0.01)
    scheduler = sched_cls(optimizer, step_size=2)
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps: int = 1) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()


def snapshot(model, optimizer, scheduler) -> dict:
    """Everything a restore could change, copied."""
    return copy.deepcopy(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()),
        }
    )


@pytest.fixture
def saved(tmp_path):
    """A run checkpointed at steps 1, 2 and 3, then trained on (so its state differs)."""
    model, optimizer, scheduler = make()
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    for step in (1, 2, 3):
        train(model, optimizer, scheduler)
        ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler, extra={"epoch": step // 2})
    train(model, optimizer, scheduler)
    return ckpt, (model, optimizer, scheduler)


# ---------------------------------------------------------------------------- save and restore
def test_restore_brings_back_every_object_the_rngs_and_extra(tmp_path):
    model, optimizer, scheduler = make()
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1024.0, "_growth_tracker": 5})
    train(model, optimizer, scheduler, 3)
    ckpt = Checkpointer(tmp_path)
    extra = {"epoch": 1, "order": torch.randperm(10), "note": "x"}
    ckpt.save(3, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, extra=extra)
    expected = snapshot(model, optimizer, scheduler)
    draws = random.random(), np.random.rand(), torch.rand(3)

    model2, optimizer2, scheduler2 = make()
    scaler2 = torch.amp.GradScaler("cpu")
    fresh = Checkpointer(tmp_path)
    assert fresh.restore(model=model2, optimizer=optimizer2, scheduler=scheduler2, scaler=scaler2) == 3
    assert_same_bits(snapshot(model2, optimizer2, scheduler2), expected)
    assert scaler2.state_dict() == scaler.state_dict()
    assert fresh.extra.keys() == extra.keys() and torch.equal(fresh.extra["order"], extra["order"])
    assert fresh.restored_path == tmp_path / "step-00000003.ckpt"
    assert random.random() == draws[0] and np.random.rand() == draws[1]
    assert torch.equal(torch.rand(3), draws[2])


def test_restore_of_nothing_returns_none(tmp_path):
    model, optimizer, scheduler = make()
    before = snapshot(model, optimizer, scheduler)
    assert Checkpointer(tmp_path / "missing").restore(model=model, optimizer=optimizer) is None
    assert Checkpointer(tmp_path).restore(model=model, optimizer=optimizer) is None
    assert_same_bits(snapshot(model, optimizer, scheduler), before)


def test_keep_the_newest_and_a_rolled_back_run_discards_its_future(tmp_path):
    model, optimizer, _ = make()
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in range(1, 6):
        ckpt.save(step, model=model, optimizer=optimizer)
    assert [p.name for p in ckpt.checkpoints()] == ["step-00000004.ckpt", "step-00000005.ckpt"]
    ckpt.save(2, model=model)  # resumed from step 2 elsewhere: steps 4 and 5 are another timeline
    assert [p.name for p in ckpt.checkpoints()] == ["step-00000002.ckpt"]
    everything = Checkpointer(tmp_path, keep=None)
    for step in range(3, 9):
        everything.save(step, model=model)
    assert len(everything.checkpoints()) == 7
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="step"):
        ckpt.save(-1, model=model)


def test_save_writes_fsyncs_renames_then_fsyncs_the_directory_then_prunes(tmp_path, monkeypatch):
    model, optimizer, _ = make()
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(1, model=model, optimizer=optimizer)
    events = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append(f"rename {Path(src).suffix} -> {Path(dst).name}")
        real_replace(src, dst)

    def unlink(path, *args, **kwargs):
        events.append(f"delete {Path(path).name}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    ckpt.save(2, model=model, optimizer=optimizer)
    assert events == [
        "fsync file",
        "rename .tmp -> step-00000002.ckpt",
        "fsync dir",
        "delete step-00000001.ckpt",
    ]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoints_intact(saved, monkeypatch):
    ckpt, (model, optimizer, scheduler) = saved
    files = {p: p.read_bytes() for p in ckpt.directory.iterdir()}

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        ckpt.save(4, model=model, optimizer=optimizer, scheduler=scheduler)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in ckpt.directory.iterdir()} == files  # no temporary file either
    assert Checkpointer(ckpt.directory).restore(model=model, optimizer=optimizer, scheduler=scheduler) == 3


def test_stale_temporary_files_of_a_killed_save_are_ignored_then_removed(saved):
    ckpt, (model, optimizer, scheduler) = saved
    stale = ckpt.directory / ".step-abc123.tmp"
    stale.write_bytes(b"OPTIMKIT-CHECKPOINT 1 999 half-writ")
    assert Checkpointer(ckpt.directory).restore(model=model) == 3
    ckpt.save(4, model=model)
    assert not stale.exists()


def test_save_refuses_objects_that_only_code_could_load(tmp_path):
    model, _, _ = make()
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(TypeError, match=r"cannot checkpoint extra\['fn'\]: a function"):
        ckpt.save(1, model=model, extra={"fn": lambda: 0})
    with pytest.raises(TypeError, match=r"extra\['array'\]: a ndarray \(numpy\)"):
        ckpt.save(1, extra={"array": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- damaged files
def newest(ckpt: Checkpointer) -> Path:
    return ckpt.checkpoints()[-1]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-100] + bytes([data[-100] ^ 1]) + data[-99:], "checksum does not match"),
        (lambda data: b"", "not an optimkit checkpoint"),
        (lambda data: b"\x80\x04garbage" + data[40:], "not an optimkit checkpoint"),
    ],
    ids=["truncated", "one-bit-flipped", "empty", "no-header"],
)
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(saved, damage, message):
    ckpt, (model, optimizer, scheduler) = saved
    path = newest(ckpt)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptCheckpointError, match=message):
        load(path)
    with pytest.warns(UserWarning, match=message):
        step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    assert step == 2 and ckpt.extra == {"epoch": 1}
    model2, optimizer2, scheduler2 = make()
    Checkpointer(ckpt.directory).restore(
        model=model2, optimizer=optimizer2, scheduler=scheduler2, path=ckpt.checkpoints()[-2]
    )
    assert_same_bits(snapshot(model, optimizer, scheduler), snapshot(model2, optimizer2, scheduler2))


def test_when_every_checkpoint_is_damaged_restore_raises_instead_of_starting_over(saved):
    ckpt, (model, optimizer, scheduler) = saved
    before = snapshot(model, optimizer, scheduler)
    for path in ckpt.checkpoints():
        path.write_bytes(path.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCheckpointError, match="all 3 are damaged"):
            ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    assert_same_bits(snapshot(model, optimizer, scheduler), before)


class RunsCode:
    """Unpickling this calls ``open(sentinel, "w")``: code execution, visible as a file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def with_header(body: bytes) -> bytes:
    return b"OPTIMKIT-CHECKPOINT 1 %d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode()) + body


def test_a_file_crafted_to_run_code_is_refused_and_never_runs(saved, tmp_path, capsys):
    ckpt, (model, optimizer, scheduler) = saved
    sentinel = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"format": 1, "step": 99, "model": RunsCode(sentinel)}, buffer)
    evil = ckpt.directory / "step-00000099.ckpt"
    evil.write_bytes(with_header(buffer.getvalue()))  # a valid checksum: written on purpose
    before = snapshot(model, optimizer, scheduler)

    with pytest.raises(
        UnsafeCheckpointError,
        match=r"refusing to load .*step-00000099.*would run code \(it would call io.open\)",
    ):
        ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    with pytest.raises(UnsafeCheckpointError):
        load(evil)
    with pytest.raises(UnsafeCheckpointError):
        inspect(evil)
    assert cli_show([str(evil)]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not sentinel.exists()
    assert_same_bits(snapshot(model, optimizer, scheduler), before)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_foreign_pickle_under_a_checkpoint_name_is_never_unpickled(saved, tmp_path, writer):
    ckpt, (model, _, _) = saved
    sentinel = tmp_path / "pwned"
    path = ckpt.directory / "step-00000099.ckpt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(sentinel)))
    else:
        torch.save({"format": 1, "step": 99, "x": RunsCode(sentinel)}, path)
    with pytest.warns(UserWarning, match="not an optimkit checkpoint"):
        assert ckpt.restore(model=model) == 3
    assert not sentinel.exists()


# ---------------------------------------------------------------------------- mismatches
@pytest.mark.parametrize(
    "build, messages",
    [
        (lambda: make(hidden=5), ["'0.weight' has shape (3, 4) in the checkpoint, (5, 4) in the model"]),
        (lambda: make(opt_cls=optimkit.SGD), ["checkpoint holds Adam, optimizer is SGD"]),
        (lambda: make(opt_cls=torch.optim.RMSprop), ["checkpoint holds Adam, optimizer is RMSprop"]),
        (
            lambda: make(sched_cls=lambda opt, step_size: torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)),
            ["checkpoint holds scheduler StepLR, scheduler is ExponentialLR"],
        ),
    ],
    ids=["model-shape", "optimizer-type", "torch-optimizer-type", "scheduler-type"],
)
def test_a_checkpoint_that_does_not_fit_names_the_difference_and_changes_nothing(saved, build, messages):
    ckpt, _ = saved
    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, 2)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(CheckpointMismatchError) as error:
        ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    for message in messages:
        assert message in str(error.value)
    assert "nothing was restored" in str(error.value)
    assert_same_bits(snapshot(model, optimizer, scheduler), before)


def test_group_count_sizes_and_keys_are_checked(saved):
    ckpt, (model, _, scheduler) = saved
    params = list(model.parameters())
    two_groups = optimkit.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.01)
    with pytest.raises(CheckpointMismatchError, match=r"1 parameter group\(s\), the optimizer has 2"):
        ckpt.restore(optimizer=two_groups)
    fewer = optimkit.Adam(params[:3], lr=0.01)
    with pytest.raises(CheckpointMismatchError, match="group 0 has 4 parameters in the checkpoint, 3 in"):
        ckpt.restore(optimizer=fewer)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False))
    with pytest.raises(
        CheckpointMismatchError, match=r"checkpoint keys the model does not have: \['2.bias'\]"
    ):
        ckpt.restore(model=other)
    model_only = Checkpointer(ckpt.directory / "model_only")
    model_only.save(1, model=model)
    with pytest.raises(CheckpointMismatchError, match="holds no scheduler state, but a scheduler was given"):
        model_only.restore(model=model, scheduler=scheduler)


class FailsToLoad:
    """A scheduler-like object whose load fails after the checks passed."""

    def state_dict(self):
        return {"x": 1}

    def load_state_dict(self, state_dict):
        raise RuntimeError("boom")


def test_a_load_that_fails_late_is_rolled_back(tmp_path):
    model, optimizer, scheduler = make()
    train(model, optimizer, scheduler, 2)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(2, model=model, optimizer=optimizer, scheduler=FailsToLoad())
    train(model, optimizer, scheduler, 2)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(CheckpointMismatchError, match="restoring the scheduler .* failed.*boom"):
        ckpt.restore(model=model, optimizer=optimizer, scheduler=FailsToLoad())
    assert_same_bits(snapshot(model, optimizer, scheduler), before)


def test_errors_are_value_errors():
    assert issubclass(CheckpointMismatchError, CheckpointError) and issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------- inspect and CLI
def test_inspect_prints_what_the_checkpoint_holds(saved, capsys):
    ckpt, _ = saved
    inspect(newest(ckpt))
    out = capsys.readouterr().out
    for expected in [
        "step: 3",
        "SHA-256 verified",
        "model: 4 tensors, 23 elements, 92 B",
        "0.weight: (3, 4) float32",
        "optimizer: optimkit.optimizers.adam.Adam, 1 group(s), state for 4 parameter(s)",
        "group 0: 4 params; lr=0.001, betas=(0.9, 0.999)",
        "scheduler: torch.optim.lr_scheduler.StepLR: step_size=2",
        "rng: python, numpy, torch",
        "extra: epoch=1",
    ]:
        assert expected in out, (expected, out)

    assert cli_show([str(newest(ckpt))]) == 0
    assert capsys.readouterr().out == out
    parser = argparse.ArgumentParser(prog="optimkit")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ckpt", "show", str(newest(ckpt))])
    assert args.func(args) == 0 and capsys.readouterr().out == out


def test_ckpt_show_of_a_damaged_file_is_an_error_message(saved, capsys):
    ckpt, _ = saved
    path = newest(ckpt)
    path.write_bytes(path.read_bytes()[:-1])
    assert cli_show([str(path)]) == 1
    assert re.search(r"error: checkpoint .* is truncated", capsys.readouterr().err)


# ---------------------------------------------------------------------------- torch <-> optimkit
@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    return {"images": torch.tensor(data.data, dtype=torch.uint8), "labels": torch.tensor(data.target)}


@pytest.mark.parametrize("direction", ["torch->optimkit", "optimkit->torch"])
@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.torch_cls is not None])
def test_a_checkpoint_moves_between_torch_and_optimkit(digits, tmp_path, name, direction):
    first, second = direction.split("->")
    steps, cut = 6, 3
    reference = Run(name, digits, steps, lib=second)
    while reference.step < steps:
        reference.train_step()

    run = Run(name, digits, steps, lib=first)
    while run.step < cut:
        run.train_step()
    run.save(Checkpointer(tmp_path))
    resumed = Run(name, digits, steps, lib=second)
    assert resumed.restore(Checkpointer(tmp_path)) == cut
    while resumed.step < steps:
        resumed.train_step()
    assert_same_bits(reference.result()["model"], resumed.result()["model"], f"{name} {direction}")
    assert reference.result()["scheduler"]["_last_lr"] == resumed.result()["scheduler"]["_last_lr"]


# ---------------------------------------------------------------------------- the README text
def test_the_docs_resume_loop_runs_and_resumes(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "Checkpointer(" in c]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "docs"})
    assert len(list((tmp_path / "checkpoints").glob("step-*.ckpt"))) == 3
    namespace = {"__name__": "docs"}
    exec(compile(code.replace("50", "60"), "README.md", "exec"), namespace)  # resumes at 50
    assert [p.name for p in Checkpointer(tmp_path / "checkpoints").checkpoints()][-1] == "step-00000060.ckpt"


# ---------------------------------------------------------------------------- several optimizers
def _two_optimizer_run(kind):
    """Muon on the hidden matrix, AdamW on the rest: the two-optimizer recipe."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    muon = optimkit.Muon([model[0].weight], lr=0.02)
    adamw = optimkit.AdamW([model[0].bias, *model[2].parameters()], lr=0.01)
    opts = [muon, adamw] if kind == "list" else {"muon": muon, "adamw": adamw}
    scheds = (
        [torch.optim.lr_scheduler.StepLR(muon, 2), optimkit.lr_scheduler.CosineAnnealingLR(adamw, 10)]
        if kind == "list"
        else {"muon": torch.optim.lr_scheduler.StepLR(muon, 2), "adamw": optimkit.lr_scheduler.CosineAnnealingLR(adamw, 10)}
    )
    return model, opts, scheds


def _values(x):
    return list(x.values()) if isinstance(x, dict) else list(x)


def _train_two(model, opts, scheds, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for opt in _values(opts):
            opt.zero_grad()
        model(torch.randn(5, 4, generator=g)).square().sum().backward()
        for opt in _values(opts):
            opt.step()
        for sched in _values(scheds):
            sched.step()


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_several_optimizers_and_schedulers_resume_exactly(tmp_path, kind, capsys):
    ref = _two_optimizer_run(kind)
    _train_two(*ref, 3, seed=0)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(3, model=ref[0], optimizer=ref[1], scheduler=ref[2])
    _train_two(*ref, 3, seed=1)

    run = _two_optimizer_run(kind)
    assert Checkpointer(tmp_path).restore(model=run[0], optimizer=run[1], scheduler=run[2]) == 3
    _train_two(*run, 3, seed=1)
    assert_same_bits(
        {"model": ref[0].state_dict(), "opts": [o.state_dict() for o in _values(ref[1])]},
        {"model": run[0].state_dict(), "opts": [o.state_dict() for o in _values(run[1])]},
        "resumed",
    )
    assert [s.state_dict() for s in _values(ref[2])] == [s.state_dict() for s in _values(run[2])]
    inspect(ckpt.checkpoints()[-1])
    label = "0" if kind == "list" else "muon"
    assert f"optimizer {label}: optimkit.optimizers.muon.Muon" in capsys.readouterr().out


def test_several_optimizers_that_do_not_fit_change_nothing(tmp_path):
    model, opts, scheds = _two_optimizer_run("list")
    _train_two(model, opts, scheds, 2, seed=0)
    Checkpointer(tmp_path).save(2, model=model, optimizer=opts, scheduler=scheds)
    fresh = _two_optimizer_run("list")
    before = [copy.deepcopy(o.state_dict()) for o in fresh[1]]
    cases = {
        r"holds 2 optimizers \(list\), one optimizer was given": dict(optimizer=fresh[1][0]),
        "the checkpoint's optimizers are \\['0', '1'\\], the optimizers given are \\['muon', 'adamw'\\]": dict(
            optimizer={"muon": fresh[1][0], "adamw": fresh[1][1]}
        ),
        "optimizer 1: checkpoint holds AdamW, optimizer is Muon": dict(optimizer=[fresh[1][0], fresh[1][0]]),
    }
    for message, objects in cases.items():
        with pytest.raises(CheckpointMismatchError, match=message):
            Checkpointer(tmp_path).restore(**objects)
    assert [o.state_dict() for o in fresh[1]] == before
    with pytest.raises(ValueError, match="holds no optimizer"):
        Checkpointer(tmp_path / "x").save(1, optimizer=[])
