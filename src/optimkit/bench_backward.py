"""Peak memory of a training step: the ordinary loop against the step inside backward.

:func:`step_in_backward_memory` trains a stack of GPT-2-small-shaped MLP blocks
(``Linear(width, 4 width)``, GELU, ``Linear(4 width, width)``; by default width 768 and 12
blocks: 56.7M parameters, 216 MiB of float32 gradients) with AdamW, in each mode in a fresh
Python process, and reports the peak resident memory of one training step (forward, backward,
step) above the memory held before it (parameters, optimizer state, no gradients) -- Linux's
``VmHWM`` after a reset through ``/proc/self/clear_refs``, as ``optimkit bench --memory``.

The processes run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: glibc otherwise raises its
mmap threshold after the first large free and keeps freed gradients in its heap, so the
resident size would follow the allocator's history instead of the live tensors.

``python -m optimkit.bench_backward [--width 768 --depth 12 --batch 8]`` prints the numbers
(MiB). Measured on a 2-core machine with the defaults: 220.0 ordinary, 13.0 with the step in
backward (the gradients: 216.2).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from typing import Any

import torch

__all__ = ["step_in_backward_memory"]

MODES = ("ordinary", "in_backward")


def _model(width: int, depth: int) -> torch.nn.Module:
    blocks = []
    for _ in range(depth):
        blocks += [torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)]
    return torch.nn.Sequential(*blocks)


def _measure(mode: str, width: int, depth: int, batch: int) -> dict[str, Any]:
    """One mode, in this process: the peak extra resident MB of one training step."""
    from . import AdamW, step_in_backward
    from .bench import _peak_reset, _rss_kb

    torch.manual_seed(0)
    model = _model(width, depth)
    opt = AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width)
    if mode == "in_backward":
        step_in_backward(opt)

    def iteration() -> None:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):  # the state exists, the allocator is warm
        iteration()
    gc.collect()
    grad_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    if not _peak_reset():
        return {"mode": mode, "peak_mb": None, "grad_mb": grad_mb}
    before = _rss_kb("VmRSS:")
    iteration()
    peak = (_rss_kb("VmHWM:") - before) / 1024
    return {"mode": mode, "peak_mb": peak, "grad_mb": grad_mb}


def step_in_backward_memory(width: int = 768, depth: int = 12, batch: int = 8) -> dict[str, Any]:
    """Peak extra memory of one training step, ordinary and with :func:`optimkit.step_in_backward`.

    Returns:
        ``{"ordinary_mb", "in_backward_mb", "grad_mb", "params"}``: the two peaks above the
        memory before the step (None where the peak cannot be reset: not Linux), the size of
        the gradients, all in MiB, and the number of parameters.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    peaks = {}
    grad_mb = 0.0
    for mode in MODES:
        code = (
            "import json; from optimkit.bench_backward import _measure; "
            f"print(json.dumps(_measure({mode!r}, {width}, {depth}, {batch})))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[mode], grad_mb = result["peak_mb"], result["grad_mb"]
    params = depth * (2 * 4 * width * width + 5 * width)
    return {"ordinary_mb": peaks["ordinary"], "in_backward_mb": peaks["in_backward"], "grad_mb": grad_mb,
            "params": params}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    r = step_in_backward_memory(args.width, args.depth, args.batch)
    print(f"MLP blocks {args.width}x{4 * args.width} x{args.depth}: {r['params'] / 1e6:.1f}M parameters, "
          f"gradients {r['grad_mb']:.1f} MiB, AdamW, batch {args.batch}")  # fmt: skip
    print("| mode | peak extra MiB of a training step |\n|---|---|")
    for mode in MODES:
        value = r[f"{mode}_mb"]
        print(f"| {mode.replace('_', ' ')} | {'n/a' if value is None else f'{value:.1f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
