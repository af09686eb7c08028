"""A real training task for the checkpoint tests, and a fork server to run it in processes
that can be killed.

The task: a small MLP on scikit-learn's digits (1797 8x8 images), trained with a registry
optimizer and an LR scheduler for a few dozen steps. Every source of randomness a real run
has is used -- the model's initialisation and dropout (torch), input noise (NumPy), a
brightness jitter (Python's ``random``) and a shuffled data order drawn at each epoch --
so a resumed run is bit-identical to an uninterrupted one only if all of it was restored.

Run as ``python ckpt_worker.py DATA`` it is a *fork server*: it imports torch once, then
for every JSON command on stdin forks a child that runs one job and prints its progress
(``step N``) on the shared stdout. The tests SIGKILL those children at random moments;
forking avoids paying torch's import (seconds) for each of the ~100 processes.
Protocol: ``{"job": ...}`` -> ``pid N``, then the child's lines; ``{"wait": N}`` ->
``exit N STATUS`` once the child is gone (STATUS is ``-9`` for a SIGKILL).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optimkit.checkpoint import Checkpointer
from optimkit.registry import REGISTRY

try:
    from optimkit import lr_scheduler as optimkit_lr_scheduler
except ImportError:  # not written yet: torch's schedulers drive optimkit optimizers too
    optimkit_lr_scheduler = torch.optim.lr_scheduler

BATCH = 64


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(name: str, steps: int, lib: str = "optimkit") -> tuple[torch.nn.Module, Any, Any]:
    """Model, optimizer and scheduler for registry optimizer ``name``; ``lib`` picks optimkit's
    or torch.optim's classes. SparseAdam trains a sparse pixel-value embedding, Muon a
    bias-free MLP (matrices only), LBFGS an MLP without dropout (its closure is re-evaluated)."""
    spec = REGISTRY[name]
    if spec.sparse == "only":
        model: torch.nn.Module = torch.nn.EmbeddingBag(64 * 17, 10, mode="sum", sparse=True)
    else:
        bias = not spec.matrix_only
        layers = [torch.nn.Linear(64, 32, bias=bias), torch.nn.ReLU()]
        if not spec.closure:
            layers.append(torch.nn.Dropout(0.1))
        layers.append(torch.nn.Linear(32, 10, bias=bias))
        model = torch.nn.Sequential(*layers)
    kwargs: dict[str, Any] = {**spec.required, "lr": spec.lab_lr}
    if spec.closure and "max_iter" in inspect.signature(spec.cls).parameters:  # LBFGS
        kwargs.update(max_iter=4, line_search_fn="strong_wolfe")
    cls = spec.cls if lib == "optimkit" else spec.torch_cls
    optimizer = cls(model.parameters(), **kwargs)
    schedulers = optimkit_lr_scheduler if lib == "optimkit" else torch.optim.lr_scheduler
    kind = list(REGISTRY).index(name) % 4
    if kind == 0:
        scheduler = schedulers.CosineAnnealingLR(optimizer, T_max=steps)
    elif kind == 1:
        scheduler = schedulers.StepLR(optimizer, step_size=5, gamma=0.7)
    elif kind == 2:
        scheduler = schedulers.ExponentialLR(optimizer, gamma=0.95)
    else:
        scheduler = schedulers.LinearLR(optimizer, start_factor=0.5, total_iters=steps // 2)
    return model, optimizer, scheduler


class Run:
    """One training run; ``train_step`` draws its batch and randomness from the global RNGs."""

    def __init__(self, name: str, data: dict[str, torch.Tensor], steps: int, lib: str = "optimkit") -> None:
        seed_all(0)
        self.name, self.data, self.steps = name, data, steps
        self.sparse = REGISTRY[name].sparse == "only"
        self.closure = REGISTRY[name].closure
        self.model, self.optimizer, self.scheduler = build(name, steps, lib)
        self.step = 0
        self.perm: torch.Tensor | None = None

    def objects(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def save(self, ckpt: Checkpointer) -> None:
        ckpt.save(self.step, **self.objects(), extra={"perm": self.perm})

    def restore(self, ckpt: Checkpointer) -> int | None:
        step = ckpt.restore(**self.objects())
        if step is not None:
            self.step, self.perm = step, ckpt.extra["perm"]
        return step

    def train_step(self) -> float:
        images, labels = self.data["images"], self.data["labels"]
        per_epoch = len(labels) // BATCH
        if self.step % per_epoch == 0:
            self.perm = torch.randperm(len(labels))  # this epoch's data order
        idx = self.perm[(self.step % per_epoch) * BATCH :][:BATCH]
        target = labels[idx]
        if self.sparse:  # pixel i with value v is feature 17 * i + v
            inputs = (torch.arange(64) * 17 + images[idx]).long()
        else:
            noise = torch.from_numpy(np.random.normal(0.0, 0.05, (len(idx), 64)).astype(np.float32))
            inputs = images[idx].float() / 16 * (0.9 + 0.2 * random.random()) + noise

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(inputs), target)
            loss.backward()
            return loss

        if self.closure:
            loss = self.optimizer.step(closure)
        else:
            loss = closure()
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def result(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }


def assert_same_bits(a: Any, b: Any, where: str = "") -> None:
    """Equal to the bit: tensors of the same dtype, shape and bytes, in the same structure."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        bits = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        assert torch.equal(*bits), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_bits(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_bits(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


