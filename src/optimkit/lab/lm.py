"""Part 6: a language model -- a small character-level transformer, trained by every optimizer.

The text ships with Python, so nothing is downloaded: the module docstrings of a fixed list
of standard-library modules (:data:`CORPUS_MODULES`), read from their source files with
``ast.get_docstring`` (nothing is imported, and ``python -OO`` does not matter). These 40
docstrings are identical, character for character, in CPython 3.10, 3.11, 3.12 and 3.13
(checked when the list was made); the report records the corpus's length and SHA-256, so a
different text shows. The text is cut into blocks of :data:`BLOCK` characters; every tenth
block is validation text, the rest training text.

The model is a decoder-only transformer (:class:`CharTransformer`): token and position
embeddings, :data:`N_LAYERS` pre-LayerNorm blocks of causal self-attention and an MLP, a
final LayerNorm and a separate output layer. Every optimizer starts from the same initial
weights and sees the same mini-batches (random windows of the training text) in the same
order; its learning rate is searched around the registry's ``lab_lr`` as on the digits.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter
from torch import nn
from torch.nn import functional as F

from ..registry import get_spec
from .config import LabConfig, progress
from .engine import LabOptimizer
from .plotting import color_of, new_figure, style_of
from .report import Report, Section

__all__ = [
    "CORPUS_MODULES",
    "LM_SEARCH_DOC",
    "Corpus",
    "CharTransformer",
    "LMRun",
    "load_corpus",
    "make_model",
    "hidden_matrices",
    "state_bytes",
    "train",
    "search",
    "run",
    "compare",
]

#: Standard-library modules whose docstrings make the corpus (identical in CPython 3.10-3.13).
CORPUS_MODULES = (
    "argparse", "calendar", "cmd", "collections", "colorsys", "difflib", "doctest", "fnmatch",
    "ftplib", "getopt", "getpass", "gettext", "http.client", "imaplib", "inspect", "json",
    "keyword", "locale", "mimetypes", "operator", "optparse", "pickle", "pickletools", "pprint",
    "pyclbr", "pydoc", "shelve", "smtplib", "socketserver", "string", "subprocess", "tabnanny",
    "tempfile", "timeit", "tokenize", "trace", "unittest", "urllib.parse", "uuid", "xml.dom.minidom",
)  # fmt: skip
BLOCK = 512  # characters; every tenth block is validation text
D_MODEL = 32
N_HEADS = 4
N_LAYERS = 1
CONTEXT = 32  # characters the model sees
BATCH_SIZE = 16  # windows per mini-batch
MAX_EXTENSIONS = 2

LM_SEARCH_DOC = (
    "Learning-rate search, as on the digits: each optimizer trains for the search budget at "
    "every multiple ×{factors} of its registry <code>lab_lr</code>; the learning rate with the "
    "lowest training loss at the end (on the fixed sample of training windows; diverged runs "
    "score +∞; ties go to the smaller rate) wins. When the best is at an end of the grid, the "
    "grid is extended by one more step in that direction (at most {extend} times). The "
    "validation text plays no part in the choice. The winning search run is then continued to "
    "the full budget: it is the same run a fresh start would give (same weights, batches and "
    "evaluation points), so the search is not paid twice."
)


# ---------------------------------------------------------------- the data


@dataclass
class Corpus:
    """The text, its alphabet, and the training and validation characters as indices."""

    text: str
    modules: list[str]
    chars: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab(self) -> int:
        return len(self.chars)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def unigram_loss(self) -> float:
        """Validation cross-entropy (nats per character) of the training text's character
        frequencies (add-one smoothed): what a model that ignores the context can reach."""
        counts = torch.bincount(self.train, minlength=self.vocab).double() + 1
        return float(-(counts / counts.sum()).log()[self.val].mean())

    def bigram_loss(self) -> float:
        """Validation cross-entropy of the training text's character bigrams (add-0.1
        smoothed): what one character of context gives."""
        t = self.train
        counts = torch.zeros(self.vocab, self.vocab, dtype=torch.float64)
        counts.index_put_((t[:-1], t[1:]), torch.ones(len(t) - 1, dtype=torch.float64), accumulate=True)
        p = (counts + 0.1) / (counts + 0.1).sum(1, keepdim=True)
        return float(-p[self.val[:-1], self.val[1:]].log().mean())


def _docstring(module: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as fh:
        return ast.get_docstring(ast.parse(fh.read()), clean=True)


@functools.lru_cache(maxsize=1)
def load_corpus() -> Corpus:
    """The module docstrings of :data:`CORPUS_MODULES`, joined by blank lines, split into
    training and validation text (a module whose source is missing is left out: ``modules``
    lists those used). Parsed once per process (about a second); treat it as read-only."""
    found = [(m, d) for m in CORPUS_MODULES if (d := _docstring(m))]
    text = "\n\n".join(d for _, d in found)
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    blocks = ids.split(BLOCK)
    train = torch.cat([b for i, b in enumerate(blocks) if i % 10 != 9])
    val = torch.cat([b for i, b in enumerate(blocks) if i % 10 == 9])
    return Corpus(text, [m for m, _ in found], chars, train, val)


def _windows(ids: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` non-overlapping windows (inputs, next-character targets) evenly spread over
    ``ids`` (``None``: all of them)."""
    k = (len(ids) - 1) // CONTEXT
    starts = torch.arange(k) * CONTEXT
    if n is not None and n < k:
        starts = starts[torch.linspace(0, k - 1, n).round().long()]
    x = torch.stack([ids[s : s + CONTEXT] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + CONTEXT + 1] for s in starts.tolist()])
    return x, y


