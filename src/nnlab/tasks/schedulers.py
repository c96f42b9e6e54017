"""Learning-rate schedules of nnlab's own (torch's are named by their `_target_` directly)."""

from __future__ import annotations

import math

import torch

from nnlab.schema import Fraction, NonNegativeInt, PositiveInt


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """A linear warm-up over `warmup_steps` optimizer steps, then a cosine decay to
    `final_factor` x the learning rate at `total_steps` (counted from the start, warm-up
    included), then constant: the factor at step s is s / warmup_steps while warming up (the
    first step's learning rate is 0, as in Hugging Face's get_cosine_schedule_with_warmup), then
    final + (1 - final) * (1 + cos(pi * progress)) / 2. A per-step schedule:
    `task.scheduler_interval=step` (refused otherwise: the task's configure_optimizers)."""

    interval = "step"  # what its steps count

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: NonNegativeInt,
        total_steps: PositiveInt,
        final_factor: Fraction = 0.0,
        last_epoch: int = -1,
    ):
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.final_factor = float(final_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = (1 + math.cos(math.pi * min(progress, 1.0))) / 2
        return self.final_factor + (1 - self.final_factor) * cosine

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
