"""Encoded optimizer state (8-bit, 4-bit, FP8, bf16 moments) under FSDP2 and distributed checkpoints.

FSDP2 (``fully_shard``) on 2 and 4 gloo ranks, float32 MLP 256 -> 33 -> 160 -> 4:

* ``0.weight`` (33 x 256, 8448 elements): rows of whole blocks (256 = one 8-bit/FP8 block,
  two 4-bit blocks). Its moments are encoded on the local shards -- 17/16 rows on 2 ranks,
  9/9/9/6 on 4 (local shards under ``MIN_SIZE``: the whole parameter decides) -- and stored
  as DTensors sharded like it (codes ``(33, 256)`` or 4-bit ``(33, 128)``, scales
  ``(33, blocks a row)``).
* ``2.weight`` (160 x 33, 5280 elements): rows of 33 elements are no whole number of blocks,
  so under FSDP2 its moments stay full precision (sharded like it); in one process it would be
  encoded, so the one-process reference puts it in a group without an encoding. (bf16 has no
  blocks: encoded in both.)
* biases and ``4.weight``: under ``MIN_SIZE``, full precision everywhere.

Every rank trains on the whole batch, so FSDP2's reduce-scatter averages identical gradients
(exact for 2 and 4 ranks): the runs must equal one process *bit for bit*, the blocks of the
shards being the blocks of the whole tensors. Checkpoints (``get/set_optimizer_state_dict`` +
``torch.distributed.checkpoint``, and ``Checkpointer(distributed=True)``) must resume
bit-identically, on the same ranks and resharded from 4 ranks to 2; a one-process state dict
loaded under FSDP2 and an FSDP2 state dict (gathered) loaded in one process too.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_utils import available, run_group

import optimkit
from optimkit.execution.sharded import shard_like

pytestmark = [
    pytest.mark.skipif(
        not available(), reason="needs torch.distributed with gloo and the forkserver start method"
    ),
    pytest.mark.usefixtures("one_thread"),
]

#: name -> (optimizer class, keyword arguments)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw-8bit": ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "state_encoding": "8bit"}),
    "adamw-4bit": ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "state_encoding": "4bit"}),
    "adamw-fp8": ("AdamW", {"lr": 1e-2, "state_encoding": "fp8"}),
    "adamw-bf16": ("AdamW", {"lr": 1e-2, "state_encoding": "bf16"}),
    "lion-8bit": ("Lion", {"lr": 1e-3, "weight_decay": 0.1, "state_encoding": "8bit"}),
    "rmsprop-8bit": ("RMSprop", {"lr": 1e-3, "momentum": 0.9, "centered": True, "state_encoding": "8bit"}),
    # SGD's momentum buffer is created by its rule in the first step (not by an init).
    "sgd-4bit": ("SGD", {"lr": 0.05, "momentum": 0.9, "state_encoding": "4bit"}),
}
CKPT_CASES = ["adamw-8bit", "adamw-4bit"]
HSDP_CASE = "adamw-4bit"
STEPS, K, N = 3, 2, 2  # steps compared; steps before a checkpoint, after it
BATCH = 8
ALIGNED, UNALIGNED = 0, 2  # indices in model.parameters(): 0.weight, 2.weight


def make_model(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(256, 33), torch.nn.Tanh(), torch.nn.Linear(33, 160), torch.nn.Tanh(),
            torch.nn.Linear(160, 4),
        )  # fmt: skip


def shard(model: torch.nn.Module, world: int, hsdp: bool = False) -> torch.nn.Module:
    """FSDP2, each Linear a unit; ``hsdp``: on a (2, world / 2) mesh, (Replicate, Shard(0))."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if hsdp:
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_opt(model: torch.nn.Module, case: str, split: bool = False) -> Any:
    """``split``: the unaligned weight in a group of its own without an encoding (what FSDP2
    gives it), so that one process keeps the same state as the sharded run. (bf16 has no
    blocks: every parameter takes it.)"""
    cls, kwargs = CASES[case]
    params = list(model.parameters())
    if split and kwargs["state_encoding"] != "bf16":
        rest = [p for i, p in enumerate(params) if i != UNALIGNED]
        groups: Any = [{"params": rest}, {"params": [params[UNALIGNED]], "state_encoding": None}]
    else:
        groups = params
    return getattr(optimkit, cls)(groups, **kwargs)


