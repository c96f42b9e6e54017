"""Several outputs, each with its own loss, loss weight and metrics (Keras' `compile(loss={...},
loss_weights={...})` of a Functional model): a model=graph network returning {name: output},
data giving one target per output by name (`target_names`, the batch's last tensors).

    outputs:
      digit: {loss: cross_entropy, num_classes: 10}           # weight 1, metrics acc and f1
      even:  {loss: binary_cross_entropy, weight: 0.5}
      ink:   {loss: mse, weight: 2.0, metrics: [mae]}

The training loss is the weighted sum; `<stage>/loss` logs it and `<stage>/<output>/loss` and
`<stage>/<output>/<metric>` each output's part (unweighted) and metrics."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
)
from typing_extensions import TypedDict

from nnlab.errors import ConfigError
from nnlab.schema import NonNegativeFloat, PositiveInt
from nnlab.tasks.base import Task

Loss = Literal["cross_entropy", "binary_cross_entropy", "mse", "mae", "huber"]
Metric = Literal["acc", "f1", "auroc", "mse", "mae"]
CLASSIFIERS = ("cross_entropy", "binary_cross_entropy")
DEFAULT_METRICS = {
    "cross_entropy": ["acc", "f1"],
    "binary_cross_entropy": ["acc", "f1", "auroc"],
    "mse": ["mse", "mae"],
    "mae": ["mse", "mae"],
    "huber": ["mse", "mae"],
}


class OutputSpec(TypedDict, total=False):
    """One output's loss, its weight in the sum, its metrics and width."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # a misspelt key is refused, not ignored

    loss: Loss
    weight: NonNegativeFloat
    num_classes: Annotated[int, Field(ge=2)]  # cross_entropy: the classes (the output's width)
    width: PositiveInt  # regression: values per sample (1)
    metrics: list[Metric]


def output_width(spec: Mapping) -> int:
    """How many values per sample an output gives for its loss."""
    loss = spec.get("loss", "mse")
    if loss == "cross_entropy":
        return int(spec.get("num_classes") or 0)
    if loss == "binary_cross_entropy":
        return 1
    return int(spec.get("width") or 1)


def _metric(name: str, loss: str, spec: Mapping, key: str):
    if loss == "cross_entropy":
        k = int(spec["num_classes"])
        made = {"acc": lambda: MulticlassAccuracy(k, average="micro"),
                "f1": lambda: MulticlassF1Score(k, average="macro")}  # fmt: skip
    elif loss == "binary_cross_entropy":
        made = {"acc": BinaryAccuracy, "f1": BinaryF1Score, "auroc": BinaryAUROC}
    else:
        made = {"mse": MeanSquaredError, "mae": MeanAbsoluteError}
    if name not in made:
        raise ConfigError(
            f"{key}.metrics",
            f"{name} does not score a {loss} output; choose from {', '.join(made)}",
        )
    return made[name]()


