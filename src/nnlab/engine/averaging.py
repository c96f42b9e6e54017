"""Weight averaging (`averaging=ema | swa`), written once for every engine.

The rule (`blend`) works on any tensor: a network's parameter, or the packed group's stacked
(trials, n) parameters with per-trial (trials, 1) settings. `Averaging` is the callback that
applies it in Lightning's loop and in the fused loop (which calls `after_optimizer_step` after
each of its steps); `StackedAverage` applies it to a packed group's stacked trials.

Semantics (those of Lightning's `WeightAveraging` with `use_buffers=False`,
tests/test_averaging.py compares them):
- `EMA(decay)`: after every optimizer step, avg = decay * avg + (1 - decay) * weights
  (torch.optim.swa_utils.get_ema_avg_fn); the first update copies the weights.
- `SWA(start_epoch, lr, anneal_epochs)`: after every epoch's training batches from
  `start_epoch` on (before that epoch's validation and checkpoint, so that a run resumed from
  the checkpoint has the update), the equal-weight mean of those epochs' final weights
  (get_swa_avg_fn); with `lr`, from `start_epoch` on
  torch's SWALR replaces the task's scheduler (annealing to `lr` over `anneal_epochs` epochs), as
  Lightning's StochasticWeightAveraging does.
- Parameters are averaged; buffers (batch-norm statistics) are the trained network's.
- Once anything is averaged, validation (and so the best checkpoint's choice) sees the averaged
  weights, a checkpoint holds them as the network's `state_dict` (nnlab-eval, nnlab-predict and
  nnlab-export read them as any checkpoint) with the trained weights under
  `current_model_state` (resume continues from those), and when training ends the network keeps
  the averaged weights (test, `test_on=last`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LRSchedulerConfig
from pydantic import Field

from nnlab.schema import NonNegativeInt, PositiveFloat

CURRENT = "current_model_state"  # the checkpoint key of the trained (not averaged) weights
Decay = Annotated[float, Field(gt=0, lt=1)]


def blend(
    avg: torch.Tensor, current: torch.Tensor, count: Any, decay: Any = None, rest: Any = None
):
    """The average after one more update, a new tensor: `current` when nothing is averaged yet
    (`count` 0), else the exponential average `decay * avg + rest * current` (rest: 1 - decay,
    given to keep the caller's rounding) or, with `decay` None, the equal-weight mean
    `avg + (current - avg) / (count + 1)`. `count`, `decay`, `rest`: numbers, or per-trial
    tensors that broadcast against stacked parameters."""
    if decay is None:
        value = avg + (current - avg) / (count + 1)
    else:
        value = decay * avg + (1 - decay if rest is None else rest) * current
    if isinstance(count, torch.Tensor):
        return torch.where(count == 0, current, value)
    return current.clone() if count == 0 else value


class Averaging(L.Callback):
    """The averaged weights of a run's network (see the module's text); EMA and SWA say when
    it updates and with what weight."""

    decay: float | None = None  # EMA's; None: SWA's equal weights
    per_step = False  # updated after every optimizer step (else after epochs)

    def __init__(self) -> None:
        self.average: dict[str, torch.Tensor] | None = None  # parameter name -> its average
        self.count = 0  # updates so far
        self.updated_step = 0  # trainer.global_step at the last per-step update
        self.driven = False  # the fused loop calls after_optimizer_step itself
        self.scheduler: Any = None  # SWA's learning rate schedule, once it took over
        self.scheduler_state: dict | None = None

    # -- when it updates -------------------------------------------------------------------------
    def updates_after_epoch(self, epoch: int) -> bool:
        return False

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, epoch: int) -> Any:
        """A schedule that replaces the task's from this epoch on (None: none)."""
        return None

    # -- the update -----------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        assert self.average is not None
        for name, p in module.named_parameters():
            self.average[name] = blend(self.average[name], p.detach(), self.count, self.decay)
        self.count += 1

    def after_optimizer_step(self, module: torch.nn.Module) -> None:
        if self.per_step:
            self.update(module)

    # -- Lightning's hooks (Lightning's loop and the fused loop) -----------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.average = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.average, self.driven = None, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning's loop: one optimizer step ended when global_step moved (accumulation)
        if not self.driven and trainer.global_step > self.updated_step:
            self.updated_step = trainer.global_step
            self.after_optimizer_step(pl_module)
        # the epoch's last batch: its update comes before the epoch's validation and checkpoint
        # (a run resumed from that checkpoint has it)
        if batch_idx + 1 == trainer.num_training_batches:
            if self.updates_after_epoch(trainer.current_epoch):
                self.update(pl_module)

    def take_over_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> Any:
        """The schedule that replaces the task's at the start of `epoch`, once (resumed: with
        its saved state); None: none now."""
        if self.scheduler is not None:
            return None
        scheduler = self.lr_scheduler(optimizer, epoch)
        if scheduler is not None:
            if self.scheduler_state is not None:
                scheduler.load_state_dict(self.scheduler_state)
            self.scheduler = scheduler
        return scheduler

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.optimizers:
            return
        scheduler = self.take_over_lr(trainer.optimizers[0], trainer.current_epoch)
        if scheduler is not None:  # (as Lightning's StochasticWeightAveraging replaces it)
            trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(scheduler)]

    def _swap(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Averaged weights into the network, trained ones aside (and back): while fitting only
        (a validation after fit loads its checkpoint's weights)."""
        if self.average is None or not self.count or trainer.state.fn != "fit":
            return
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                held = p.detach().clone()
                p.copy_(self.average[name])
                self.average[name] = held

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swap(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._swap(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is None or not self.count:
            return
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                p.copy_(self.average[name])
        self.average = None  # the network holds the averaged weights now

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.average is None or not self.count:
            return
        trained = checkpoint["state_dict"]
        checkpoint[CURRENT] = trained
        averaged = dict(trained)
        averaged.update({n: a.detach().clone() for n, a in self.average.items() if n in trained})
        checkpoint["state_dict"] = averaged

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if CURRENT not in checkpoint or self.average is None:
            return
        self.average = {n: checkpoint["state_dict"][n].clone() for n in self.average}
        pl_module.load_state_dict(checkpoint[CURRENT])

    def state_dict(self) -> dict[str, Any]:
        state = {"count": self.count, "updated_step": self.updated_step}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count = int(state_dict.get("count", 0))
        self.updated_step = int(state_dict.get("updated_step", 0))
        self.scheduler_state = state_dict.get("scheduler")


class EMA(Averaging):
    """An exponential moving average of the weights, updated after every optimizer step."""

    per_step = True

    def __init__(self, decay: Decay = 0.999):
        super().__init__()
        self.decay = float(decay)


class SWA(Averaging):
    """Stochastic weight averaging: the mean of the weights at the end of every epoch from
    `start_epoch` (0-based) on; with `lr`, the learning rate anneals to it over `anneal_epochs`
    epochs from `start_epoch` on (torch.optim.swa_utils.SWALR, replacing the task's schedule)."""

    def __init__(
        self,
        start_epoch: NonNegativeInt = 0,
        lr: PositiveFloat | None = None,
        anneal_epochs: NonNegativeInt = 10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
    ):
        super().__init__()
        self.start_epoch, self.lr = int(start_epoch), lr
        self.anneal_epochs, self.anneal_strategy = int(anneal_epochs), anneal_strategy

    def updates_after_epoch(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, epoch: int) -> Any:
        if self.lr is None or epoch < self.start_epoch:
            return None
        return torch.optim.swa_utils.SWALR(
            optimizer, self.lr, self.anneal_epochs, self.anneal_strategy
        )


class StackedAverage:
    """The averaged weights of stacked trials (packed/group.py): one (trials, n) tensor beside
    their flat parameters, each trial with its own count and decay (from its `Averaging`; a
    group's trials share one kind)."""

    def __init__(self, averaging: list[Averaging], flat: torch.Tensor):
        self.per_step = averaging[0].per_step
        self.flat = flat.detach().clone()
        self.count = torch.tensor([float(a.count) for a in averaging], device=flat.device)
        self.decay = self.rest = None
        if averaging[0].decay is not None:  # 1 - decay as each trial alone rounds it
            self.decay = torch.tensor([a.decay for a in averaging], device=flat.device)[:, None]
            self.rest = torch.tensor([1 - a.decay for a in averaging], device=flat.device)[:, None]

    @torch.no_grad()
    def update(self, current: torch.Tensor, mask: torch.Tensor) -> None:
        """One update of the `mask`ed trials."""
        new = blend(self.flat, current, self.count[:, None], self.decay, self.rest)
        self.flat.copy_(torch.where(mask[:, None], new, self.flat))
        self.count += mask.to(self.count.dtype)

    def weights(self, current: torch.Tensor) -> torch.Tensor:
        """The averaged weights of the trials that have any, else `current`."""
        return torch.where((self.count > 0)[:, None], self.flat, current.detach())
