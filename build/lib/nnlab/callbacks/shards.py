"""Which training samples each process of a distributed run received: a check that data-parallel
ranks see disjoint shards of the data (a DistributedSampler in DataLoaders, the rank's stride in nnlab's MemoryBatcher)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from nnlab.data.memory import MemoryBatcher


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
        if isinstance(loader, MemoryBatcher):  # it shards by rank itself
            return loader
        batch_sampler = getattr(loader, "batch_sampler", None)
        return getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)

    @staticmethod
    def _sample(loader, index: int) -> torch.Tensor:
        if isinstance(loader, MemoryBatcher):
            return loader.tensors[0][index]
        return loader.dataset[index][0]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, MemoryBatcher):
            self._planned = loader.order(trainer.current_epoch).tolist()
        else:
            sampler = self._sampler(loader)
            self._planned = [int(i) for i in sampler] if sampler is not None else []
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        indices = self._planned[self._seen : self._seen + len(inputs)]
        loader = trainer.train_dataloader
        expected = torch.stack([self._sample(loader, i) for i in indices]) if indices else None
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
