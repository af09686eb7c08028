"""The benchmark runs end to end (tiny sizes: a smoke test, not a timing test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from optimkit import bench


def test_bench_prints_a_row_per_mode(monkeypatch):
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 1.0)
    lines: list[str] = []
    rows = bench.run(["adam", "rmsprop"], ["many-small"], steps=1, scale=0.01, out=lines.append)
    assert {r.mode for r in rows if r.optimizer == "adam"} == {
        "optimkit", "optimkit fused", "torch for-loop", "torch foreach", "torch fused",
    }  # fmt: skip
    assert {r.mode for r in rows if r.optimizer == "rmsprop"} == {
        "optimkit",
        "torch for-loop",
        "torch foreach",
    }
    assert sum(line.startswith("| adam | many-small |") for line in lines) == 5
    assert all(r.ms > 0 for r in rows)


def test_bench_times_an_optimizer_torch_lacks_against_its_oracle(monkeypatch):
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 1.0)
    lines: list[str] = []
    rows = bench.run(["lion"], ["many-small"], steps=1, scale=0.01, out=lines.append)
    assert {r.mode for r in rows} == {"optimkit", "reference (oracle)"}
    assert any(line.startswith("| lion | many-small | optimkit |") and "| n/a |" in line for line in lines)


def test_bench_script_and_cli():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    args = ["--optimizers", "sgd", "--workloads", "one-big", "--scale", "0.001", "--steps", "1"]
    for cmd in ([sys.executable, str(script), *args], [sys.executable, "-m", "optimkit", "bench", *args]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "| sgd | one-big | optimkit |" in done.stdout


def test_bench_memory_rows_in_fresh_processes():
    """``optimkit bench --memory`` (tiny shapes): every tensor of the state counted, the
    reference row always run, the checkpoint size reported."""
    from optimkit import bench_memory

    lines: list[str] = []
    rows = bench_memory.run_memory(["optimkit AdamW8bit"], scale=0.02, steps=1, threads=1, out=lines.append)
    assert [r["row"] for r in rows] == ["torch AdamW fused", "optimkit AdamW8bit"], rows
    fp32, q8 = rows
    assert fp32["state_bytes"] == 8 * fp32["numel"] + 4 * fp32["tensors"]  # two moments + a step each
    assert q8["state_bytes"] < fp32["state_bytes"] and q8["ckpt_bytes"] > q8["state_bytes"]
    assert any(line.startswith("| optimkit AdamW8bit |") for line in lines)
