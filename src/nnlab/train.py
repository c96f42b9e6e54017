"""nnlab-train: compose a run with Hydra, fit, test on the best checkpoint, record metrics.

nnlab-train                                   # the default experiment (sine_lstm)
nnlab-train experiment=sine_mlp trainer.max_epochs=5
nnlab-train -m experiment=sine_mlp seed=1,2,3 # a sweep
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from nnlab import CONF_DIR
from nnlab.cli import check_writable, rerun_overrides, resumed_config, unparsable_argument
from nnlab.config import optimized_metrics
from nnlab.console import print_config_tree
from nnlab.errors import (
    UserError,
    exit_on_user_error,
    user_error_cause,
)
from nnlab.heap import freeze_imports, importing
from nnlab.runs import RESOLVED_CONFIG, Run, relocatable_config
from nnlab.schema import check, upgrade_rerun
from nnlab.sweeps import NoTrialCompleted, SweepOutcome, released_ddp_state, single_job_argv

log = logging.getLogger("nnlab.train")
# Noise from the libraries that says nothing about the run (TensorBoard's graph tracing).
warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def train(cfg: DictConfig, run: Run, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fit the configured task, then validate and test the best checkpoint; returns metrics.
    `extra_callbacks` join the configured ones (benchmarks and tests watch a run with them)."""
    check(cfg)  # every setting, before anything is built
    # torch and Lightning are imported here, not with the module: `--help` and a refused key or
    # value answer without them (docs/benchmarks.md; tests/test_startup.py).
    with importing():  # what those imports make stays out of the garbage collector (heap.py)
        from nnlab.assemble import assemble, conclude, fit
        from nnlab.compat.lightning import log_once

    log_once()
    parts = assemble(cfg, run, extra_callbacks)
    if parts.trainer.world_size > 1 and HydraConfig.get().mode == RunMode.MULTIRUN:
        single_job_argv(HydraConfig.get())  # the other ranks run this trial only
    # train=false: evaluate ckpt_path's weights (or the initial ones) without fitting;
    # test=false: no test split (lightning-hydra-template's switches)
    if cfg.get("train", True):
        fit(cfg, parts)
    return conclude(cfg, run, parts)


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


def completed_before(run: Run, cfg: DictConfig) -> Any:
    """A sweep run again in the same sweep directory (an interrupted one, with its
    hydra.sweep.dir): a trial that completed (or was pruned) before is kept, its directory not
    touched, and its recorded result returned; None for a trial to train. A trial directory that
    holds other settings than this job's is refused, not overwritten."""
    state = run.state()[0]
    if state not in ("completed", "pruned") or not (run.root / RESOLVED_CONFIG).is_file():
        return None
    saved = OmegaConf.load(run.root / RESOLVED_CONFIG)
    if OmegaConf.to_container(saved) != relocatable_config(cfg, run.root):
        log.error(
            "Trial %s finished before with other settings; it is kept as it was and not run "
            "again (give this sweep another hydra.sweep.dir)",
            run.root,
        )
        return math.nan
    log.info("Trial %s %s before; kept", run.root, state)
    record = run.metrics()
    optimized = optimized_metrics(cfg)
    if isinstance(cfg.get("optimized_metric"), ListConfig):
        return [record.get(m) for m in optimized]
    return record.get(optimized[0]) if optimized else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    upgrade_rerun(cfg, hydra_cfg)  # a saved config of an earlier nnlab, run again: today's keys
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run = Run(hydra_cfg.runtime.output_dir)
    if multirun and (kept := completed_before(run, cfg)) is not None:
        return kept
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
    optimized = optimized_metrics(cfg)
    if isinstance(cfg.get("optimized_metric"), ListConfig):
        return [session.record.get(m) for m in optimized]
    return session.record.get(optimized[0]) if optimized else None


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
        inner = exc.__cause__  # "Error merging override k=v": what OmegaConf said of the value
        if cause is exc and isinstance(inner, ValidationError):  # a value of the wrong type
            said = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
            message = f"{message}: {said}" if said and said not in message else message
        if (bad := unparsable_argument(sys.argv[1:])) is not None:  # name it: Hydra does not
            message = f"{bad}: {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except UserError as exc:  # the up-front check of a run, a sweep's trials, a search's settings
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except NoTrialCompleted as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if SweepOutcome.completed == 0:  # a multirun none of whose trials completed
        print(f"error: none of the {SweepOutcome.total} trials completed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
