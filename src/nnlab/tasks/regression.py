"""Regression: `loss: mse | mae | huber` (the workflow chapter's choices), MSE and MAE per split
(torchmetrics).

Many-to-many batches `(x, lengths, y)` with y (batch, steps[, k]) and a net giving one output
per step (`model.readout: all`) are scored over the real steps only."""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from nnlab.models.cells import step_mask
from nnlab.schema import PositiveFloat
from nnlab.tasks.base import Task

LOSSES = ("mse", "mae", "huber")


def real_steps(
    out: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step outputs (batch, steps, ...) and targets (batch, steps[, ...]) at real steps
    only, as (n, ...) rows; anything else passes through."""
    if lengths is None or out.dim() < 3 or y.dim() < 2 or y.shape[1] != out.shape[1]:
        return out, y
    mask = step_mask(lengths.to(out.device), out.shape[1])[..., 0]  # (batch, steps)
    return out[mask], y[mask]


class RegressionTask(Task):
    def __init__(
        self,
        *args,
        loss: Literal["mse", "mae", "huber"] = "mse",
        huber_delta: PositiveFloat = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters({"loss": loss, "huber_delta": huber_delta})
        self.loss_fn = {
            "mse": F.mse_loss,
            "mae": F.l1_loss,
            "huber": functools.partial(F.huber_loss, delta=float(huber_delta)),
        }[loss]
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def output_width(self, datamodule) -> int | None:
        return getattr(datamodule, "output_size", None) or getattr(datamodule, "horizon", None)

    def outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) of a batch `(x, y)` or `(x, lengths, y)`, real steps only."""
        *inputs, y = batch
        if self.training and getattr(self.net, "uses_targets", False):  # teacher forcing
            out = self.net(*inputs, targets=y)
        else:
            out = self(*inputs)
        pred, y = real_steps(out, y, inputs[1] if len(inputs) > 1 else None)
        if pred.dim() == y.dim() + 1 and pred.shape[-1] == 1:  # one value per step
            pred = pred.squeeze(-1)
        return pred, y

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(pred, y)

    def training_loss(self, batch) -> tuple[torch.Tensor, None]:
        pred, y = self.outputs(batch)
        return self.loss(pred, y), None

    def _evaluate(self, batch, metrics, stage: str) -> None:
        pred, y = self.outputs(batch)
        self.log(f"{stage}/loss", self.loss(pred, y), prog_bar=stage == "val")
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:  # metrics in the data's own units (scaling undone)
            pred, y = datamodule.decode(pred), datamodule.decode(y)
        metrics.update(pred, y)
        self.log_dict(metrics, prog_bar=stage == "val")

    def predict_step(self, batch, batch_idx):
        if not isinstance(batch, list | tuple):
            return self(batch)
        return self(*(batch[:-1] if len(batch) > 1 else batch))
