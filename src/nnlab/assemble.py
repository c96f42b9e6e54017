"""A run's parts built from its config, and its conclusion: what nnlab-train does around
`trainer.fit`, in the order it does it. The packed launcher builds each trial's data and task
and records its metrics with the same functions (`data_and_task`, `record`).

    parts = assemble(cfg, run)          # data, task, callbacks, loggers, trainer
    fit(cfg, parts)
    metrics = conclude(cfg, run, parts) # best checkpoint, validate, test, metrics
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from nnlab.callbacks.resilience import NonFiniteLoss
from nnlab.checkpoint_io import AtomicCheckpointIO, check_checkpoint, load_initial_weights
from nnlab.config import build, build_all, optimized_metrics
from nnlab.errors import ConfigError
from nnlab.runs import Run
from nnlab.search.pruning import trial_reporter
from nnlab.tasks.loops import training_loop
from nnlab.tracking import log_run_summary

log = logging.getLogger("nnlab.train")


@dataclass
class Parts:
    datamodule: Any
    task: L.LightningModule
    trainer: L.Trainer
    loggers: list
    reporter: Any = None  # a search trial's TrialReporter (nnlab/search/pruning.py)


def data_and_task(cfg: DictConfig, verbose: bool = True) -> tuple[Any, L.LightningModule]:
    """The seeded data module and task, the task checked against the data: the same weights
    wherever a run with this config is built (alone or as a packed trial)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=verbose)
    datamodule = build(cfg.data, "data")
    # The net goes in as config: the checkpoint's hyperparameters then rebuild it on their own.
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    weights = cfg.model.get("weights") if isinstance(cfg.model, DictConfig) else None
    if weights and not cfg.get("ckpt_path"):  # (a checkpoint continued replaces them anyway)
        load_initial_weights(task.net, weights)
    task.check_data(datamodule)
    return datamodule, task


def averaging(cfg: DictConfig) -> list[Any]:
    """The `averaging` group's callback (engine/averaging.py), none for averaging=none."""
    node = cfg.get("averaging")
    return [build(node, "averaging")] if node and "_target_" in node else []


def assemble(cfg: DictConfig, run: Run, extra_callbacks: Sequence[Any] = ()) -> Parts:
    """Data, task, callbacks (the configured ones, `extra_callbacks`, the run's checkpoints, the
    training loop), loggers and trainer of a run."""
    datamodule, task = data_and_task(cfg)
    if cfg.get("ckpt_path") and not cfg.get("resume"):
        check_checkpoint(Path(cfg.ckpt_path), cfg.model, key="ckpt_path")
    task.example_input_array = datamodule.example_input()  # TensorBoard draws the model graph
    if run.writes:  # files that predictions need besides the checkpoint (vocab.json)
        datamodule.save_artifacts(run.root)

    # the config's own plugins (cluster=slurm's SLURM environment) and atomic checkpoint writes
    plugins = [build(p, "trainer.plugins") for p in cfg.trainer.get("plugins") or []]
    cluster = next((p for p in plugins if getattr(p, "nnlab_requeue_signal", None)), None)
    checkpointing = cfg.get("checkpoint") or {}
    callbacks = [
        *build_all(cfg.get("callbacks"), "callbacks"),
        *averaging(cfg),
        *extra_callbacks,
        *run.callbacks(cfg.monitor, cfg.monitor_mode, checkpointing, cluster=cluster),
        NonFiniteLoss(),
    ]
    if (loop := training_loop(task)) is not None:  # the loop is chosen here, not by the task
        callbacks.append(loop)
    # a trial of nnlab's search reports its metric after each validation and may be pruned
    if (reporter := trial_reporter(cfg)) is not None:
        callbacks.append(reporter)
    loggers = build_all(cfg.get("logger"), "logger")
    if not loggers:  # nothing to send learning rates to (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[*plugins, AtomicCheckpointIO()],
        enable_checkpointing=bool(checkpointing.get("enabled", True)),
    )
    return Parts(datamodule, task, trainer, loggers, reporter)


def fit(cfg: DictConfig, parts: Parts) -> None:
    log.info("Training %s on %s", type(parts.task.net).__name__, type(parts.datamodule).__name__)
    try:
        parts.trainer.fit(parts.task, datamodule=parts.datamodule, ckpt_path=cfg.get("ckpt_path"))
    except MisconfigurationException as exc:
        if f"monitor='{cfg.monitor}'" in str(exc):
            key = "monitor"
        elif str(exc).startswith("ReduceLROnPlateau conditioned on metric"):
            key = "task.scheduler_monitor"  # (the fused loop says so itself: engine/step.py)
        else:
            raise
        raise ConfigError(key, f"{str(exc).splitlines()[0]}; name a logged metric") from None


def record(
    val: dict[str, Any],
    test: dict[str, Any],
    best_checkpoint: str | None,
    best_epoch: int | None,
    epochs: int,
    global_step: int,
) -> dict[str, Any]:
    """A run's metrics.json content (before the run manager adds its wall time)."""
    metrics: dict[str, Any] = {k: float(v) for k, v in {**val, **test}.items()}
    metrics["best_checkpoint"] = best_checkpoint
    if best_checkpoint and best_epoch is not None:
        metrics["best_epoch"] = int(best_epoch)
    metrics["epochs"] = int(epochs)
    metrics["global_step"] = int(global_step)
    return metrics


def check_optimized(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    for optimized in optimized_metrics(cfg):
        if optimized not in metrics:
            raise ConfigError(
                "optimized_metric",
                f"{optimized!r} is not a metric of this run; it has {', '.join(sorted(metrics))}",
            )


def conclude(cfg: DictConfig, run: Run, parts: Parts) -> dict[str, Any]:
    """Validate and test the weights `test_on` names: the best checkpoint (the weights in memory
    without one) or the last weights (as a reference recipe evaluates the model it ends with);
    `ckpt_path`'s with train=false; no test with test=false. The metrics, also sent to each
    logger."""
    trainer, task, datamodule = parts.trainer, parts.task, parts.datamodule
    fitted = cfg.get("train", True)
    test_on = cfg.get("test_on", "best")
    if not fitted:
        checkpoint = cfg.get("ckpt_path")
    else:
        checkpoint = run.best_checkpoint() if test_on == "best" else None
    if checkpoint is None and (test_on == "best" or not fitted):
        log.warning("No checkpoint to evaluate; evaluating the weights in memory")
    trained = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    val = [{}]
    if not fitted or sum(trainer.num_val_batches or [0]):  # (no validation split: [600, 0, 400])
        val = trainer.validate(task, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    test = [{}]
    if cfg.get("test", True):
        test = trainer.test(task, datamodule=datamodule, ckpt_path=checkpoint)
    best_epoch = run.best_epoch() if fitted and checkpoint else None
    metrics = record(
        val[0], test[0], checkpoint, best_epoch, trainer.current_epoch, trainer.global_step
    )
    metrics["tested"] = test_on if fitted else "ckpt_path"
    if cfg.monitor not in metrics and cfg.monitor in trained:
        # a monitored training metric (no validation split): its value at the last epoch
        metrics[cfg.monitor] = trained[cfg.monitor]
    if parts.reporter is not None and parts.reporter.pruned_at is not None:
        metrics["pruned_at_epoch"] = parts.reporter.pruned_at  # status.json then says `pruned`
    check_optimized(cfg, metrics)
    log_run_summary(parts.loggers, cfg, task, metrics)  # hparams, final metrics, tags
    return metrics