# ---------------------------------------------------------------- the model


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """Decoder-only transformer over characters: embeddings, pre-LayerNorm blocks of causal
    self-attention and a 4x MLP (GELU), final LayerNorm, separate output layer."""

    def __init__(self, vocab: int, d: int = D_MODEL, heads: int = N_HEADS, layers: int = N_LAYERS,
                 context: int = CONTEXT) -> None:  # fmt: skip
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def make_model(vocab: int, seed: int = 0) -> CharTransformer:
    """The model, initialized from ``seed`` (PyTorch's default initializations)."""
    torch.manual_seed(seed)
    return CharTransformer(vocab)


def hidden_matrices(model: CharTransformer) -> list[torch.Tensor]:
    """The 2-D weights inside the blocks: what Muon-style optimizers take (the embeddings and
    the output layer go to the companion Adam, the usual recipe)."""
    return [p for p in model.blocks.parameters() if p.ndim == 2]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def state_bytes(state_dicts: Sequence[dict[str, Any]]) -> int:
    """Bytes of the tensors in the optimizers' ``state_dict()["state"]`` (nested lists and
    dicts included; a tensor met twice -- same memory, same size -- counts once)."""
    from ..bench_memory import state_nbytes

    return state_nbytes([sd.get("state", {}) for sd in state_dicts])


# ---------------------------------------------------------------- training


