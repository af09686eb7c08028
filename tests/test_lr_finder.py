"""The LR range test on a real small task (an MLP on scikit-learn's bundled digits), and
exact restoration of model and optimizer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optimkit
from optimkit.schedule.lr_finder import LRFinderResult, find_lr, steepest_index, valley_index

sklearn_datasets = pytest.importorskip("sklearn.datasets")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    x, y = sklearn_datasets.load_digits(return_X_y=True)  # bundled with scikit-learn: no download
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


class Batches:
    """Shuffled mini-batches, the same order on every pass for a given seed."""

    def __init__(self, x, y, batch_size=64, seed=0):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed))
        for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def mlp(seed=0, dropout=0.0, bn=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(64, 64)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(64))
    layers += [torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(64, 10)]
    return torch.nn.Sequential(*layers)


def train_loss(x, y, lr, steps=200, opt_cls=optimkit.Adam, **opt_kw):
    """Train a fresh MLP for ``steps`` steps at ``lr``; the full-data loss at the end."""
    model = mlp()
    opt = opt_cls(model.parameters(), lr=lr, **opt_kw)
    loss_fn = torch.nn.functional.cross_entropy
    done = 0
    while done < steps:
        for xb, yb in Batches(x, y, seed=1 + done):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    with torch.no_grad():
        loss = loss_fn(model(x), y).item()
    return loss if math.isfinite(loss) else math.inf


@pytest.mark.parametrize(
    "opt_cls,opt_kw",
    [(optimkit.Adam, {}), (optimkit.SGD, {"momentum": 0.9})],
    ids=["adam", "sgd-momentum"],
)
def test_suggested_lr_beats_ten_times_above_and_below(digits, opt_cls, opt_kw, tmp_path, capsys):
    x, y = digits
    model = mlp()
    opt = opt_cls(model.parameters(), lr=1e-3, **opt_kw)
    png = tmp_path / "lr_find.png"
    result = find_lr(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        Batches(x, y),
        num_iter=100,
        plot=str(png),
        progress=True,
    )
    lr = result.suggested_lr
    assert lr is not None and lr == result.valley_lr
    losses = {f: train_loss(x, y, lr * f, opt_cls=opt_cls, **opt_kw) for f in (0.1, 1.0, 10.0)}
    with capsys.disabled():
        print(
            f"\n[{opt_cls.__name__}] suggested lr {lr:.3g} (steepest {result.steepest_lr:.3g}): "
            f"200-step loss {losses[1.0]:.4f}; at lr/10 {losses[0.1]:.4f}; at 10*lr {losses[10.0]:.4f}"
        )
    assert losses[1.0] < losses[0.1]
    assert losses[1.0] < losses[10.0]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.plot_path == str(png)


def test_progress_bar_is_shown(digits, capsys):
    x, y = digits
    model = mlp()
    find_lr(
        model,
        optimkit.SGD(model.parameters(), lr=0.1),
        torch.nn.functional.cross_entropy,
        Batches(x, y),
        num_iter=10,
    )
    assert "LR range test" in capsys.readouterr().err


def snapshot(model, opt):
    return {
        "tensors": [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]],
        "grads": [(p, p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "groups": [
            (g, list(g.items()), copy.deepcopy({k: v for k, v in g.items() if k != "params"}))
            for g in opt.param_groups
        ],
        "state": {p: (s, dict(s), copy.deepcopy(dict(s))) for p, s in opt.state.items()},
        "opt_dict": dict(opt.__dict__),
        "hooks": dict(opt._optimizer_step_post_hooks),
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_restored(model, opt, snap):
    for t, saved in snap["tensors"]:
        assert torch.equal(t, saved) and t.dtype == saved.dtype
    for p, grad, saved in snap["grads"]:
        assert p.grad is grad  # the same gradient tensor object...
        assert grad is None or torch.equal(grad, saved)  # ...with the same values
    assert len(opt.param_groups) == len(snap["groups"])
    for g, (group, items, saved) in zip(opt.param_groups, snap["groups"]):
        assert g is group
        assert list(g) == [k for k, _ in items]  # same keys, same order: nothing added
        for (k, v), (_, v2) in zip(g.items(), items):
            assert v is v2 or (k != "params" and v == saved[k])
    assert set(opt.state) == set(snap["state"])
    for p, (state, items, saved) in snap["state"].items():
        assert opt.state[p] is state
        assert list(state) == list(items)
        for k, v in state.items():
            assert v is items[k] or not isinstance(v, torch.Tensor)  # the same tensors...
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, saved[k]) and v.dtype == saved[k].dtype  # ...with the same bits
            else:
                assert v == saved[k]
    assert opt.__dict__.keys() == snap["opt_dict"].keys()
    assert opt._step_count == snap["opt_dict"]["_step_count"] if "_step_count" in snap["opt_dict"] else True
    assert dict(opt._optimizer_step_post_hooks) == snap["hooks"]
    assert [m.training for m in model.modules()] == snap["training"]
    assert torch.equal(torch.get_rng_state(), snap["rng"])


OPTIMIZERS = {
    "optimkit-sgd-nesterov": lambda ps: optimkit.SGD(
        ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    ),
    "optimkit-adamw-lr_scale": lambda ps: optimkit.AdamW(
        [{"params": ps[:2], "lr_scale": 0.5}, {"params": ps[2:]}], lr=1e-3, weight_decay=0.05
    ),
    "torch-adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True),
    "torch-sgd": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_model_and_optimizer_restored_bit_identically(digits, name):
    """After a few real steps (so there is optimizer state and gradients), the range test
    leaves everything as it found it -- and training then continues exactly as without it."""
    x, y = digits
    loss_fn = torch.nn.functional.cross_entropy

    def setup():
        model = mlp(dropout=0.1, bn=True)
        opt = OPTIMIZERS[name](list(model.parameters()))
        for xb, yb in list(Batches(x, y, seed=5))[:3]:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        model.eval()  # a mode other than the one the test uses
        torch.manual_seed(123)
        return model, opt

    def continue_training(model, opt):
        model.train()
        for xb, yb in list(Batches(x, y, seed=6))[:5]:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]

    model, opt = setup()
    snap = snapshot(model, opt)
    result = find_lr(model, opt, loss_fn, Batches(x, y), num_iter=60, progress=False)
    assert len(result.lrs) > 10
    assert_restored(model, opt, snap)
    after = continue_training(model, opt)
    ref_model, ref_opt = setup()
    reference = continue_training(ref_model, ref_opt)
    for a, b in zip(after, reference):
        assert torch.equal(a, b)


def test_restored_even_when_the_loss_function_raises(digits):
    x, y = digits
    model = mlp()
    opt = optimkit.SGD(model.parameters(), lr=0.01, momentum=0.9)
    snap = snapshot(model, opt)
    calls = []

    def bad_loss(out, target):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom")
        return torch.nn.functional.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, opt, bad_loss, Batches(x, y), num_iter=20, progress=False)
    assert_restored(model, opt, snap)


def test_stops_on_divergence_and_sweeps_as_asked(digits):
    x, y = digits
    model = mlp()
    opt = optimkit.SGD(model.parameters(), lr=0.1)
    result = find_lr(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        (x[:256], y[:256]),
        start_lr=1e-4,
        end_lr=1e3,
        num_iter=80,
        progress=False,
    )
    assert result.diverged and len(result.lrs) < 80
    assert result.lrs[0] == 1e-4
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert all(r == pytest.approx(10 ** (7 / 79)) for r in ratios)
    lin = find_lr(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        (x[:256], y[:256]),
        1e-3,
        0.1,
        20,
        step_mode="linear",
        progress=False,
    )
    assert lin.lrs[-1] == pytest.approx(0.1) and lin.lrs[1] - lin.lrs[0] == pytest.approx(0.099 / 19)
    assert not lin.diverged


def test_closure_optimizers_work(digits):
    x, y = digits
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=2)
    result = find_lr(
        model, opt, torch.nn.functional.cross_entropy, (x[:128], y[:128]), 1e-3, 1.0, 8, progress=False
    )
    assert len(result.losses) >= 2


def test_plot_contents(digits):
    x, y = digits
    model = mlp()
    result = find_lr(
        model,
        optimkit.Adam(model.parameters()),
        torch.nn.functional.cross_entropy,
        Batches(x, y),
        num_iter=50,
        progress=False,
    )
    fig = result.plot()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "training loss"
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lbl.startswith("valley (suggested)") for lbl in labels)
    assert any(lbl.startswith("steepest") for lbl in labels)


def test_suggestion_rules():
    lrs = [10 ** (-6 + i / 10) for i in range(61)]
    # flat, then a descent between lr 1e-3 and 1e-1, then divergence
    losses = [
        2.0 if lr < 1e-3 else 2.0 - 1.5 * math.log10(lr / 1e-3) / 2 if lr <= 1e-1 else 0.5 + (lr - 0.1) * 10
        for lr in lrs
    ]
    v = valley_index(losses)
    s = steepest_index(lrs, losses)
    assert lrs[v] == pytest.approx(10**-1.9, rel=0.3)  # halfway down the descent, past its onset
    assert 1e-3 < lrs[s] <= 1e-1
    assert valley_index([1.0, 1.1, 1.2]) is None  # never decreases: no valley
    assert isinstance(LRFinderResult([], [], [], None, None, False, 2, "exp").suggested_lr, type(None))


def test_bad_arguments(digits):
    x, y = digits
    model = mlp()
    opt = optimkit.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="step_mode"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, (x, y), step_mode="cos")
    with pytest.raises(ValueError, match="start_lr"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, (x, y), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="no batches"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, [], progress=False)


# ----------------------------------------------------------------------------------------
# Any model: dict batches (keyword arguments), models that return their loss, clear refusals.


class ReturnsLoss(torch.nn.Module):
    """A Hugging Face-style model: ``model(input_ids=..., labels=...)`` returns an object
    with ``.loss`` (None without labels), like ``transformers.ModelOutput``."""

    def __init__(self, vocab=12, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None, attention_mask=None):
        logits = self.head(self.embed(input_ids))
        loss = None
        if labels is not None:  # next-token prediction, as a causal LM
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return type("Output", (), {"loss": loss, "logits": logits})()


def lm_batches(n=8, vocab=12):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 10), generator=g)
        out.append({"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    return out


def test_dict_batches_and_a_model_that_returns_its_loss():
    model = ReturnsLoss()
    opt = optimkit.AdamW(model.parameters())
    before = copy.deepcopy(model.state_dict())
    result = find_lr(model, opt, None, lm_batches(), num_iter=30, progress=False)
    assert len(result.losses) >= 10 and result.losses[0] > min(result.losses)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored
    # The same with a loss_fn: it gets the output and the batch.
    seen = []

    def loss_fn(output, batch):
        seen.append(sorted(batch))
        return output.loss

    find_lr(model, opt, loss_fn, lm_batches(), num_iter=5, progress=False)
    assert seen[0] == ["attention_mask", "input_ids", "labels"]


def test_one_dict_batch_and_models_returning_a_scalar_or_a_dict():
    class ScalarLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x, y):
            return ((x * self.w).sum(-1) - y).pow(2).mean()

    class DictLoss(ScalarLoss):
        def forward(self, x, y):
            return {"loss": super().forward(x, y)}

    x, y = torch.randn(8, 3), torch.randn(8)
    for model in (ScalarLoss(), DictLoss()):
        opt = optimkit.SGD(model.parameters(), lr=0.1)
        assert len(find_lr(model, opt, None, {"x": x, "y": y}, num_iter=5, progress=False).losses) == 5
        assert len(find_lr(model, opt, None, [(x, y)], num_iter=5, progress=False).losses) == 5


def test_clear_errors_before_the_sweep(digits, monkeypatch):
    x, y = digits
    model = mlp()
    opt = optimkit.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(TypeError, match="no targets for loss_fn"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, [x], progress=False)
    with pytest.raises(TypeError, match="no targets for loss_fn"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, [(x,)], progress=False)
    with pytest.raises(TypeError, match="cannot use a batch of type int"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, [1, 2], progress=False)
    with pytest.raises(TypeError, match="iterable of batches"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, 3, progress=False)
    with pytest.raises(TypeError, match=r"model\(\*batch\)"):  # no loss_fn: the model gets (x, y)
        find_lr(model, opt, None, [(x, y)], progress=False)
    with pytest.raises(TypeError, match="return its loss"):  # logits are not a loss
        find_lr(model, opt, None, [x], progress=False)
    hf = ReturnsLoss()
    hf_opt = optimkit.SGD(hf.parameters(), lr=0.1)
    no_labels = [{"input_ids": b["input_ids"]} for b in lm_batches()]
    with pytest.raises(TypeError, match="labels"):
        find_lr(hf, hf_opt, None, no_labels, progress=False)
    # A plot without matplotlib is refused before any step, not after the whole sweep.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    with pytest.raises(ModuleNotFoundError, match="needs matplotlib"):
        find_lr(model, opt, torch.nn.functional.cross_entropy, (x, y), plot="lr.png", progress=False)
    assert steps == []
    assert opt.state_dict() == before