def train(model: Any, opt: Any, start: int, stop: int) -> None:
    """Every rank the whole batch (see the module)."""
    for step in range(start, stop):
        g = torch.Generator().manual_seed(500 + step)
        x, y = torch.randn(BATCH, 256, generator=g), torch.randn(BATCH, 4, generator=g)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def gather(t: Any) -> Any:
    """The full value of a DTensor (a collective), a copy of a plain tensor. FP8 travels as bytes."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        if t.dtype == torch.float8_e4m3fn:
            as_bytes = DTensor.from_local(
                t.to_local().view(torch.uint8), t.device_mesh, t.placements, run_check=False,
                shape=t.shape, stride=t.stride(),
            )  # fmt: skip
            return as_bytes.full_tensor().view(torch.float8_e4m3fn)
        return t.full_tensor()
    if isinstance(t, torch.Tensor):
        return t.detach().clone()
    if isinstance(t, dict):
        return {k: gather(v) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(gather(v) for v in t)
    return t


def snapshot(model: Any, opt: Any) -> dict[str, Any]:
    """Parameters and each parameter's state (by position in the model), gathered."""
    params = list(model.parameters())
    return {"params": gather(params), "state": {i: gather(opt.state[p]) for i, p in enumerate(params) if p in opt.state}}


def layout(model: Any, opt: Any) -> dict[int, dict[str, Any]]:
    """Per parameter and state key: (class, global shape, dtype, same placements as the parameter)."""
    out: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(model.parameters()):
        out[i] = {
            k: (type(v).__name__, tuple(v.shape), v.dtype, getattr(v, "placements", None) == p.placements)
            for k, v in opt.state[p].items()
        }
    return out


@functools.cache
def reference(case: str, steps: int) -> dict[str, Any]:
    model = make_model()
    opt = make_opt(model, case, split=True)
    train(model, opt, 0, steps)
    return {**snapshot(model, opt), "state_dict": opt.state_dict()}


