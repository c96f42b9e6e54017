"""The training loop, one key: `task.loop: lightning | fused | cuda_graph | auto`.

Every loop trains with the task's one loss function, `training_loss(batch) -> (mean loss,
correct predictions or None)`.

- `lightning`: Lightning's automatic loop (the task's `training_step`, one step per batch).
- `fused`: nnlab's loop inside Lightning's (manual optimization, so checkpoints, callbacks,
  validation and logging work as usual). Each Lightning batch carries `task.micro_batches`
  batches of `data.batch_size` (the training loader is told so: `datamodule.micro_batches`),
  each one optimizer step, so Lightning's per-batch cost is paid once for all of them; loss and
  correct predictions are summed on the device and logged once per epoch.
- `cuda_graph`: the fused loop with its step replayed as one CUDA graph (`tasks/captured.py`).
- `auto` (the default): `cuda_graph` where it can run, else `fused`, else `lightning`.

Each has conditions (the blockers below); where one is not met the run says why in one log line
(a warning when the loop was asked for by name) and takes the next loop down. A run whose length
is counted in Lightning batches (`trainer.max_steps`, `limit_train_batches`, `fast_dev_run`,
`overfit_batches`, an integer `val_check_interval`) gets one micro-batch per Lightning batch, so
those counts mean optimizer steps as they do in Lightning's loop.

`TrainingLoop` is a callback that the task returns from `configure_callbacks`; the task itself only
hands its batch over when the fused loop runs (`Task.training_step`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from nnlab.data.memory import MicroBatches
from nnlab.errors import ConfigError
from nnlab.tasks import captured

log = logging.getLogger(__name__)

LOOPS = ("lightning", "fused", "cuda_graph", "auto")
# Hooks Lightning calls around every optimizer step; the fused loop does not, so a task or
# callback that overrides one trains in Lightning's loop.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
MODULE_STEP_HOOKS = (
    *STEP_HOOKS,
    "on_before_zero_grad",
    "backward",
    "optimizer_step",
    "optimizer_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
)


def loop_keys(loop: str, micro_batches: int, renamed: dict[str, Any]) -> tuple[str, int]:
    """`task.loop` and `task.micro_batches`, also from the keys they replace (`fused_loop`,
    `cuda_graph`, `graph_batches`: older checkpoints and saved configs), checked."""
    unknown = set(renamed) - {"fused_loop", "cuda_graph", "graph_batches"}
    if unknown:
        raise ConfigError(f"task.{sorted(unknown)[0]}", "is not a task key")
    if "fused_loop" in renamed or "cuda_graph" in renamed:
        graph = renamed.get("cuda_graph", False)
        if graph is True:
            loop = "cuda_graph"
        elif graph == "auto":
            loop = "auto"
        else:
            loop = "fused" if renamed.get("fused_loop") else "lightning"
    return loop, renamed.get("graph_batches", micro_batches)


# -- why a loop cannot run here (None: it can) ------------------------------------------------
def loop_blocker(task: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Why the fused loop cannot train exactly like Lightning's here."""
    from nnlab.tasks.base import Task

    if trainer.world_size > 1:
        return f"{trainer.world_size} processes (DDP) reduce gradients once per backward"
    precision = str(trainer.precision)
    if precision.startswith("16") or precision == "transformer-engine":
        return f"precision {precision} scales the loss with host-side overflow checks"
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches > 1"
    scheduler = (task.hparams.get("scheduler") or {}).get("_target_", "")
    if str(scheduler).endswith("ReduceLROnPlateau"):
        return "ReduceLROnPlateau needs the monitored metric, which Lightning's loop provides"
    if type(task).training_step is not Task.training_step:
        return f"{type(task).__name__} defines its own training_step"
    for hook in MODULE_STEP_HOOKS:
        if is_overridden(hook, task, L.LightningModule):
            return f"{type(task).__name__} overrides {hook}"
    for callback in trainer.callbacks:
        for hook in STEP_HOOKS:
            if is_overridden(hook, callback, L.Callback):
                return f"the callback {type(callback).__name__} overrides {hook}"
    return None


