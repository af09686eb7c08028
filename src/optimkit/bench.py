"""``optimkit bench``: optimizer-step time of optimkit against torch.optim, in one process.

For every elementwise optimizer of the registry and every workload, the step is timed in
optimkit's modes (default; ``fused=True`` where torch has a fused kernel) and in torch.optim's
(for-loop, foreach, fused) -- or, for an optimizer torch lacks, in its authors' package (the
``reference (oracle)`` row, and ``reference foreach`` where it has that mode, counted in the
for-loop, foreach and fastest columns) -- alternating so that
both see the same machine state. Printed per
row: milliseconds per step (median), the ratio of torch's time to optimkit's (> 1: optimkit is
faster), the effective bandwidth (the bytes a step must move: read the gradient, read and
write the parameter and every state tensor) and its share of the machine's copy bandwidth,
measured in the same run. ``--peak-memory`` adds the peak extra resident memory of a step
(Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``). ``--memory`` prints
another table instead: what Adam-type optimizer state costs in 32, 16, 8 and 4 bits
(:mod:`optimkit.bench_memory`). ``--compile`` adds the mode
``optimkit compile`` (``compile=True``, :mod:`optimkit.execution.compiled`): its warm-up steps compile and
are not timed; the time they took compiling is printed in the column ``compile s`` (with a
cold or a warm compile cache, whichever this run found).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .registry import REGISTRY, OptimizerSpec

__all__ = ["WORKLOADS", "run", "main", "add_parser"]


def _transformer(scale: float) -> list[tuple[int, ...]]:
    """GPT-2-small-like shapes without the token embedding: 147 tensors, ~86M parameters."""
    d, ff, ctx = int(768 * scale), int(3072 * scale), int(1024 * scale)
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    return [(ctx, d)] + block * 12 + [(d,), (d,)]


WORKLOADS: dict[str, Callable[[float], list[tuple[int, ...]]]] = {
    "transformer": _transformer,
    "many-small": lambda scale: [(int(1000 * scale),)] * 2000,
    "one-big": lambda scale: [(int(32_000_000 * scale),)],
}


@dataclass
class Row:
    optimizer: str
    workload: str
    mode: str
    ms: float
    gbps: float
    peak_mb: float | None
    compile_s: float | None = None


def _state_tensors(opt: torch.optim.Optimizer) -> int:
    """Parameter-sized state tensors per parameter (what a step reads and writes)."""
    state = next(iter(opt.state.values()), {})
    return sum(1 for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


def _peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _modes(spec: OptimizerSpec, compile: bool = False) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    modes = [("optimkit", spec.cls, {})]
    if spec.fused:
        modes.append(("optimkit fused", spec.cls, {"fused": True}))
    if compile and spec.elementwise:
        modes.append(("optimkit compile", spec.cls, {"compile": True}))
    if spec.torch_cls is None:  # an optimizer torch lacks: timed against its authors' package
        if "foreach" not in inspect.signature(spec.oracle_cls).parameters:
            return [*modes, (_REFERENCE, spec.make_oracle, {})]  # with what the oracle needs (kwargs, setup)
        return [*modes, (_REFERENCE, spec.make_oracle, {"foreach": False}),
                (_REFERENCE_FOREACH, spec.make_oracle, {"foreach": True})]  # fmt: skip
    modes += [
        ("torch for-loop", spec.torch_cls, {"foreach": False}),
        ("torch foreach", spec.torch_cls, {"foreach": True}),
    ]
    if spec.fused:
        modes.append(("torch fused", spec.torch_cls, {"fused": True}))
    return modes


_REFERENCE = "reference (oracle)"
_REFERENCE_FOREACH = "reference foreach"


def _has_reference(spec: OptimizerSpec) -> bool:
    try:
        return spec.oracle_cls is not None
    except ImportError:  # the authors' package is a test extra
        return False


def default_optimizers() -> list[str]:
    """The elementwise optimizers with a reference, and every one whose reference is an
    authors' package (timed against it: the default path must be at least as fast)."""
    return [
        n for n, s in REGISTRY.items()
        if _has_reference(s) and not s.closure and (s.elementwise or s.torch_cls is None)
    ]  # fmt: skip


