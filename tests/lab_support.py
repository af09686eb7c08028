"""Shared by the lab's tests: the ``--quick`` report, built once per test session."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

BUILD_SECONDS: dict[str, float] = {}


def quick_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``optimkit lab --quick`` into the session's temporary directory (built at first use)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from optimkit.lab import build_report

    out = tmp_path_factory.getbasetemp() / "lab_quick"
    if not (out / "index.html").exists():
        start = time.perf_counter()
        build_report(out, quick=True, progress=False)
        BUILD_SECONDS["quick"] = time.perf_counter() - start
    return out
