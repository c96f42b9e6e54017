"""Classification: cross-entropy over `num_classes` logits, or one logit with binary
cross-entropy (`num_classes: 2` with a single-output net); torchmetrics per split."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from nnlab.errors import ConfigError
from nnlab.schema import NonNegativeInt
from nnlab.tasks.base import Task
from nnlab.tasks.regression import real_steps


class ClassificationTask(Task):
    """Logits (batch, num_classes) or (batch, 1) for binary; targets are class indices.

    Batches are `(x, y)` or `(x, *extra, y)`: everything before the target goes to the net, so
    text nets get `(ids, lengths)`.

    After testing, `test_confusion` holds the confusion matrix (rows: true class) and
    `test_mistakes` the first `keep_mistakes` misclassified test samples as
    `(inputs, true classes, predicted classes)` on the CPU, for the figure callbacks.
    """

    target_kind = "classes"

    def __init__(
        self,
        *args,
        num_classes: Annotated[int, Field(ge=2)] = 10,
        binary: bool = False,
        keep_mistakes: NonNegativeInt = 36,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(
            {"num_classes": num_classes, "binary": binary, "keep_mistakes": keep_mistakes}
        )
        if binary and num_classes != 2:
            raise ConfigError("task.binary", f"binary needs num_classes 2, got {num_classes}")
        self.num_classes, self.binary = num_classes, binary
        if binary:
            metrics = {"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()}
            confusion_classes = 2
        else:
            metrics = {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
            confusion_classes = num_classes
        self.val_metrics = MetricCollection(metrics).clone(prefix="val/")
        self.test_metrics = MetricCollection(metrics).clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(confusion_classes)
        self.keep_mistakes = int(keep_mistakes)
        self.test_mistakes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def output_width(self, datamodule) -> int | None:
        classes = getattr(datamodule, "num_classes", None)
        if classes is not None and classes != self.num_classes:
            raise ConfigError(
                "task.num_classes",
                f"{self.num_classes}, but the data has {classes} classes; use ${{data.num_classes}}",
            )
        return 1 if self.binary else self.num_classes

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())
        return F.cross_entropy(logits, y)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: of the positive class (binary, shape (batch,)) or of each class."""
        if self.binary:
            return torch.sigmoid(logits.squeeze(-1).float())
        return torch.softmax(logits.float(), dim=-1)

    def predict_classes(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores > 0.5).long() if self.binary else scores.argmax(dim=-1)

    def outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of `(x, y)` or `(x, lengths, y)`; many-to-many (logits per step,
        y (batch, steps)): the real steps only, as rows."""
        *inputs, y = batch
        logits = self(*inputs)
        if logits.dim() == 3 and y.dim() == 2:
            return real_steps(
                logits, y, inputs[1] if len(inputs) > 1 else y.new_full((len(y),), y.shape[1])
            )
        return logits, y

    def training_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, y = self.outputs(batch)
        if self.binary:
            predicted = (logits.squeeze(-1) > 0).long()
        else:
            predicted = logits.argmax(dim=-1)
        return self.loss(logits, y), (predicted == y).sum()

    def _evaluate(self, batch, metrics: MetricCollection, stage: str):
        logits, y = self.outputs(batch)
        self.log(f"{stage}/loss", self.loss(logits, y), prog_bar=stage == "val")
        scores = self.scores(logits)
        metrics.update(scores, y)
        self.log_dict(metrics, prog_bar=stage == "val")
        return scores, y

    def test_step(self, batch, batch_idx):
        scores, y = self._evaluate(batch, self.test_metrics, "test")
        predicted = self.predict_classes(scores)
        self.test_confusion.update(predicted, y)
        if y is batch[-1]:  # whole samples (not the steps of many-to-many ones)
            self.collect_mistakes(batch[0], y, predicted)

    def collect_mistakes(self, x: torch.Tensor, y: torch.Tensor, predicted: torch.Tensor) -> None:
        room = self.keep_mistakes - sum(len(m[1]) for m in self.test_mistakes)
        if room <= 0 or not isinstance(x, torch.Tensor):
            return
        wrong = (predicted != y).nonzero().flatten()[:room]
        if len(wrong):
            self.test_mistakes.append((x[wrong].cpu(), y[wrong].cpu(), predicted[wrong].cpu()))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_confusion.reset()
        self.test_mistakes = []

    def predict_step(self, batch, batch_idx):
        if not isinstance(batch, list | tuple):
            return self.scores(self(batch))
        inputs = batch[:-1] if len(batch) > 1 else batch  # (x, ..., y) or just (x,)
        return self.scores(self(*inputs))