def _kwargs(spec: OptimizerSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"lr": spec.lab_lr}
    if spec.name == "sgd":
        kwargs["momentum"] = 0.9
    return kwargs


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` (bytes read + written): the reference for the percentages."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_time(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * nbytes / best / 1e9


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_one(
    spec: OptimizerSpec, shapes: list[tuple[int, ...]], steps: int, memory: bool, compile: bool = False
) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    numel = sum(t.numel() for t in base)
    runs: dict[str, list[float]] = {}
    setups = []
    for mode, cls, extra in _modes(spec, compile):
        params = [torch.nn.Parameter(t.clone()) for t in base]
        for p, g in zip(params, grads):
            p.grad = g
        opt = cls(params, **_kwargs(spec), **extra)
        opt.step()  # warm-up: creates the state (and optimkit's packs)
        if extra.get("compile"):
            opt.step()  # a rule that creates state at its first step (SGD) compiles twice
        setups.append((mode, opt))
        runs[mode] = []
    for _ in range(steps):  # interleaved, so every mode sees the same machine
        for mode, opt in setups:
            runs[mode].append(_time(opt.step))
    rows = []
    for mode, opt in setups:
        ms = statistics.median(runs[mode]) * 1e3
        nbytes = numel * base[0].element_size() * (3 + 2 * _state_tensors(opt))
        peak = None
        if memory and _peak_reset():
            before = _rss_kb("VmRSS:")
            opt.step()
            peak = (_rss_kb("VmHWM:") - before) / 1024
        compile_s = getattr(opt, "compile_seconds", 0.0) if mode == "optimkit compile" else None
        rows.append(Row(spec.name, "", mode, ms, nbytes / (ms / 1e3) / 1e9, peak, compile_s))
    del setups
    gc.collect()
    return rows


def run(
    optimizers: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    steps: int = 5,
    scale: float = 1.0,
    memory: bool = False,
    out: Callable[[str], None] = print,
    compile: bool = False,
) -> list[Row]:
    """Run the benchmark and print a Markdown table; return its rows."""
    names = list(optimizers or default_optimizers())
    workloads = list(workloads or WORKLOADS)
    reference = copy_bandwidth()
    out(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"reference copy bandwidth {reference:.1f} GB/s")  # fmt: skip
    header = "| optimizer | workload | mode | ms/step | torch for-loop / this | torch foreach / this | torch fastest / this | GB/s | % of copy bw |"
    if memory:
        header += " peak extra MB |"
    if compile:
        header += " compile s |"
    out("")
    out(header)
    out("|" + "---|" * (header.count("|") - 1))
    rows: list[Row] = []
    for workload in workloads:
        shapes = WORKLOADS[workload](scale)
        for name in names:
            result = bench_one(REGISTRY[name], shapes, steps, memory, compile)
            by_mode = {r.mode: r.ms for r in result}
            fastest = min(v for k, v in by_mode.items() if k.startswith(("torch", "reference")))
            loop = by_mode.get("torch for-loop", by_mode.get(_REFERENCE))
            foreach = by_mode.get("torch foreach", by_mode.get(_REFERENCE_FOREACH))
            for r in result:
                r.workload = workload
                line = (
                    f"| {name} | {workload} | {r.mode} | {r.ms:.2f} | {loop / r.ms:.2f} "
                    f"| {f'{foreach / r.ms:.2f}' if foreach else 'n/a'} | {fastest / r.ms:.2f} | {r.gbps:.1f} "
                    f"| {100 * r.gbps / reference:.0f}% |"
                )
                if memory:
                    line += f" {r.peak_mb:.1f} |" if r.peak_mb is not None else " n/a |"
                if compile:
                    line += f" {r.compile_s:.1f} |" if r.compile_s is not None else " |"
                out(line)
            rows.extend(result)
    return rows


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="time optimizer steps against torch.optim")
    parser.add_argument("--optimizers", help="comma-separated registry names (default: all elementwise)")
    parser.add_argument("--workloads", help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink the workloads (e.g. 0.1 for a quick look)"
    )
    parser.add_argument(
        "--memory", action="store_true",
        help="instead: the optimizer-state memory table of Adam-type optimizers (fp32, bf16, 8-bit, 4-bit, "
        "FP8; optimkit, torch, torchao, bitsandbytes) on GPT-2-small shapes, see optimkit.bench_memory",
    )
    parser.add_argument("--only", help="--memory: comma-separated substrings of the row names to run "
                        "(e.g. 'optimkit,torchao'; the torch fused reference always runs)")
    parser.add_argument("--quick", action="store_true", help="--memory: GPT-2 small x0.25 and 2 timed steps")
    parser.add_argument("--threads", type=int, default=0, help="--memory: torch threads per row (0: default)")
    parser.add_argument("--no-checkpoint", action="store_true", help="--memory: skip the checkpoint file sizes")
    parser.add_argument(
        "--peak-memory", action="store_true", help="also measure peak extra memory of a step (the timing table)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add the mode compile=True (reports its compile time)"
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    split = lambda s: s.split(",") if s else None  # noqa: E731
    if args.memory:
        from .bench_memory import run_memory

        quick = getattr(args, "quick", False)
        run_memory(
            split(args.only), 0.25 if quick and args.scale == 1.0 else args.scale, 2 if quick else args.steps,
            checkpoint=not args.no_checkpoint, threads=args.threads,
        )  # fmt: skip
        return 0
    run(
        split(args.optimizers), split(args.workloads), args.steps, args.scale, args.peak_memory,
        compile=args.compile,
    )  # fmt: skip
    return 0
