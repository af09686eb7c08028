"""``Checkpointer(distributed=True)``: torch.distributed.checkpoint underneath, optimkit's rules on top.

An FSDP2 model (float64, odd sizes so shards are uneven) trained by NAdam (float32 scalar
state: ``step`` and ``mu_product``) with a StepLR scheduler saves every step. Resuming on the
same number of ranks must continue bit-identically to an uninterrupted run; resuming on fewer
ranks must restore the saved state exactly (DCP reshards without arithmetic) and continue
within float64 summation-order noise of a run on that many ranks (the global batch is split
over the ranks, so another world size averages the same gradients in another order).
A checkpoint that does not fit, or a damaged newest one, must leave everything as it was or
fall back to the previous one, as in the single-process mode.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_utils import available, run_group

import optimkit
from optimkit.checkpoint import CheckpointMismatchError

pytestmark = [
    pytest.mark.skipif(
        not available(), reason="needs torch.distributed with gloo and the forkserver start method"
    ),
    pytest.mark.usefixtures("one_thread"),
]

K, N = 3, 3  # steps before the checkpoint, steps after it
BATCH = 8


def _model(seed: int, hidden: int = 11) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3)
    ).double()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def _setup(seed: int, hidden: int = 11) -> tuple[Any, Any, Any]:
    model = _model(seed, hidden)
    opt = optimkit.NAdam(model.parameters(), lr=0.02, weight_decay=0.01)
    return model, opt, optimkit.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _train(model: Any, opt: Any, sched: Any, start: int, stop: int, rank: int, world: int,
           ckpt: Any = None) -> None:  # fmt: skip
    for step in range(start, stop):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(BATCH, 5, generator=g, dtype=torch.float64)
        y = torch.randn(BATCH, 3, generator=g, dtype=torch.float64)
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # this rank's share
        opt.zero_grad()
        (model(x[rows]) - y[rows]).square().mean().backward()
        opt.step()
        sched.step()
        if ckpt is not None:
            ckpt.save(step + 1, model=model, optimizer=opt, scheduler=sched, extra={"seen": step + 1})


def _snapshot(model: Any, opt: Any, sched: Any) -> dict[str, Any]:
    def full(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: full(v) for k, v in x.items()}
        if isinstance(x, list):
            return [full(v) for v in x]
        if hasattr(x, "full_tensor"):
            return x.full_tensor()
        return x.clone() if isinstance(x, torch.Tensor) else x  # not a view of live state

    return {
        "params": [p.full_tensor() for p in model.parameters()],
        "state": full(opt.state_dict()["state"]),
        "lr": opt.param_groups[0]["lr"],
        "sched": sched.state_dict(),
        "rng": torch.get_rng_state(),  # a copy already
    }


def save_worker(rank: int, world: int, root: str) -> dict[str, Any]:
    model, opt, sched = _setup(seed=0)
    ckpt = optimkit.Checkpointer(root, keep=2, distributed=True)
    _train(model, opt, sched, 0, K, rank, world, ckpt)
    return {"at_save": _snapshot(model, opt, sched), "kept": [p.name for p in ckpt.checkpoints()]}


def resume_worker(rank: int, world: int, root: str) -> dict[str, Any]:
    model, opt, sched = _setup(seed=1)  # another init: what matches came from the checkpoint
    ckpt = optimkit.Checkpointer(root, keep=2, distributed=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = ckpt.restore(model=model, optimizer=opt, scheduler=sched)
    restored = _snapshot(model, opt, sched)
    _train(model, opt, sched, step, K + N, rank, world)
    return {
        "step": step, "extra": ckpt.extra, "restored": restored, "end": _snapshot(model, opt, sched),
        "warnings": [str(w.message) for w in caught],
    }  # fmt: skip


def straight_worker(rank: int, world: int) -> dict[str, Any]:
    model, opt, sched = _setup(seed=0)
    _train(model, opt, sched, 0, K + N, rank, world)
    return _snapshot(model, opt, sched)


def mismatch_worker(rank: int, world: int, root: str) -> dict[str, Any]:
    """Restores that must refuse and change nothing."""
    out = {}
    model, _, _ = _setup(seed=1)
    adam = optimkit.Adam(model.parameters())
    before = [p.full_tensor().clone() for p in model.parameters()]
    try:
        optimkit.Checkpointer(root, distributed=True).restore(model=model, optimizer=adam)
        out["class"] = "no error"
    except CheckpointMismatchError as e:
        out["class"] = str(e)
    out["class_untouched"] = not adam.state and all(
        torch.equal(a, p.full_tensor()) for a, p in zip(before, model.parameters())
    )
    model, opt, sched = _setup(seed=1, hidden=7)  # other shapes
    before = [p.full_tensor().clone() for p in model.parameters()]
    try:
        optimkit.Checkpointer(root, distributed=True).restore(model=model, optimizer=opt, scheduler=sched)
        out["shape"] = "no error"
    except CheckpointMismatchError as e:
        out["shape"] = str(e)
    out["shape_untouched"] = (
        not opt.state
        and sched.last_epoch == 0
        and all(torch.equal(a, p.full_tensor()) for a, p in zip(before, model.parameters()))
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    same, fewer = tmp_path_factory.mktemp("same"), tmp_path_factory.mktemp("fewer")
    out = {
        "save2": run_group(save_worker, 2, str(same), timeout=90)[0],
        "save4": run_group(save_worker, 4, str(fewer), timeout=90)[0],
        "straight2": run_group(straight_worker, 2, timeout=90)[0],
        "dirs": (same, fewer),
    }
    out["resume2"] = run_group(resume_worker, 2, str(same), timeout=90)
    out["resume4to2"] = run_group(resume_worker, 2, str(fewer), timeout=90)
    out["mismatch"] = run_group(mismatch_worker, 2, str(same), timeout=90)
    return out


def _equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_keeps_the_newest_and_leaves_no_temporaries(runs):
    same, _ = runs["dirs"]
    assert runs["save2"]["kept"] == [f"step-{K - 1:08d}.dcp", f"step-{K:08d}.dcp"]
    assert sorted(p.name for p in Path(same).iterdir()) == runs["save2"]["kept"]
    files = sorted(p.name for p in (Path(same) / f"step-{K:08d}.dcp").iterdir())
    assert "meta.ckpt" in files and ".metadata" in files and {"rng-0.ckpt", "rng-1.ckpt"} <= set(files)


def test_resume_on_the_same_ranks_is_bit_identical(runs):
    for rank, res in enumerate(runs["resume2"]):
        assert res["step"] == K and res["extra"] == {"seen": K} and not res["warnings"], res["warnings"]
        at_save = runs["save2"]["at_save"] if rank == 0 else None
        if at_save is not None:
            _equal(res["restored"]["params"], at_save["params"], "restored params")
            _equal(res["restored"]["state"], at_save["state"], "restored state")
            _equal(res["restored"]["rng"], at_save["rng"], "restored RNG")
            assert res["restored"]["sched"] == at_save["sched"]
    end, straight = runs["resume2"][0]["end"], runs["straight2"]
    _equal({k: v for k, v in end.items() if k != "rng"}, {k: v for k, v in straight.items() if k != "rng"}, "end")


def test_saved_on_4_ranks_resumes_on_2(runs):
    res, at_save = runs["resume4to2"][0], runs["save4"]["at_save"]
    assert res["step"] == K and res["extra"] == {"seen": K}
    # Resharding reads the saved numbers back unchanged: scalar state keeps float32.
    _equal(res["restored"]["params"], at_save["params"], "restored params")
    _equal(res["restored"]["state"], at_save["state"], "restored state")
    for st in res["restored"]["state"].values():
        assert st["step"].dtype == torch.float32 and st["mu_product"].dtype == torch.float32
        assert float(st["step"]) == K
    # Ranks 0 and 1 existed in the 4-rank job: their RNG states were restored, no warning.
    assert not res["warnings"], res["warnings"]
    # Continued on 2 ranks: the same run up to the order the ranks' gradients are summed in.
    end, straight = res["end"], runs["straight2"]
    assert end["lr"] == straight["lr"] and end["sched"] == straight["sched"]
    worst = max((a - b).abs().max().item() for a, b in zip(end["params"], straight["params"]))
    print(f"4 -> 2 ranks: largest parameter difference to an uninterrupted 2-rank run {worst:.1e}")
    for a, b in zip(end["params"], straight["params"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_mismatch_changes_nothing(runs):
    for res in runs["mismatch"]:
        assert "checkpoint holds optimizer NAdam, optimizer is Adam" in res["class"], res["class"]
        assert res["class_untouched"]
        assert "does not fit, nothing was restored" in res["shape"], res["shape"]
        assert "size" in res["shape"].lower() or "shape" in res["shape"].lower(), res["shape"]
        assert res["shape_untouched"]


def damaged_worker(rank: int, world: int, root: str) -> dict[str, Any]:
    model, opt, sched = _setup(seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = optimkit.Checkpointer(root, distributed=True).restore(model=model, optimizer=opt, scheduler=sched)
    return {"step": step, "warnings": [str(w.message) for w in caught]}


def test_damaged_newest_falls_back(runs, tmp_path):
    import shutil

    same, _ = runs["dirs"]
    root = tmp_path / "copy"
    shutil.copytree(same, root)
    meta = root / f"step-{K:08d}.dcp" / "meta.ckpt"
    meta.write_bytes(meta.read_bytes()[:-10])  # cut short
    res = run_group(damaged_worker, 2, str(root), timeout=90)
    assert [r["step"] for r in res] == [K - 1, K - 1]
    # Rank 0 reads the candidates and tells the others which one to load; it warns.
    assert any("truncated or damaged" in w and "falling back" in w for w in res[0]["warnings"]), res


def test_one_process_without_a_process_group(tmp_path, capsys):
    """distributed=True also works in a single process (DCP's no-process-group mode), and
    ``optimkit ckpt show`` describes the directory."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = optimkit.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    ckpt = optimkit.Checkpointer(tmp_path, distributed=True)
    path = ckpt.save(1, model=model, optimizer=opt, extra={"note": "x"})
    model2 = torch.nn.Linear(4, 3)
    opt2 = optimkit.AdamW(model2.parameters(), lr=0.1)
    assert optimkit.Checkpointer(tmp_path, distributed=True).restore(model=model2, optimizer=opt2) == 1
    _equal(opt2.state_dict(), opt.state_dict(), "optimizer")
    _equal(model2.state_dict(), model.state_dict(), "model")
    from optimkit.checkpoint import cli_show

    assert cli_show([str(path)]) == 0
    shown = capsys.readouterr().out
    assert "distributed checkpoint" in shown and "step: 1" in shown and "AdamW" in shown, shown
    assert os.path.isdir(path)


def test_one_process_several_optimizers_and_schedulers(tmp_path, capsys):
    """Muon + AdamW through DCP (torch's get_state_dict merges several optimizers by name)."""

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
        muon = optimkit.Muon([model[0].weight, model[1].weight], lr=0.02)
        adamw = optimkit.AdamW([model[0].bias, model[1].bias], lr=0.1)
        scheds = {"muon": torch.optim.lr_scheduler.StepLR(muon, 1), "adamw": torch.optim.lr_scheduler.StepLR(adamw, 2)}
        return model, {"muon": muon, "adamw": adamw}, scheds

    def step(model, opts, scheds):
        model(torch.randn(2, 4)).square().sum().backward()
        for o in opts.values():
            o.step()
            o.zero_grad()
        for s in scheds.values():
            s.step()

    model, opts, scheds = build()
    step(model, opts, scheds)
    path = optimkit.Checkpointer(tmp_path, distributed=True).save(1, model=model, optimizer=opts, scheduler=scheds)
    model2, opts2, scheds2 = build()
    with pytest.raises(optimkit.checkpoint.CheckpointMismatchError, match="holds 2 optimizers"):
        optimkit.Checkpointer(tmp_path, distributed=True).restore(model=model2, optimizer=opts2["muon"])
    assert not opts2["muon"].state  # nothing changed
    assert optimkit.Checkpointer(tmp_path, distributed=True).restore(model=model2, optimizer=opts2, scheduler=scheds2) == 1
    for k in opts:
        _equal(opts2[k].state_dict(), opts[k].state_dict(), k)
        assert scheds2[k].state_dict() == scheds[k].state_dict()
    from optimkit.checkpoint import cli_show

    assert cli_show([str(path)]) == 0
    assert "optimizer muon class: optimkit.optimizers.muon.Muon" in capsys.readouterr().out
