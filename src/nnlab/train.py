"""nnlab-train: compose a run with Hydra, fit, test on the best checkpoint, record metrics.

nnlab-train                                   # the default experiment (sine_lstm)
nnlab-train experiment=sine_mlp trainer.max_epochs=5
nnlab-train -m experiment=sine_mlp seed=1,2,3 # a sweep
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nnlab import CONF_DIR
from nnlab.callbacks.resilience import NonFiniteLoss
from nnlab.checkpoint_io import AtomicCheckpointIO, check_checkpoint
from nnlab.cli import check_writable, rerun_overrides, resumed_config, unparsable_argument
from nnlab.config import build, build_all, validate
from nnlab.console import print_config_tree
from nnlab.errors import (
    ConfigError,
    UserError,
    exit_on_user_error,
)
from nnlab.heap import freeze_imports
from nnlab.runs import Run
from nnlab.sweeps import NoTrialCompleted, SweepOutcome, released_ddp_state, single_job_argv
from nnlab.tracking import log_run_summary

log = logging.getLogger("nnlab.train")
# Noise from the libraries that says nothing about the run (TensorBoard's graph tracing).
warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def train(cfg: DictConfig, run: Run, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fit the configured task, then validate and test the best checkpoint; returns metrics.
    `extra_callbacks` join the configured ones (benchmarks and tests watch a run with them)."""
    validate(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, "data")
    # The net goes in as config: the checkpoint's hyperparameters then rebuild it on their own.
    task = build(cfg.task, "task", net=cfg.model, _recursive_=False)
    task.check_data(datamodule)
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
        *extra_callbacks,
        *run.callbacks(cfg.monitor, cfg.monitor_mode, checkpointing, cluster=cluster),
        NonFiniteLoss(),
    ]
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
    if trainer.world_size > 1 and HydraConfig.get().mode == RunMode.MULTIRUN:
        single_job_argv(HydraConfig.get())  # the other ranks run this trial only

    log.info("Training %s on %s", type(task.net).__name__, type(datamodule).__name__)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except MisconfigurationException as exc:
        if f"monitor='{cfg.monitor}'" not in str(exc):
            raise
        raise ConfigError("monitor", f"{str(exc).splitlines()[0]}; name a logged metric") from None

    trained = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    # test_on: best (the checkpoint `monitor` chose) or last (the final weights, in memory, as
    # a reference recipe that evaluates the model it ends with)
    test_on = cfg.get("test_on", "best")
    checkpoint = run.best_checkpoint() if test_on == "best" else None
    if checkpoint is None and test_on == "best":
        log.warning("No checkpoint was saved; evaluating the weights in memory")
    val = [{}]
    if sum(trainer.num_val_batches or [0]):  # no validation split (data.splits [600, 0, 400])
        val = trainer.validate(task, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    test = trainer.test(task, datamodule=datamodule, ckpt_path=checkpoint)
    metrics: dict[str, Any] = {k: float(v) for k, v in {**val[0], **test[0]}.items()}
    metrics["tested"] = test_on
    if cfg.monitor not in metrics and cfg.monitor in trained:
        # a monitored training metric (no validation split): its value at the last epoch
        metrics[cfg.monitor] = trained[cfg.monitor]
    metrics["best_checkpoint"] = checkpoint
    if checkpoint and (match := re.search(r"epoch(\d+)", Path(checkpoint).name)):
        metrics["best_epoch"] = int(match.group(1))
    metrics["epochs"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:
        raise ConfigError(
            "optimized_metric",
            f"{optimized!r} is not a metric of this run; it has {', '.join(sorted(metrics))}",
        )
    log_run_summary(loggers, cfg, task, metrics)  # hparams, final metrics, tags -> each logger
    return metrics


def start(cfg: DictConfig, run: Run) -> DictConfig:
    """Open the run: a new one, a resumed one (resume=<run dir>), or the same directory again
    (a requeued SLURM job), which continues from its newest checkpoint."""
    if run.writes:
        run.lock()
    if cfg.get("resume"):
        run.start(resumed=True)
        cfg = resumed_config(run, list(HydraConfig.get().overrides.task))
        run.save_config(cfg)  # with this session's overrides, for the next resume or eval
        log.info("Resuming %s from %s", run.root, cfg.ckpt_path)
    elif run.was_started():  # a requeued SLURM job (or another rank of this run)
        run.start(resumed=True)
        if run.has_checkpoint():
            cfg.ckpt_path = str(run.resume_checkpoint())
        if run.writes:
            log.info("Run directory used again (requeued): continuing from %s", cfg.ckpt_path)
    else:
        run.start(experiment=cfg.get("name"))
        run.save_config(cfg)
    if run.writes:  # rank 0 of a distributed run speaks for it
        print_config_tree(
            cfg, save_to=run.root / "config_tree.log", echo=cfg.get("print_config", True)
        )
    return cfg


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run = Run(hydra_cfg.runtime.output_dir)
    with run.session(multirun) as session:  # the run manager records how it ended
        cfg = start(cfg, run)
        with released_ddp_state():
            session.record = run.finish(train(cfg, run))
    if session.failed:  # a failed trial must not stop the sweep: the sweeper sees NaN
        return math.nan
    if run.writes:
        log.info("Run directory: %s", run.root)
        log.info("Metrics: %s", run.metrics_path)
        log.info("TensorBoard: tensorboard --logdir %s", run.root)
    optimized = cfg.get("optimized_metric")
    return session.record.get(optimized) if optimized else None


def user_error_cause(exc: BaseException) -> UserError | None:
    """The UserError behind a chain of wrappers (Hydra's, and OmegaConf's around a resolver
    that reads the data: `${nnlab.tabular:input_size}`), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    """Console entry. A `resume=` that is not a free run directory is refused before Hydra
    creates (or writes a log into) it; a re-run of a saved config gets our directory layout."""
    freeze_imports()
    with exit_on_user_error():
        for arg in sys.argv[1:]:
            if arg.startswith("resume=") and arg != "resume=null":
                Run.check_free(arg.split("=", 1)[1], key="resume")
        check_writable(sys.argv[1:])
    sys.argv += rerun_overrides(sys.argv[1:])
    SweepOutcome.completed = None
    # Hydra's own errors (an unknown key or group option, bad override syntax) are user errors:
    # let them reach us instead of Hydra's report-and-exit-1, and say them in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        # a UserError raised while Hydra built one of its own objects (the launcher's settings)
        # is the message; Hydra's wrapper around it only names the class it was building
        cause = user_error_cause(exc) or exc
        message = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
        if (bad := unparsable_argument(sys.argv[1:])) is not None:  # name it: Hydra does not
            message = f"{bad}: {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except NoTrialCompleted as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if SweepOutcome.completed == 0:  # a multirun none of whose trials completed
        print(f"error: none of the {SweepOutcome.total} trials completed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
