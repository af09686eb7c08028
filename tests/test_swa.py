"""optimkit.swa_utils against torch.optim.swa_utils: identical averages, BN statistics and lrs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as TL
import torch.optim.swa_utils as TS

import optimkit
import optimkit.lr_scheduler as OL
import optimkit.swa_utils as OS

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(dtype=torch.float32, bn=True):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 12)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(12))
    layers += [torch.nn.ReLU(), torch.nn.Linear(12, 3)]
    return torch.nn.Sequential(*layers).to(dtype)


def batches(n=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g))
        for _ in range(n)
    ]


def train_and_average(mod, dtype=torch.float32, steps=25, **avg_kw):
    """Train with optimkit.SGD; fold the weights into ``mod.AveragedModel`` after each step."""
    model = make_model(dtype)
    opt = optimkit.SGD(model.parameters(), lr=0.05, momentum=0.9)
    avg = mod.AveragedModel(model, **avg_kw)
    data = batches(dtype=dtype)
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        avg.update_parameters(model)
    return avg


def assert_same_module(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


AVG_CONFIGS = {
    "swa": lambda mod: {},
    "swa-buffers": lambda mod: {"use_buffers": True},
    "ema-multi": lambda mod: {"multi_avg_fn": mod.get_ema_multi_avg_fn(0.9)},
    "ema-multi-buffers": lambda mod: {"multi_avg_fn": mod.get_ema_multi_avg_fn(0.95), "use_buffers": True},
    "ema-single": lambda mod: {"avg_fn": mod.get_ema_avg_fn(0.9)},
    "swa-single": lambda mod: {"avg_fn": mod.get_swa_avg_fn()},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(AVG_CONFIGS))
def test_averaged_model_matches_torch(config, dtype):
    ref = train_and_average(TS, dtype, **AVG_CONFIGS[config](TS))
    ours = train_and_average(OS, dtype, **AVG_CONFIGS[config](OS))
    assert_same_module(ref, ours)
    assert int(ours.n_averaged) == 25
    x = batches(1, dtype)[0][0]
    ref.eval(), ours.eval()
    assert torch.equal(ref(x), ours(x))


def test_swa_multi_fn_with_integer_buffers():
    """torch 2.13 raises on BatchNorm's integer ``num_batches_tracked`` here; optimkit averages
    floats exactly like torch and integers like torch's single-tensor path."""
    with pytest.raises(RuntimeError, match="addcdiv"):
        train_and_average(TS, multi_avg_fn=TS.get_swa_multi_avg_fn(), use_buffers=True)
    ours = train_and_average(OS, multi_avg_fn=OS.get_swa_multi_avg_fn(), use_buffers=True)
    default = train_and_average(TS, use_buffers=True)  # per-tensor path on CPU
    assert torch.equal(ours.module[1].num_batches_tracked, default.module[1].num_batches_tracked)
    # Float tensors: the foreach lerp, identical to torch on a model without integer buffers.
    runs = []
    for mod in (TS, OS):
        model = make_model(bn=False)
        avg = mod.AveragedModel(model, multi_avg_fn=mod.get_swa_multi_avg_fn(), use_buffers=True)
        for _ in range(5):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9).add_(0.01)
            avg.update_parameters(model)
        runs.append(avg)
    assert_same_module(*runs)


def test_state_dicts_interchange_with_torch():
    ours = train_and_average(OS, use_buffers=True)
    theirs = TS.AveragedModel(make_model(), use_buffers=True)
    theirs.load_state_dict(ours.state_dict())
    assert_same_module(ours, theirs)
    back = OS.AveragedModel(make_model(), use_buffers=True)
    back.load_state_dict(theirs.state_dict())
    assert_same_module(back, ours)


def test_first_update_copies_and_buffers_follow_the_model():
    model = make_model()
    avg = OS.AveragedModel(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(16, 6))  # moves the BN running statistics
    avg.update_parameters(model)
    assert_same_module(avg.module, model)  # first update: a copy; buffers follow the model
    assert avg.module is not model


def test_only_one_avg_fn():
    with pytest.raises(AssertionError, match="Only one"):
        OS.AveragedModel(make_model(), avg_fn=OS.get_swa_avg_fn(), multi_avg_fn=OS.get_swa_multi_avg_fn())
    with pytest.raises(ValueError, match="decay"):
        OS.get_ema_multi_avg_fn(1.5)


