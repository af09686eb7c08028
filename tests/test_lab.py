"""The optimizer lab: build the ``--quick`` report once and check the numbers behind its figures."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_support import quick_report

from optimkit.registry import REGISTRY, OptimizerSpec, names

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from optimkit.cli import main  # noqa: E402
from optimkit.lab import engine  # noqa: E402
from optimkit.lab.build import SECTIONS, build_report  # noqa: E402
from optimkit.lab.functions import FUNCTIONS, ROSENBROCK, WAVY_BOWL  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_report(tmp_path_factory)


@pytest.fixture(scope="module")
def summary(report: Path) -> dict:
    return json.loads((report / "summary.json").read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str) -> float:
    return float(text) if text not in ("", "None") else math.nan


# ---------------------------------------------------------------- the report itself


def test_report_files(report: Path, summary: dict) -> None:
    html = (report / "index.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert imgs == summary["figures"]
    assert len(imgs) == 15
    for rel in imgs:
        data = (report / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", rel
    links = re.findall(r'<a href="([^"#]+)"', html)
    assert links, "no data links"
    for rel in links:
        assert (report / rel).is_file(), rel
    assert list(summary["sections"]) == list(SECTIONS)
    for key, section in summary["sections"].items():
        assert section["data"], f"section {key} has no data files"
        for rel in section["data"]:
            path = report / rel
            assert path.stat().st_size > 0
            if rel.endswith(".json"):
                json.loads(path.read_text())  # strict JSON (no NaN tokens)
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "<script" not in html


def test_every_registered_optimizer_is_in_the_report(summary: dict) -> None:
    sections = summary["sections"]
    for fn in FUNCTIONS:
        assert list(sections["paths"]["functions"][fn]["optimizers"]) == names()
    assert list(sections["digits"]["optimizers"]) == names()
    assert list(sections["lm"]["optimizers"]) == names()
    assert list(sections["resume"]["optimizers"]) == names()
    assert summary["meta"]["optimizers"] == len(REGISTRY)


# ---------------------------------------------------------------- 1. gradient


def test_directional_derivative_maximum_is_the_gradient_norm(report: Path, summary: dict) -> None:
    g = summary["sections"]["gradient"]
    rows = read_csv(report / "data" / "gradient_directional.csv")
    theta = np.array([num(r["theta_rad"]) for r in rows])
    gnorm = g["grad_norm"]
    step = 2 * math.pi / len(rows)
    for method in ("autograd", "jvp", "finite_differences"):
        values = np.array([num(r[method]) for r in rows])
        # the grid maximum is |grad f| up to the grid's resolution: |g| (1 - cos(step / 2))
        assert gnorm * math.cos(step / 2) - 1e-8 <= values.max() <= gnorm + 1e-8
        best = theta[values.argmax()]
        diff = abs((best - math.radians(g["grad_angle_deg"]) + math.pi) % (2 * math.pi) - math.pi)
        assert diff <= step / 2 + 1e-12
        # exactly along the gradient the value is |grad f|
        assert g["along_gradient"][method] == pytest.approx(
            gnorm, rel=1e-12 if method != "finite_differences" else 1e-8
        )
    # the three methods agree everywhere; autograd = |g| cos(theta - theta*)
    auto = np.array([num(r["autograd"]) for r in rows])
    assert np.max(np.abs(auto - np.array([num(r["jvp"]) for r in rows]))) < 1e-14
    assert np.max(np.abs(auto - np.array([num(r["finite_differences"]) for r in rows]))) < 1e-8
    assert np.allclose(auto, gnorm * np.cos(theta - math.radians(g["grad_angle_deg"])), atol=1e-14)
    # and the gradient is the true one
    x, y = g["point"]
    assert g["grad"] == pytest.approx(list(WAVY_BOWL.grad(x, y, np)), rel=1e-14)


# ---------------------------------------------------------------- 2. learning rate


def test_gradient_descent_on_4x2_diverges_exactly_above_a_quarter(report: Path, summary: dict) -> None:
    rows = read_csv(report / "data" / "lr_scan.csv")
    assert len(rows) > 100
    lrs = [num(r["lr"]) for r in rows]
    assert 0.25 in lrs
    for r in rows:
        lr = num(r["lr"])
        assert (r["diverged"] == "True") == (lr > 0.25), lr
        assert num(r["factor_measured"]) == pytest.approx(abs(1 - 8 * lr), abs=1e-15)
        if lr == 0.25:
            assert num(r["growth"]) == 1.0  # bounces between +1 and -1 exactly
    lr = summary["sections"]["learning-rate"]
    assert lr["largest_non_diverging_lr"] == 0.25
    assert lr["smallest_diverging_lr"] > 0.25
    assert lr["diverges_exactly_above_threshold"] is True
    runs = read_csv(report / "data" / "lr_runs.csv")
    assert num(runs[1]["x_lr=0.125"]) == 0.0  # 1/8: the minimum in one step
    assert abs(num(runs[-1]["x_lr=0.3"])) > 100  # diverged
    assert abs(num(runs[-1]["x_lr=0.2"])) < 1e-3  # converged while oscillating
    assert num(runs[1]["x_lr=0.2"]) < 0


# ---------------------------------------------------------------- 3. momentum


def test_momentum_weights_and_races(report: Path, summary: dict) -> None:
    rows = read_csv(report / "data" / "momentum_weights.csv")
    for beta in (0.5, 0.9, 0.99):
        measured = np.array([num(r[f"measured_beta={beta:g}"]) for r in rows])
        i = np.arange(len(rows))
        assert np.allclose(measured, beta**i, rtol=0, atol=1e-13)
        assert measured.sum() == pytest.approx((1 - beta ** len(rows)) / (1 - beta), rel=1e-12)
    m = summary["sections"]["momentum"]
    for problem in ("quadratic", "valley"):
        assert m[problem]["sgd_momentum_0.9"]["final_loss"] < m[problem]["sgd"]["final_loss"] / 1000


# ---------------------------------------------------------------- 4. paths


def test_tuned_adam_ends_near_rosenbrocks_minimum(summary: dict) -> None:
    adam = summary["sections"]["paths"]["functions"]["rosenbrock"]["optimizers"]["adam"]
    assert adam["final_distance"] < 0.05
    assert adam["final_point"] == pytest.approx([1.0, 1.0], abs=0.05)
    lbfgs = summary["sections"]["paths"]["functions"]["rosenbrock"]["optimizers"]["lbfgs"]
    assert lbfgs["final_distance"] < 1e-3
    assert lbfgs["evaluations"] >= summary["sections"]["paths"]["steps"]
    beale = summary["sections"]["paths"]["functions"]["beale"]["optimizers"]
    assert beale["adam"]["final_distance"] < 1e-2


def test_the_chosen_learning_rate_follows_the_documented_search(report: Path, summary: dict) -> None:
    paths = summary["sections"]["paths"]
    grid = paths["grid"]
    assert grid == engine.log_grid(1e-4, 10.0, 1)
    for fn in FUNCTIONS:
        rows = read_csv(report / "data" / f"search_{fn}.csv")
        for name in names():
            mine = [r for r in rows if r["optimizer"] == name]
            assert [num(r["lr"]) for r in mine] == grid
            key = [
                (
                    max(num(r["final_gap"]), engine.GAP_FLOOR)
                    if math.isfinite(num(r["final_gap"]))
                    else math.inf,
                    num(r["steps_to_tol"]) if r["steps_to_tol"] else math.inf,
                    num(r["lr"]),
                )
                for r in mine
            ]
            best = min(zip(key, mine), key=lambda kv: kv[0])[1]
            assert [r["chosen"] for r in mine].count("True") == 1
            assert best["chosen"] == "True", (fn, name)
            assert num(best["lr"]) == paths["functions"][fn]["optimizers"][name]["lr"]


def test_paths_csv_starts_at_the_fixed_start(report: Path) -> None:
    for fn_name, fn in FUNCTIONS.items():
        rows = read_csv(report / "data" / f"paths_{fn_name}.csv")
        firsts = [r for r in rows if r["step"] == "0"]
        assert len(firsts) == len(names())
        for r in firsts:
            assert (num(r["x"]), num(r["y"])) == fn.start
            assert num(r["f"]) == pytest.approx(fn(*fn.start))


# ---------------------------------------------------------------- 5. digits


def test_digits(report: Path, summary: dict) -> None:
    d = summary["sections"]["digits"]
    assert d["n_train"] + d["n_test"] == 1797
    accuracies = {n: o["test_accuracy"] for n, o in d["optimizers"].items()}
    assert accuracies["adam"] > 0.9
    assert sum(a > 0.8 for a in accuracies.values()) >= len(accuracies) - 2, accuracies
    for name, o in d["optimizers"].items():
        search = {float(k): num(str(v)) for k, v in o["search"].items()}
        best = min(search.items(), key=lambda kv: (kv[1], kv[0]))[0]
        assert o["lr"] == best, name
        assert o["ms_per_epoch"] > 0
    rows = read_csv(report / "data" / "digits_curves.csv")
    adam = [r for r in rows if r["optimizer"] == "adam"]
    assert len(adam) == d["epochs"] + 1
    assert num(adam[-1]["test_accuracy"]) == d["optimizers"]["adam"]["test_accuracy"]


# ---------------------------------------------------------------- 6. the language model


def test_lm_corpus_and_model(summary: dict) -> None:
    from optimkit.lab import lm

    s = summary["sections"]["lm"]
    corpus = lm.load_corpus()
    c = s["corpus"]
    assert c["modules"] == list(lm.CORPUS_MODULES)  # every docstring found
    assert c["chars"] == len(corpus.text) > 40_000
    assert c["n_train_chars"] + c["n_val_chars"] == c["chars"]
    assert 0.08 < c["n_val_chars"] / c["chars"] < 0.12
    assert c["sha256"] == corpus.sha256 and len(c["sha256"]) == 64
    assert c["vocab"] == len(set(corpus.text))
    model = lm.make_model(c["vocab"])
    assert s["model"]["params"] == sum(p.numel() for p in model.parameters())
    # the references: uniform > unigram > bigram, and the target is the bigram loss
    assert s["uniform_loss"] == pytest.approx(math.log(c["vocab"]))
    assert s["uniform_loss"] > s["unigram_loss"] > s["bigram_loss"] == s["target_loss"] > 2.0
    # causal: the prediction at a position does not depend on later characters
    x = torch.randint(0, c["vocab"], (2, lm.CONTEXT), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % c["vocab"]
    with torch.no_grad():
        assert torch.equal(model(x)[:, :10], model(y)[:, :10])


def test_lm_curves_table_and_search(report: Path, summary: dict) -> None:
    s = summary["sections"]["lm"]
    opts = s["optimizers"]
    rows = read_csv(report / "data" / "lm_curves.csv")
    adam = [r for r in rows if r["optimizer"] == "adam"]
    steps = [int(r["step"]) for r in adam]
    assert steps == list(range(0, s["steps"] + 1, s["eval_every"]))
    train = [num(r["train_loss"]) for r in adam]
    val = [num(r["val_loss"]) for r in adam]
    assert train[0] > s["uniform_loss"] - 0.5  # starts near guessing
    assert val[-1] < s["unigram_loss"] and train[-1] < s["unigram_loss"]  # it learned to use the context
    assert val[-1] < val[0] - 1.0 and train[-1] < train[0] - 1.0
    assert opts["adam"]["final_val_loss"] == val[-1]
    assert opts["adam"]["steps_to_unigram"] == next(k for k, v in zip(steps, val) if v <= s["unigram_loss"])
    for name, o in opts.items():
        if o["note"]:
            continue
        search = {float(k): num(str(v)) for k, v in o["search"].items()}
        assert o["lr"] == min(search.items(), key=lambda kv: (kv[1], kv[0]))[0], name
        assert o["ms_per_step"] > 0 and o["ms_optimizer_per_step"] >= 0
        assert o["evaluations"] >= o["steps_done"] > 0
    for name in ("sgd", "adam", "lbfgs", "muon", "sparseadam"):  # these can train it
        assert opts[name]["note"] == "" and opts[name]["steps_done"] == s["steps"], name
    # state memory: plain SGD keeps none; Adam two moments (and its step counts)
    params = s["model"]["params"] * 4
    assert opts["sgd"]["state_bytes"] == 0
    assert 2 * params <= opts["adam"]["state_bytes"] <= 2 * params + 8 * 64
    # the table has every optimizer, in registry order
    html = (report / "index.html").read_text()
    section = html[html.index('<section id="lm">') :]
    section = section[: section.index("</section>")]
    assert re.findall(r"<tr><td>([^<]+)</td>", section) == names()
    assert section.count("<img ") == 3
    search_rows = read_csv(report / "data" / "lm_search.csv")
    for name in names():
        assert [r["chosen"] for r in search_rows if r["optimizer"] == name].count("True") == 1, name


def test_lm_state_bytes_counts_each_tensor_once() -> None:
    from optimkit.lab.lm import state_bytes

    a, b = torch.zeros(10), torch.zeros(3, dtype=torch.float64)
    sd = {"state": {0: {"m": a, "v": b, "step": torch.tensor(1.0)}, 1: {"hist": [a, b[:1]], "alias": a}}}
    assert state_bytes([sd, {"state": {}}]) == 40 + 24 + 4 + 8


class _GroupOnly(torch.optim.SGD):
    """An optimizer that insists on groups flagged ``use_muon`` (as Muon with an auxiliary Adam does)."""

    def __init__(self, params, lr: float = 0.01) -> None:
        params = list(params)
        if not all(isinstance(g, dict) and "use_muon" in g for g in params):
            raise ValueError("every parameter group needs a 'use_muon' flag")
        super().__init__(params, lr=lr)


class _GroupsWithHook(_GroupOnly):
    @classmethod
    def lab_param_groups(cls, matrices, others, lr):
        return [{"params": matrices, "use_muon": True, "lr": lr}, {"params": others, "use_muon": False, "lr": lr}]


def test_lm_drives_closure_mode_and_group_optimizers(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM (step(closure) after the gradient), Schedule-Free (train()/eval()) and optimizers that
    need parameter groups: driven by their methods, or skipped with a note -- never a crash."""
    from optimkit.lab import lm

    sam_mod = pytest.importorskip("pytorch_optimizer")
    schedulefree = pytest.importorskip("schedulefree")

    class TSAM(sam_mod.SAM):
        def __init__(self, params, lr: float = 0.01) -> None:
            super().__init__(params, torch.optim.SGD, lr=lr)

    modes: list[str] = []

    class TSF(schedulefree.AdamWScheduleFree):
        def train(self) -> None:
            modes.append("train")
            super().train()

        def eval(self) -> None:
            modes.append("eval")
            super().eval()

    specs = {
        "t_sam": OptimizerSpec("t_sam", TSAM, configs=({},), lab_lr=0.5, closure=True, elementwise=False),
        "t_sf": OptimizerSpec("t_sf", TSF, configs=({},), lab_lr=0.01),
        "t_groups": OptimizerSpec("t_groups", _GroupOnly, configs=({},), lab_lr=0.5),
        "t_hook": OptimizerSpec("t_hook", _GroupsWithHook, configs=({},), lab_lr=0.5),
        "t_muon": OptimizerSpec("t_muon", torch.optim.Muon, configs=({},), lab_lr=0.02, matrix_only=True, elementwise=False),
    }  # fmt: skip
    for name, spec in specs.items():
        monkeypatch.setitem(REGISTRY, name, spec)
    corpus = lm.load_corpus()
    steps = 20
    runs = {n: lm.train(n, specs[n].lab_lr, steps, corpus, eval_every=10, eval_windows=8) for n in specs}
    for name in ("t_sam", "t_sf", "t_hook", "t_muon"):
        r = runs[name]
        assert r.note == "" and not r.diverged and len(r.batch_loss) == steps, (name, r.note)
        assert r.val_loss[-1] < r.val_loss[0] - 0.3, name
        assert r.state_bytes is not None
    assert runs["t_sam"].evaluations == 2 * steps
    assert runs["t_sf"].evaluations == steps
    assert modes[:3] == ["train", "eval", "train"] and modes.count("eval") == 3  # steps 0, 10, 20
    assert "use_muon" in runs["t_groups"].note and "lab_param_groups" in runs["t_groups"].note
    assert runs["t_groups"].batch_loss == [] and math.isnan(runs["t_groups"].final_val_loss)
    # the hook gets the hidden matrices; Muon takes them, the companion Adam the rest
    model = lm.make_model(corpus.vocab)
    hidden = lm.hidden_matrices(model)
    hook = engine.LabOptimizer("t_hook", model.parameters(), 0.5, matrices=hidden)
    assert [g["use_muon"] for g in hook.optimizers[0].param_groups] == [True, False]
    assert hook.optimizers[0].param_groups[0]["params"] == hidden
    muon = engine.LabOptimizer("t_muon", model.parameters(), 0.02, matrices=hidden)
    assert muon.optimizers[0].param_groups[0]["params"] == hidden
    assert {id(p) for p in muon.optimizers[1].param_groups[0]["params"]} == {
        id(p) for p in model.parameters()
    } - {id(p) for p in hidden}
    assert {id(model.tok.weight), id(model.head.weight)}.isdisjoint(map(id, hidden))
    assert len(hidden) == 4 * lm.N_LAYERS


