"""The in-memory batcher: a whole data set held as tensors (on the training device when it fits),
batches drawn by a seeded permutation — no DataLoader workers, no per-sample Python, no
host-to-device copy per step.

The permutation of epoch e comes from its own generator seeded with (seed, e), on the CPU, so the
batches are the same on any device and whatever else consumed random numbers. The position
within the epoch is part of Lightning's checkpoint (`state_dict`), so a run resumed from a
mid-epoch checkpoint continues with exactly the batches it would have seen.

With `group` > 1 each yielded batch is `group` consecutive batches concatenated (the same
samples in the same order): nnlab's fused loop (tasks/loops.py) takes them as micro-batches, so
Lightning's per-batch overhead is paid once per group. Positions are kept in micro-batches.
A group is gathered into memory reused once nothing holds the group from before (see
`_gather_group`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from nnlab.compat.lightning import batches_processed


class MicroBatches(tuple):
    """A training batch of `group` batches concatenated, for the fused loop: it is split, and
    each part transformed (`DataModule.batch_transform`), one optimizer step at a time."""

    __slots__ = ()


class MemoryBatcher:
    """Iterates (tensor[idx] for each tensor) batches over the first dimension; `group` > 1
    yields `group` batches concatenated (the last group of an epoch may be shorter)."""

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        trainer_fn: Callable[[], Any] | None = None,
        group: int = 1,
    ):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("MemoryBatcher needs tensors of one common length")
        self.tensors = tuple(tensors)
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.group = max(int(group), 1)
        self._trainer_fn = trainer_fn or (lambda: None)
        self._epoch = -1  # epochs counted here when no trainer says which one it is
        self._resume: dict[str, int] | None = None
        self._position = 0
        self._buffers: dict[int, list[torch.Tensor]] = {}  # see _gather_group
        self._next_buffer = 0

    # -- the part of the data this process sees -------------------------------------------------
    def _shard(self) -> tuple[int, int]:
        trainer = self._trainer_fn()
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _num_samples(self) -> int:
        rank, world = self._shard()
        n = len(self.tensors[0])
        return n // world if self.drop_last else math.ceil(n / world)

    def _num_batches(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._num_batches() / self.group)

    @property
    def dataset(self) -> Sequence[torch.Tensor]:  # Lightning sizes epochs from `.dataset`
        return self.tensors[0]

    def order(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for `epoch` (each rank a disjoint stride when DDP)."""
        n = len(self.tensors[0])
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            indices = torch.randperm(n, generator=generator)
        else:
            indices = torch.arange(n)
        rank, world = self._shard()
        if world > 1:
            per_rank = self._num_samples()
            total = per_rank * world
            if total > n:  # pad by wrapping, as DistributedSampler does, so ranks stay in step
                indices = torch.cat([indices, indices[: total - n]])
            indices = indices[rank:total:world]
        return indices

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        trainer = self._trainer_fn()
        self._epoch = trainer.current_epoch if trainer is not None else self._epoch + 1
        epoch = self._epoch
        start = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = self._resume["position"]
        self._resume = None
        indices = self.order(epoch)
        device = self.tensors[0].device
        indices = indices.to(device)
        batches, size = self._num_batches(), self.batch_size
        for b in range(start, batches, self.group):
            self._position = min(b + self.group, batches)  # micro-batches consumed after this one
            idx = indices[b * size : self._position * size]
            if self.group > 1:
                yield MicroBatches(self._gather_group(idx))
            else:
                yield tuple(t[idx] for t in self.tensors)

    def _gather_group(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows `idx` of each tensor, gathered into the next of GROUP_BUFFERS buffers in turn,
        or into fresh memory in place of a buffer something still holds. Groups are megabytes
        (GROUP_BYTES): fresh memory for each would be page-faulted in anew every time, where a
        hand-written loop's batches come from reused memory (docs/performance.md)."""
        slot = self._next_buffer
        self._next_buffer = (slot + 1) % GROUP_BUFFERS
        buffers = self._buffers.get(slot)
        if buffers is None or len(buffers[0]) < len(idx) or any(map(_in_use, buffers)):
            rows = max(self.group * self.batch_size, len(idx))
            buffers = [
                torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
                for t in self.tensors
            ]
            self._buffers[slot] = buffers
        return tuple(
            torch.index_select(t, 0, idx, out=buffer[: len(idx)])
            for t, buffer in zip(self.tensors, buffers, strict=True)
        )

    # -- Lightning's stateful-loader protocol ---------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch and how many of its (micro-)batches the model has
        consumed (Lightning fetches one batch ahead, so ask its progress counter, not our
        iterator)."""
        trainer = self._trainer_fn()
        if trainer is not None:
            position = min(batches_processed(trainer) * self.group, self._num_batches())
            return {"epoch": trainer.current_epoch, "position": position}
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "position": int(state["position"])}


def fits_on(device: torch.device, tensors: Sequence[torch.Tensor], fraction: float = 0.5) -> bool:
    """Whether the tensors take at most `fraction` of the device's free memory (always on CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= fraction * free


# A group's size cap, which bounds the memory its buffers hold for the whole run (GROUP_BUFFERS of
# them); larger groups pay Lightning's per-batch cost less often (docs/performance.md).
GROUP_BYTES = 48 * 2**20
# Groups are gathered into buffers used in turn. While Lightning fetches a batch it still holds
# two (the last one trained on and the one fetched ahead): the third buffer is free.
GROUP_BUFFERS = 3


def _in_use(buffer: torch.Tensor) -> bool:
    """Whether a tensor besides `buffer` (a yielded group, a view of it) holds its memory. Without
    torch's storage use count (a private API), every buffer counts as in use: fresh memory."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return True
    return use_count(buffer.untyped_storage()._cdata) > _OWN_USES


_OWN_USES = 2  # `buffer` itself and the storage object asked


def group_size(tensors: Sequence[torch.Tensor], batch_size: int, micro_batches: int) -> int:
    """How many batches to concatenate: `micro_batches`, fewer when that passes GROUP_BYTES."""
    row_bytes = sum(t[0].numel() * t.element_size() for t in tensors)
    return max(1, min(micro_batches, GROUP_BYTES // max(row_bytes * batch_size, 1)))


def make_loader(
    datamodule,
    tensors: Sequence[torch.Tensor],
    batch_size: int,
    shuffle: bool,
    in_memory: bool | str = "auto",
    seed: int = 0,
    num_workers: int = 0,
    micro_batches: int = 1,
):
    """A MemoryBatcher over `tensors` (moved to the training device once, when they fit), or a
    plain DataLoader when `in_memory` is false (or 'auto' and they do not fit). Each batch is
    `micro_batches` batches of `batch_size` concatenated (the fused loop asks the data module for
    them: `DataModule.group_training_batches`; a shuffling DataLoader draws the same order at any
    batch size), fewer when a group would pass GROUP_BYTES."""
    from torch.utils.data import DataLoader, TensorDataset

    trainer = getattr(datamodule, "trainer", None)
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    use_memory = in_memory is True or (in_memory == "auto" and fits_on(device, tensors))
    micro_batches = group_size(tensors, batch_size, micro_batches)
    if not use_memory:
        return DataLoader(
            TensorDataset(*tensors),
            batch_size=batch_size * micro_batches,
            shuffle=shuffle,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
    tensors = [t.to(device, non_blocking=True) for t in tensors]
    return MemoryBatcher(
        tensors,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        trainer_fn=lambda: getattr(datamodule, "trainer", None),
        group=micro_batches,
    )
