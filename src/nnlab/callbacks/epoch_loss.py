"""The per-epoch mean training loss, printed as the reference recipes print it
(`epoch 1: loss 0.6863`) and saved as `train_loss.csv` in the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L


class EpochLoss(L.Callback):
    """After each training epoch: its mean training loss (`train/loss`, the mean over the
    epoch's samples, whichever loop trained it), one line per epoch; the whole list at the end."""

    def __init__(self, dirpath: str | None = None, filename: str = "train_loss.csv"):
        self.dirpath, self.filename = dirpath, filename
        self.losses: list[tuple[int, float]] = []

    # An epoch's train/loss is logged by the loop that trained it in its own epoch-end hook,
    # which may run after this callback's: read it when the next epoch starts, and at the end.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.record(trainer, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, trainer.current_epoch)

    def record(self, trainer: L.Trainer, epoch: int) -> None:
        """Epoch `epoch` (1-based)'s mean training loss, once."""
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or any(e == epoch for e, _ in self.losses):
            return
        self.losses = [(e, v) for e, v in self.losses if e < epoch]  # a resumed run goes on
        self.losses.append((epoch, float(loss)))
        if trainer.is_global_zero:
            print(f"epoch {epoch}/{trainer.max_epochs}: mean training loss {float(loss):.4f}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.dirpath and trainer.is_global_zero and self.losses):
            return
        path = Path(self.dirpath) / self.filename
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "train_loss"])
            writer.writerows((e, f"{v:.6f}") for e, v in self.losses)
