"""What makes a killed or preempted run resumable exactly: random-number states in every
checkpoint, a checkpoint on SIGTERM / SIGUSR1 within a batch, and a stop on a NaN loss."""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nnlab.errors import UserError

log = logging.getLogger(__name__)


class RNGState(L.Callback):
    """Python, NumPy and torch (CPU and CUDA) generator states saved with each checkpoint and
    restored on resume, so dropout and other random draws continue as if never interrupted."""

    # Only tensors, numbers and tuples: checkpoints stay loadable with torch.load(weights_only=True).
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (
                kind,
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(gauss),
            ),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def ends_epoch(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether batch `batch_idx` is the epoch's last. Lightning (2.4-2.6) resumes a checkpoint
    saved at the end of an epoch's last batch wrongly: it skips that epoch's end (validation,
    epoch hooks, schedulers), starts the next epoch without its start hooks, and a checkpoint
    saved in that epoch then repeats it on the next resume. So nnlab saves there no checkpoint
    of its own (tests/test_resilience.py)."""
    return batch_idx + 1 >= trainer.num_training_batches


class Preemption(L.Callback):
    """On SIGTERM (Lightning notices it), SIGUSR1, or the SLURM requeue signal of
    `cluster=slurm` (noticed here): save `<dirpath>/last.ckpt` and stop; nnlab-train then marks
    the run `preempted`. Noticed within an epoch, it saves at the end of the current training
    batch; noticed at the epoch's last batch, the epoch ends first (validation, its checkpoints)
    and the state after it is saved (`ends_epoch`). On the requeue signal the job is also
    requeued (`scontrol requeue`): it continues in the same run directory."""

    def __init__(
        self,
        dirpath: str,
        filename: str = "last.ckpt",
        signals: tuple[str, ...] = ("SIGUSR1",),
        cluster: Any = None,
    ):
        self.path = Path(dirpath) / filename
        self.signals = signals
        self.requested: str | None = None
        self.at_epoch_end = False  # noticed at an epoch's last batch: stop when it has ended
        self._finished_anyway = False  # that epoch ended the training (max_epochs, early stop)
        # cluster=slurm's environment (nnlab.cluster): its signal, and it requeues the job
        self.cluster = cluster
        requeue_signal = getattr(cluster, "nnlab_requeue_signal", None)
        self.requeue_signal = getattr(requeue_signal, "name", requeue_signal)
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for name in {*self.signals, *([self.requeue_signal] if self.requeue_signal else [])}:
            signum = getattr(signal, name)
            try:
                self._previous[signum] = signal.signal(signum, self._notice)
            except ValueError:  # not the main thread: leave signals to the launcher
                return

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _notice(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm and not self.requested:
            self.requested = "SIGTERM"
        if not self.requested:
            return
        if ends_epoch(trainer, batch_idx):
            self.at_epoch_end = True
            return
        self._save_and_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self.at_epoch_end:
            return
        # After validation: an early stop decided there, or the last epoch, ends the run anyway.
        last_epoch = (
            trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        self._finished_anyway = trainer.should_stop or last_epoch
        trainer.should_stop = True  # (Lightning stops by itself on SIGTERM, after this epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.at_epoch_end and not self._finished_anyway:
            self._save_and_stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # SIGTERM at an epoch's last batch: Lightning raises once the epoch has ended
        if self.at_epoch_end and isinstance(exception, SIGTERMException):
            self.at_epoch_end = False
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> str:
        log.warning("%s received: saving %s and stopping", self.requested, self.path)
        trainer.save_checkpoint(self.path)
        trainer.should_stop = True
        reason = f"preempted by {self.requested}"
        if self.requested == self.requeue_signal and trainer.is_global_zero:
            problem = self.cluster.requeue()
            if problem is None:
                log.warning("SLURM job requeued: it continues from %s", self.path)
                reason += "; the SLURM job was requeued and continues in this run directory"
            else:
                log.error(
                    "SLURM job not requeued (%s); continue it with nnlab-train resume=%s",
                    problem,
                    self.path.parent.parent,
                )
        return reason

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        self.at_epoch_end = False
        reason = self._save(trainer)
        if not trainer.received_sigterm:  # Lightning stops by itself on SIGTERM only
            raise SIGTERMException(reason)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint during the epochs: every `every_n_minutes` of training and/or
    every `every_n_train_steps` optimizer steps, whichever comes first (0 turns one off). Steps
    count also when one batch takes several (nnlab's fused loop): it saves whenever the count
    passes a multiple of N, where Lightning's waits for the count to land on one exactly.
    (Lightning's own class takes one trigger only.)"""

    def __init__(self, *args: Any, every_n_minutes: float = 0, **kwargs: Any):
        super().__init__(*args, every_n_epochs=0, **kwargs)
        self._every_seconds = float(every_n_minutes) * 60
        self._last_saved_at: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_at = time.monotonic()

    def _time_is_due(self, trainer: L.Trainer) -> bool:
        if self._every_seconds <= 0 or self._last_saved_at is None:
            return False
        due = time.monotonic() - self._last_saved_at >= self._every_seconds
        # ranks' clocks differ: rank 0 decides, so that all save (a collective) or none does
        return bool(trainer.strategy.broadcast(due))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        every = self._every_n_train_steps
        steps_due = every >= 1 and (
            trainer.global_step // every > self._last_global_step_saved // every
        )
        if not (self._time_is_due(trainer) or steps_due) or ends_epoch(trainer, batch_idx):
            return  # (at the epoch's last batch: last.ckpt follows at the epoch's end)
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_saved_at = time.monotonic()


class NonFiniteLoss(L.Callback):
    """Stop at the first NaN/inf training loss, naming the step; the checkpoints written before it
    stay as they are (nothing is saved from the broken state).

    On the CPU each loss is checked at once. On a GPU reading a loss waits for the device, so the
    losses are kept there and read together every `trainer.log_every_n_steps` batches, at the end
    of each epoch and before any checkpoint is written: never a sync per step, and the step named
    is still the first bad one.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, tuple[int, int, int]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        where = (trainer.current_epoch, trainer.global_step, batch_idx)
        if not self._deferred(loss):
            self._raise_if_bad(float(loss), where)
            return
        # A copy: the CUDA-graph step returns the same static tensor every time.
        self._pending.append((loss.detach().clone(), where))
        if len(self._pending) >= trainer.log_every_n_steps:
            self._check()

    @staticmethod
    def _deferred(loss) -> bool:
        return isinstance(loss, torch.Tensor) and loss.device.type != "cpu"

    def _check(self) -> None:
        if not self._pending:
            return
        values = torch.stack([loss.float() for loss, _ in self._pending]).cpu().tolist()
        places = [where for _, where in self._pending]
        self._pending.clear()
        for value, where in zip(values, places, strict=True):
            self._raise_if_bad(value, where)

    @staticmethod
    def _raise_if_bad(value: float, where: tuple[int, int, int]) -> None:
        if math.isfinite(value):
            return
        epoch, step, batch_idx = where
        raise NonFiniteLossError(
            f"training loss became {value} at epoch {epoch}, step {step} (batch {batch_idx}); "
            "lower task.optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or check the "
            "data. The checkpoints from before are kept."
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._check()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint) -> None:
        self._check()  # raising here writes nothing

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._check()


class NonFiniteLossError(UserError):
    """A NaN/inf loss: bad hyperparameters or data, not a bug; exits like other bad input."""
