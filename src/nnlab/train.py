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
import tempfile
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from nnlab import CONF_DIR
from nnlab.callbacks.resilience import NonFiniteLoss, Preemption, RNGState
from nnlab.config import build, build_all, validate
from nnlab.console import print_config_tree
from nnlab.errors import UserError
from nnlab.lifecycle import check_checkpoint
from nnlab.runs import (
    CHECKPOINTS,
    PREEMPTED_EXIT_CODE,
    RESOLVED_CONFIG,
    AtomicCheckpointIO,
    Run,
    is_global_zero,
    register_resolvers,
)

log = logging.getLogger("nnlab.train")
register_resolvers()
# Noise from the libraries that says nothing about the run (TensorBoard's graph tracing).
warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task, then validate and test the best checkpoint; returns metrics."""
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
    if is_global_zero():  # files that predictions need besides the checkpoint (vocab.json)
        datamodule.save_artifacts(Path(cfg.paths.output_dir))
    # Always on: exact resume (random states), a checkpoint on preemption, a stop on NaN loss.
    callbacks = [
        *build_all(cfg.get("callbacks"), "callbacks"),
        RNGState(),
        Preemption(dirpath=str(Path(cfg.paths.output_dir) / CHECKPOINTS)),
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
        plugins=[AtomicCheckpointIO()],
    )

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


GROUPS = ("experiment", "data", "model", "task", "trainer", "callbacks", "logger", "paths", "debug")


def resumed_config(run: Run, overrides: list[str]) -> DictConfig:
    """The run's saved config, the command line's key=value overrides on top, set to continue
    from its last checkpoint."""
    dotlist = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("resume", "print_config"):
            continue
        if key in GROUPS:
            raise UserError(
                f"resume: `{override}` would change what the run is; a resumed run keeps its "
                "config (override single keys such as trainer.max_epochs=20, or start a new run)"
            )
        dotlist.append(override.lstrip("+"))
    cfg = OmegaConf.merge(run.config(), OmegaConf.from_dotlist(dotlist))
    cfg.resume = str(run.root)
    cfg.ckpt_path = str(run.resume_checkpoint())
    return cfg


def _start(cfg: DictConfig, run: Run) -> DictConfig:
    if cfg.get("resume"):
        Run.open(cfg.resume, key="resume")
        run.start(resumed=True)
        cfg = resumed_config(run, list(HydraConfig.get().overrides.task))
        run.save_config(cfg)  # with this session's overrides, for the next resume or eval
        log.info("Resuming %s from %s", run.root, cfg.ckpt_path)
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
    try:
        cfg = _start(cfg, run)
        metrics = train(cfg)
    except UserError as exc:
        run.fail(exc)  # the message goes to status.json, and once to the terminal
        if multirun:  # a failed trial must not stop the sweep: the sweeper sees NaN
            log.error("Trial failed: %s", exc)
            return math.nan
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SIGTERMException as exc:
        run.fail(
            f"stopped by a signal ({exc or 'SIGTERM'}); resume with nnlab-train resume={run.root}",
            "preempted",
        )
        log.warning("Preempted: last.ckpt saved; resume with nnlab-train resume=%s", run.root)
        sys.exit(PREEMPTED_EXIT_CODE)
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


def rerun_overrides(argv: list[str]) -> list[str]:
    """Re-running a saved config (`-cp <run>/.hydra -cn config`): that config.yaml has no
    `hydra:` block of ours, so give it our run directory layout and the old run's name."""
    config_path = None
    for i, arg in enumerate(argv):
        if arg in ("-cp", "--config-path") and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config-path="):
            config_path = arg.split("=", 1)[1]
    if not config_path:
        return []
    saved = Path(config_path).expanduser()
    if not (saved.name == ".hydra" and (saved.parent / RESOLVED_CONFIG).is_file()):
        return []
    ours = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").hydra)  # unresolved
    extra = [f"hydra.run.dir='{ours['run']['dir']}'", f"hydra.sweep.dir='{ours['sweep']['dir']}'"]
    if not any(arg.startswith("name=") for arg in argv):
        extra.append(f"name={OmegaConf.load(saved.parent / RESOLVED_CONFIG).get('name', 'rerun')}")
    return extra


def check_writable(argv: list[str]) -> None:
    """Run directories go under paths.log_dir: refuse one that cannot be written, before Hydra
    tries (and fails with a stack trace)."""
    given = [
        a.split("=", 1)[1] for a in argv if a.startswith(("paths.log_dir=", "+paths.log_dir="))
    ]
    target = Path(
        given[-1] if given else os.environ.get("NNLAB_OUTPUT_DIR") or "outputs"
    ).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise UserError(
            f"paths.log_dir: cannot write run directories under {target} ({exc.strerror}); point "
            "NNLAB_OUTPUT_DIR or paths.log_dir=... at a writable directory"
        ) from None


def main() -> None:
    """Console entry. A `resume=` that is not a run directory is refused before Hydra creates
    (or writes a log into) it; a re-run of a saved config gets our run directory layout."""
    try:
        for arg in sys.argv[1:]:
            if arg.startswith("resume=") and arg != "resume=null":
                Run.open(arg.split("=", 1)[1], key="resume")
        check_writable(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.argv += rerun_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
