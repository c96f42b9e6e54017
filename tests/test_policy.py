"""engine/policy.py decides as Lightning's ModelCheckpoint (save_top_k=1) and EarlyStopping do:
Lightning fits a module that logs a scripted metric sequence, and the policy, fed the same
sequence, must pick the same best epoch and stop after the same epoch."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from nnlab.engine.policy import BestCheckpoint, EarlyStop

NAN, INF = math.nan, math.inf


class Scripted(L.LightningModule):
    """Logs `values[epoch]` as val/metric; trains nothing of note."""

    def __init__(self, values):
        super().__init__()
        self.values = values
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum() * 0.0

    def validation_step(self, batch, batch_idx):
        self.log("val/metric", float(self.values[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def lightning_decisions(tmp_path, values, mode, patience, min_delta, min_epochs):
    data = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path, monitor="val/metric", mode=mode, save_top_k=1, filename="{epoch}"
    )
    stop = EarlyStopping(monitor="val/metric", mode=mode, patience=patience, min_delta=min_delta)
    trainer = L.Trainer(
        max_epochs=len(values),
        min_epochs=min_epochs,
        callbacks=[checkpoint, stop],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Scripted(values), data, data)
    best = int(checkpoint.best_model_path.rsplit("epoch=", 1)[1].split(".")[0])
    return best, trainer.current_epoch  # epochs run


def policy_decisions(values, mode, patience, min_delta, min_epochs):
    best = BestCheckpoint("val/metric", mode)
    stop = EarlyStop("val/metric", mode, patience, min_delta, min_epochs)
    for epoch, value in enumerate(values):
        metrics = {"val/metric": value}
        best.update(metrics, epoch, epoch)
        if stop.update(metrics, epoch):
            return best.epoch, epoch + 1
    return best.epoch, len(values)


CASES = [
    ([5, 4, 4, 4, 3, 3, 3, 3], "min", 2, 0.0, 0),
    ([5, 4, 3.95, 3.9, 3.85, 1, 1, 1], "min", 2, 0.1, 0),
    ([1, 2, 2, 1, 3, 0, 0, 0, 0], "max", 3, 0.0, 0),
    ([5, 6, 7, 8, 9, 9, 9, 9, 9], "min", 2, 0.0, 6),  # min_epochs holds the stop back
    ([5, 6, 7, 1, 9, 9, 9, 9, 9], "min", 2, 0.0, 5),  # ... and an improvement meanwhile
    ([NAN, 5, 4, 6, 6, 6], "min", 2, 0.0, 3),  # a non-finite first value, then numbers
    ([5, 4, INF, 3, 2, 1], "min", 5, 0.0, 0),  # non-finite: stop
]


@pytest.mark.parametrize("values, mode, patience, min_delta, min_epochs", CASES)
def test_the_policy_decides_as_lightnings_callbacks(
    tmp_path, values, mode, patience, min_delta, min_epochs
):
    args = (values, mode, patience, min_delta, min_epochs)
    assert policy_decisions(*args) == lightning_decisions(tmp_path, *args)


def test_without_a_monitor_the_newest_weights_are_the_best():
    best = BestCheckpoint(None)
    assert all(best.update({}, epoch, 10 * epoch) for epoch in range(3))
    assert (best.epoch, best.step) == (2, 20)