@dataclass
class LMRun:
    optimizer: str
    lr: float
    steps: list[int] = field(default_factory=list)  # the evaluation points (step 0 first)
    train_loss: list[float] = field(default_factory=list)  # on the fixed training windows
    val_loss: list[float] = field(default_factory=list)  # on the validation windows
    batch_loss: list[float] = field(default_factory=list)  # mini-batch loss at every step
    step_seconds: list[float] = field(default_factory=list)
    optimizer_seconds: list[float] = field(default_factory=list)  # step minus loss/gradient evaluations
    evaluations: int = 0
    state_bytes: int | None = None
    param_bytes: int = 0
    diverged: bool = False
    note: str = ""  # why the optimizer could not train this model (empty: it could)
    label: str = ""

    @property
    def final_val_loss(self) -> float:
        v = self.val_loss[-1] if len(self.val_loss) > 1 else math.nan
        return v if not (self.diverged or math.isinf(v)) else math.inf

    @property
    def final_train_loss(self) -> float:
        """The search's score (``inf`` after a divergence or a failure)."""
        v = self.train_loss[-1] if len(self.train_loss) > 1 else math.inf
        return v if math.isfinite(v) and not self.diverged else math.inf

    @property
    def ms_per_step(self) -> float:
        return 1000 * float(np.mean(self.step_seconds)) if self.step_seconds else math.nan

    @property
    def ms_optimizer_per_step(self) -> float:
        return 1000 * float(np.mean(self.optimizer_seconds)) if self.optimizer_seconds else math.nan

    def steps_to(self, target: float) -> int | None:
        """The first evaluation step at which the validation loss is at most ``target``."""
        return next((s for s, v in zip(self.steps, self.val_loss) if v <= target), None)


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "…"


def _why(e: BaseException) -> str:
    text = _short(e)
    if "use_muon" in str(e):
        return (
            "needs its parameters in groups flagged use_muon and offers no lab_param_groups hook "
            f"(skipped; {text})"
        )
    return f"cannot train this model ({text})"


class _Trainer:
    """One optimizer training a fresh model; :meth:`advance` continues it."""

    def __init__(self, name: str, lr: float, corpus: Corpus, evals: tuple[Any, Any], seed: int,
                 eval_every: int) -> None:  # fmt: skip
        self.model = make_model(corpus.vocab, seed)
        self.corpus, self.evals, self.eval_every = corpus, evals, eval_every
        self.gen = torch.Generator().manual_seed(seed)
        self.run = LMRun(get_spec(name).name, lr)
        self.run.param_bytes = sum(p.nbytes for p in self.model.parameters())
        self.opt: LabOptimizer | None = None
        self.step = 0
        try:
            # (a LabOptimizer starts in training mode: Schedule-Free's train() is called for us)
            self.opt = LabOptimizer(name, self.model.parameters(), lr, matrices=hidden_matrices(self.model))
        except Exception as e:  # an optimizer that cannot take this model: a note, not a crash
            self.run.note = _why(e)
        self._evaluate()

    @property
    def stopped(self) -> bool:
        return self.opt is None or self.run.diverged or bool(self.run.note)

    def _evaluate(self) -> None:
        if self.opt is not None:
            self.opt.eval()
        with torch.no_grad():
            (xt, yt), (xv, yv) = self.evals
            self.run.steps.append(self.step)
            self.run.train_loss.append(float(_loss(self.model, xt, yt)))
            self.run.val_loss.append(float(_loss(self.model, xv, yv)))
        if self.opt is not None:
            self.opt.train()
        if not (math.isfinite(self.run.train_loss[-1]) and math.isfinite(self.run.val_loss[-1])):
            self.run.diverged = True

    def advance(self, to_step: int) -> LMRun:
        """Train until step ``to_step`` (evaluating every ``eval_every`` steps)."""
        data, n = self.corpus.train, len(self.corpus.train) - CONTEXT - 1
        model, run = self.model, self.run
        while self.step < to_step and not self.stopped:
            starts = torch.randint(0, n + 1, (BATCH_SIZE,), generator=self.gen).tolist()
            x = torch.stack([data[s : s + CONTEXT] for s in starts])
            y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts])
            spent = [0.0]

            def loss_and_grad(
                x: torch.Tensor = x, y: torch.Tensor = y, spent: list[float] = spent
            ) -> torch.Tensor:
                t0 = time.perf_counter()
                loss = _loss(model, x, y)
                loss.backward()
                spent[0] += time.perf_counter() - t0
                return loss.detach()

            start = time.perf_counter()
            try:
                loss = self.opt.step(loss_and_grad)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001 - reported in the table
                run.note = _why(e)
                break
            elapsed = time.perf_counter() - start
            self.step += 1
            run.batch_loss.append(loss)
            run.step_seconds.append(elapsed)
            run.optimizer_seconds.append(max(elapsed - spent[0], 0.0))
            if not math.isfinite(loss):
                run.diverged = True
                break
            if self.step % self.eval_every == 0 or self.step == to_step:
                self._evaluate()
        if self.opt is not None:
            run.evaluations = self.opt.evaluations
            try:
                run.state_bytes = state_bytes(self.opt.state_dict())
            except Exception:  # noqa: BLE001 - a state that cannot be saved: no number
                run.state_bytes = None
        return run


