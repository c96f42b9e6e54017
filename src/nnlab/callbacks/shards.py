"""Which training samples each process of a distributed run received: a check that data-parallel
ranks see disjoint shards of the data (Lightning puts a DistributedSampler in the loaders)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class DataShards(L.Callback):
    """Per epoch, the dataset indices this rank's training loader delivered, written to
    `<dirpath>/rank<global rank>.json` by every rank. Each batch is compared with the dataset at
    the indices the sampler announced, so the record is what arrived, not what was planned."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.epochs: dict[int, list[int]] = {}
        self.mismatched_batches = 0
        self._planned: list[int] = []
        self._seen = 0

    @staticmethod
    def _sampler(loader):
        batch_sampler = getattr(loader, "batch_sampler", None)
        return getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = self._sampler(trainer.train_dataloader)
        self._planned = [int(i) for i in sampler] if sampler is not None else []
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        indices = self._planned[self._seen : self._seen + len(inputs)]
        dataset = trainer.train_dataloader.dataset
        expected = torch.stack([dataset[i][0] for i in indices]) if indices else None
        if expected is None or not torch.equal(expected.to(inputs.device), inputs):
            self.mismatched_batches += 1
        self._seen += len(inputs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs[trainer.current_epoch] = self._planned[: self._seen]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "sampler": type(self._sampler(trainer.train_dataloader)).__name__,
            "dataset_size": len(trainer.train_dataloader.dataset),
            "mismatched_batches": self.mismatched_batches,
            "epochs": {str(k): v for k, v in self.epochs.items()},
        }
        path = self.dirpath / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record) + "\n")
