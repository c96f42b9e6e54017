"""Tasks: losses, metrics, and checkpoints that rebuild their network on their own."""

import shutil

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from nnlab.tasks.classification import ClassificationTask
from nnlab.tasks.loops import training_loop
from nnlab.tasks.regression import RegressionTask

MLP = {"_target_": "nnlab.models.mlp.MLP", "input_size": 4, "hidden_sizes": [16]}


def loaders(x, y, batch_size=16):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fit(task, x, y, epochs=30, tmp_path=None):
    loop = training_loop(task)  # the task's `loop`, chosen as the run's assembly chooses it
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[loop] if loop is not None else [],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_checkpointing=tmp_path is not None,
    )
    trainer.fit(task, loaders(x, y), loaders(x, y))
    return trainer


def test_regression_learns_and_reports_metrics():
    L.seed_everything(0)
    x = torch.randn(256, 4)
    y = x.sum(dim=1, keepdim=True)
    task = RegressionTask(
        net={**MLP, "output_size": 1},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2},
    )
    trainer = fit(task, x, y)
    (metrics,) = trainer.test(task, loaders(x, y), verbose=False)
    assert metrics["test/mse"] < 0.05 and metrics["test/mae"] < 0.2


def test_multiclass_learns_and_fills_the_confusion_matrix():
    L.seed_everything(0)
    x = torch.randn(300, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    task = ClassificationTask(
        net={**MLP, "output_size": 3},
        num_classes=3,
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2},
    )
    trainer = fit(task, x, y)
    (metrics,) = trainer.test(task, loaders(x, y), verbose=False)
    assert metrics["test/acc"] > 0.9 and "test/f1" in metrics
    confusion = task.test_confusion.compute()
    assert confusion.sum() == 300 and confusion.diag().sum() / 300 == metrics["test/acc"]


def test_binary_uses_one_logit_and_reports_auroc():
    L.seed_everything(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    task = ClassificationTask(
        net={**MLP, "output_size": 1},
        num_classes=2,
        binary=True,
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2},
    )
    trainer = fit(task, x, y)
    (metrics,) = trainer.test(task, loaders(x, y), verbose=False)
    assert metrics["test/acc"] > 0.9 and metrics["test/auroc"] > 0.95
    probs = task.predict_step(x[:5], 0)
    assert probs.shape == (5,) and ((probs >= 0) & (probs <= 1)).all()


def test_checkpoint_loads_alone_from_another_directory(tmp_path):
    L.seed_everything(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    task = RegressionTask(net={**MLP, "output_size": 1})
    trainer = fit(task, x, y, epochs=2, tmp_path=tmp_path / "run")
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(trainer.checkpoint_callback.best_model_path, moved)
    loaded = RegressionTask.load_from_checkpoint(moved)
    task.eval()
    assert torch.equal(loaded(x), task(x))


def test_every_loop_trains_with_the_tasks_one_loss_function():
    """training_loss gives (mean loss, correct predictions); Lightning's loop logs train/loss and
    train/acc from it, and the fused loop (the CPU's default) trains and logs the same."""
    x = torch.randn(100, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    task = ClassificationTask(net={**MLP, "output_size": 3}, num_classes=3)
    loss, correct = task.training_loss((x, y))
    predicted = task(x).argmax(-1)
    assert loss.shape == () and correct == (predicted == y).sum()
    logged = {}
    for loop in ("lightning", "fused"):
        L.seed_everything(0)
        task = ClassificationTask(net={**MLP, "output_size": 3}, num_classes=3, loop=loop)
        trainer = fit(task, x, y, epochs=3)
        logged[loop] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert trainer.global_step == 3 * 7  # 100 samples in batches of 16
        assert not task.automatic_optimization == (loop == "fused")
    assert {"train/loss", "train/acc"} <= set(logged["lightning"])
    for key, value in logged["lightning"].items():
        assert logged["fused"][key] == pytest.approx(value, rel=1e-5), key