def _eval_sets(corpus: Corpus, windows: int | None) -> tuple[Any, Any]:
    """The fixed evaluation windows: validation (``windows`` of them, ``None``: all) and as many
    from the training text."""
    val = _windows(corpus.val, windows)
    return _windows(corpus.train, len(val[0])), val


def train(name: str, lr: float, steps: int, corpus: Corpus, seed: int = 0, eval_every: int = 10,
          eval_windows: int | None = 32) -> LMRun:  # fmt: skip
    """Train a fresh model (weights and batch order from ``seed``) with optimizer ``name``."""
    trainer = _Trainer(name, lr, corpus, _eval_sets(corpus, eval_windows), seed, eval_every)
    return trainer.advance(steps)


def search(name: str, factors: Sequence[float], search_steps: int, steps: int, corpus: Corpus, seed: int = 0,
           eval_every: int = 10, eval_windows: int | None = 32,
           extend: int = MAX_EXTENSIONS) -> tuple[LMRun, list[LMRun]]:  # fmt: skip
    """The search of :data:`LM_SEARCH_DOC`: ``(the chosen run continued to steps, every search run)``.
    ``search_steps`` must be a multiple of ``eval_every`` (so that continuing a search run is
    the run a fresh start would give)."""
    if search_steps % eval_every:
        raise ValueError(f"search_steps={search_steps} is not a multiple of eval_every={eval_every}")
    base = get_spec(name).lab_lr
    evals = _eval_sets(corpus, eval_windows)
    factors = sorted(factors)
    ratio = factors[1] / factors[0] if len(factors) > 1 else 10.0
    trainers: list[_Trainer] = []
    snapshots: list[LMRun] = []

    def at(f: float) -> tuple[_Trainer, LMRun]:
        t = _Trainer(name, float(f"{base * f:.3g}"), corpus, evals, seed, eval_every)
        r = t.advance(search_steps)
        return t, LMRun(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(r).items()})

    for f in factors:
        t, r = at(f)
        trainers.append(t)
        snapshots.append(r)
    for _ in range(extend):
        best = _best(snapshots)
        if best is snapshots[-1]:
            factors.append(factors[-1] * ratio)
            t, r = at(factors[-1])
            trainers.append(t)
            snapshots.append(r)
        elif best is snapshots[0] and len(snapshots) > 1:
            factors.insert(0, factors[0] / ratio)
            t, r = at(factors[0])
            trainers.insert(0, t)
            snapshots.insert(0, r)
        else:
            break
    chosen = trainers[snapshots.index(_best(snapshots))]
    return chosen.advance(steps), snapshots


def _best(runs: Sequence[LMRun]) -> LMRun:
    return min(runs, key=lambda r: (r.final_train_loss, r.lr))


# ---------------------------------------------------------------- the report


_LABEL_BOX = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.0}  # drawn under the curves