def test_ema_helper():
    ref = train_and_average(TS, multi_avg_fn=TS.get_ema_multi_avg_fn(0.99), use_buffers=True)
    model = make_model()
    opt = optimkit.SGD(model.parameters(), lr=0.05, momentum=0.9)
    avg = OS.ema(model, decay=0.99)
    data = batches()
    for i in range(25):
        x, y = data[i % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        avg.update_parameters(model)
    assert_same_module(ref, avg)


@pytest.mark.parametrize("loader_kind", ["tuples", "tensors"])
def test_update_bn_matches_torch(loader_kind):
    data = batches()
    loader = data if loader_kind == "tuples" else [x for x, _ in data]
    models = []
    for mod in (TS, OS):
        avg = train_and_average(mod)
        avg.eval()
        mod.update_bn(loader, avg)
        models.append(avg)
    assert_same_module(*models)
    ours = models[1]
    assert not ours.training  # mode restored
    bn = ours.module[1]
    assert bn.momentum == 0.1  # momentum restored


def test_update_bn_without_bn_is_a_no_op():
    model = make_model(bn=False)
    before = copy.deepcopy(model.state_dict())
    OS.update_bn(batches(), model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------------------ SWALR
def sgd_two_groups(scale=None):
    g1 = {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.03}
    if scale is not None:
        g1 = {"params": g1["params"], "lr": 0.1, "lr_scale": scale}
    return optimkit.SGD([{"params": [torch.nn.Parameter(torch.zeros(3))]}, g1], lr=0.1, momentum=0.9)


SWALR_CASES = {
    "cos-10": lambda S, o: S.SWALR(o, swa_lr=0.05),
    "linear-5": lambda S, o: S.SWALR(o, swa_lr=0.01, anneal_epochs=5, anneal_strategy="linear"),
    "cos-0": lambda S, o: S.SWALR(o, swa_lr=0.02, anneal_epochs=0),
    "cos-300-pergroup": lambda S, o: S.SWALR(o, swa_lr=[0.05, 0.001], anneal_epochs=300),
}


def lrs_over(sched, steps):
    out = []
    for _ in range(steps):
        sched.optimizer.step()
        sched.step()
        out.append([g["lr"] for g in sched.optimizer.param_groups] + list(sched.get_last_lr()))
    return out


@pytest.mark.parametrize("case", list(SWALR_CASES))
def test_swalr_matches_torch_over_1000_steps(case):
    ref = SWALR_CASES[case](TS, sgd_two_groups())
    ours = SWALR_CASES[case](OS, sgd_two_groups())
    assert lrs_over(ours, 1000) == lrs_over(ref, 1000)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert ours.state_dict() == ref.state_dict()


@pytest.mark.parametrize(
    "src,dst", [(TS, OS), (OS, TS), (OS, OS)], ids=["torch>ours", "ours>torch", "ours>ours"]
)
def test_swalr_state_dict_round_trip(src, dst):
    make = SWALR_CASES["cos-300-pergroup"]
    ref = lrs_over(make(TS, sgd_two_groups()), 600)
    first = make(src, sgd_two_groups())
    lrs_over(first, 150)
    sd, osd = copy.deepcopy(first.state_dict()), copy.deepcopy(first.optimizer.state_dict())
    second = make(dst, sgd_two_groups())
    second.optimizer.load_state_dict(osd)
    second.load_state_dict(sd)
    assert lrs_over(second, 450) == ref[150:]


def test_swa_recipe_cosine_then_swalr_matches_torch():
    """The usual recipe: cosine annealing, then SWALR from epoch 60 while averaging."""
    runs = []
    for L, S in ((TL, TS), (OL, OS)):
        model = make_model()
        opt = optimkit.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched, swa_sched = L.CosineAnnealingLR(opt, T_max=100), S.SWALR(opt, swa_lr=0.02, anneal_epochs=10)
        avg = S.AveragedModel(model)
        data = batches()
        lrs = []
        for epoch in range(100):
            x, y = data[epoch % len(data)]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if epoch >= 60:
                avg.update_parameters(model)
                swa_sched.step()
            else:
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        S.update_bn([x for x, _ in data], avg)
        runs.append((lrs, avg))
    assert runs[0][0] == runs[1][0]
    assert_same_module(runs[0][1], runs[1][1])


def test_swalr_honours_lr_scale():
    opt = sgd_two_groups(scale=0.5)
    sched = OS.SWALR(opt, swa_lr=0.05, anneal_epochs=20)
    assert opt.param_groups[1]["lr"] == 0.05
    for lrs in lrs_over(sched, 100):
        assert lrs[1] == 0.5 * lrs[0]
    assert opt.param_groups[1]["lr"] == 0.025


def test_swalr_validation():
    with pytest.raises(ValueError, match="anneal_strategy"):
        OS.SWALR(sgd_two_groups(), 0.1, anneal_strategy="exp")
    with pytest.raises(ValueError, match="anneal_epochs"):
        OS.SWALR(sgd_two_groups(), 0.1, anneal_epochs=-1)
    with pytest.raises(ValueError, match="swa_lr must have the same length"):
        OS.SWALR(sgd_two_groups(), [0.1])


def test_torch_swalr_drives_optimkit_and_ours_drives_torch():
    a = TS.SWALR(sgd_two_groups(), swa_lr=0.05)
    b = OS.SWALR(
        torch.optim.SGD(
            [
                {"params": [torch.nn.Parameter(torch.zeros(3))]},
                {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.03},
            ],
            lr=0.1,
            momentum=0.9,
        ),
        swa_lr=0.05,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lrs_over(a, 50) == lrs_over(b, 50)
