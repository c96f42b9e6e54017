"""What an optimizer step means, for every engine: Lightning's gradient accumulation
(`trainer.accumulate_grad_batches`).

With k batches accumulated, each batch's loss is scaled by 1/k before its backward pass, and the
optimizer steps (gradients clipped first; step-interval schedulers after; one optimizer step
counted) after every k-th batch of an epoch and after the epoch's last batch, whose window may
be short (it is still scaled by 1/k, as in Lightning). Gradients start from zero at each window.
The fused loop (tasks/loops.py, tasks/captured.py) and packed groups (packed/group.py) both ask
this class; Lightning's own loop does the same by itself.
"""

from __future__ import annotations

from nnlab.errors import ConfigError


class Accumulation:
    def __init__(self, batches: int | None = 1):
        batches = 1 if batches is None else batches
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigError(
                "trainer.accumulate_grad_batches", f"must be a whole number >= 1, got {batches}"
            )
        self.batches = batches

    def scaled(self, loss):
        """A batch's loss as its backward pass takes it (divided by k, as Lightning divides)."""
        return loss / self.batches if self.batches > 1 else loss

    def steps_after(self, index: int, last: bool) -> bool:
        """Whether the optimizer steps after the epoch's batch `index` (0-based; `last`: the
        epoch's final batch)."""
        return (index + 1) % self.batches == 0 or last
