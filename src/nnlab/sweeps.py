"""What a multirun (sweep or search) needs beyond Hydra's own plugins: failed trials that never end
a search, an exit code that says whether any trial completed, and DDP inside a trial.

- `failed_as_raised`: a trial that failed (nnlab-train returns NaN for it, its error is in the
  trial's status.json) becomes a failed job, which nnlab's sweeper (nnlab/search/) tells Optuna
  as FAIL; the study goes on to its n_trials.
- `grid_exhaustion_tolerated`: Optuna's GridSampler calls `study.stop()` when its last grid point
  is told, which raises outside `study.optimize()`; the sweeper's own loop ends at the grid's end.
- `SweepOutcome`: a Hydra callback; after a multirun it counts the trials' status.json files and
  records whether any completed, so `nnlab-train -m` exits non-zero only when none did.
- `released_ddp_state`: Lightning's DDP launcher leaves its process group and its environment
  (LOCAL_RANK, WORLD_SIZE ...) in the process; the next trial of a sweep would then believe its
  ranks were started already. Each trial gets the environment it started with. A single run
  closes its process group too: left to the interpreter's exit, gloo's threads now and then
  aborted a rank that had finished ("terminate called without an active exception", exit 134).
- `single_job_argv`: under a multirun, Lightning's DDP launcher would start the other ranks with
  the whole multirun command line (each rank re-running every trial); this narrows the command
  line to the current trial, in its own directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class NoTrialCompleted(RuntimeError):
    """A search none of whose trials completed (each one's error is in its status.json)."""


class TrialFailed(RuntimeError):
    """A trial whose run failed; its error is in its run directory's status.json."""


def failed_as_raised(returns: Sequence[JobReturn]) -> Sequence[JobReturn]:
    """Trials that returned NaN or nothing turned into failed jobs (their value raises)."""
    for ret in returns:
        if ret.status != JobStatus.COMPLETED:
            continue
        value = ret._return_value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            where = (
                OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
                if ret.hydra_cfg
                else None
            )
            ret.status = JobStatus.FAILED
            ret._return_value = TrialFailed(f"trial failed (see {where or 'its'}/status.json)")
    return returns


@contextlib.contextmanager
def grid_exhaustion_tolerated() -> Iterator[None]:
    """While a sweep runs, Optuna's GridSampler may find its grid exhausted after any trial
    (completed or failed) without raising: the sweep's own loop ends at n_trials anyway."""
    from optuna.samplers import GridSampler

    after_trial = GridSampler.after_trial

    def tolerant_after_trial(self: Any, study: Any, *args: Any, **kwargs: Any) -> None:
        try:
            after_trial(self, study, *args, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    GridSampler.after_trial = tolerant_after_trial
    try:
        yield
    finally:
        GridSampler.after_trial = after_trial


class SweepOutcome(Callback):
    """Counts a finished multirun's trials; `SweepOutcome.completed` is read by nnlab-train."""

    completed: int | None = None  # trials completed in the last multirun of this process
    total: int = 0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nnlab.runs import Run, find_runs

        sweep_dir = Path(config.hydra.sweep.dir)
        states = [Run(root).state()[0] for root in find_runs(sweep_dir)]
        SweepOutcome.total = len(states)
        # a pruned trial (stopped by its search) is a normal outcome too
        SweepOutcome.completed = states.count("completed") + states.count("pruned")
        log.info(
            "Sweep %s: %d of %d trials completed or pruned",
            sweep_dir,
            SweepOutcome.completed,
            len(states),
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


# What Lightning's DDP launcher sets in the launching process's environment.
DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def released_ddp_state() -> Iterator[None]:
    """Run one training (a run or a trial); afterwards no DDP state of it is left in this process."""
    saved = {name: os.environ.get(name) for name in DDP_VARIABLES}
    argv = list(sys.argv)
    try:
        yield
    finally:
        # a process group exists only where torch.distributed was imported: do not import it here
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.argv = argv
