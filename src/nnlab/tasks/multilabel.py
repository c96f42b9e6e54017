"""Multi-label classification: k-hot targets (batch, num_labels), one logit per label, sigmoid +
binary cross-entropy (the workflow chapter's choice for several labels per sample); micro and
macro F1 and per-label accuracy per split (torchmetrics)."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

from nnlab.errors import ConfigError
from nnlab.schema import PositiveInt
from nnlab.tasks.base import Task


class MultiLabelTask(Task):
    """Batches `(x, y)` or `(x, *extra, y)`, y k-hot (0/1) of `num_labels`."""

    target_kind = "labels"

    def __init__(
        self,
        *args,
        num_labels: PositiveInt = 2,
        threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters({"num_labels": num_labels, "threshold": threshold})
        self.num_labels, self.threshold = int(num_labels), float(threshold)
        k = self.num_labels
        metrics = MetricCollection(
            {
                "f1_micro": MultilabelF1Score(k, threshold=threshold, average="micro"),
                "f1_macro": MultilabelF1Score(k, threshold=threshold, average="macro"),
                "acc": MultilabelAccuracy(k, threshold=threshold, average="micro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def output_width(self, datamodule) -> int | None:
        labels = getattr(datamodule, "num_labels", None)
        if labels != self.num_labels:
            raise ConfigError(
                "task.num_labels",
                f"{self.num_labels}, but the data has {labels} labels; use ${{data.num_labels}}",
            )
        return self.num_labels

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Each label's probability (sigmoid): what nnlab-predict reports."""
        return torch.sigmoid(logits.float())

    def outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        *inputs, y = batch
        return self(*inputs), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.float())

    def training_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, y = self.outputs(batch)
        # samples with every label right: train/acc is the exact-match (subset) accuracy
        correct = ((logits > 0) == y.bool()).all(-1).sum()
        return self.loss(logits, y), correct

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> None:
        logits, y = self.outputs(batch)
        self.log(f"{stage}/loss", self.loss(logits, y), prog_bar=stage == "val")
        metrics.update(torch.sigmoid(logits.float()), y.long())
        self.log_dict(metrics, prog_bar=stage == "val")

    def predict_step(self, batch, batch_idx):
        inputs = batch[:-1] if isinstance(batch, list | tuple) and len(batch) > 1 else batch
        inputs = inputs if isinstance(inputs, list | tuple) else (inputs,)
        return torch.sigmoid(self(*inputs).float())
