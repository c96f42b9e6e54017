"""Regression: MSE loss, MSE and MAE per split (torchmetrics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from nnlab.tasks.base import Task


class RegressionTask(Task):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def output_width(self, datamodule) -> int | None:
        return getattr(datamodule, "horizon", None)

    def training_loss(self, batch) -> tuple[torch.Tensor, None]:
        x, y = batch
        return F.mse_loss(self(x), y), None

    def _evaluate(self, batch, metrics, stage: str) -> None:
        x, y = batch
        pred = self(x)
        self.log(f"{stage}/loss", F.mse_loss(pred, y), prog_bar=stage == "val")
        metrics.update(pred, y)
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)