# ---------------------------------------------------------------- 7. resume


def test_resumed_curve_lies_exactly_on_the_uninterrupted_one(report: Path, summary: dict) -> None:
    r = summary["sections"]["resume"]
    assert r["all_identical"] is True
    for name, o in r["optimizers"].items():
        assert o["resumed_losses_identical"] and o["resumed_params_identical"], name
        assert o["max_abs_diff_resumed"] == 0.0
    # plain SGD keeps no state; Adam's moments matter
    assert r["optimizers"]["sgd"]["max_abs_diff_without_state"] == 0.0
    assert r["optimizers"]["adam"]["max_abs_diff_without_state"] > 1e-3
    rows = read_csv(report / "data" / "resume_curves.csv")
    for row in rows:
        assert row["resumed"] == row["uninterrupted"]  # the same text: the same float


# ---------------------------------------------------------------- determinism, engine, CLI


def test_results_are_deterministic_for_a_seed(report: Path, tmp_path: Path) -> None:
    """A second build (other optimizers, other sections around it) gives the same numbers."""
    some = [n for n in names() if n in ("adam", "sparseadam", "muon")]
    out = build_report(
        tmp_path / "again", quick=True, optimizers=some, sections=["paths", "lm", "resume"], progress=False
    )
    for data in (
        [f"paths_{fn}.csv" for fn in FUNCTIONS]
        + [f"search_{fn}.csv" for fn in FUNCTIONS]
        + ["lm_curves.csv", "lm_search.csv", "resume_curves.csv"]
    ):
        full = [r for r in read_csv(report / "data" / data) if r["optimizer"] in some]
        assert read_csv(out.parent / "data" / data) == full, data


