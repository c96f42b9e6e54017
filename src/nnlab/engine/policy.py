"""The end-of-epoch decisions of Lightning's ModelCheckpoint (save_top_k=1) and EarlyStopping,
written once for engines that do not run those callbacks (packed groups): did the monitored
metric improve, is this the best checkpoint, does training stop. tests/test_policy.py runs
Lightning's callbacks on the same metric sequences and compares every decision."""

from __future__ import annotations

import math
from dataclasses import dataclass


def improved(current: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `current` beats `best` by more than `min_delta` (`best` None: nothing yet)."""
    if best is None:
        return True
    delta = abs(min_delta)
    return current < best - delta if mode == "min" else current > best + delta


@dataclass
class BestCheckpoint:
    """ModelCheckpoint(save_top_k=1)'s choice: `update` says whether this epoch's weights are
    the best so far. No monitor: the newest weights are the best."""

    monitor: str | None
    mode: str = "min"
    score: float | None = None
    epoch: int | None = None
    step: int | None = None

    def update(self, metrics: dict[str, float], epoch: int, step: int) -> bool:
        if self.monitor is None:
            current, mode = float(epoch), "max"
        else:
            current, mode = float(metrics[self.monitor]), self.mode
            if not math.isfinite(current):  # the worst (ModelCheckpoint: +inf when minimising)
                current = math.inf if mode == "min" else -math.inf
        if self.score is not None and not improved(current, self.score, mode):
            return False
        self.score, self.epoch, self.step = current, epoch, step
        return True


@dataclass
class EarlyStop:
    """EarlyStopping's count (check_finite on, no thresholds): `update` says whether training
    stops after this epoch. A stop asked for before `min_epochs` are done stands (Lightning's
    `trainer.should_stop` is never reset): training stops once they are, improved or not."""

    monitor: str
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    min_epochs: int = 0
    best: float | None = None
    wait: int = 0
    requested: bool = False  # a stop was asked for

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        current = float(metrics[self.monitor])
        if not math.isfinite(current):
            self.requested = True
        elif improved(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        else:
            self.wait += 1
            self.requested |= self.wait >= self.patience
        return self.requested and epoch + 1 >= self.min_epochs