# ---------------------------------------------------------------------------- jobs (in children)
def job_train(data: dict[str, torch.Tensor], name: str, steps: int, directory: str | None, out: str) -> None:
    """Train ``name`` for ``steps`` steps, resuming from and checkpointing every step into
    ``directory`` (none: no checkpoints at all); write the final state to ``out``."""
    run = Run(name, data, steps)
    ckpt = Checkpointer(directory, keep=2) if directory else None
    resumed = run.restore(ckpt) if ckpt else None
    print(f"resumed {resumed}", flush=True)
    losses = []
    while run.step < steps:
        losses.append(run.train_step())
        if ckpt:
            run.save(ckpt)
        print(f"step {run.step}", flush=True)
    torch.save(run.result(), out)
    print(f"loss {losses[0] if losses else float('nan'):.4f} -> {losses[-1] if losses else float('nan'):.4f}")


def save_loop_objects() -> tuple[torch.nn.Module, Any]:
    """The model and optimizer of ``job_save_loop`` (checkpoints of about 1.5 MB)."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():  # give the optimizer state, so checkpoints are bigger
        p.grad = torch.ones_like(p)
    optimizer.step()
    return model, optimizer


def job_save_loop(directory: str) -> None:
    """Restore, then save checkpoints as fast as possible until killed (at most a minute). Checkpoint ``s``
    holds parameters all equal to ``s`` and ``extra["check"]``, a tensor full of ``s``."""
    model, optimizer = save_loop_objects()
    ckpt = Checkpointer(directory, keep=3)
    step = ckpt.restore(model=model, optimizer=optimizer) or 0
    print("ready", flush=True)
    deadline = time.monotonic() + 60  # the tests kill it long before; never outlive a failed test
    while time.monotonic() < deadline:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
        ckpt.save(step, model=model, optimizer=optimizer, extra={"check": torch.full((5000,), float(step))})
        print(f"saved {step}", flush=True)


def _child(command: dict[str, Any], data: dict[str, torch.Tensor]) -> None:
    job = command.pop("job")
    if job == "train":
        job_train(data, **command)
    elif job == "save_loop":
        job_save_loop(**command)
    else:
        raise ValueError(f"unknown job {job!r}")


def warm_up(data: dict[str, torch.Tensor]) -> None:
    """Run every code path once, so that lazy imports (torch's optimizers import a lot at
    their first step) happen here once and not in every child."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in REGISTRY:
            run = Run(name, data, steps=2)
            run.train_step()
            run.save(Checkpointer(tmp))
            run.restore(Checkpointer(tmp))
        model, optimizer = save_loop_objects()
        Checkpointer(tmp).save(1, model=model, optimizer=optimizer)


def serve(data_path: str) -> None:
    torch.set_num_threads(1)  # identical arithmetic in every child, and fork-safe
    data = torch.load(data_path, weights_only=True)
    warm_up(data)
    for line in sys.stdin:
        command = json.loads(line)
        if "wait" in command:
            pid, status = os.waitpid(command["wait"], 0)
            print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
            continue
        sys.stdout.flush()
        # The child waits until "pid N" is out: both write to the same stdout, and the client
        # expects that line first.
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            os.read(go_read, 1)
            os.close(go_read)
            code = 0
            try:
                _child(command, data)
            except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        os.close(go_read)
        print(f"pid {pid}", flush=True)
        try:
            os.write(go_write, b"1")
        except BrokenPipeError:  # the client killed the child as soon as it had its pid
            pass
        os.close(go_write)


if __name__ == "__main__":
    serve(sys.argv[1])