class MultiOutputTask(Task):
    """Batches `(*inputs, *targets)`, the targets named by `targets` (the data's target names,
    in the batch's order); the net returns {output name: tensor} with the same names."""

    target_kind = "outputs"

    def __init__(
        self,
        *args,
        outputs: Annotated[dict[str, OutputSpec], Field(min_length=1)],
        targets: Annotated[list[str], Field(min_length=1)] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not targets:
            raise ConfigError(
                "task.targets",
                "the data gives one unnamed target; task=multi_output learns data with several "
                "targets by name (e.g. data=mnist data.targets=[digit,even])",
            )
        outputs = {str(k): dict(v) for k, v in dict(outputs).items()}
        self.save_hyperparameters({"outputs": outputs, "targets": list(targets)})
        if set(outputs) != set(targets):
            raise ConfigError(
                "task.outputs",
                f"scores {', '.join(outputs)}, but the data's targets are {', '.join(targets)}; "
                "give one output per target, named as the target",
            )
        self.specs = outputs
        self.targets = list(targets)
        self.weights = {n: float(s.get("weight", 1.0)) for n, s in outputs.items()}
        losses = {
            "cross_entropy": F.cross_entropy,
            "binary_cross_entropy": lambda out, y: F.binary_cross_entropy_with_logits(
                out.squeeze(-1), y.float()
            ),
            "mse": F.mse_loss,
            "mae": F.l1_loss,
            "huber": functools.partial(F.huber_loss, delta=1.0),
        }
        self.loss_fns = {}
        stages = {"val": nn.ModuleDict(), "test": nn.ModuleDict()}
        for name, spec in outputs.items():
            key = f"task.outputs.{name}"
            loss = spec.get("loss", "mse")
            if loss == "cross_entropy" and not spec.get("num_classes"):
                raise ConfigError(f"{key}.num_classes", "a cross_entropy output needs its classes")
            self.loss_fns[name] = losses[loss]
            metrics = spec.get("metrics", DEFAULT_METRICS[loss])
            collection = MetricCollection({m: _metric(m, loss, spec, key) for m in metrics})
            for stage, held in stages.items():
                held[name] = collection.clone(prefix=f"{stage}/{name}/")
        self.val_metrics, self.test_metrics = stages["val"], stages["test"]

    def output_width(self, datamodule) -> dict[str, int]:
        return {name: output_width(spec) for name, spec in self.specs.items()}

    def check_output(self, out, datamodule) -> None:
        if not isinstance(out, Mapping):
            raise ConfigError(
                "model.outputs",
                f"the network gives one unnamed output, {type(self).__name__} scores "
                f"{', '.join(self.specs)}; list the outputs by name (model.outputs: [..])",
            )
        if set(out) != set(self.specs):
            raise ConfigError(
                "model.outputs",
                f"the network gives {', '.join(out)}, the task scores {', '.join(self.specs)}",
            )
        for name, width in self.output_width(datamodule).items():
            if out[name].shape[-1] != width:
                raise ConfigError(
                    f"model.outputs.{name}",
                    f"the network gives {out[name].shape[-1]} values per sample, the "
                    f"{self.specs[name].get('loss', 'mse')} output needs {width}",
                )

    # -- the batch by name ----------------------------------------------------------------------
    def split(self, batch) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """(the net's inputs, {target name: tensor}) of a batch `(*inputs, *targets)`."""
        k = len(self.targets)
        return tuple(batch[:-k]), dict(zip(self.targets, batch[-k:], strict=True))

    def outputs(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs, targets = self.split(batch)
        return self(*inputs), targets

    def _prediction(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """An output as its loss compares it with the target (one value: no last axis)."""
        loss = self.specs[name].get("loss", "mse")
        if loss == "binary_cross_entropy" or (loss not in CLASSIFIERS and out.shape[-1] == 1):
            return out.squeeze(-1)
        return out

    def parts(self, out: Mapping, y: Mapping) -> dict[str, torch.Tensor]:
        """Each output's own (unweighted) loss."""
        parts = {}
        for name, fn in self.loss_fns.items():
            pred = out[name]
            if self.specs[name].get("loss", "mse") not in CLASSIFIERS:
                pred = self._prediction(name, pred)
                parts[name] = fn(pred, y[name].to(pred.dtype).reshape(pred.shape))
            else:
                parts[name] = fn(pred, y[name])
        return parts

    def loss(self, out: Mapping, y: Mapping) -> torch.Tensor:
        parts = self.parts(out, y)
        return sum(self.weights[n] * parts[n] for n in parts)

    def training_loss(self, batch) -> tuple[torch.Tensor, None]:
        out, y = self.outputs(batch)
        return self.loss(out, y), None

    def scores(self, out: Mapping) -> dict[str, torch.Tensor]:
        """Probabilities for the classifying outputs (of the positive class when binary), the
        values themselves for the others."""
        scores = {}
        for name, value in out.items():
            loss = self.specs[name].get("loss", "mse")
            if loss == "cross_entropy":
                scores[name] = torch.softmax(value.float(), dim=-1)
            elif loss == "binary_cross_entropy":
                scores[name] = torch.sigmoid(value.squeeze(-1).float())
            else:
                scores[name] = self._prediction(name, value).float()
        return scores

    def _evaluate(self, batch, metrics: nn.ModuleDict, stage: str) -> None:
        out, y = self.outputs(batch)
        parts = self.parts(out, y)
        n = len(batch[-1])
        total = sum(self.weights[k] * parts[k] for k in parts)
        self.log(f"{stage}/loss", total, prog_bar=stage == "val", batch_size=n)
        scores = self.scores(out)
        for name, collection in metrics.items():
            self.log(f"{stage}/{name}/loss", parts[name], batch_size=n)
            target = y[name]
            if self.specs[name].get("loss", "mse") not in CLASSIFIERS:
                target = target.to(scores[name].dtype).reshape(scores[name].shape)
            collection.update(scores[name], target)
            self.log_dict(collection, batch_size=n)

    def predict_step(self, batch, batch_idx):
        inputs, _ = self.split(batch)
        return self.scores(self(*inputs))
