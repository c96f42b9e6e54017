"""The training loop, `task.loop: lightning | fused | cuda_graph | auto` (docs/architecture.md,
"The training engines"). The run's assembly adds the `TrainingLoop` callback: it chooses the loop
when fitting starts (engine/capabilities.py says why one cannot run); the fused loop takes the
task's training step and has the data module group batches (`group_training_batches`)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from nnlab.compat import lightning as lightning_compat
from nnlab.data.memory import MicroBatches
from nnlab.engine.averaging import Averaging
from nnlab.engine.capabilities import why_not
from nnlab.engine.keys import LOOPS, loop_keys  # noqa: F401 (tasks.loops' names)
from nnlab.engine.step import EpochSums, ModuleParameters, OptimizerStep, step_scheduler
from nnlab.tasks import captured

log = logging.getLogger(__name__)


def batch_counter(trainer: L.Trainer) -> str | None:
    """The trainer key that counts Lightning batches, if the run sets one."""
    limit = trainer.limit_train_batches
    for key, counts in (
        ("fast_dev_run", bool(trainer.fast_dev_run)),
        ("overfit_batches", bool(trainer.overfit_batches)),
        ("limit_train_batches", type(limit) is int or (limit is not None and limit != 1.0)),
        ("max_steps", trainer.max_steps != -1),
        ("val_check_interval", type(trainer.val_check_interval) is int),
    ):
        if counts:
            return f"trainer.{key}"
    return None


def training_loop(task: L.LightningModule) -> TrainingLoop | None:
    """The callback that chooses and runs the loop of `task.loop` when the run is assembled
    (None for a LightningModule of the user's own: Lightning's loop trains it)."""
    from nnlab.tasks.base import Task

    if not isinstance(task, Task):
        return None
    return TrainingLoop(task.hparams.get("loop", "auto"), task.hparams.get("micro_batches", 32))


class TrainingLoop(L.Callback):
    """Chooses the loop when fitting starts and, for the fused loop, runs each batch's steps."""

    def __init__(self, loop: str = "auto", micro_batches: int = 32):
        self.loop, self.micro_batches = loop, int(micro_batches)
        self.fused = False  # nnlab's fused loop runs this fit
        self.capture = False  # ... with its step captured as a CUDA graph
        self.step: captured.CapturedStep | None = None
        self._per_step: list | None = None
        self.sums: EpochSums | None = None
        self._restored: dict[str, Any] | None = None
        self.micro_batch_size: int | None = None
        self.averaging: list[Averaging] = []  # updated after each of the loop's steps

    # -- the choice ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        lightning_compat.without_cuda()
        self.fused, self.capture = self._choose(trainer, pl_module)
        group = 1
        if self.fused:
            counter = batch_counter(trainer)
            group = self.micro_batches if counter is None else 1
            log.info(
                "Training loop: fused, %d micro-batch%s per Lightning batch%s%s",
                group,
                "es" if group > 1 else "",
                f" ({counter} counts optimizer steps)"
                if counter and self.micro_batches > 1
                else "",
                ", step captured as a CUDA graph" if self.capture else "",
            )
        datamodule = trainer.datamodule
        if datamodule is not None:
            self.micro_batch_size = getattr(datamodule, "batch_size", None)
            if hasattr(datamodule, "group_training_batches"):  # nnlab's data modules
                datamodule.group_training_batches(group)
        # The fused loop steps itself (Lightning's manual mode) and this fit's training step is
        # the loop's, an attribute of this task object only (batch_idx: Lightning passes it when
        # the signature names it).
        pl_module.automatic_optimization = not self.fused
        if self.fused:
            pl_module.training_step = lambda batch, batch_idx: self.train_batch(
                pl_module, batch, batch_idx
            )
        # weight averaging after every optimizer step: Lightning's loop ends one per batch at
        # most, the fused loop several, so it tells the averaging callback itself
        self.averaging = [c for c in trainer.callbacks if isinstance(c, Averaging)]
        for averaging in self.averaging:
            averaging.driven = self.fused

    def _choose(self, trainer: L.Trainer, task: L.LightningModule) -> tuple[bool, bool]:
        """(fused loop, captured step) for `task.loop`, with one log line when not as asked."""
        if self.loop == "lightning":
            return False, False
        level = logging.INFO if self.loop == "auto" else logging.WARNING
        reason = why_not("fused", task=task, trainer=trainer)
        if reason is not None:
            log.log(level, "Training loop: Lightning's (%s)", reason)
            return False, False
        if self.loop == "fused":
            return True, False
        reason = why_not("captured", task=task, trainer=trainer)
        if reason is not None:
            log.log(level, "CUDA graph: off, the fused loop's eager steps (%s)", reason)
        return True, reason is None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # automatic_optimization stays as it was: trainer.global_step reads that loop's counter.
        pl_module.__dict__.pop("training_step", None)  # the task's own again
        if hasattr(trainer.datamodule, "group_training_batches"):
            trainer.datamodule.group_training_batches(1)
        self.fused = self.capture = False
        self.step = None

    # -- the fused loop -----------------------------------------------------------------------
    def _build(self, task: L.LightningModule, trainer: L.Trainer) -> captured.CapturedStep:
        """Built at the first batch: the optimizer exists and is restored by then."""
        optimizer = task.optimizers()
        algorithm = getattr(trainer.gradient_clip_algorithm, "value", None) or "norm"
        parameters = ModuleParameters(
            task.parameters(), optimizer.optimizer, trainer.gradient_clip_val, algorithm
        )

        def after_step(_) -> None:  # as if the LightningOptimizer had stepped
            lightning_compat.count_optimizer_step(optimizer)  # trainer.global_step

        def average(_) -> None:
            for averaging in self.averaging:
                averaging.after_optimizer_step(task)

        averages = average if self.averaging else None
        optimizer_step = OptimizerStep(
            parameters, trainer.accumulate_grad_batches, after_step, averages
        )
        bf16 = str(trainer.precision) == "bf16-mixed"
        return captured.CapturedStep(
            optimizer_step,
            task.training_loss,
            self.sums,
            self.micro_batch_size,
            autocast_dtype=torch.bfloat16 if bf16 else None,
            capture=self.capture,
        )

    def _schedulers(self, trainer: L.Trainer, interval: str) -> list:
        return [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == interval]

    def train_batch(self, task: L.LightningModule, batch, batch_idx: int) -> torch.Tensor:
        """One Lightning batch: its micro-batches (the last may be short), one step each, or one
        step per window of accumulated micro-batches (engine/step.py)."""
        trainer = task.trainer
        if self.micro_batch_size is None:  # a loader of plain batches (no data module)
            self.micro_batch_size = len(batch[-1])
        if self.sums is None:  # resumed mid-epoch: Lightning skips on_train_epoch_start
            self.sums, self._restored = EpochSums(task.device, self._restored), None
        if self.step is None:
            self.step = self._build(task, trainer)
        optimizer_step = self.step.optimizer_step
        if self._per_step is None:  # (each epoch: SWA's schedule may have replaced the task's)
            self._per_step = optimizer_step.schedulers = self._schedulers(trainer, "step")
        loss = None
        steps = 0
        # a group of the in-memory batcher's comes untransformed (data/memory.py): each
        # micro-batch is made the network's input (e.g. bool -> float) as its step comes
        grouped = isinstance(batch, MicroBatches)  # only nnlab's data modules make them
        transform = trainer.datamodule.batch_transform if grouped else None
        micros = list(zip(*(t.split(self.micro_batch_size) for t in batch), strict=True))
        final = batch_idx + 1 == trainer.num_training_batches  # the epoch's last batch
        for j, micro in enumerate(micros):
            if transform is not None:
                micro = transform(micro)
            last = final and j == len(micros) - 1
            apply = optimizer_step.ends_window(self.sums.micro_batches, last)
            loss = self.step(micro, apply)  # backward, clip, optimizer step (engine/step.py)
            self.sums.micro_batches += 1
            self.sums.samples += len(micro[-1])
            if apply:
                steps += 1
                optimizer_step.after()  # count, per-step schedulers, averaging
            if not optimizer_step.going_on(loss):
                break  # the NaN check (callbacks/resilience.py) names this step
        # The loggers' step axis: one per optimizer step, as in Lightning's own loop, so curves
        # of both loops line up (Lightning adds one where its own window of batches ends).
        counted = optimizer_step.ends_window(batch_idx, final)
        lightning_compat.add_logged_steps(trainer, steps - int(counted))
        return loss

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fused:
            return
        if self.sums is None:
            self.sums = EpochSums(pl_module.device)
        self.sums.reset()
        self._restored = self._per_step = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sums is None else self.sums.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fused or self.sums is None:
            return
        metrics = self.sums.metrics()
        pl_module.log("train/loss", metrics.pop("train/loss"), prog_bar=True)
        pl_module.log_dict(metrics)
        # (manual optimization drops the scheduler config's monitor: the task names it)
        monitor = pl_module.hparams.get("scheduler_monitor")
        for scheduler in self._schedulers(trainer, "epoch"):
            step_scheduler(scheduler, trainer.callback_metrics, monitor)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.capture:
            captured.plain_lrs(checkpoint)