@pytest.mark.parametrize("fn", [*FUNCTIONS.values(), WAVY_BOWL], ids=lambda f: f.name)
def test_hand_written_gradients_match_autograd(fn) -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(50, 2, generator=g, dtype=torch.float64)
    lo = torch.tensor([fn.xlim[0], fn.ylim[0]], dtype=torch.float64)
    hi = torch.tensor([fn.xlim[1], fn.ylim[1]], dtype=torch.float64)
    pts = (lo + pts * (hi - lo)).requires_grad_()
    fn.value(pts[:, 0], pts[:, 1], torch).sum().backward()
    gx, gy = fn.grad(pts[:, 0].detach().numpy(), pts[:, 1].detach().numpy(), np)
    assert np.allclose(pts.grad.numpy(), np.stack([gx, gy], 1), rtol=1e-12, atol=1e-9)
    if not math.isnan(fn.f_min):
        assert fn(*fn.minimum) == pytest.approx(fn.f_min, abs=1e-12)
        assert fn.grad(*fn.minimum, np) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_capability_flags_drive_the_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A newly registered optimizer appears by itself, and the flags (not the names) decide how it
    is driven: torch.optim's own LBFGS, SparseAdam and Muon under new names."""
    from optimkit.lab import digits, resume

    specs = {
        "t_lbfgs": OptimizerSpec("t_lbfgs", torch.optim.LBFGS, configs=({},), lab_lr=1.0, closure=True, elementwise=False),
        "t_sparse": OptimizerSpec("t_sparse", torch.optim.SparseAdam, configs=({},), lab_lr=0.01, sparse="only"),
        "t_muon": OptimizerSpec("t_muon", torch.optim.Muon, configs=({},), lab_lr=0.02, matrix_only=True, elementwise=False),
    }  # fmt: skip
    for name, spec in specs.items():
        monkeypatch.setitem(REGISTRY, name, spec)
    assert set(specs) <= set(engine.lab_names())
    data = digits.load_data(0)
    for name in specs:
        run = engine.run_path(name, ROSENBROCK, 0.01, 30)
        assert not run.diverged and run.final_gap < ROSENBROCK(*ROSENBROCK.start)
        assert digits.train(name, specs[name].lab_lr, 1, data).final_loss < 2.3
        res = resume.resume_experiment(name, specs[name].lab_lr, 6, data, workdir=tmp_path)
        assert res["resumed_losses_identical"] and res["resumed_params_identical"]
    lbfgs = engine.LabOptimizer("t_lbfgs", [torch.zeros(2, requires_grad=True)], 1.0)
    assert lbfgs.optimizers[0].defaults["max_iter"] == 1
    assert lbfgs.optimizers[0].defaults["line_search_fn"] == "strong_wolfe"
    model = digits.make_model(0)
    muon = engine.LabOptimizer("t_muon", model.parameters(), 0.02)
    assert [type(o).__name__ for o in muon.optimizers] == ["Muon", "Adam"]
    assert all(p.ndim == 2 for p in muon.optimizers[0].param_groups[0]["params"])