def assert_same(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Bit for bit. Encoded entries may differ in shape only (one process: flat 4-bit codes
    and scales; FSDP2: ``(rows, ...)``): compared flattened."""
    for i, (a, e) in enumerate(zip(actual["params"], expected["params"])):
        assert torch.equal(a, e), f"{where}: parameter {i} differs by {(a - e).abs().max().item():.2e}"
    assert actual["state"].keys() == expected["state"].keys(), where
    for i, st in expected["state"].items():
        got = actual["state"][i]
        assert got.keys() == st.keys(), f"{where}: parameter {i} state keys {sorted(got)}, expected {sorted(st)}"
        for k, e in st.items():
            a = got[k]
            assert a.dtype == e.dtype and a.numel() == e.numel(), f"{where}: {i}.{k}: {a.dtype}{tuple(a.shape)} vs {e.dtype}{tuple(e.shape)}"
            a8, e8 = a.reshape(-1).view(torch.uint8), e.reshape(-1).view(torch.uint8)  # bit patterns
            assert torch.equal(a8, e8), f"{where}: state {i}.{k} differs"


def expected_layout(case: str, rows: int = 33, row: int = 256) -> dict[str, tuple]:
    """The aligned weight's state entries: (global shape, dtype)."""
    enc = CASES[case][1]["state_encoding"]
    keys = {"adamw": ["exp_avg", "exp_avg_sq"], "lion": ["exp_avg"], "rmsprop": ["square_avg", "momentum_buffer", "grad_avg"],
            "sgd": ["momentum_buffer"]}[case.split("-")[0]]  # fmt: skip
    out = {}
    for k in keys:
        if enc == "bf16":
            out[k] = ((rows, row), torch.bfloat16)
        elif enc == "4bit":
            out[k] = ((rows, row // 2), torch.uint8)
            out[k + ".scale"] = ((rows, row // 128), torch.bfloat16)
        else:
            out[k] = ((rows, row), torch.float8_e4m3fn if enc == "fp8" else torch.uint8)
            out[k + ".scale"] = ((rows, 1), torch.float32)
    return out


# ---------------------------------------------------------------------------- the workers
def _guard(fn: Any, *args: Any) -> Any:
    import traceback

    try:
        return fn(*args)
    except Exception:
        return {"error": traceback.format_exc()}


def _fsdp_case(rank: int, world: int, case: str) -> dict[str, Any]:
    model = shard(make_model(), world)
    opt = make_opt(model, case)
    train(model, opt, 0, STEPS)
    return {**snapshot(model, opt), "layout": layout(model, opt)}


def fsdp_worker(rank: int, world: int, cases: list[str]) -> dict[str, Any]:
    return {case: _guard(_fsdp_case, rank, world, case) for case in cases}


def _ckpt_case(rank: int, world: int, case: str, root: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )  # fmt: skip

    out: dict[str, Any] = {}
    # The uninterrupted run, saving after K steps both ways.
    model = shard(make_model(), world)
    opt = make_opt(model, case)
    train(model, opt, 0, K)
    out["at_save"] = snapshot(model, opt)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    out["dcp_keys"] = sorted(state["optim"]["state"]["0.weight"])
    dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, "dcp", case)))
    optimkit.Checkpointer(os.path.join(root, "ckpt", case), distributed=True).save(K, model=model, optimizer=opt)
    train(model, opt, K, K + N)
    out["straight"] = snapshot(model, opt)

    # DCP directly, into a fresh model and optimizer (another seed: what matches was loaded).
    model = shard(make_model(seed=1), world)
    opt = make_opt(model, case)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(os.path.join(root, "dcp", case)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
    out["dcp_warnings"] = [str(w.message) for w in caught if "converted" in str(w.message)]
    out["dcp_restored"] = snapshot(model, opt)
    out["dcp_layout"] = layout(model, opt)
    train(model, opt, K, K + N)
    out["dcp_end"] = snapshot(model, opt)

    # Checkpointer(distributed=True).
    model = shard(make_model(seed=1), world)
    opt = make_opt(model, case)
    out["ckpt_step"] = optimkit.Checkpointer(os.path.join(root, "ckpt", case), distributed=True).restore(
        model=model, optimizer=opt
    )
    out["ckpt_restored"] = snapshot(model, opt)
    train(model, opt, K, K + N)
    out["ckpt_end"] = snapshot(model, opt)

    # A one-process state dict (plain, unsharded codes and scales) loaded on every rank.
    one = make_model()
    one_opt = make_opt(one, case, split=True)
    train(one, one_opt, 0, K)
    model = shard(make_model(seed=1), world)
    with torch.no_grad():
        for p, q in zip(model.parameters(), one.parameters()):
            p.to_local().copy_(shard_like(q, p).to_local())  # each rank keeps its shard of q
    opt = make_opt(model, case, split=True)
    opt.load_state_dict(one_opt.state_dict())
    out["from_one_layout"] = layout(model, opt)
    train(model, opt, K, K + N)
    out["from_one_end"] = snapshot(model, opt)
    out["to_one"] = gather(opt.state_dict())  # for one process to load (test_gathered_state_loads_in_one_process)

    # torch's full (unsharded) optimizer state dict: gathered on save, split again on load.
    full = StateDictOptions(full_state_dict=True)
    model = shard(make_model(), world)
    opt = make_opt(model, case)
    train(model, opt, 0, K)
    model_sd, optim_sd = get_model_state_dict(model, options=full), get_optimizer_state_dict(model, opt, options=full)
    model = shard(make_model(seed=1), world)
    opt = make_opt(model, case)
    set_model_state_dict(model, model_sd, options=full)
    set_optimizer_state_dict(model, opt, optim_sd, options=full)
    out["full_sd_layout"] = layout(model, opt)
    train(model, opt, K, K + N)
    out["full_sd_end"] = snapshot(model, opt)
    return out


def ckpt_worker(rank: int, world: int, cases: list[str], root: str) -> dict[str, Any]:
    return {case: _guard(_ckpt_case, rank, world, case, root) for case in cases}


def _save4_case(rank: int, world: int, case: str, root: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = shard(make_model(), world)
    opt = make_opt(model, case)
    train(model, opt, 0, K)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(os.path.join(root, case)))
    return {"at_save": snapshot(model, opt), "layout": layout(model, opt)}


def _hsdp_case(rank: int, world: int, case: str) -> dict[str, Any]:
    model = shard(make_model(), world, hsdp=True)
    opt = make_opt(model, case)
    train(model, opt, 0, STEPS)
    return {**snapshot(model, opt), "layout": layout(model, opt)}


def save4_worker(rank: int, world: int, cases: list[str], root: str) -> dict[str, Any]:
    out = {case: _guard(_save4_case, rank, world, case, root) for case in cases}
    out["hsdp"] = _guard(_hsdp_case, rank, world, HSDP_CASE)  # the same 4 ranks, another mesh
    return out


def _load2_case(rank: int, world: int, case: str, root: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )  # fmt: skip

    model = shard(make_model(seed=1), world)
    opt = make_opt(model, case)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(os.path.join(root, case)))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    restored = snapshot(model, opt)
    train(model, opt, K, K + N)
    return {"restored": restored, "end": snapshot(model, opt), "layout": layout(model, opt)}


def load2_worker(rank: int, world: int, cases: list[str], root: str) -> dict[str, Any]:
    return {case: _guard(_load2_case, rank, world, case, root) for case in cases}


# ---------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def fsdp_results() -> list[dict[str, Any]]:
    t = time.monotonic()
    out = run_group(fsdp_worker, 2, list(CASES), timeout=120)
    print(f"FSDP2 encoded: {len(CASES)} optimizers on 2 ranks in {time.monotonic() - t:.1f} s")
    return out


@pytest.fixture(scope="module")
def ckpt_results(tmp_path_factory) -> list[dict[str, Any]]:
    root = str(tmp_path_factory.mktemp("encoded_ckpt"))
    return run_group(ckpt_worker, 2, CKPT_CASES, root, timeout=120)


@pytest.fixture(scope="module")
def reshard_results(tmp_path_factory) -> dict[str, Any]:
    root = str(tmp_path_factory.mktemp("encoded_reshard"))
    saved = run_group(save4_worker, 4, CKPT_CASES, root, timeout=120)
    loaded = run_group(load2_worker, 2, CKPT_CASES, root, timeout=120)
    return {"saved": saved[0], "loaded": loaded[0], "hsdp": [r["hsdp"] for r in saved]}


def _ok(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result.get("error"):
        pytest.fail(f"{what} raised on the ranks:\n{result['error']}", pytrace=False)
    return result


def _check_layout(lay: dict[int, dict[str, Any]], case: str, rows: int = 33) -> None:
    want = expected_layout(case, rows)
    got = {k: v for k, v in lay[ALIGNED].items() if k != "step"}
    assert {k: (v[1], v[2]) for k, v in got.items()} == want, got
    assert all(v[0] == "DTensor" and v[3] for v in got.values()), f"not sharded like the parameter: {got}"
    # The unaligned weight: full precision (bf16: encoded), sharded like its parameter.
    dtype = torch.bfloat16 if CASES[case][1]["state_encoding"] == "bf16" else torch.float32
    for k, v in lay[UNALIGNED].items():
        if k != "step":
            assert v == ("DTensor", (160, 33), dtype, True), (k, v)


# ---------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_encoded_equals_one_process(fsdp_results, case):
    """FSDP2 on 2 ranks, each stepping its shard of the encoded moments, equals one process
    bit for bit; the aligned weight's codes and scales are DTensors sharded like it, the
    unaligned one's moments full precision."""
    for rank, results in enumerate(fsdp_results):
        result = _ok(results[case], f"FSDP2 {case}")
        assert_same(result, reference(case, STEPS), f"FSDP2 {case} rank {rank}")
    _check_layout(fsdp_results[0][case]["layout"], case)


@pytest.mark.parametrize("case", CKPT_CASES)
def test_dcp_and_checkpointer_resume_bit_identical(ckpt_results, case):
    """Saved after K steps on 2 ranks (``dcp.save`` of ``get_optimizer_state_dict``, and
    ``Checkpointer(distributed=True)``), restored into a fresh model and optimizer on 2 ranks:
    the restored state is the saved one and N more steps equal the uninterrupted run, bit for
    bit (which equals one process)."""
    res = _ok(ckpt_results[0][case], f"checkpoint {case}")
    assert "exp_avg.scale" in res["dcp_keys"], res["dcp_keys"]
    assert_same(res["straight"], reference(case, K + N), "uninterrupted")
    assert_same(res["dcp_restored"], res["at_save"], "DCP restored")
    assert not res["dcp_warnings"], res["dcp_warnings"]  # loaded as saved: nothing converted
    _check_layout(res["dcp_layout"], case)
    assert_same(res["dcp_end"], res["straight"], "DCP resumed")
    assert res["ckpt_step"] == K
    assert_same(res["ckpt_restored"], res["at_save"], "Checkpointer restored")
    assert_same(res["ckpt_end"], res["straight"], "Checkpointer resumed")


@pytest.mark.parametrize("case", CKPT_CASES)
def test_one_process_state_dict_loads_under_fsdp2(ckpt_results, case):
    """A one-process optimizer's state dict (unsharded codes and scales) loaded by the FSDP2
    optimizer on every rank: each rank keeps its rows, exactly, and the run continues as one
    process would."""
    res = _ok(ckpt_results[0][case], f"checkpoint {case}")
    lay = res["from_one_layout"]
    want = expected_layout(case)
    assert {k: (v[1], v[2]) for k, v in lay[ALIGNED].items() if k != "step"} == want
    assert_same(res["from_one_end"], reference(case, K + N), "one-process state dict resumed under FSDP2")


@pytest.mark.parametrize("case", CKPT_CASES)
def test_gathered_state_loads_in_one_process(ckpt_results, case):
    """The FSDP2 optimizer's state dict gathered to full tensors (codes ``(rows, ...)``,
    scales ``(rows, blocks)``) loads into a one-process optimizer and steps on exactly."""
    res = _ok(ckpt_results[0][case], f"checkpoint {case}")
    model = make_model()
    opt = make_opt(model, case, split=True)
    with torch.no_grad():
        for p, q in zip(model.parameters(), res["from_one_end"]["params"]):
            p.copy_(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to convert
        opt.load_state_dict(res["to_one"])
    train(model, opt, K + N, K + N + 1)
    assert_same(snapshot(model, opt), reference(case, K + N + 1), "gathered state dict in one process")


@pytest.mark.parametrize("case", CKPT_CASES)
def test_dcp_reshards_encoded_state_4_to_2_ranks(reshard_results, case):
    """Saved on 4 ranks (9/9/9/6 rows: local shards under MIN_SIZE, still encoded, the whole
    parameter decides), loaded on 2 (17/16 rows): codes and scales reshard row by row, the
    restored state is the saved one and the run continues bit-identically."""
    saved = _ok(reshard_results["saved"][case], f"save on 4 ranks {case}")
    loaded = _ok(reshard_results["loaded"][case], f"load on 2 ranks {case}")
    _check_layout(saved["layout"], case)
    assert_same(saved["at_save"], reference(case, K), "saved on 4 ranks")
    assert_same(loaded["restored"], saved["at_save"], "restored on 2 ranks")
    _check_layout(loaded["layout"], case)
    assert_same(loaded["end"], reference(case, K + N), "resumed on 2 ranks")


@pytest.mark.parametrize("case", CKPT_CASES)
def test_full_state_dict_options_round_trip(ckpt_results, case):
    """``get/set_optimizer_state_dict(options=StateDictOptions(full_state_dict=True))``: torch
    gathers the codes and scales to full tensors and hands them back on load; each rank keeps
    its rows and the run continues bit-identically."""
    res = _ok(ckpt_results[0][case], f"checkpoint {case}")
    _check_layout(res["full_sd_layout"], case)
    assert_same(res["full_sd_end"], reference(case, K + N), "full_state_dict round trip")


def test_hsdp_encoded_equals_one_process(reshard_results):
    """HSDP (FSDP2 on a 2 x 2 mesh, placements (Replicate, Shard(0))): every rank equals one
    process bit for bit, the codes and scales laid out like the parameter."""
    for rank, result in enumerate(reshard_results["hsdp"]):
        _ok(result, f"HSDP {HSDP_CASE}")
        assert_same(result, reference(HSDP_CASE, STEPS), f"HSDP {HSDP_CASE} rank {rank}")
    _check_layout(reshard_results["hsdp"][0]["layout"], HSDP_CASE)