def _curves_figure(runs: Sequence[LMRun], unigram: float, bigram: float, vocab: int,
                   by_run: bool = False) -> Any:  # fmt: skip
    fig, (ax0, ax1) = new_figure(14, 5.2, ncols=2, sharey=True)
    top = math.log(vocab) + 0.6
    for i, r in enumerate(runs):
        if len(r.steps) < 2:
            continue
        if by_run:
            from matplotlib import colormaps

            kw = {"color": colormaps["tab10"](i % 10), "linestyle": "-", "linewidth": 1.4}
        else:
            kw = {"color": color_of(r.optimizer), "linestyle": style_of(r.optimizer), "linewidth": 1.4}
        label = f"{r.label or r.optimizer} (γ={r.lr:g})" + (" diverged" if r.diverged else "")
        ax0.plot(r.steps, np.minimum(r.train_loss, top), label=label, **kw)
        ax1.plot(r.steps, np.minimum(r.val_loss, top), **kw)
    for ax, title in ((ax0, "Training loss (fixed training windows)"), (ax1, "Validation loss")):
        ax.axhline(unigram, color="0.35", linestyle=":", linewidth=1.0)
        ax.axhline(bigram, color="0.2", linestyle="--", linewidth=1.2)
        ax.text(0.02, unigram, "unigram model", transform=ax.get_yaxis_transform(), ha="left",
                va="bottom", fontsize=8.5, color="0.3", bbox=_LABEL_BOX, zorder=1.5)  # fmt: skip
        ax.text(0.02, bigram, "bigram model (target)", transform=ax.get_yaxis_transform(), ha="left", va="bottom",
                fontsize=8.5, color="0.3", bbox=_LABEL_BOX, zorder=1.5)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_title(title)
    ax0.set_ylabel("cross-entropy (nats per character)")
    ax0.set_ylim(top=top)
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    return fig


_TABLE_COLUMNS = ["optimizer", "learning rate γ", "final validation loss", "final training loss",
                  "steps to target (bigram loss)", "steps to unigram loss", "ms per step", "ms in the optimizer",
                  "state KiB", "state / params", "gradient evaluations", "diverged", "note"]  # fmt: skip


def _ratio(r: LMRun) -> float | None:
    return None if r.state_bytes is None else r.state_bytes / r.param_bytes


