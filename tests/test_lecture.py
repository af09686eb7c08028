"""examples/lecture.py prints the same numbers with optimkit as with torch.optim."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import torch

import optimkit
from harness import assert_same

LECTURE = Path(__file__).resolve().parents[1] / "examples" / "lecture.py"


def _load():
    spec = importlib.util.spec_from_file_location("lecture", LECTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, optim, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        shown = module.lecture(optim, str(tmp_path))
    # Object ids differ between runs; everything else must be identical.
    return re.sub(r"\b\d{9,}\b", "<id>", out.getvalue()), shown


def test_lecture_prints_what_torch_optim_prints(tmp_path):
    module = _load()
    ours_text, ours = _run(module, optimkit, tmp_path)
    torch_text, theirs = _run(module, torch.optim, tmp_path)
    assert ours_text == torch_text
    assert_same(ours, theirs)
    assert "same object: True" in ours_text
    assert "weight.grad is None" in ours_text
    assert "'lr': 0.0001" in ours_text
    assert ours["loaded"]["state"]  # the loaded optimizer has the momentum buffer


def test_lecture_runs_as_a_script():
    done = subprocess.run([sys.executable, str(LECTURE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "== 6. load_state_dict()" in done.stdout
