"""``optimkit bench --memory``: what Adam-type optimizer state costs, in bytes and time.

For the two-moment optimizers (AdamW) on GPT-2-small's shapes -- token embedding 50257x768,
position embedding 1024x768, 12 blocks, final LayerNorm: 124,439,808 parameters (the output
layer is tied to the token embedding) -- one row per optimizer, each measured in a *fresh
subprocess* (so no row inherits another's allocator state, imports or compiled code):

``state B/param``
    every tensor in ``opt.state`` after the warm-up steps (codes, scales, maps, ``step``),
    counted exactly -- tensor subclasses (torchao) through their inner tensors, a tensor
    shared by several entries (bitsandbytes' quantization maps) once -- over the parameter
    count. bitsandbytes keeps ``step`` as a Python int: not a tensor, not counted.
``peak MB, step 1`` / ``peak MB, later step``
    Linux ``VmHWM`` (the high-water mark of resident memory, reset through
    ``/proc/self/clear_refs``) minus the baseline ``VmRSS`` once the parameters and
    gradients exist (the optimizer's package already imported): the first step (it creates
    the state; for torchao it also compiles) and a step after the warm-up (the state plus
    the step's temporaries, and whatever the warm-up left resident -- torchao's compiled code).
``first step s``
    the first step's seconds (it creates the state; torchao compiles in it).
``ms/step``
    the median of ``--steps`` steps after the warm-up (torchao compiles at its first step,
    once per parameter shape: 2 warm-up steps, untimed).
``ckpt MB``
    the file :class:`optimkit.Checkpointer` writes for ``optimizer=`` alone.

Ratios (``x fused``) are against ``torch AdamW fused`` (float32) of the same run.
``optimkit AdamW8bit`` is timed as it is: a compiled kernel, where one is installed, is used
by the optimizer itself.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ROWS", "gpt2_small", "run_memory", "measure", "state_nbytes"]

VOCAB, CONTEXT, D_MODEL = 50257, 1024, 768


def gpt2_small(scale: float = 1.0) -> list[tuple[int, ...]]:
    """GPT-2 small's parameter shapes (``scale`` shrinks every dimension, the vocabulary too):
    token embedding, then :func:`optimkit.bench._transformer` (position embedding, 12 blocks,
    final LayerNorm). At ``scale=1``: 148 tensors, 124,439,808 parameters."""
    from .bench import _transformer

    return [(max(1, int(VOCAB * scale)), int(D_MODEL * scale))] + _transformer(scale)


#: Row name -> (package the row needs, warm-up steps). The factories are in :func:`_make`.
ROWS: dict[str, tuple[str, int]] = {
    "torch AdamW fused": ("torch", 1),
    "torch AdamW": ("torch", 1),
    "optimkit AdamW": ("optimkit", 1),
    "optimkit AdamW bf16": ("optimkit", 1),
    "optimkit AdamW8bit": ("optimkit", 1),
    "optimkit AdamW4bit": ("optimkit", 1),
    "optimkit AdamWFp8": ("optimkit", 1),
    "torchao AdamW8bit": ("torchao", 2),
    "torchao AdamW4bit": ("torchao", 2),
    "torchao AdamWFp8": ("torchao", 2),
    "bnb AdamW8bit": ("bitsandbytes", 1),
}
REFERENCE = "torch AdamW fused"
LR, WEIGHT_DECAY = 1e-3, 1e-2


def _import(row: str) -> Any:
    package = ROWS[row][0]
    if package == "torchao":
        import torchao.optim as module
    elif package == "bitsandbytes":
        import bitsandbytes as module
    elif package == "optimkit":
        import optimkit as module
    else:
        import torch as module
    return module


def _make(row: str, params: list[Any]) -> Any:
    """The optimizer of ``row`` (lr 1e-3, weight decay 1e-2, betas (0.9, 0.999) for all)."""
    import torch

    m = _import(row)
    kw = {"lr": LR, "weight_decay": WEIGHT_DECAY}
    factories: dict[str, Callable[[], Any]] = {
        "torch AdamW fused": lambda: torch.optim.AdamW(params, fused=True, **kw),
        "torch AdamW": lambda: torch.optim.AdamW(params, **kw),
        "optimkit AdamW": lambda: m.AdamW(params, **kw),
        "optimkit AdamW bf16": lambda: m.AdamW(params, state_encoding="bf16", **kw),
        "optimkit AdamW8bit": lambda: m.AdamW8bit(params, **kw),
        "optimkit AdamW4bit": lambda: m.AdamW4bit(params, **kw),
        "optimkit AdamWFp8": lambda: m.AdamWFp8(params, **kw),
        "torchao AdamW8bit": lambda: m.AdamW8bit(params, **kw),
        "torchao AdamW4bit": lambda: m.AdamW4bit(params, **kw),
        "torchao AdamWFp8": lambda: m.AdamWFp8(params, **kw),
        "bnb AdamW8bit": lambda: m.optim.AdamW8bit(params, **kw),
    }
    return factories[row]()


def state_nbytes(state: Any) -> int:
    """Bytes of every tensor in an optimizer's ``state`` (nested dicts/lists; a tensor
    subclass through its inner tensors, ``__tensor_flatten__``; the same memory under several
    entries counted once)."""
    import torch

    seen: set[tuple[int, int]] = set()
    total = 0

    def walk(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if type(obj) not in (torch.Tensor, torch.nn.Parameter) and hasattr(obj, "__tensor_flatten__"):
                names, _ = obj.__tensor_flatten__()
                for name in names:
                    walk(getattr(obj, name))
                return
            key = (obj.data_ptr(), obj.nbytes)
            if key not in seen or obj.nbytes == 0:
                seen.add(key)
                total += obj.nbytes
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    return total


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so the baseline holds no free pages
    a step could reuse without the high-water mark seeing them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(row: str, scale: float, steps: int, checkpoint: bool = True, threads: int = 0) -> dict[str, Any]:
    """One row, in this process (``python -m optimkit.bench_memory`` runs it in a fresh one);
    ``threads``: torch's intra-op threads (0: torch's default)."""
    import gc

    import torch

    if threads:
        torch.set_num_threads(threads)

    _import(row)  # the package's import is part of the baseline, not of the step
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.02)) for s in gpt2_small(scale)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3)
    numel = sum(p.numel() for p in params)
    gc.collect()
    _trim()
    baseline = _status_kb("VmRSS:")
    _reset_peak()
    opt = _make(row, params)
    warmup = ROWS[row][1]
    t0 = time.perf_counter()
    opt.step()
    first_s = time.perf_counter() - t0
    peak_first = _status_kb("VmHWM:") - baseline
    peak_later = None
    if steps > 0:  # steps=0: the state and the first step only (full-size rows on a slow machine)
        for _ in range(warmup - 1):
            opt.step()
        gc.collect()
        _trim()
        _reset_peak()
        opt.step()
        peak_later = (_status_kb("VmHWM:") - baseline) / 1024
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "row": row, "numel": numel, "tensors": len(params), "state_bytes": state_nbytes(opt.state),
        "peak_first_mb": peak_first / 1024, "peak_later_mb": peak_later,
        "ms": statistics.median(times) * 1e3 if times else None, "first_step_s": first_s, "steps": steps, "warmup": warmup,
    }  # fmt: skip
    if checkpoint:
        try:
            from .checkpoint import Checkpointer

            with tempfile.TemporaryDirectory() as d:
                path = Checkpointer(d, keep=1).save(1, optimizer=opt)
                out["ckpt_bytes"] = os.path.getsize(path)
        except Exception as e:  # noqa: BLE001 - reported in the table
            out["ckpt_error"] = f"{type(e).__name__}: {e}"[:120]
    return out


def _subprocess(row: str, scale: float, steps: int, checkpoint: bool, timeout: float, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "optimkit.bench_memory", row, str(scale), str(steps), str(int(checkpoint)),
           str(threads)]  # fmt: skip
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"row": row, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"row": row, "error": tail[:160]}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def run_memory(
    only: Sequence[str] | None = None,
    scale: float = 1.0,
    steps: int = 3,
    checkpoint: bool = True,
    timeout: float = 3600,
    out: Callable[[str], None] = print,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Measure the rows (those whose name contains one of ``only``, case-insensitive; the
    reference row always) and print a Markdown table; return the measurements."""
    import torch

    def wanted(row: str) -> bool:  # a row's exact name, or a part of names
        return not only or any(o.lower() == row.lower() or (o not in ROWS and o.lower() in row.lower()) for o in only)

    rows = [r for r in ROWS if r == REFERENCE or wanted(r)]
    shapes = gpt2_small(scale)
    numel = sum(torch.Size(s).numel() for s in shapes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {threads or torch.get_num_threads()} threads, "
        f"load average {load:.1f} at start")  # fmt: skip
    timed = f"{steps} timed steps per row (median) after the warm-up" if steps else "the first step only (--steps 0)"
    out(f"shapes: GPT-2 small x{scale:g}: {len(shapes)} tensors, {numel:,} parameters; {timed}; "
        "each row in a fresh process")
    out("peak MB: VmHWM minus VmRSS once parameters and gradients exist (reset via /proc/self/clear_refs, "
        "after malloc_trim)")
    out("")
    header = ("| optimizer | state B/param | state MB | x fused | peak MB, step 1 | peak MB, later step "
              "| x fused | first step s | ms/step | x fused | ckpt MB | ckpt B/param |")  # fmt: skip
    out(header)
    out("|" + "---|" * (header.count("|") - 1))
    results = []
    ref: dict[str, Any] = {}
    for row in rows:
        r = _subprocess(row, scale, steps, checkpoint, timeout, threads)
        results.append(r)
        if "error" in r:
            out(f"| {row} | failed: {r['error']} |" + " |" * 11)
            continue
        if row == REFERENCE:
            ref = r
        bpp = r["state_bytes"] / r["numel"]

        def ratio(key: str, r: dict[str, Any] = r, ref: dict[str, Any] = ref) -> str:
            return f"{r[key] / ref[key]:.2f}" if ref.get(key) and r.get(key) is not None else "n/a"

        ckpt = r.get("ckpt_bytes")
        out(f"| {row} | {bpp:.3f} | {r['state_bytes'] / 2**20:.1f} | {ratio('state_bytes')} "
            f"| {r['peak_first_mb']:.0f} | {_fmt(r['peak_later_mb'], '.0f')} | {ratio('peak_later_mb')} "
            f"| {r['first_step_s']:.1f} | {_fmt(r['ms'], '.1f')} | {ratio('ms')} | {_fmt(ckpt / 2**20 if ckpt else None, '.1f')} "
            f"| {_fmt(ckpt / r['numel'] if ckpt else None, '.3f')} |")  # fmt: skip
    errors = [(r["row"], r["ckpt_error"]) for r in results if "ckpt_error" in r]
    for row, err in errors:
        out(f"\n{row}: no checkpoint ({err})")
    return results


if __name__ == "__main__":
    name, scale_, steps_, ckpt_ = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    print(json.dumps(measure(name, scale_, steps_, ckpt_, int(sys.argv[5]) if len(sys.argv) > 5 else 0)), flush=True)