def _number(v: float) -> float | None:
    """A table cell: NaN (nothing measured) shows as a dash."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _table_rows(runs: Sequence[LMRun], unigram: float, bigram: float) -> list[list[Any]]:
    return [
        [
            r.label or r.optimizer,
            r.lr,
            _number(r.final_val_loss),
            None if r.note and len(r.train_loss) < 2 else r.final_train_loss,
            r.steps_to(bigram),
            r.steps_to(unigram),
            _number(r.ms_per_step),
            _number(r.ms_optimizer_per_step),
            None if r.state_bytes is None else r.state_bytes / 1024,
            _ratio(r),
            r.evaluations,
            r.diverged,
            r.note,
        ]
        for r in runs
    ]


def _curves_csv(s: Section, runs: Sequence[LMRun]) -> str:
    return s.csv(
        "lm_curves",
        ["optimizer", "lr", "step", "train_loss", "val_loss"],
        ([r.label or r.optimizer, r.lr, k, t, v] for r in runs for k, t, v in zip(r.steps, r.train_loss, r.val_loss)),
    )  # fmt: skip


def _steps_csv(s: Section, runs: Sequence[LMRun]) -> str:
    return s.csv(
        "lm_steps",
        ["optimizer", "lr", "step", "batch_loss", "step_seconds", "optimizer_seconds"],
        (
            [r.label or r.optimizer, r.lr, k + 1, r.batch_loss[k], r.step_seconds[k], r.optimizer_seconds[k]]
            for r in runs
            for k in range(len(r.batch_loss))
        ),
    )


def _run_summary(r: LMRun, unigram: float, bigram: float) -> dict[str, Any]:
    return {
        "lr": r.lr,
        "final_val_loss": r.final_val_loss,
        "final_train_loss": r.final_train_loss,
        "steps_to_target": r.steps_to(bigram),
        "steps_to_unigram": r.steps_to(unigram),
        "ms_per_step": r.ms_per_step,
        "ms_optimizer_per_step": r.ms_optimizer_per_step,
        "state_bytes": r.state_bytes,
        "state_per_param_bytes": _ratio(r),
        "evaluations": r.evaluations,
        "steps_done": len(r.batch_loss),
        "diverged": r.diverged,
        "note": r.note,
    }


def _corpus_summary(corpus: Corpus) -> dict[str, Any]:
    return {
        "source": "module docstrings of the Python standard library (ast.get_docstring)",
        "modules": corpus.modules,
        "chars": len(corpus.text),
        "sha256": corpus.sha256,
        "vocab": corpus.vocab,
        "n_train_chars": len(corpus.train),
        "n_val_chars": len(corpus.val),
    }


def _model_summary(corpus: Corpus) -> dict[str, Any]:
    model = make_model(corpus.vocab)
    return {
        "d_model": D_MODEL, "heads": N_HEADS, "layers": N_LAYERS, "context": CONTEXT,
        "batch_size": BATCH_SIZE, "params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


def _data_text(corpus: Corpus, steps: int, eval_every: int, eval_windows: int | None) -> str:
    import platform

    params = _model_summary(corpus)["params"]
    n_eval = len(_eval_sets(corpus, eval_windows)[1][0])
    return (
        f"The text ships with Python: the module docstrings of {len(corpus.modules)} standard-library modules "
        f"({', '.join(corpus.modules[:6])}, …), read from their source files — {len(corpus.text):,} characters, "
        f"{corpus.vocab} distinct (Python {platform.python_version()}; SHA-256 {corpus.sha256[:12]}…; these "
        f"docstrings read the same in CPython 3.10 to 3.13). Blocks of {BLOCK} characters, every tenth one held "
        f"out: {len(corpus.train):,} characters for training, {len(corpus.val):,} for validation. The model is a "
        f"decoder-only character transformer — token and position embeddings, {N_LAYERS} pre-LayerNorm "
        f"block{'s' if N_LAYERS > 1 else ''} of "
        f"causal self-attention ({N_HEADS} heads, width {D_MODEL}) and a 4× MLP, a final LayerNorm and a separate "
        f"output layer; {params:,} parameters — trained with cross-entropy on mini-batches of {BATCH_SIZE} random "
        f"windows of {CONTEXT} characters, for {steps} steps. Every optimizer starts from the same weights and sees "
        f"the same batches in the same order. Every {eval_every} steps the loss is measured on {n_eval} fixed "
        f"validation windows and on as many fixed training windows ({n_eval * CONTEXT:,} characters each). "
    )


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("lm", "6. A language model: a character-level transformer")
    corpus = load_corpus()
    unigram, bigram = corpus.unigram_loss(), corpus.bigram_loss()
    names = cfg.names
    factors_list = cfg.lm_search_factors
    searches: dict[str, list[LMRun]] = {}
    finals: dict[str, LMRun] = {}
    for name in progress(names, "language model (search + training)", cfg.progress):
        finals[name], searches[name] = search(
            name, factors_list, cfg.lm_search_steps, cfg.lm_steps, corpus, cfg.seed,
            cfg.lm_eval_every, cfg.lm_eval_windows,
        )  # fmt: skip
    runs = [finals[n] for n in names]

    factors = "{" + ", ".join(f"{f:g}" for f in factors_list) + "}"
    s.text(
        _data_text(corpus, cfg.lm_steps, cfg.lm_eval_every, cfg.lm_eval_windows)
        + LM_SEARCH_DOC.format(factors=factors, extend=MAX_EXTENSIONS)
        + f" Search budget: {cfg.lm_search_steps} steps."
    )
    s.text(
        f"Target: the validation loss of a bigram model, {bigram:.3f} nats per character (the training text's "
        "character pairs, add-0.1 smoothed: what one character of context gives; below it the model uses more "
        f"of its context). For reference, a unigram model (character frequencies only) gets {unigram:.3f} and "
        f"guessing uniformly ln {corpus.vocab} = {math.log(corpus.vocab):.3f}. <em>Steps to</em> a loss is the first evaluation (every "
        f"{cfg.lm_eval_every} steps) at or below it. Muon takes the hidden matrices (attention and MLP weights) "
        "and a default Adam the rest; an optimizer with a <code>lab_param_groups</code> hook gets the same split "
        "as parameter groups; L-BFGS does one line-searched iteration per mini-batch; SAM-style optimizers "
        "(<code>first_step</code>/<code>second_step</code>) spend two gradient evaluations per step; "
        "Schedule-Free-style optimizers (<code>train()</code>/<code>eval()</code>) are evaluated in eval mode. "
        "<em>ms per step</em> is the training step on one CPU thread (loss, gradient and update); <em>ms in the "
        "optimizer</em> leaves out the loss and gradient evaluations; timings are the one thing here that changes "
        "from run to run. <em>State</em> is the bytes of the tensors in the optimizer's "
        "<code>state_dict()['state']</code> after training (each tensor once; with Muon, its companion Adam's "
        "too), and <em>state / params</em> that divided by the bytes of the model's parameters."
    )
    trained = [n for n in names if not finals[n].note and len(finals[n].val_loss) > 1]
    ranked = sorted(trained, key=lambda n: finals[n].final_val_loss)
    if ranked:
        s.text(
            "Lowest validation loss: "
            + ", ".join(f"{n} {finals[n].final_val_loss:.3f}" for n in ranked[:3])
            + "; highest: "
            + ", ".join(f"{n} {finals[n].final_val_loss:.3f}" for n in ranked[-2:])
            + f". {sum(finals[n].steps_to(bigram) is not None for n in names)} of {len(names)} optimizers "
            f"reach the target within {cfg.lm_steps} steps."
        )
    skipped = [n for n in names if finals[n].note]
    if skipped:
        s.text("Not trained here: " + "; ".join(f"{n}: {finals[n].note}" for n in skipped) + ".")

    curves_csv = _curves_csv(s, runs)
    steps_csv = _steps_csv(s, runs)
    search_csv = s.csv(
        "lm_search",
        ["optimizer", "lr", "final_train_loss", "final_val_loss", "chosen"],
        ([n, r.lr, r.final_train_loss, r.final_val_loss, r.lr == finals[n].lr] for n in names for r in searches[n]),
    )  # fmt: skip
    summary = {
        "corpus": _corpus_summary(corpus),
        "model": _model_summary(corpus),
        "steps": cfg.lm_steps,
        "search_steps": cfg.lm_search_steps,
        "search_factors": factors_list,
        "eval_every": cfg.lm_eval_every,
        "eval_windows": len(_eval_sets(corpus, cfg.lm_eval_windows)[1][0]),
        "target_loss": bigram,
        "target": "bigram",
        "unigram_loss": unigram,
        "bigram_loss": bigram,
        "uniform_loss": math.log(corpus.vocab),
        "optimizers": {
            n: {
                **_run_summary(finals[n], unigram, bigram),
                "search": {f"{r.lr:g}": r.final_train_loss for r in searches[n]},
            }
            for n in names
        },
    }
    j = s.json("lm", summary)
    s.summary.update(summary)

    s.figure(
        _curves_figure(runs, unigram, bigram, corpus.vocab),
        "lm_curves",
        "The character transformer trained by every optimizer at its searched learning rate: loss on fixed "
        "training windows (left) and on the validation windows (right), in nats per character; dotted: the "
        "unigram model, dashed: the bigram model (the target).",
        data=[curves_csv, steps_csv, j],
    )
    fig, ax = new_figure(9.5, 4.6)
    cap = math.log(corpus.vocab) + 1
    for n in names:
        lrs = [r.lr for r in searches[n]]
        losses = [min(r.final_train_loss, cap) for r in searches[n]]
        ax.semilogx(lrs, losses, marker="o", markersize=3.5, color=color_of(n), linestyle=style_of(n), label=n)
        ax.plot([finals[n].lr], [min(_best(searches[n]).final_train_loss, cap)], "o", markersize=9,
                markerfacecolor="none", markeredgecolor=color_of(n), markeredgewidth=1.6)  # fmt: skip
    ax.set_xlabel("learning rate γ (log scale)")
    ax.set_ylabel(f"training loss after {cfg.lm_search_steps} steps (diverged: {cap:.2f})")
    ax.set_title(f"The learning-rate search on the language model (×{factors} lab_lr, extended at the ends)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8.5)
    s.figure(fig, "lm_search", "The search: training loss at the end of the search budget for every learning "
             "rate tried; the chosen one is circled.", data=[search_csv])  # fmt: skip
    s.figure(_costs_figure(runs), "lm_costs", "What the final validation loss costs: optimizer state (bytes per "
             "byte of parameters) and time per step, for every optimizer that trained.", data=[j])  # fmt: skip
    s.table(_TABLE_COLUMNS, _table_rows(runs, unigram, bigram),
            caption=f"The character transformer after {cfg.lm_steps} steps (target: the bigram loss "
            f"{bigram:.3f}).")  # fmt: skip


def _costs_figure(runs: Sequence[LMRun]) -> Any:
    fig, (ax0, ax1) = new_figure(14, 4.8, ncols=2, sharey=True)
    for r in runs:
        if r.note or not math.isfinite(r.final_val_loss):
            continue
        label = r.label or r.optimizer
        y = r.final_val_loss
        for ax, x in ((ax0, _ratio(r)), (ax1, r.ms_per_step)):
            if x is None or not math.isfinite(x):
                continue
            ax.plot([x], [y], "o", color=color_of(r.optimizer), markersize=6)
            ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8)
    ax0.set_xlabel("optimizer state / parameter bytes")
    ax0.set_ylabel("final validation loss (nats per character)")
    ax0.set_title("Loss against optimizer memory")
    ax1.set_xscale("log")
    ax1.xaxis.set_major_formatter(ScalarFormatter())
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_xlabel("ms per training step (one CPU thread, log scale)")
    ax1.set_title("Loss against time per step")
    return fig


def compare(
    report: Report,
    names: Sequence[str],
    lrs: Sequence[float] | None,
    steps: int,
    seed: int = 0,
    show_progress: bool = True,
    eval_every: int = 10,
) -> list[LMRun]:
    """``optimkit lab lm``: every optimizer at every learning rate of ``lrs`` (default: the
    registry's ``lab_lr``) for ``steps`` steps."""
    s = report.section("lm", "The character transformer")
    corpus = load_corpus()
    unigram, bigram = corpus.unigram_loss(), corpus.bigram_loss()
    jobs = [(n, lr) for n in names for lr in (lrs or [None])]
    runs = []
    for name, lr in progress(jobs, "language model", show_progress):
        r = train(name, get_spec(name).lab_lr if lr is None else lr, steps, corpus, seed, eval_every, None)
        r.label = r.optimizer if not lrs or len(lrs) == 1 else f"{r.optimizer} γ={r.lr:g}"
        runs.append(r)
    s.text(_data_text(corpus, steps, eval_every, None)
           + f"Unigram loss {unigram:.3f}, bigram loss {bigram:.3f} (nats per character).")  # fmt: skip
    curves_csv = _curves_csv(s, runs)
    steps_csv = _steps_csv(s, runs)
    j = s.json("lm", {
        "corpus": _corpus_summary(corpus), "model": _model_summary(corpus), "steps": steps,
        "unigram_loss": unigram, "bigram_loss": bigram,
        "runs": {r.label: _run_summary(r, unigram, bigram) for r in runs},
    })  # fmt: skip
    by_run = bool(lrs) and len(lrs) > 1
    s.figure(_curves_figure(runs, unigram, bigram, corpus.vocab, by_run), "lm_curves",
             "Training and validation loss (nats per character) every few steps.", data=[curves_csv, steps_csv, j])  # fmt: skip
    s.table(_TABLE_COLUMNS, _table_rows(runs, unigram, bigram), caption=f"After {steps} steps.")
    return runs
