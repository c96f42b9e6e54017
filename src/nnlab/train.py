"""nnlab-train: compose a run with Hydra, fit, test on the best checkpoint, record metrics.

nnlab-train                                   # the default experiment (sine_lstm)
nnlab-train experiment=sine_mlp trainer.max_epochs=5
nnlab-train -m experiment=sine_mlp seed=1,2,3 # a sweep
"""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from nnlab import CONF_DIR
from nnlab.config import build, build_all
from nnlab.console import print_config_tree
from nnlab.errors import UserError
from nnlab.runs import Run, register_resolvers

log = logging.getLogger("nnlab.train")
register_resolvers()
# Noise from the libraries that says nothing about the run (TensorBoard's graph tracing).
warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning
)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task, then validate and test the best checkpoint; returns metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data")
    # The net goes in as config: the checkpoint's hyperparameters then rebuild it on their own.
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    if hasattr(datamodule, "example_input"):  # lets TensorBoard draw the model graph
        task.example_input_array = datamodule.example_input()
    callbacks = build_all(cfg.get("callbacks"), "callbacks")
    loggers = build_all(cfg.get("logger"), "logger")
    if not loggers:  # nothing to send learning rates to (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    log.info("Training %s on %s", type(task.net).__name__, type(datamodule).__name__)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if checkpoint is None:
        log.warning("No checkpoint was saved; evaluating the weights in memory")
    val = trainer.validate(task, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    test = trainer.test(task, datamodule=datamodule, ckpt_path=checkpoint)
    metrics: dict[str, Any] = {**_scalars(val[0]), **_scalars(test[0])}
    metrics["best_checkpoint"] = checkpoint
    if checkpoint and (match := re.search(r"epoch(\d+)", Path(checkpoint).name)):
        metrics["best_epoch"] = int(match.group(1))
    metrics["epochs"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run = Run(hydra_cfg.runtime.output_dir)
    run.start(experiment=cfg.get("name"))
    if run.writes:  # rank 0 of a distributed run speaks for it
        print_config_tree(
            cfg, save_to=run.root / "config_tree.log", echo=cfg.get("print_config", True)
        )
    try:
        metrics = train(cfg)
    except UserError as exc:
        run.fail(exc)
        log.error("%s", exc)
        if multirun:  # a failed trial must not stop the sweep: the sweeper sees NaN
            return math.nan
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except BaseException as exc:
        run.fail(f"{type(exc).__name__}: {exc}")
        if multirun and isinstance(exc, Exception):
            log.exception("Trial failed")
            return math.nan
        raise
    record = run.finish(metrics)
    if run.writes:
        log.info("Run directory: %s", run.root)
        log.info("Metrics: %s", run.metrics_path)
        log.info("TensorBoard: tensorboard --logdir %s", run.root)
    optimized = cfg.get("optimized_metric")
    return record.get(optimized) if optimized else None


if __name__ == "__main__":
    main()
