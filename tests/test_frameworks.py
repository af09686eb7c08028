"""optimkit inside the frameworks people train with: Hugging Face ``Trainer`` and Lightning.

Each trains a tiny model built here (nothing is downloaded) with optimkit's optimizer and
scheduler, saves through the framework's own checkpointing, resumes, and checks the result:

* Hugging Face: the resumed run ends with the very parameters and optimizer state of the
  uninterrupted one; optimkit in the Trainer gives torch.optim's bits; ``find_lr`` runs on
  the causal LM with dict batches and no adapter.
* Lightning: the resumed optimizer and scheduler state is what was saved, and optimkit's run
  -- uninterrupted and resumed -- has torch.optim's bits in the same Lightning loop. (Lightning
  2.6's resume from an epoch-end checkpoint does not reproduce its own uninterrupted run, with
  torch.optim either: measured 3.7e-4 after 16 steps here, so torch's resumed run is the oracle.)
"""

from __future__ import annotations

import glob
import logging
import warnings

import pytest
import torch

import optimkit
from harness import assert_same

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore")


# ----------------------------------------------------------------------------- Hugging Face
def _lm():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def _lm_data(n=32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 40, (12,), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def _hf_train(out, max_steps, optim_module=optimkit, resume=None):
    model = _lm()
    opt = optim_module.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = optim_module.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 10)
    args = transformers.TrainingArguments(
        str(out), max_steps=max_steps, per_device_train_batch_size=4, save_steps=3, save_strategy="steps",
        report_to=[], use_cpu=True, logging_strategy="no", seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_lm_data(), optimizers=(opt, sched))
    trainer.train(resume_from_checkpoint=resume)
    return model, opt, sched


@pytest.fixture(autouse=True)
def quiet():
    transformers.logging.set_verbosity_error()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_hf_trainer_resumes_bit_identically(tmp_path):
    ref_model, ref_opt, ref_sched = _hf_train(tmp_path / "a", 6)
    _hf_train(tmp_path / "b", 3)
    model, opt, sched = _hf_train(tmp_path / "c", 6, resume=str(tmp_path / "b" / "checkpoint-3"))
    assert_same([p.detach() for p in model.parameters()], [p.detach() for p in ref_model.parameters()], "params")
    assert_same(opt.state_dict(), ref_opt.state_dict(), "optimizer")
    assert sched.state_dict()["last_epoch"] == ref_sched.state_dict()["last_epoch"] == 6


def test_hf_trainer_optimkit_equals_torch(tmp_path):
    ours, ours_opt, _ = _hf_train(tmp_path / "a", 4)
    theirs, theirs_opt, _ = _hf_train(tmp_path / "b", 4, optim_module=torch.optim)
    assert_same([p.detach() for p in ours.parameters()], [p.detach() for p in theirs.parameters()], "params")
    assert_same(ours_opt.state_dict()["state"], theirs_opt.state_dict()["state"], "state")


def test_find_lr_on_a_causal_lm_with_dict_batches():
    model = _lm()
    opt = optimkit.AdamW(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(_lm_data(), batch_size=8)  # dicts of tensors, as a collator gives
    result = optimkit.find_lr(model, opt, None, loader, num_iter=20, progress=False)
    assert len(result.losses) >= 10 and all(torch.isfinite(torch.tensor(result.losses[:10])))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_param_groups_and_create_optimizer_on_a_hf_model():
    model = _lm()
    opt = optimkit.create_optimizer("adamw", model, lr=3e-4, weight_decay=0.05, layer_decay=0.8)
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    # GPT-2's blocks (transformer.h) are found from the structure: embeddings first, the head last.
    assert by_name["transformer.wte.weight"]["weight_decay"] == 0.0  # an embedding
    assert by_name["transformer.h.0.attn.c_attn.weight"]["weight_decay"] == 0.05
    assert by_name["transformer.ln_f.weight"]["lr"] == 3e-4
    assert by_name["transformer.wte.weight"]["lr"] == pytest.approx(3e-4 * 0.8**2)


# ----------------------------------------------------------------------------- Lightning
L = pytest.importorskip("lightning")


def _module(optim_module):
    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def training_step(self, batch, index):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = optim_module.AdamW(self.parameters(), lr=1e-2)
            sched = optim_module.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Regression()


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def _lightning(directory, steps, optim_module, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint(dirpath=directory, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)]
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    )  # fmt: skip  (no deterministic=True: CPU ops are, and it fights torch.testing's cudnn lock)
    module = _module(optim_module)
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("resumed", [False, True], ids=["uninterrupted", "resumed"])
def test_lightning_optimkit_equals_torch_and_resumes_what_was_saved(tmp_path, resumed):
    runs = {}
    for name, optim_module in (("optimkit", optimkit), ("torch", torch.optim)):
        if not resumed:
            runs[name] = _lightning(tmp_path / name, 16, optim_module)
            continue
        _lightning(tmp_path / name, 8, optim_module)
        (path,) = glob.glob(str(tmp_path / name / "*.ckpt"))
        saved = torch.load(path, weights_only=False)
        module, trainer = _lightning(tmp_path / f"{name}-resumed", 8, optim_module, ckpt_path=path)
        # Stopped at once (max_steps reached): what was restored is exactly what was saved.
        assert_same(trainer.optimizers[0].state_dict()["state"], saved["optimizer_states"][0]["state"], name)
        assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == saved["lr_schedulers"][0]
        runs[name] = _lightning(tmp_path / f"{name}-continued", 16, optim_module, ckpt_path=path)
    (ours, ours_trainer), (theirs, theirs_trainer) = runs["optimkit"], runs["torch"]
    assert isinstance(ours_trainer.optimizers[0], optimkit.AdamW)
    assert_same([p.detach() for p in ours.parameters()], [p.detach() for p in theirs.parameters()], "params")
    assert_same(ours_trainer.optimizers[0].state_dict()["state"], theirs_trainer.optimizers[0].state_dict()["state"])