def test_lr_search_documentation_is_in_the_report(report: Path) -> None:
    html = (report / "index.html").read_text()
    assert "Learning-rate search (the same for every optimizer)" in html
    assert "log-spaced grid" in html
    assert "lab_lr" in html


def test_cli_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "paths"
    rc = main(["lab", "paths", "--function", "rosenbrock", "--optimizers", "adam,sgd", "--lr", "0.01,0.001",
               "--steps", "60", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert (out / "index.html").is_file()
    runs = json.loads((out / "data" / "paths_rosenbrock.json").read_text())
    assert sorted(runs) == ["adam γ=0.001", "adam γ=0.01", "sgd γ=0.001", "sgd γ=0.01"]
    assert len(list((out / "fig").glob("*.png"))) == 2
    assert "index.html" in capsys.readouterr().out


def test_cli_paths_with_search_and_start(tmp_path: Path) -> None:
    out = tmp_path / "beale"
    assert main(["lab", "paths", "--function", "beale", "--optimizers", "rprop", "--steps", "30",
                 "--start=-0.5,1", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    rows = read_csv(out / "data" / "paths_beale.csv")
    assert (num(rows[0]["x"]), num(rows[0]["y"])) == (-0.5, 1.0)


def test_cli_other_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "lab",
                "digits",
                "--optimizers",
                "adam",
                "nadam",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "d"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "d" / "fig" / "digits_curves.png").is_file()
    assert main(["lab", "gd", "--lr", "0.1,0.3", "--out", str(tmp_path / "g")]) == 0
    scan = read_csv(tmp_path / "g" / "data" / "lr_runs.csv")
    assert list(scan[0]) == ["step", "x_lr=0.1", "x_lr=0.3"]
    assert main(["lab", "lm", "--optimizers", "adam,sgd", "--lr", "0.01", "--steps", "20", "--eval-every", "5",
                 "--out", str(tmp_path / "lm"), "--no-progress"]) == 0  # fmt: skip
    runs = json.loads((tmp_path / "lm" / "data" / "lm.json").read_text())["runs"]
    assert list(runs) == ["adam", "sgd"] and all(r["steps_done"] == 20 and r["lr"] == 0.01 for r in runs.values())
    assert runs["adam"]["final_val_loss"] < 4.0
    steps = [int(r["step"]) for r in read_csv(tmp_path / "lm" / "data" / "lm_curves.csv") if r["optimizer"] == "sgd"]
    assert steps == [0, 5, 10, 15, 20]
    assert (tmp_path / "lm" / "fig" / "lm_curves.png").is_file()
    capsys.readouterr()
    assert main(["lab", "list"]) == 0
    listing = capsys.readouterr().out
    for name in names():
        assert name in listing
    assert "lm" in listing.split("sections:")[1]
    with pytest.raises(SystemExit, match="unknown optimizer 'adamm'"):
        main(["lab", "paths", "--optimizers", "adamm"])
    with pytest.raises(SystemExit, match="unknown function"):
        main(["lab", "paths", "--function", "himmelblau"])
