"""Figures of a classifier's test results: the confusion matrix and the misclassified samples."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from nnlab.callbacks import log_figure
from nnlab.errors import ConfigError
from nnlab.schema import NonNegativeInt


class ClassificationFigures(L.Callback):
    """After testing: the confusion matrix (`test/confusion_matrix`, `<dirpath>/confusion_matrix.png`)
    and a grid of misclassified test samples (`test/misclassified`, `<dirpath>/misclassified.png`),
    logged to TensorBoard and saved in the run directory.

    Reads `test_confusion` and `test_mistakes` of a `ClassificationTask`, and the data module's
    `classes` and `to_image` (inputs back to images, as the MNIST views do; None for data that
    are not images, which then get only the confusion matrix).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        confusion_filename: str = "confusion_matrix.png",
        mistakes_filename: str = "misclassified.png",
        max_images: NonNegativeInt = 36,
    ):
        self.dirpath = Path(dirpath) if dirpath else None
        self.confusion_filename, self.mistakes_filename = confusion_filename, mistakes_filename
        self.max_images = max_images

    def _path(self, filename: str) -> Path | None:
        return self.dirpath / filename if self.dirpath else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from nnlab.tasks.classification import ClassificationTask

        if not isinstance(pl_module, ClassificationTask):
            raise ConfigError(
                "callbacks.classification_figures",
                f"draws a classifier's confusion matrix, but this run's task is "
                f"{type(pl_module).__name__}; leave classification_figures out of callbacks",
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        confusion = pl_module.test_confusion.compute().cpu()
        dm = trainer.datamodule
        names = list(dm.classes or [str(i) for i in range(len(confusion))])
        if len(names) != len(confusion):
            names = [str(i) for i in range(len(confusion))]
        log_figure(
            trainer,
            "test/confusion_matrix",
            confusion_figure(confusion, names),
            self._path(self.confusion_filename),
        )
        mistakes = pl_module.test_mistakes
        if mistakes:
            x, true, predicted = (
                torch.cat([m[k] for m in mistakes])[: self.max_images] for k in range(3)
            )
        else:
            x, true, predicted = dm.example_input(0), [], []
        images = dm.to_image(x)
        if images is not None:
            log_figure(
                trainer,
                "test/misclassified",
                mistakes_figure(images, true, predicted, names),
                self._path(self.mistakes_filename),
            )


def confusion_figure(confusion: torch.Tensor, names: list[str]):
    """Counts with rows = true class, columns = predicted class; colour by the share of the row."""
    import matplotlib.pyplot as plt

    n = len(confusion)
    counts = confusion.long()
    shares = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    figure, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    str(counts[i, j].item()),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right")
    ax.set_yticks(range(n), names)
    total = counts.sum().item()
    accuracy = counts.diag().sum().item() / max(total, 1)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"test confusion matrix: {total} samples, accuracy {accuracy:.2%}",
    )
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return figure


def mistakes_figure(images: torch.Tensor, true, predicted, names: list[str]):
    """A grid of misclassified samples (images, (N, H, W)) titled `true -> predicted`."""
    import matplotlib.pyplot as plt

    count = len(images)
    columns = max(1, min(9, count))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < count:
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"{names[true[k]]} -> {names[predicted[k]]}", fontsize=7)
    if count == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified test samples", ha="center", va="center")
    figure.suptitle("misclassified test samples (true -> predicted)", fontsize=9)
    figure.tight_layout()
    return figure