def graph_blocker(task: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Why the fused loop's step cannot be captured as a CUDA graph here."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return f"training runs on {device.type}, CUDA graphs need a CUDA device"
    if task.hparams.get("compile"):
        return "task.compile is on (torch.compile does its own graph capture)"
    if (reason := getattr(task, "graph_blocker", lambda: None)()) is not None:
        return reason
    datamodule = trainer.datamodule
    example = datamodule.example_input(2) if datamodule is not None else None
    if isinstance(example, tuple | list):
        return "the net reads variable-length sequences (packed by their lengths on the host)"
    return captured.optimizer_blocker(task.hparams.get("optimizer"), task.hparams.get("scheduler"))


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


def without_cuda() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so that forks stay usable), and
    then every `torch.cuda.is_available()` loads NVML again until CUDA is initialized: ~0.1 ms in
    every step of Adam, RMSprop & co. (their graph-capture check). With no CUDA device there is
    nothing to protect, so torch's own check (cached, ~3 us) comes back."""
    nvml = "PYTORCH_NVML_BASED_CUDA_CHECK"
    if os.environ.get(nvml) == "1" and not torch.cuda.is_available():
        del os.environ[nvml]
        log.debug("No CUDA device: %s unset (a CUDA check in every optimizer step)", nvml)


