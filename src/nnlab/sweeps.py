"""What a multirun (sweep or search) needs beyond Hydra's own plugins: failed trials that never end
a search, an exit code that says whether any trial completed, and DDP inside a trial.

- `OptunaSweeper`: hydra-optuna-sweeper's sweeper, but a trial that failed (nnlab-train returns
  NaN for it, its error is in the trial's status.json) is told to Optuna as FAIL, and the study
  goes on to its n_trials. (The plugin itself tells Optuna "COMPLETE with NaN", which Optuna
  refuses, and its error handling then ends the whole search.)
- `SweepOutcome`: a Hydra callback; after a multirun it counts the trials' status.json files and
  records whether any completed, so `nnlab-train -m` exits non-zero only when none did.
- `single_job_argv`: under a multirun, Lightning's DDP launcher would start the other ranks with
  the whole multirun command line (each rank re-running every trial); this narrows the command
  line to the current trial, in its own directory.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class TrialFailed(RuntimeError):
    """A trial whose run failed; its error is in its run directory's status.json."""


def failed_as_raised(returns: Sequence[JobReturn]) -> Sequence[JobReturn]:
    """Trials that returned NaN or nothing turned into failed jobs (their value raises)."""
    for ret in returns:
        if ret.status != JobStatus.COMPLETED:
            continue
        value = ret._return_value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            where = ret.working_dir or (ret.hydra_cfg or {}).get("hydra", {}).get("runtime", {})
            ret.status = JobStatus.FAILED
            ret._return_value = TrialFailed(f"trial failed (see status.json in {where})")
    return returns


class _FailureAwareLauncher:
    """Wraps the sweep's launcher: every launch's returns pass through `failed_as_raised`."""

    def __init__(self, launcher: Any):
        self._launcher = launcher

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        return failed_as_raised(self._launcher.launch(job_overrides, initial_job_idx))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)


try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import (
        OptunaSweeper as _PluginOptunaSweeper,
    )
except ImportError:  # the [sweep] extra is not installed
    _PluginOptunaSweeper = None


if _PluginOptunaSweeper is not None:

    class OptunaSweeper(_PluginOptunaSweeper):
        """hydra-optuna-sweeper that records failed trials as FAIL and goes on (see above)."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            self.sweeper.launcher = _FailureAwareLauncher(self.sweeper.launcher)


class SweepOutcome(Callback):
    """Counts a finished multirun's trials; `SweepOutcome.completed` is read by nnlab-train."""

    completed: int | None = None  # trials completed in the last multirun of this process
    total: int = 0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nnlab.runs import Run

        sweep_dir = Path(config.hydra.sweep.dir)
        roots = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")]
        states = [Run(root).state()[0] for root in roots]
        SweepOutcome.total = len(states)
        SweepOutcome.completed = states.count("completed")
        log.info(
            "Sweep %s: %d of %d trials completed", sweep_dir, SweepOutcome.completed, len(states)
        )


def single_job_argv(hydra_cfg: DictConfig) -> None:
    """Make the command line (which Lightning's DDP launcher gives the other ranks) the current
    trial's: its overrides, without -m, and Hydra's run directory set to the trial's directory."""
    output_dir = hydra_cfg.runtime.output_dir
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.mode")]
    # hydra.mode=RUN: a search preset (hparams_search=...) would otherwise make it a multirun
    sys.argv = [sys.argv[0], *overrides, "hydra.mode=RUN"]
    # Lightning adds hydra.run.dir=<HydraConfig's run.dir> to the ranks' command line.
    OmegaConf.set_readonly(hydra_cfg, False)
    hydra_cfg.run.dir = output_dir
    OmegaConf.set_readonly(hydra_cfg, True)
