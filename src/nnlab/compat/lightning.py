"""Lightning's private members that nnlab relies on, in one place.

The fused loop (tasks/loops.py) steps the raw optimizer itself inside Lightning's manual
optimization, so it tells Lightning's counters what happened (the optimizer step count behind
`trainer.global_step`, and the loggers' step axis); the in-memory batcher (data/memory.py) asks
how many batches of the epoch the model has consumed, to resume mid-epoch; the CSV logger
continues a resumed run's metrics.csv (`CSVLogger`). None of these is a
public API: each function below is tested against the installed Lightning (tests/test_compat.py),
and an untested Lightning version is named in a warning when nnlab starts.
"""

from __future__ import annotations

import csv
import logging
import os
import re

import lightning as L
import lightning.pytorch.loggers
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)

# The Lightning minor versions these functions were tested with (pyproject.toml's pin).
TESTED = ((2, 4), (2, 6))


def version_problem(version: str = L.__version__) -> str | None:
    """Why `version` is not one these functions were tested with (None: it is)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return f"Lightning {version}: not a version number nnlab can read"
    minor = (int(match.group(1)), int(match.group(2)))
    low, high = TESTED
    if low <= minor <= high:
        return None
    return (
        f"Lightning {version} is outside the versions nnlab's fused loop was tested with "
        f"({low[0]}.{low[1]} to {high[0]}.{high[1]}); its step counts may be wrong: "
        "use task.loop=lightning, or install a tested Lightning"
    )


def _missing(what: str) -> RuntimeError:
    return RuntimeError(f"Lightning {L.__version__} has no {what}; {version_problem() or ''}")


def count_optimizer_step(optimizer) -> None:
    """Count one optimizer step that the caller made on the raw optimizer of a
    `LightningOptimizer` (manual optimization): `trainer.global_step` reads this count, and
    checkpoints and `max_steps` follow it, as if `optimizer.step()` had been called."""
    try:
        before, after = optimizer._on_before_step, optimizer._on_after_step
    except AttributeError:
        raise _missing("LightningOptimizer._on_before_step/_on_after_step") from None
    before()
    after()


def add_logged_steps(trainer: L.Trainer, steps: int) -> None:
    """Move the loggers' step axis on by `steps` (Lightning counts one per batch that stepped;
    a fused batch makes several optimizer steps, and curves of both loops should line up)."""
    try:
        trainer.fit_loop.epoch_loop._batches_that_stepped += steps
    except AttributeError:
        raise _missing("fit_loop.epoch_loop._batches_that_stepped") from None


def batches_processed(trainer: L.Trainer) -> int:
    """How many training batches of the current epoch the model has consumed (Lightning fetches
    one batch ahead, so a loader's own position is one too far)."""
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    except AttributeError:
        raise _missing("fit_loop.epoch_loop.batch_progress") from None


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one continues
    it under the same header (a resumed run keeps its earlier epochs)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class CSVLogger(lightning.pytorch.loggers.CSVLogger):
    """Lightning's CSVLogger, continuing the metrics.csv of a resumed run instead of deleting it
    (`logger=csv`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


if (problem := version_problem()) is not None:
    log.warning(problem)


def log_once() -> None:
    """Lightning's log records printed once. `import lightning` gives the `lightning` logger a
    console handler of its own, and its subpackages stop propagating only when the root logger
    has no handlers yet; imported after Hydra set up the job's logging (nnlab-train imports it
    lazily), every record would print twice: by that handler and by Hydra's (which also writes
    the run's train.log). With root handlers present, Hydra's alone speak."""
    if not logging.getLogger().handlers:
        return
    lightning_log = logging.getLogger("lightning")
    for handler in list(lightning_log.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_log.removeHandler(handler)


def without_cuda() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so that forks stay usable), and
    then every `torch.cuda.is_available()` loads NVML again until CUDA is initialized, in every
    step of Adam, RMSprop & co. (their graph-capture check). With no CUDA device there is
    nothing to protect, so torch's own cached check comes back."""
    nvml = "PYTORCH_NVML_BASED_CUDA_CHECK"
    if os.environ.get(nvml) == "1" and not torch.cuda.is_available():
        del os.environ[nvml]
        log.debug("No CUDA device: %s unset (a CUDA check in every optimizer step)", nvml)