class EpochSums:
    """Training loss and correct predictions summed over an epoch on the device (inside the
    captured step too), read once when the epoch is logged."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.samples = 0  # counted on the host, outside any graph
        self.counts_correct = False

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.samples = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.loss.add_(loss.detach().float(), alpha=n)
        if correct is not None:
            self.correct.add_(correct)
            self.counts_correct = True

    def metrics(self) -> dict[str, torch.Tensor]:
        n = max(self.samples, 1)
        metrics = {"train/loss": self.loss / n}
        if self.counts_correct:
            metrics["train/acc"] = self.correct.float() / n
        return metrics


class TrainingLoop(L.Callback):
    """Chooses the loop when fitting starts and, for the fused loop, runs each batch's steps."""

    def __init__(self, loop: str = "auto", micro_batches: int = 32):
        self.loop, self.micro_batches = loop, int(micro_batches)
        self.fused = False  # nnlab's fused loop runs this fit
        self.capture = False  # ... with its step captured as a CUDA graph
        self.step: captured.CapturedStep | None = None
        self.sums: EpochSums | None = None
        self._restored: dict[str, Any] | None = None
        self.micro_batch_size: int | None = None

    # -- the choice ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        without_cuda()
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
        if datamodule is not None:  # the training loader groups this many batches into one
            datamodule.micro_batches = group
            self.micro_batch_size = getattr(datamodule, "batch_size", None)
        # The fused loop does backward and optimizer steps itself: Lightning's manual mode.
        pl_module.automatic_optimization = not self.fused
        pl_module.fused_loop = self if self.fused else None

    def _choose(self, trainer: L.Trainer, task: L.LightningModule) -> tuple[bool, bool]:
        """(fused loop, captured step) for `task.loop`, with one log line when not as asked."""
        if self.loop == "lightning":
            return False, False
        level = logging.INFO if self.loop == "auto" else logging.WARNING
        reason = loop_blocker(task, trainer)
        if reason is not None:
            log.log(level, "Training loop: Lightning's (%s)", reason)
            return False, False
        if self.loop == "fused":
            return True, False
        reason = graph_blocker(task, trainer)
        if reason is not None:
            log.log(level, "CUDA graph: off, the fused loop's eager steps (%s)", reason)
        return True, reason is None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # automatic_optimization stays as it was: trainer.global_step reads that loop's counter.
        pl_module.fused_loop = None
        if trainer.datamodule is not None:
            trainer.datamodule.micro_batches = 1
        self.fused = self.capture = False
        self.step = None

    # -- the fused loop -----------------------------------------------------------------------
    def _build(self, task: L.LightningModule, trainer: L.Trainer) -> captured.CapturedStep:
        """Built at the first batch: the optimizer exists and is restored by then."""
        precision = str(trainer.precision)
        return captured.CapturedStep(
            task.parameters(),
            task.optimizers().optimizer,
            task.training_loss,
            self.sums,
            micro_batch_size=self.micro_batch_size,
            clip_val=trainer.gradient_clip_val,
            clip_algorithm=getattr(trainer.gradient_clip_algorithm, "value", None) or "norm",
            autocast_dtype=torch.bfloat16 if precision == "bf16-mixed" else None,
            capture=self.capture,
        )

    def _schedulers(self, trainer: L.Trainer, interval: str) -> list:
        return [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == interval]

    def train_batch(self, task: L.LightningModule, batch) -> torch.Tensor:
        """One Lightning batch: its micro-batches (the last may be short), one step each."""
        trainer = task.trainer
        if self.micro_batch_size is None:  # a loader of plain batches (no data module)
            self.micro_batch_size = len(batch[-1])
        if self.sums is None:  # resumed mid-epoch: Lightning skips on_train_epoch_start
            self._start_sums(task)
        if self.step is None:
            self.step = self._build(task, trainer)
            self._optimizer = task.optimizers()
            self._per_step = self._schedulers(trainer, "step")
        loss = None
        on_cpu = self.step.device.type == "cpu"
        steps = 0
        # a group of the in-memory batcher's comes untransformed (data/memory.py): each
        # micro-batch is made the network's input (e.g. bool -> float) as its step comes
        grouped = isinstance(batch, MicroBatches)  # only nnlab's data modules make them
        transform = trainer.datamodule.batch_transform if grouped else None
        for micro in zip(*(t.split(self.micro_batch_size) for t in batch), strict=True):
            if transform is not None:
                micro = transform(micro)
            loss = self.step(micro)
            steps += 1
            self.sums.samples += len(micro[-1])
            # Lightning's manual loop counts optimizer steps (trainer.global_step) through
            # these two hooks on the LightningOptimizer; the raw optimizer stepped above.
            self._optimizer._on_before_step()
            self._optimizer._on_after_step()
            for scheduler in self._per_step:
                scheduler.step()
            if on_cpu and not math.isfinite(loss.item()):  # reading it costs nothing on the CPU
                break  # the NaN check (callbacks/resilience.py) names this step
        # The loggers' step axis (Lightning counts one per batch that stepped): optimizer steps,
        # as in Lightning's own loop, so curves of both loops line up.
        trainer.fit_loop.epoch_loop._batches_that_stepped += steps - 1
        return loss

    def _start_sums(self, task: L.LightningModule) -> None:
        self.sums = EpochSums(task.device)
        if self._restored:  # the epoch's sums so far, from a mid-epoch checkpoint
            self.sums.loss.fill_(self._restored["loss"])
            self.sums.correct.fill_(self._restored["correct"])
            self.sums.samples = self._restored["samples"]
            self.sums.counts_correct = self._restored["counts_correct"]
        self._restored = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fused:
            return
        if self.sums is None:
            self.sums = EpochSums(pl_module.device)
        self.sums.reset()
        self._restored = None

    # The epoch's sums so far go into checkpoints: a run resumed mid-epoch logs the same
    # train/loss and train/acc as one never stopped.
    def state_dict(self) -> dict[str, Any]:
        if self.sums is None:
            return {}
        return {
            "loss": float(self.sums.loss),
            "correct": int(self.sums.correct),
            "samples": self.sums.samples,
            "counts_correct": self.sums.counts_correct,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fused or self.sums is None:
            return
        metrics = self.sums.metrics()
        pl_module.log("train/loss", metrics.pop("train/loss"), prog_bar=True)
        pl_module.log_dict(metrics)
        for scheduler in self._schedulers(trainer, "epoch"):
            scheduler.step()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.capture:
            captured.plain_lrs(checkpoint)
